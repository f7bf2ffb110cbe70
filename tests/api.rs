//! The HTTP API for backends and operators: publish (auth, validation, fan-out,
//! dedup, errors), the pending summary, and dead-letter replay.

mod support;

use redis::streams::{StreamInfoConsumersReply, StreamPendingCountReply};
use serde_json::{Value, json};
use support::*;

const API_KEY: &str = "test-api-key-0123456789";

fn start(redis: &RedisServer) -> Courier {
    Courier::start(&redis.url(), &[("COURIER_API_KEY", API_KEY)])
}

/// Redis, a courier with the API key, and chat 10 of users 1 and 2.
fn setup() -> (RedisServer, Courier) {
    let redis = RedisServer::start();
    let courier = start(&redis);
    redis.create_chat(10, &[1, 2]);
    (redis, courier)
}

/// An API request with `Authorization: Bearer <credential>` when given; returns the
/// status and the JSON body.
async fn call(
    courier: &Courier,
    method: &str,
    path: &str,
    credential: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let authorization = credential.map(|c| format!("Bearer {c}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|a| vec![("Authorization", a), ("Content-Type", "application/json")])
        .unwrap_or_default();
    let (status, text) = http_request(courier.addr, method, path, &headers, body).await;
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {text:?}"));
    (status, body)
}

async fn publish(courier: &Courier, body: Value) -> (u16, Value) {
    call(
        courier,
        "POST",
        "/api/v1/messages",
        Some(API_KEY),
        &body.to_string(),
    )
    .await
}

async fn pending_summary(courier: &Courier, user: u64) -> (u16, Value) {
    let path = format!("/api/v1/users/{user}/pending");
    call(courier, "GET", &path, Some(API_KEY), "").await
}

async fn replay(courier: &Courier, user: u64) -> (u16, Value) {
    let path = format!("/api/v1/users/{user}/dead-letters/replay");
    call(courier, "POST", &path, Some(API_KEY), "").await
}

fn message(sender: u64, chat: u64, text: &str) -> Value {
    json!({"sender_id": sender, "chat_id": chat, "content_text": text})
}

fn assert_error(reply: &(u16, Value), status: u16, code: &str) {
    assert_eq!(reply.0, status, "status of {}", reply.1);
    assert_eq!(reply.1["error"], code, "error code in {}", reply.1);
    assert!(
        reply.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error has a message: {}",
        reply.1
    );
}

fn nothing_written(redis: &RedisServer) {
    assert_eq!(
        redis.cmd::<Option<u64>>(&["GET", "message:last_id"]),
        None,
        "no message id was allocated"
    );
}

#[tokio::test]
async fn backend_publish_is_delivered_to_a_connected_client() {
    let (redis, courier) = setup();
    let mut bob = courier.connect(2).await;

    let (status, body) = publish(
        &courier,
        json!({"time_key": 5, "messages": [message(1, 10, "from the backend")]}),
    )
    .await;

    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["time_key"], 5);
    assert_eq!(body["count"], 1);
    let first_id = body["first_id"].as_u64().expect("first_id");
    let delivered = bob.recv_batch().await;
    assert_eq!(
        delivered.messages,
        vec![
            json!({"id": first_id, "sender_id": 1, "chat_id": 10, "content_text": "from the backend"})
        ]
    );
    assert_eq!(redis.cmd::<u64>(&["LLEN", "user:2"]), 1, "legacy list too");
    assert_eq!(
        redis.xlen("inbox:{user:1}"),
        0,
        "the sender gets no copy, as over /ws"
    );
}

#[tokio::test]
async fn service_token_may_publish_and_user_token_may_not() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let body = json!({"messages": [message(1, 10, "hi")]}).to_string();
    let exp = jsonwebtoken::get_current_timestamp() + 60;
    let service = token_with(json!({"service": "billing", "exp": exp}));

    let accepted = call(&courier, "POST", "/api/v1/messages", Some(&service), &body).await;
    assert_eq!(accepted.0, 202, "{}", accepted.1);

    let user = call(&courier, "POST", "/api/v1/messages", Some(&token(1)), &body).await;
    assert_error(&user, 401, "unauthorized");
    let expired = token_with(json!({"service": "billing", "exp": exp - 120}));
    let expired = call(&courier, "POST", "/api/v1/messages", Some(&expired), &body).await;
    assert_error(&expired, 401, "unauthorized");
    assert_eq!(redis.xlen("inbox:{user:2}"), 1);
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_401_and_write_nothing() {
    let redis = RedisServer::start();
    let courier = start(&redis);
    let without_key = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let body = json!({"messages": [message(1, 10, "hi")]}).to_string();
    let post = |courier, credential| call(courier, "POST", "/api/v1/messages", credential, &body);

    assert_error(&post(&courier, None).await, 401, "unauthorized");
    assert_error(
        &post(&courier, Some("test-api-key-0123456780")).await,
        401,
        "unauthorized",
    );
    assert_error(&post(&courier, Some("")).await, 401, "unauthorized");
    assert_error(
        &post(&without_key, Some(API_KEY)).await,
        401,
        "unauthorized",
    );
    let (status, _) = http_request(
        courier.addr,
        "POST",
        "/api/v1/messages",
        &[("Authorization", &format!("Basic {API_KEY}"))],
        &body,
    )
    .await;
    assert_eq!(status, 401, "only the Bearer scheme");
    nothing_written(&redis);
}

#[tokio::test]
async fn same_time_key_is_written_once_and_answered_as_duplicate() {
    let (redis, courier) = setup();
    let body = json!({"time_key": 42, "messages": [message(1, 10, "a"), message(1, 10, "b")]});

    let first = publish(&courier, body.clone()).await;
    let again = publish(&courier, body).await;

    assert_eq!((first.0, &first.1["status"]), (202, &json!("accepted")));
    assert_eq!((again.0, &again.1["status"]), (202, &json!("duplicate")));
    assert_eq!(again.1["first_id"], first.1["first_id"], "same answer");
    assert_eq!(again.1["count"], 2);
    assert_eq!(redis.xlen("inbox:{user:2}"), 2);

    let mut alice = courier.connect(1).await;
    alice.send_acked(42, 1, &[(10, "c")]).await;
    assert_eq!(
        redis.xlen("inbox:{user:2}"),
        2,
        "the sender's WebSocket batches share the dedup window"
    );
}

#[tokio::test]
async fn requests_without_time_key_are_never_deduplicated() {
    let (redis, courier) = setup();
    let body = json!({"messages": [message(1, 10, "same")]});

    let first = publish(&courier, body.clone()).await;
    let second = publish(&courier, body).await;

    assert_eq!((first.0, second.0), (202, 202));
    let keys = [&first.1["time_key"], &second.1["time_key"]];
    assert!(
        keys.iter().all(|k| k.as_u64().is_some_and(|k| k < 1 << 53)),
        "generated time keys are safe integers: {keys:?}"
    );
    assert_ne!(keys[0], keys[1]);
    assert_eq!(redis.xlen("inbox:{user:2}"), 2);
}

#[tokio::test]
async fn malformed_bodies_are_400_and_write_nothing() {
    let (redis, courier) = setup();
    let post = |body: &'static str| call(&courier, "POST", "/api/v1/messages", Some(API_KEY), body);

    assert_error(&post("{\"messages\": [").await, 400, "invalid_json");
    let typo =
        post(r#"{"time_key":3,"messages":[{"sender_id":1,"chat_id":10,"content_txt":"x"}]}"#).await;
    assert_error(&typo, 400, "invalid_frame");
    assert!(
        typo.1["message"]
            .as_str()
            .unwrap_or_default()
            .contains("content_txt"),
        "names the field: {}",
        typo.1
    );
    assert_error(&post(r#"{"messages":[]}"#).await, 400, "invalid_frame");
    let two_senders = post(
        r#"{"time_key":8,"messages":[{"sender_id":1,"chat_id":10,"content_text":"a"},{"sender_id":2,"chat_id":10,"content_text":"b"}]}"#,
    )
    .await;
    assert_error(&two_senders, 400, "invalid_frame");
    assert_eq!(two_senders.1["time_key"], 8, "names the batch");
    nothing_written(&redis);
}

#[tokio::test]
async fn sender_outside_the_chat_is_403_not_a_member() {
    let (redis, courier) = setup();

    let reply = publish(
        &courier,
        json!({"time_key": 9, "messages": [message(1, 10, "ok"), message(1, 11, "no")]}),
    )
    .await;

    assert_error(&reply, 403, "not_a_member");
    assert_eq!(reply.1["time_key"], 9);
    nothing_written(&redis);
}

#[tokio::test]
async fn body_over_the_frame_limit_is_413() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_API_KEY", API_KEY),
            ("COURIER_MAX_FRAME_BYTES", "1024"),
        ],
    );
    redis.create_chat(10, &[1, 2]);

    let reply = publish(
        &courier,
        json!({"messages": [message(1, 10, &"x".repeat(2000))]}),
    )
    .await;

    assert_error(&reply, 413, "body_too_large");
    nothing_written(&redis);
}

#[tokio::test]
async fn redis_down_is_503_unavailable() {
    let mut redis = RedisServer::start();
    let courier = start(&redis);
    redis.create_chat(10, &[1, 2]);
    redis.kill();

    let reply = publish(&courier, json!({"messages": [message(1, 10, "hi")]})).await;
    assert_error(&reply, 503, "unavailable");
    let pending = pending_summary(&courier, 2).await;
    assert_error(&pending, 503, "unavailable");
}

#[tokio::test]
async fn pending_summary_matches_xpending_and_xinfo() {
    let (redis, courier) = setup();
    let mut phone = courier.connect_device(2, "phone").await;
    let mut laptop = courier.connect_device(2, "laptop").await;
    let texts = ["one", "two", "three"].map(|t| message(1, 10, t));
    assert_eq!(publish(&courier, json!({"messages": texts})).await.0, 202);
    phone.recv_messages(3).await;
    laptop.recv_and_ack(3).await;
    wait_for("laptop's ack applied", async || {
        redis.pending(2, "laptop") == 0
    })
    .await;

    let (status, summary) = pending_summary(&courier, 2).await;

    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["user_id"], 2);
    assert_eq!(summary["inbox_length"], redis.xlen("inbox:{user:2}"));
    assert_eq!(summary["dead_letters"], 0);
    let devices = summary["devices"].as_array().expect("devices");
    let mut names: Vec<&str> = devices
        .iter()
        .filter_map(|d| d["device"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["laptop", "phone"]);
    for device in devices {
        let name = device["device"].as_str().expect("device name");
        assert_eq!(
            device["pending"],
            redis.pending(2, name),
            "{name}: XPENDING count"
        );
        let oldest: StreamPendingCountReply =
            redis.cmd(&["XPENDING", "inbox:{user:2}", name, "-", "+", "1"]);
        match oldest.ids.first() {
            None => assert_eq!(device["oldest_pending"], Value::Null, "{name}"),
            Some(entry) => {
                let shown = &device["oldest_pending"];
                assert_eq!(shown["id"], entry.id.as_str(), "{name}: oldest id");
                assert_eq!(shown["consumer"], entry.consumer.as_str());
                assert_eq!(shown["deliveries"], entry.times_delivered as u64);
                let idle = shown["idle_ms"].as_u64().expect("idle_ms");
                assert!(idle < 60_000, "{name}: idle {idle} ms");
            }
        }
        let consumers: StreamInfoConsumersReply =
            redis.cmd(&["XINFO", "CONSUMERS", "inbox:{user:2}", name]);
        let shown: Vec<(&str, u64)> = device["consumers"]
            .as_array()
            .expect("consumers")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default(),
                    c["pending"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        let expected: Vec<(&str, u64)> = consumers
            .consumers
            .iter()
            .map(|c| (c.name.as_str(), c.pending as u64))
            .collect();
        assert_eq!(shown, expected, "{name}: XINFO CONSUMERS");
    }
    let phone_summary = devices
        .iter()
        .find(|d| d["device"] == "phone")
        .expect("phone");
    assert_eq!(phone_summary["pending"], 3, "phone did not ack");

    let (status, nobody) = pending_summary(&courier, 99).await;
    assert_eq!(status, 200);
    assert_eq!(
        nobody,
        json!({"user_id": 99, "inbox_length": 0, "dead_letters": 0, "devices": []})
    );
}

/// Writes a dead letter the way `dead_letter.lua` does: the inbox entry's fields plus
/// `deliveries`.
fn add_dead_letter(redis: &RedisServer, user: u64, id: u64, text: &str) {
    let key = format!("dead:{{user:{user}}}");
    let id = id.to_string();
    let _: String = redis.cmd(&[
        "XADD",
        &key,
        "*",
        "id",
        &id,
        "sender_id",
        "1",
        "chat_id",
        "10",
        "content_text",
        text,
        "deliveries",
        "10",
    ]);
}

#[tokio::test]
async fn replayed_dead_letters_are_delivered_again() {
    let (redis, courier) = setup();
    let mut bob = courier.connect(2).await;
    add_dead_letter(&redis, 2, 7, "lost");

    let (status, body) = replay(&courier, 2).await;

    assert_eq!((status, body), (200, json!({"user_id": 2, "replayed": 1})));
    let delivered = bob.recv_and_ack(1).await;
    assert_eq!(
        delivered,
        vec![json!({"id": 7, "sender_id": 1, "chat_id": 10, "content_text": "lost"})],
        "the original id, so clients can deduplicate"
    );
    assert_eq!(redis.xlen("dead:{user:2}"), 0);
    let entries: Vec<(String, Vec<String>)> = {
        let reply: redis::streams::StreamRangeReply =
            redis.cmd(&["XRANGE", "inbox:{user:2}", "-", "+"]);
        reply
            .ids
            .into_iter()
            .map(|e| (e.id, e.map.into_keys().collect()))
            .collect()
    };
    assert_eq!(entries.len(), 1);
    assert!(
        !entries[0].1.contains(&"deliveries".to_string()),
        "deliveries is dropped: {entries:?}"
    );
    let again = replay(&courier, 2).await;
    assert_eq!(again.1["replayed"], 0, "nothing left to replay");
}

#[tokio::test]
async fn replay_moves_every_dead_letter_across_chunks() {
    let redis = RedisServer::start();
    let courier = start(&redis);
    let mut pipe = redis::pipe();
    for id in 1..=1201 {
        pipe.cmd("XADD")
            .arg("dead:{user:3}")
            .arg("*")
            .arg(&["id", &id.to_string(), "sender_id", "1", "chat_id", "10"])
            .arg(&["content_text", "x", "deliveries", "10"])
            .ignore();
    }
    let _: () = pipe.query(&mut redis.conn()).expect("seed dead letters");
    let _: String = redis.cmd(&["XADD", "dead:{user:3}", "*", "deliveries", "10"]);

    let (status, body) = replay(&courier, 3).await;

    assert_eq!(
        (status, body),
        (200, json!({"user_id": 3, "replayed": 1201}))
    );
    assert_eq!(redis.xlen("inbox:{user:3}"), 1201);
    assert_eq!(
        redis.xlen("dead:{user:3}"),
        1,
        "an entry with nothing but `deliveries` stays"
    );
}

#[tokio::test]
async fn poison_message_is_dead_lettered_after_max_deliveries_then_replayed_end_to_end() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_API_KEY", API_KEY),
            ("COURIER_ACK_TIMEOUT_MS", "200"),
            ("COURIER_MAX_DELIVERIES", "2"),
        ],
    );
    redis.create_chat(10, &[1, 2]);
    let mut bob = courier.connect(2).await;
    let (status, body) = publish(&courier, json!({"messages": [message(1, 10, "poison")]})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["first_id"].as_u64().expect("first_id");

    // Delivered twice, never acked: then dead-lettered, not delivered again.
    for _ in 0..2 {
        assert_eq!(ids(&bob.recv_batch().await.messages), [id]);
    }
    wait_for("the dead letter", async || redis.xlen("dead:{user:2}") == 1).await;
    wait_for_pending(&redis, 2, "default", 0).await;
    let (status, summary) = pending_summary(&courier, 2).await;
    assert_eq!(status, 200, "{summary}");

    // The operator replays it: the connected client gets it again, same id.
    let (status, body) = replay(&courier, 2).await;
    assert_eq!(
        (status, body["replayed"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let again = bob.recv_batch().await;
    assert_eq!(ids(&again.messages), [id]);
    bob.ack(again.time_key).await;
    wait_for_pending(&redis, 2, "default", 0).await;
    assert_eq!(redis.xlen("dead:{user:2}"), 0);
}
