//! The delivery path: consumer groups per device, batches, acks, reconnects.

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn offline_messages_are_delivered_on_connect() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    alice.send_acked(1, 1, &[(10, "while you were away")]).await;

    let mut bob = courier.connect(2).await;
    let batch = bob.recv_batch().await;
    assert_eq!(texts(&batch.messages), ["while you were away"]);
}

#[tokio::test]
async fn acked_batch_is_not_redelivered_after_reconnect() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;

    alice.send_acked(1, 1, &[(10, "first")]).await;
    assert_eq!(texts(&bob.recv_and_ack(1).await), ["first"]);
    wait_for_pending(&redis, 2, "default", 0).await;
    bob.close().await;

    alice.send_acked(2, 1, &[(10, "second")]).await;
    let mut bob = courier.connect(2).await;
    let batch = bob.recv_batch().await;
    assert_eq!(
        texts(&batch.messages),
        ["second"],
        "only what was not acked"
    );
}

#[tokio::test]
async fn unacked_entries_are_redelivered_after_reconnect_with_the_same_ids() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;

    alice.send_acked(1, 1, &[(10, "a"), (10, "b")]).await;
    let first = bob.recv_batch().await;
    assert_eq!(texts(&first.messages), ["a", "b"]);
    bob.close().await;

    let mut bob = courier.connect(2).await;
    let again = bob.recv_batch().await;
    assert_eq!(
        ids(&again.messages),
        ids(&first.messages),
        "same global ids on redelivery"
    );
    assert!(again.time_key != first.time_key || again.messages == first.messages);
    bob.ack(again.time_key).await;
    wait_for_pending(&redis, 2, "default", 0).await;
}

#[tokio::test]
async fn each_device_gets_every_message() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut phone = courier.connect_device(2, "phone").await;
    let mut laptop = courier.connect_device(2, "laptop").await;

    alice.send_acked(1, 1, &[(10, "to both")]).await;
    let on_phone = phone.recv_and_ack(1).await;
    let on_laptop = laptop.recv_and_ack(1).await;
    assert_eq!(on_phone, on_laptop);
    wait_for_pending(&redis, 2, "phone", 0).await;
    wait_for_pending(&redis, 2, "laptop", 0).await;

    // A device that acked does not hold back the other: its pending is its own.
    alice.send_acked(2, 1, &[(10, "again")]).await;
    assert_eq!(texts(&phone.recv_and_ack(1).await), ["again"]);
    let on_laptop = laptop.recv_batch().await;
    assert_eq!(texts(&on_laptop.messages), ["again"]);
    wait_for_pending(&redis, 2, "phone", 0).await;
    assert_eq!(
        redis.pending(2, "laptop"),
        1,
        "the laptop has not acked yet"
    );
}

#[tokio::test]
async fn messages_arrive_in_send_order_per_user_and_in_bounded_batches() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_BATCH_MAX", "3")]);
    redis.create_chat(10, &[1, 2]);
    redis.create_chat(11, &[3, 2]);
    let mut alice = courier.connect(1).await;
    let mut carol = courier.connect(3).await;
    for n in 0..4 {
        let a = format!("a{n}");
        let c = format!("c{n}");
        alice.send_acked(n, 1, &[(10, &a)]).await;
        carol.send_acked(n, 3, &[(11, &c)]).await;
    }

    let mut bob = courier.connect(2).await;
    let mut received = Vec::new();
    let mut last_time_key = 0;
    while received.len() < 8 {
        let batch = bob.recv_batch().await;
        assert!(
            batch.messages.len() <= 3,
            "at most COURIER_BATCH_MAX per batch"
        );
        assert!(
            batch.time_key > last_time_key,
            "time keys strictly increase"
        );
        last_time_key = batch.time_key;
        bob.ack(batch.time_key).await;
        received.extend(batch.messages);
    }
    let ids = ids(&received);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "stream order: {ids:?}");
    let order = texts(&received);
    assert_eq!(order.len(), 8);
    let expected: Vec<String> = (0..4)
        .flat_map(|n| [format!("a{n}"), format!("c{n}")])
        .collect();
    assert_eq!(order, expected, "the order the sends were acked in");
}

#[tokio::test]
async fn received_acks_the_oldest_unacked_batch() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_BATCH_MAX", "1")]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    alice.send_acked(1, 1, &[(10, "one")]).await;
    alice.send_acked(2, 1, &[(10, "two")]).await;

    let mut bob = courier.connect(2).await;
    let first = bob.recv_batch().await;
    let second = bob.recv_batch().await;
    assert_eq!(texts(&first.messages), ["one"]);
    assert_eq!(texts(&second.messages), ["two"]);
    bob.send_text("received").await;
    wait_for_pending(&redis, 2, "default", 1).await;
    bob.close().await;

    let mut bob = courier.connect(2).await;
    assert_eq!(
        texts(&bob.recv_batch().await.messages),
        ["two"],
        "only the newer batch is still pending"
    );
}

#[tokio::test]
async fn ack_of_an_unknown_or_already_acked_time_key_is_an_error() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    alice.send_acked(1, 1, &[(10, "x")]).await;
    let mut bob = courier.connect(2).await;
    let batch = bob.recv_batch().await;
    bob.ack(batch.time_key).await;
    bob.ack(batch.time_key).await;
    let error = bob.expect_error("unknown_time_key").await;
    assert_eq!(error["time_key"], json!(batch.time_key));
}

#[tokio::test]
async fn unacked_batches_in_flight_are_bounded() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_BATCH_MAX", "1"),
            ("COURIER_MAX_INFLIGHT_BATCHES", "2"),
        ],
    );
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    for n in 0..3 {
        alice.send_acked(n, 1, &[(10, &format!("m{n}"))]).await;
    }
    let mut bob = courier.connect(2).await;
    let first = bob.recv_batch().await;
    let second = bob.recv_batch().await;
    // The third is held back until an ack frees a slot: acking the first releases it.
    assert_eq!(
        redis.pending(2, "default"),
        2,
        "only two batches were read from Redis"
    );
    bob.ack(first.time_key).await;
    let third = bob.recv_batch().await;
    assert_eq!(
        texts(&[first.messages, second.messages, third.messages].concat()),
        ["m0", "m1", "m2"]
    );
}

#[tokio::test]
async fn consumer_is_deleted_when_its_connection_ends_with_nothing_pending() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let bob = courier.connect(2).await;
    assert_eq!(
        consumers(&redis, 2, "default"),
        1,
        "one consumer per connection"
    );
    bob.close().await;
    wait_for("the idle consumer to be deleted", async || {
        consumers(&redis, 2, "default") == 0
    })
    .await;

    let mut alice = courier.connect(1).await;
    alice.send_acked(1, 1, &[(10, "keep me")]).await;
    let mut bob = courier.connect(2).await;
    bob.recv_batch().await;
    bob.close().await;
    // A consumer with pending entries stays until the next connection claims them.
    let mut bob = courier.connect(2).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["keep me"]);
    assert_eq!(redis.pending(2, "default"), 1, "claimed, not duplicated");
}

#[tokio::test]
async fn concurrent_connections_of_two_users_each_get_their_own_messages_only() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    redis.create_chat(20, &[3, 4]);
    let mut alice = courier.connect(1).await;
    let mut carol = courier.connect(3).await;
    let mut bob = courier.connect(2).await;
    let mut dave = courier.connect(4).await;
    alice.send_acked(1, 1, &[(10, "for bob")]).await;
    carol.send_acked(1, 3, &[(20, "for dave")]).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["for bob"]);
    assert_eq!(texts(&dave.recv_batch().await.messages), ["for dave"]);
}

/// A safety poll that never fires during a test (after its first, immediate tick):
/// whatever is delivered was read because of a wake-up, a full read or an ack.
const NO_POLL: (&str, &str) = ("COURIER_POLL_INTERVAL_MS", "600000");

/// XREADGROUPs of new entries courier has completed so far (its `read_new` operation).
async fn inbox_reads(courier: &Courier) -> u64 {
    let (status, text) = http_get(courier.addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics");
    text.lines()
        .find_map(|line| {
            line.strip_prefix("courier_redis_command_seconds_count{command=\"read_new\"} ")
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_ack_does_not_read_the_inbox_again_unless_something_may_be_waiting() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[NO_POLL]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    // Once this round is delivered, both connections' start-up reads are done.
    alice.send_acked(0, 1, &[(10, "warm-up")]).await;
    bob.recv_and_ack(1).await;
    wait_for_pending(&redis, 2, "default", 0).await;
    let before = inbox_reads(&courier).await;

    const ROUNDS: u64 = 20;
    for n in 1..=ROUNDS {
        alice
            .send_acked(n as i64, 1, &[(10, &format!("m{n}"))])
            .await;
        assert_eq!(texts(&bob.recv_and_ack(1).await), [format!("m{n}")]);
    }
    wait_for_pending(&redis, 2, "default", 0).await;

    let reads = inbox_reads(&courier).await - before;
    assert!(
        reads <= ROUNDS + 2,
        "{reads} inbox reads for {ROUNDS} delivered batches: one per wake-up, none per ack"
    );
}

#[tokio::test]
async fn a_full_read_is_followed_by_another_after_the_ack_without_a_wake_up() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            NO_POLL,
            ("COURIER_BATCH_MAX", "2"),
            ("COURIER_MAX_INFLIGHT_BATCHES", "1"),
        ],
    );
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice.send_acked(1, 1, &[(10, "warm-up")]).await;
    bob.recv_and_ack(1).await;
    // Five entries and a single wake-up (as an operator could write them): only the
    // full reads say that more may remain. They are written in one MULTI, so that a
    // read still due from the warm-up's wake-up finds none or all of them.
    let mut entries = redis::pipe();
    entries.atomic();
    for (id, text) in [(101, "a"), (102, "b"), (103, "c"), (104, "d"), (105, "e")] {
        let id = id.to_string();
        let fields = [
            "id",
            &id,
            "sender_id",
            "1",
            "chat_id",
            "10",
            "content_text",
            text,
        ];
        entries.add_command(command(
            &[&["XADD", "inbox:{user:2}", "*"][..], &fields].concat(),
        ));
    }
    let _: redis::Value = entries
        .query(&mut redis.conn())
        .expect("XADD the five entries");
    redis.notify(2);

    let mut received = Vec::new();
    for expected in [2, 2, 1] {
        let batch = bob.recv_batch().await;
        assert_eq!(batch.messages.len(), expected, "batches of at most 2");
        bob.ack(batch.time_key).await;
        received.extend(batch.messages);
    }
    assert_eq!(texts(&received), ["a", "b", "c", "d", "e"]);
}

#[tokio::test]
async fn a_wake_up_while_the_window_is_full_is_served_after_the_ack() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[NO_POLL, ("COURIER_MAX_INFLIGHT_BATCHES", "1")],
    );
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice.send_acked(1, 1, &[(10, "first")]).await;
    let first = bob.recv_batch().await;
    // Published before this ack returns, so bob is woken while his window is full.
    alice.send_acked(2, 1, &[(10, "second")]).await;

    bob.ack(first.time_key).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["second"]);
}

#[tokio::test]
async fn sends_racing_reads_and_acks_are_all_delivered_without_the_safety_poll() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[NO_POLL]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    const SENDS: usize = 100;
    let texts_sent: Vec<String> = (0..SENDS).map(|n| format!("m{n}")).collect();

    let send_all = async {
        for (n, text) in texts_sent.iter().enumerate() {
            alice.send_batch(n as i64, 1, &[(10, text)]).await;
        }
        for _ in 0..SENDS {
            assert_eq!(alice.recv_json().await["type"], "ack");
        }
    };
    let (_, received) = tokio::join!(send_all, bob.recv_and_ack(SENDS));

    assert_eq!(
        texts(&received),
        texts_sent,
        "every message, once, in order"
    );
    wait_for_pending(&redis, 2, "default", 0).await;
}
