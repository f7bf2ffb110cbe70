//! A bounded soak: several senders and receivers, random disconnects and a Redis
//! restart in the middle; then every receiver must hold every acked message (zero
//! loss) and never see a message again after acking it (zero duplicates after ack).

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

const SENDERS: [u64; 2] = [1, 2];
const RECEIVERS: [u64; 3] = [3, 4, 5];
const CHAT: u64 = 10;
const SEND_PHASE: Duration = Duration::from_secs(12);

/// A small deterministic generator, seeded per task, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Sends batches until the phase ends, retrying `unavailable` with the same
/// time_key; returns the texts whose batch was acked.
async fn sender(url: String, user: u64, seed: u64) -> Vec<String> {
    let mut rng = XorShift(seed);
    let mut acked = Vec::new();
    let deadline = Instant::now() + SEND_PHASE;
    let mut client = WsClient::connect_with_header(&url, "token", &token(user))
        .await
        .expect("connect");
    let mut time_key = 0i64;
    while Instant::now() < deadline {
        time_key += 1;
        let size = 1 + rng.next() % 3;
        let texts: Vec<String> = (0..size)
            .map(|i| format!("u{user}-b{time_key}-m{i}"))
            .collect();
        let messages: Vec<Value> = texts
            .iter()
            .map(|t| json!({"sender_id": user, "chat_id": CHAT, "content_text": t}))
            .collect();
        let batch = json!({"type": "messages", "time_key": time_key, "messages": messages});
        loop {
            client.send_json(batch.clone()).await;
            let reply = reply_to(&mut client, time_key).await;
            if reply["type"] == "ack" {
                acked.extend(texts.iter().cloned());
                break;
            }
            assert_eq!(
                reply["code"], "unavailable",
                "only outages may refuse a batch: {reply}"
            );
            // The client's pause before it retries, and below its sending pace: the
            // traffic, not waits.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next() % 20)).await;
    }
    acked
}

/// The ack or error for `time_key`. Senders are chat members too: deliveries that
/// come meanwhile are acked (an outage may refuse such an ack; the ack timeout then
/// settles it), and errors about them are skipped.
async fn reply_to(client: &mut WsClient, time_key: i64) -> Value {
    loop {
        let frame = client.recv_json().await;
        if frame["time_key"] == time_key {
            return frame;
        }
        if frame["type"] == "messages" {
            client
                .ack(frame["time_key"].as_u64().expect("time_key"))
                .await;
        }
    }
}

/// What one receiver saw.
#[derive(Default)]
struct Seen {
    received: HashSet<String>,
    /// Messages received again before being acked (reconnects, ack timeouts).
    redelivered: usize,
    acked: HashSet<String>,
    duplicates_after_ack: Vec<String>,
}

/// Receives until told to stop, acking most batches and sometimes dropping the
/// connection with a batch unacked.
///
/// An ack counts from when it is sent, unless courier answers it with an error:
/// courier handles a connection's frames in order, so such an error arrives before
/// any later batch, and a reconnect only happens after a clean close.
async fn receiver(
    url: String,
    user: u64,
    seed: u64,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut rng = XorShift(seed);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let mut client = match WsClient::connect_with_header(&url, "token", &token(user)).await {
            Ok(client) => client,
            Err(refusal) => {
                assert_eq!(refusal.status, 503, "{refusal:?}");
                // The client's pause before it reconnects.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut acks: HashMap<u64, Vec<String>> = HashMap::new();
        loop {
            let frame = tokio::select! {
                _ = &mut stopped => return,
                frame = client.recv_json() => frame,
            };
            if frame["type"] == "error" {
                assert_eq!(frame["code"], "unavailable", "{frame}");
                let refused = frame["time_key"].as_u64().and_then(|tk| acks.remove(&tk));
                let mut seen = seen.lock().expect("lock");
                for text in refused.unwrap_or_default() {
                    seen.acked.remove(&text);
                }
                continue;
            }
            assert_eq!(frame["type"], "messages", "{frame}");
            let texts = texts(frame["messages"].as_array().expect("messages"));
            {
                let mut seen = seen.lock().expect("lock");
                for text in &texts {
                    if seen.acked.contains(text) {
                        seen.duplicates_after_ack.push(text.clone());
                    }
                    if !seen.received.insert(text.clone()) {
                        seen.redelivered += 1;
                    }
                }
            }
            if rng.chance(10) {
                break;
            }
            let time_key = frame["time_key"].as_u64().expect("time_key");
            client.ack(time_key).await;
            seen.lock()
                .expect("lock")
                .acked
                .extend(texts.iter().cloned());
            acks.insert(time_key, texts);
        }
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_disconnects_and_a_redis_restart_lose_nothing_and_duplicate_nothing_after_ack() {
    let mut redis = RedisServer::start_persistent();
    redis.create_chat(CHAT, &[SENDERS.as_slice(), RECEIVERS.as_slice()].concat());
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_REDIS_TIMEOUT_MS", "500"),
            ("COURIER_ACK_TIMEOUT_MS", "2000"),
            // Senders here run at ~100 batches/s plus the acks of what they receive:
            // above the default per-connection frame limit on an idle machine, and
            // this test is about loss and duplicates, not rate limiting.
            ("COURIER_RATE_LIMIT_FPS", "1000"),
        ],
    );
    let url = courier.ws_url();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("soak seed {seed}");

    let stop = Arc::new(tokio::sync::Notify::new());
    let mut seen: HashMap<u64, Arc<Mutex<Seen>>> = HashMap::new();
    let mut receivers = Vec::new();
    for user in RECEIVERS {
        let state = Arc::new(Mutex::new(Seen::default()));
        seen.insert(user, state.clone());
        receivers.push(tokio::spawn(receiver(
            url.clone(),
            user,
            seed ^ user,
            state,
            stop.clone(),
        )));
    }
    let senders: Vec<_> = SENDERS
        .iter()
        .map(|&user| tokio::spawn(sender(url.clone(), user, seed ^ (user << 8))))
        .collect();

    // Durations under test: the outage comes a third into the traffic and lasts half
    // a second.
    tokio::time::sleep(SEND_PHASE / 3).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();

    let mut sent = HashSet::new();
    for task in senders {
        sent.extend(task.await.expect("sender task"));
    }
    assert!(
        sent.len() > 100,
        "enough traffic to mean something: {}",
        sent.len()
    );

    // Drain: every receiver must end up holding every acked send.
    for user in RECEIVERS {
        Wait::new(&format!(
            "user {user} to hold every acked message after the drain"
        ))
        .within(Duration::from_secs(30))
        .every(Duration::from_millis(50))
        .until(async || sent.is_subset(&seen[&user].lock().expect("lock").received))
        .await;
    }
    stop.notify_waiters();
    for task in receivers {
        task.await.expect("receiver task");
    }
    for user in RECEIVERS {
        let seen = seen[&user].lock().expect("lock");
        assert!(
            seen.duplicates_after_ack.is_empty(),
            "user {user} got acked messages again: {:?}",
            seen.duplicates_after_ack
        );
        println!(
            "user {user}: {} sent and acked, {} received, {} redelivered before ack, \
             {} acked, 0 duplicates after ack",
            sent.len(),
            seen.received.len(),
            seen.redelivered,
            seen.acked.len()
        );
    }
}
