//! Under overload (README, "Under overload"): queueing in courier is not a Redis
//! failure, acks are not starved by the sends that overload Redis, and a Redis that
//! is really down is still answered `unavailable` at once, with the session serving
//! its client meanwhile. Behaviour only: no assertion on speed.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use courier_client::ConnectOptions;
use serde_json::{Value, json};
use support::*;

/// Users who receive every batch but never connect: they make each send script
/// write many entries, so a burst keeps Redis busy.
const SILENT: std::ops::RangeInclusive<u64> = 1001..=1050;
/// The user who connects, reads and acks everything.
const READER: u64 = 500;

/// Sender `i` sends to its own chat `100 + i`: the sender, the reader and the silent
/// users (a sender receives nothing, so it needs to read nothing but its acks).
fn create_chats(redis: &RedisServer, senders: u64) {
    for sender in 1..=senders {
        let mut members = vec![sender, READER];
        members.extend(SILENT);
        redis.create_chat(100 + sender, &members);
    }
}

/// A batch of `count` messages from `sender` to its chat, as a frame.
fn batch(sender: u64, time_key: i64, count: usize) -> Value {
    let messages: Vec<Value> = (0..count)
        .map(|n| {
            json!({"sender_id": sender, "chat_id": 100 + sender,
                   "content_text": format!("{sender}/{time_key}/{n}")})
        })
        .collect();
    json!({"type": "messages", "time_key": time_key, "messages": messages})
}

/// One burst at a time: two at once on a small machine would measure the machine.
static ONE_BURST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a sender waits for the answer to its batch: a burst is answered in
/// its order, and this machine may be busy.
const BURST_WAIT: Duration = Duration::from_secs(120);

/// Connects `senders` senders, then has each send `batches` batches of `size`
/// messages at once; returns every frame each got back for them (acks or errors).
async fn burst(courier: &Courier, senders: u64, batches: i64, size: usize) -> Vec<Value> {
    let mut clients = Vec::new();
    for sender in 1..=senders {
        let client = ConnectOptions::new(courier.ws_url())
            .token(token(sender))
            .connect()
            .await
            .expect("sender connects");
        clients.push((sender, client));
    }
    for (sender, client) in &mut clients {
        for time_key in 1..=batches {
            let frame = batch(*sender, time_key, size).to_string();
            client.send_text(frame).await.expect("batch sent");
        }
    }
    let answers = clients.into_iter().map(|(_, mut client)| async move {
        let mut answers = Vec::new();
        while answers.len() < batches as usize {
            let text = client
                .recv_text(BURST_WAIT)
                .await
                .expect("a batch is answered");
            answers.push(serde_json::from_str(&text).expect("JSON"));
        }
        answers
    });
    futures_util::future::join_all(answers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Receives and acks batches until `count` messages arrived, each ack sent as soon
/// as its batch is in; returns the ids, and every non-batch frame seen.
async fn read_everything(reader: &mut WsClient, count: usize) -> (Vec<u64>, Vec<Value>) {
    let mut seen = Vec::new();
    let mut others = Vec::new();
    while seen.len() < count {
        let frame = reader.recv_json().await;
        if frame["type"] != "messages" {
            others.push(frame);
            continue;
        }
        reader
            .ack(frame["time_key"].as_u64().expect("integer time_key"))
            .await;
        seen.extend(ids(frame["messages"].as_array().expect("messages")));
    }
    (seen, others)
}

/// [`read_everything`], for a reader that also sends: on its first delivery it sends
/// `batches` batches of its own at once (to its chat `100 + READER`: itself and the
/// silent users), which then queue behind the burst's. Its acks must still be read
/// meanwhile. Returns the ids, the answers to its batches, and every other frame.
async fn read_and_send(
    reader: &mut WsClient,
    count: usize,
    batches: i64,
) -> (Vec<u64>, Vec<Value>, Vec<Value>) {
    let mut seen = Vec::new();
    let mut answers = Vec::new();
    let mut others = Vec::new();
    let mut sent = false;
    while seen.len() < count || answers.len() < batches as usize {
        let frame = reader.recv_json().await;
        if frame["type"] != "messages" {
            let own = frame["time_key"]
                .as_i64()
                .is_some_and(|tk| (1..=batches).contains(&tk));
            if own {
                answers.push(frame)
            } else {
                others.push(frame)
            }
            continue;
        }
        reader
            .ack(frame["time_key"].as_u64().expect("integer time_key"))
            .await;
        seen.extend(ids(frame["messages"].as_array().expect("messages")));
        if !sent {
            sent = true;
            for time_key in 1..=batches {
                reader.send_json(batch(READER, time_key, 20)).await;
            }
        }
    }
    (seen, answers, others)
}

/// A counter of courier's `/metrics` (0 when it has not been counted yet).
async fn counter(courier: &Courier, name: &str) -> f64 {
    let (_, text) = http_get(courier.addr, "/metrics").await;
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_burst_queued_longer_than_the_redis_timeout_is_written_not_refused() {
    let _alone = ONE_BURST.lock().await;
    let redis = RedisServer::start();
    // Each send script writes 20 messages for 51 recipients, 2 scripts in flight at
    // once. The burst as a whole takes Redis seconds, far longer than the 1 s
    // timeout: without the gate its last commands would time out in the
    // connection's queue.
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_REDIS_TIMEOUT_MS", "1000"),
            ("COURIER_REDIS_MAX_INFLIGHT", "2"),
            ("COURIER_STREAM_MAXLEN", "100000"),
        ],
    );
    let senders = 300;
    let batches = 2;
    create_chats(&redis, senders);
    let mut reader = courier.connect(READER).await;

    let answers = burst(&courier, senders, batches, 20).await;
    let refused: Vec<&Value> = answers.iter().filter(|a| a["type"] != "ack").collect();
    assert!(refused.is_empty(), "every batch acked: {refused:?}");

    let total = (senders as usize) * (batches as usize) * 20;
    let (seen, others) = read_everything(&mut reader, total).await;
    assert!(others.is_empty(), "only batches for the reader: {others:?}");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        total,
        "each message exactly once"
    );
    wait_for_pending(&redis, READER, "default", 0).await;
    for silent in SILENT {
        assert_eq!(
            redis.cmd::<usize>(&["XLEN", &format!("inbox:{{user:{silent}}}")]),
            total,
            "user {silent} holds every message once"
        );
    }
    assert_eq!(counter(&courier, "courier_errors_total").await, 0.0);
}

#[tokio::test]
async fn a_client_that_acks_at_once_gets_nothing_again_while_sends_queue_past_the_ack_timeout() {
    let _alone = ONE_BURST.lock().await;
    let redis = RedisServer::start();
    // One command in flight, a 3 s ack timeout checked every 750 ms, and a burst of
    // sends that queues for longer than that: the reader's reads and acks must pass
    // the queued sends, or its batches time out and come again.
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_REDIS_MAX_INFLIGHT", "1"),
            ("COURIER_ACK_TIMEOUT_MS", "3000"),
            ("COURIER_STREAM_MAXLEN", "100000"),
        ],
    );
    let senders = 300;
    let batches = 2;
    create_chats(&redis, senders);
    let mut members = vec![READER];
    members.extend(SILENT);
    redis.create_chat(100 + READER, &members);
    let mut reader = courier.connect(READER).await;

    // The reader sends too, a window of 4 batches: while they wait behind the burst,
    // its socket must still be read, or its acks wait with them.
    let total = (senders as usize) * (batches as usize) * 20;
    let (answers, (seen, own, others)) = tokio::join!(
        burst(&courier, senders, batches, 20),
        read_and_send(&mut reader, total, 4)
    );
    let refused: Vec<&Value> = answers
        .iter()
        .chain(&own)
        .filter(|a| a["type"] != "ack")
        .collect();
    assert!(refused.is_empty(), "every batch acked: {refused:?}");
    assert!(
        others.is_empty(),
        "no error for the reader's acks: {others:?}"
    );
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "nothing delivered twice"
    );
    wait_for_pending(&redis, READER, "default", 0).await;
    assert_eq!(
        counter(&courier, "courier_messages_redelivered_total").await,
        0.0
    );
}

#[tokio::test]
async fn while_redis_is_down_sends_are_answered_unavailable_and_other_frames_still_answered() {
    let mut redis = RedisServer::start_persistent();
    // A poll every 100 ms, well within the (long) command timeout: every poll's read
    // meets the outage.
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_REDIS_TIMEOUT_MS", "20000"),
            ("COURIER_POLL_INTERVAL_MS", "100"),
        ],
    );
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    alice.send_acked(1, 1, &[(10, "before")]).await;

    redis.kill();
    for round in 2..12 {
        alice.send_batch(round, 1, &[(10, "during")]).await;
        let error = alice.expect_error("unavailable").await;
        assert_eq!(error["time_key"], round);
        alice.send_json(json!({"type": "ack", "time_key": 7})).await;
        alice.expect_error("unknown_time_key").await;
    }
    assert!(counter(&courier, "courier_redis_refused_total").await > 0.0);

    redis.restart();
    Wait::new("courier to write the retried batch once Redis is back")
        .every(Duration::from_millis(100))
        .until(async || {
            alice.send_batch(2, 1, &[(10, "during")]).await;
            let frame = alice.recv_json().await;
            if frame["type"] != "ack" {
                assert_eq!(frame["code"], "unavailable", "{frame}");
            }
            frame["type"] == "ack"
        })
        .await;
    assert_eq!(redis.cmd::<u64>(&["XLEN", "inbox:{user:2}"]), 2);
}
