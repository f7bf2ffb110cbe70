//! The send path: validation, fan-out, atomic writes, dedup, acks.

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn message_fans_out_to_every_member_but_the_sender_with_one_global_id() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2, 3]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    let mut carol = courier.connect(3).await;

    alice.send_acked(7, 1, &[(10, "hi")]).await;

    let to_bob = bob.recv_batch().await;
    let to_carol = carol.recv_batch().await;
    assert_eq!(
        to_bob.messages, to_carol.messages,
        "same message, same id at every recipient"
    );
    let message = &to_bob.messages[0];
    assert_eq!(message["sender_id"], 1);
    assert_eq!(message["chat_id"], 10);
    assert_eq!(message["content_text"], "hi");
    assert!(message["id"].as_u64().is_some());
    assert_eq!(
        redis.cmd::<u64>(&["XLEN", "inbox:{user:1}"]),
        0,
        "the sender gets no copy"
    );
}

#[tokio::test]
async fn ack_comes_after_the_stream_entry_and_legacy_list_are_written() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;

    alice.send_acked(1, 1, &[(10, "one"), (10, "two")]).await;

    assert_eq!(redis.cmd::<u64>(&["XLEN", "inbox:{user:2}"]), 2);
    let legacy: Vec<String> = redis.cmd(&["LRANGE", "user:2", "0", "-1"]);
    let legacy: Vec<serde_json::Value> = legacy
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(
        legacy,
        vec![
            json!({"sender_id": 1, "chat_id": 10, "content_text": "one"}),
            json!({"sender_id": 1, "chat_id": 10, "content_text": "two"}),
        ]
    );
    // The batch took two consecutive ids, the counter's last two, which never fall
    // below the clock in microseconds (and stay below 2^53).
    let last: u64 = redis.cmd(&["GET", "message:last_id"]);
    let entries: Vec<(String, Vec<String>)> = redis.cmd(&["XRANGE", "inbox:{user:2}", "-", "+"]);
    let ids: Vec<&str> = entries
        .iter()
        .map(|(_, fields)| fields[1].as_str())
        .collect();
    assert_eq!(ids, [(last - 1).to_string(), last.to_string()]);
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    assert!(
        last > now_micros - 60_000_000 && last < 1 << 53,
        "ids start from the clock: {last} vs {now_micros}"
    );
    let ttl: i64 = redis.cmd(&["TTL", "dedup:{user:1}:1"]);
    assert!(
        ttl > 0 && ttl <= 300,
        "dedup record expires within the window (ttl {ttl})"
    );
}

#[tokio::test]
async fn resent_time_key_is_acked_again_and_writes_nothing() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;

    alice.send_acked(42, 1, &[(10, "once")]).await;
    let last: u64 = redis.cmd(&["GET", "message:last_id"]);
    alice.send_acked(42, 1, &[(10, "once")]).await;

    assert_eq!(redis.cmd::<u64>(&["XLEN", "inbox:{user:2}"]), 1);
    assert_eq!(redis.cmd::<u64>(&["LLEN", "user:2"]), 1);
    assert_eq!(redis.cmd::<u64>(&["GET", "message:last_id"]), last);
}

#[tokio::test]
async fn a_batch_with_one_bad_message_writes_nothing() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    redis.create_chat(11, &[2, 3]);
    let mut alice = courier.connect(1).await;

    alice
        .send_batch(5, 1, &[(10, "fine"), (11, "not my chat")])
        .await;
    let error = alice.expect_error("not_a_member").await;
    assert_eq!(error["time_key"], 5);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("chat 11")),
        "{error}"
    );

    alice
        .send_batch(6, 1, &[(10, "fine"), (10, &"x".repeat(4097))])
        .await;
    alice.expect_error("invalid_frame").await;

    alice
        .send_json(json!({"type": "messages", "time_key": 7, "messages": [
        {"sender_id": 1, "chat_id": 10, "content_text": "fine"},
        {"sender_id": 2, "chat_id": 10, "content_text": "impersonation"}]}))
        .await;
    let error = alice.expect_error("sender_mismatch").await;
    assert_eq!(error["time_key"], 7);

    assert_eq!(
        redis.cmd::<u64>(&["EXISTS", "inbox:{user:2}"]),
        0,
        "nothing written"
    );
    assert_eq!(
        redis.cmd::<u64>(&["EXISTS", "user:2"]),
        0,
        "nothing written"
    );
    assert_eq!(
        redis.cmd::<u64>(&["EXISTS", "message:last_id"]),
        0,
        "no id allocated"
    );
}

#[tokio::test]
async fn sender_may_receive_its_own_messages_when_configured() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_DELIVER_TO_SENDER", "true")]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;

    alice.send_acked(1, 1, &[(10, "echo")]).await;
    let batch = alice.recv_batch().await;
    assert_eq!(texts(&batch.messages), ["echo"]);
}

#[tokio::test]
async fn batch_limits_are_enforced() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[("COURIER_BATCH_MAX", "2"), ("COURIER_MAX_TEXT_BYTES", "3")],
    );
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;

    alice
        .send_batch(1, 1, &[(10, "a"), (10, "b"), (10, "c")])
        .await;
    let error = alice.expect_error("invalid_frame").await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many")),
        "{error}"
    );
    alice.send_batch(2, 1, &[(10, "four")]).await;
    alice.expect_error("invalid_frame").await;
    alice.send_batch(3, 1, &[]).await;
    alice.expect_error("invalid_frame").await;
    alice.send_acked(4, 1, &[(10, "abc"), (10, "d")]).await;
}

#[tokio::test]
async fn redis_down_answers_unavailable_and_the_retry_is_written_once() {
    let mut redis = RedisServer::start_persistent();
    let courier = Courier::start(&redis.url(), &[("COURIER_REDIS_TIMEOUT_MS", "500")]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;

    redis.kill();
    alice.send_batch(9, 1, &[(10, "during outage")]).await;
    let error = alice.expect_error("unavailable").await;
    assert_eq!(error["time_key"], 9);

    redis.restart();
    Wait::new("redis to come back for courier")
        .every(std::time::Duration::from_millis(100))
        .until(async || {
            alice.send_batch(9, 1, &[(10, "during outage")]).await;
            let frame = alice.recv_json().await;
            if frame["type"] != "ack" {
                assert_eq!(frame["code"], "unavailable", "{frame}");
            }
            frame["type"] == "ack"
        })
        .await;
    assert_eq!(redis.cmd::<u64>(&["XLEN", "inbox:{user:2}"]), 1);
}
