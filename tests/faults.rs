//! Delivery guarantees (DESIGN §4) under faults: ack timeouts, dead letters, Redis
//! restarts, courier crashes, two instances, slow and silent clients, shutdown,
//! housekeeping.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// `(delivery count, consumer)` of one pending entry, by stream id.
fn pending_entry(redis: &RedisServer, user: u64, device: &str) -> Vec<(String, String, u64)> {
    let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(format!("inbox:{{user:{user}}}"))
        .arg(device)
        .arg("-")
        .arg("+")
        .arg(100)
        .query(&mut redis.conn())
        .expect("XPENDING detail");
    reply
        .into_iter()
        .map(|(id, consumer, _, count)| (id, consumer, count))
        .collect()
}

#[tokio::test]
async fn unacked_batch_is_redelivered_after_the_ack_timeout_with_the_same_id() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_ACK_TIMEOUT_MS", "300")]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice.send_acked(1, 1, &[(10, "ack me")]).await;

    let first = bob.recv_batch().await;
    let again = bob.recv_batch().await;
    assert_eq!(ids(&again.messages), ids(&first.messages));
    assert!(again.time_key > first.time_key, "a new batch time_key");
    let pending = pending_entry(&redis, 2, "default");
    assert_eq!(pending.len(), 1);
    assert!(
        pending[0].2 >= 2,
        "Redis counts the redelivery: {pending:?}"
    );

    bob.ack(again.time_key).await;
    wait_for_pending(&redis, 2, "default", 0).await;
}

#[tokio::test]
async fn late_ack_of_a_redelivered_batch_still_acks_its_entries() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_ACK_TIMEOUT_MS", "300")]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice.send_acked(1, 1, &[(10, "slow ack")]).await;

    let first = bob.recv_batch().await;
    bob.recv_batch().await;
    bob.ack(first.time_key).await;
    wait_for_pending(&redis, 2, "default", 0).await;
}

#[tokio::test]
async fn entry_past_max_deliveries_is_dead_lettered_and_not_delivered_again() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_ACK_TIMEOUT_MS", "200"),
            ("COURIER_MAX_DELIVERIES", "3"),
        ],
    );
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice.send_acked(1, 1, &[(10, "poison")]).await;

    for _ in 0..3 {
        assert_eq!(texts(&bob.recv_batch().await.messages), ["poison"]);
    }
    wait_for("the dead letter", async || {
        redis.cmd::<u64>(&["XLEN", "dead:{user:2}"]) == 1
    })
    .await;
    wait_for_pending(&redis, 2, "default", 0).await;
    let dead: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("dead:{user:2}")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("XRANGE dead");
    let fields = &dead[0].1;
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].clone())
    };
    assert_eq!(field("content_text").as_deref(), Some("poison"));
    assert_eq!(field("deliveries").as_deref(), Some("3"));

    // Not delivered again: the next batch holds only the next message.
    alice.send_acked(2, 1, &[(10, "healthy")]).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["healthy"]);
}

#[tokio::test]
async fn redis_restart_keeps_clients_connected_and_loses_no_acked_send() {
    let mut redis = RedisServer::start_persistent();
    let courier = Courier::start(&redis.url(), &[("COURIER_REDIS_TIMEOUT_MS", "500")]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice.send_acked(1, 1, &[(10, "before")]).await;
    let before = bob.recv_batch().await;

    redis.kill();
    alice.send_batch(2, 1, &[(10, "during")]).await;
    alice.expect_error("unavailable").await;
    let (status, _) = http_get(courier.addr, "/readyz").await;
    assert_eq!(status, 503, "/readyz reflects the outage");

    // A message that reached the inbox while courier was cut off, with no wake-up:
    // appended to the AOF while Redis is down, so it is there when Redis comes back
    // and no PUBLISH ever announces it. Only the wake-up of every session after the
    // pub/sub reconnect delivers it (there is no safety poll).
    redis.append_to_aof(&[
        "XADD",
        "inbox:{user:2}",
        "*",
        "id",
        "999",
        "sender_id",
        "1",
        "chat_id",
        "10",
        "content_text",
        "written during the outage",
    ]);
    redis.restart();

    // bob is still connected; the unacked batch from before is still his to ack.
    let woken = bob.recv_batch().await;
    assert_eq!(texts(&woken.messages), ["written during the outage"]);
    bob.ack(before.time_key).await;
    bob.ack(woken.time_key).await;
    wait_for_pending(&redis, 2, "default", 0).await;

    Wait::new("courier to recover and ack the retried batch")
        .every(Duration::from_millis(50))
        .until(async || {
            alice.send_batch(2, 1, &[(10, "during")]).await;
            alice.recv_json().await == json!({"type": "ack", "time_key": 2})
        })
        .await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["during"]);
    assert_eq!(
        redis.cmd::<u64>(&["XLEN", "inbox:{user:2}"]),
        3,
        "before, injected, during: once each"
    );
}

#[tokio::test]
async fn killed_instance_is_replaced_and_every_acked_message_reaches_every_device() {
    let redis = RedisServer::start();
    redis.create_chat(10, &[1, 2]);
    let first = Courier::start(&redis.url(), &[]);
    let mut alice = first.connect(1).await;
    let mut phone = first.connect_device(2, "phone").await;
    let mut laptop = first.connect_device(2, "laptop").await;
    let mut sent = Vec::new();
    for n in 0..20 {
        let text = format!("m{n}");
        alice.send_acked(n, 1, &[(10, &text)]).await;
        sent.push(text);
    }
    // The phone acks some batches; the laptop holds everything in flight.
    let mut phone_acked = Vec::new();
    let batch = phone.recv_batch().await;
    phone.ack(batch.time_key).await;
    phone_acked.extend(texts(&batch.messages));
    wait_for_pending(&redis, 2, "phone", 20 - phone_acked.len() as u64).await;
    laptop.recv_batch().await;

    first.signal("KILL");
    let second = Courier::start(&redis.url(), &[]);
    for (device, acked) in [("phone", phone_acked), ("laptop", Vec::new())] {
        let mut client = second.connect_device(2, device).await;
        let rest = client.recv_and_ack(20 - acked.len()).await;
        let mut got = acked.clone();
        got.extend(texts(&rest));
        assert_eq!(
            got, sent,
            "device {device} gets every acked message once, in order"
        );
        wait_for_pending(&redis, 2, device, 0).await;
    }
}

#[tokio::test]
async fn two_instances_share_one_redis_and_a_device_can_move_between_them() {
    let redis = RedisServer::start();
    redis.create_chat(10, &[1, 2]);
    let east = Courier::start(&redis.url(), &[("COURIER_INSTANCE_ID", "east")]);
    let west = Courier::start(&redis.url(), &[("COURIER_INSTANCE_ID", "west")]);
    let mut alice = east.connect(1).await;
    let mut bob = west.connect(2).await;

    alice.send_acked(1, 1, &[(10, "across instances")]).await;
    let batch = bob.recv_batch().await;
    assert_eq!(texts(&batch.messages), ["across instances"]);
    bob.ack(batch.time_key).await;
    alice.send_acked(2, 1, &[(10, "unacked on west")]).await;
    bob.recv_batch().await;
    wait_for_pending(&redis, 2, "default", 1).await;
    assert!(
        pending_entry(&redis, 2, "default")[0]
            .1
            .starts_with("west-")
    );
    bob.close().await;

    let mut bob = east.connect(2).await;
    let moved = bob.recv_batch().await;
    assert_eq!(
        texts(&moved.messages),
        ["unacked on west"],
        "exactly the unacked entry"
    );
    assert!(
        pending_entry(&redis, 2, "default")[0]
            .1
            .starts_with("east-")
    );
}

#[tokio::test]
async fn client_that_stops_reading_is_dropped_and_its_entries_stay_pending() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_WRITE_TIMEOUT_MS", "300"),
            ("COURIER_MAX_INFLIGHT_BATCHES", "1000"),
            ("COURIER_MAX_TEXT_BYTES", "65536"),
            ("COURIER_BATCH_MAX", "10"),
        ],
    );
    redis.create_chat(10, &[1, 2]);
    let mut bob = courier.connect(2).await;
    let mut alice = courier.connect(1).await;
    let big = "x".repeat(65536);
    let mut n = 0;
    while !courier.log_text().contains("slow consumer") {
        alice.send_acked(n, 1, &[(10, big.as_str()); 10]).await;
        n += 1;
        assert!(n < 1000, "courier never gave up on the non-reading client");
    }
    assert!(
        bob.read_until_end().await,
        "the stalled connection was dropped"
    );
    let pending = redis.pending(2, "default");
    assert!(pending > 0, "what was in flight stays pending");
    let mut bob = courier.connect(2).await;
    let batch = bob.recv_batch().await;
    assert_eq!(
        batch.messages.len(),
        10,
        "the next connection gets the pending entries"
    );
}

#[tokio::test]
async fn silent_client_is_dropped_after_two_ping_intervals() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_PING_INTERVAL_MS", "200")]);
    let started = std::time::Instant::now();
    let mut bob = courier.connect(2).await;
    wait_for("the silent client to be dropped", async || {
        courier
            .log_text()
            .contains("no pong within two ping intervals")
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "dropped within a few intervals"
    );
    assert!(bob.read_until_end().await);
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_leaves_unacked_pending_and_exits_0() {
    let redis = RedisServer::start();
    let mut courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice
        .send_acked(1, 1, &[(10, "in flight at shutdown")])
        .await;
    bob.recv_batch().await;

    courier.signal("TERM");
    assert_eq!(bob.expect_close().await, Some(1001));
    assert_eq!(alice.expect_close().await, Some(1001));
    assert_eq!(courier.wait_exit(), Some(0));
    assert_eq!(
        redis.pending(2, "default"),
        1,
        "unacked stays pending, not acked, not lost"
    );
    assert_eq!(
        consumers(&redis, 1, "default"),
        0,
        "alice's empty consumer was deleted"
    );
    assert_eq!(
        consumers(&redis, 2, "default"),
        1,
        "bob's consumer keeps his pending entry"
    );
}

#[tokio::test]
async fn dead_consumers_are_claimed_then_deleted_and_trimmed_entries_are_skipped() {
    let redis = RedisServer::start();
    redis.create_chat(10, &[1, 2]);
    let first = Courier::start(&redis.url(), &[]);
    let mut alice = first.connect(1).await;
    let mut bob = first.connect(2).await;
    alice.send_acked(1, 1, &[(10, "a"), (10, "b")]).await;
    bob.recv_batch().await;
    first.signal("KILL");

    // The stream is trimmed under the pending entries.
    let _: u64 = redis.cmd(&["XTRIM", "inbox:{user:2}", "MAXLEN", "0"]);
    let second = Courier::start(&redis.url(), &[]);
    let mut alice = second.connect(1).await;
    let mut bob = second.connect(2).await;
    wait_for_pending(&redis, 2, "default", 0).await;
    alice.send_acked(2, 1, &[(10, "after trim")]).await;
    assert_eq!(
        texts(&bob.recv_batch().await.messages),
        ["after trim"],
        "delivery goes on"
    );

    // The dead instance's consumer, emptied by the claim, is deleted by a join (the
    // claiming one already: it deletes every other consumer left with nothing
    // pending).
    Wait::new("a join to delete the stale consumer")
        .every(Duration::from_millis(20))
        .until(async || {
            if consumers(&redis, 2, "default") <= 1 {
                return true;
            }
            second.connect_device(2, "default").await.close().await;
            false
        })
        .await;
    alice.send_acked(3, 1, &[(10, "still delivered")]).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["still delivered"]);
}
