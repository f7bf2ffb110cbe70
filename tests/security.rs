//! Hostile input (issue 4): abuse limits, malformed frames, oversized headers, Redis
//! credentials and TLS. Every attack is answered with its documented code while other
//! clients keep being served.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test]
async fn frame_flood_is_rate_limited_then_closed_with_1008() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_RATE_LIMIT_FPS", "1"),
            ("COURIER_RATE_LIMIT_BURST", "3"),
            ("COURIER_MAX_CLIENT_ERRORS", "3"),
        ],
    );
    redis.create_chat(10, &[1, 2]);
    let mut flooder = courier.connect(1).await;
    let mut bystander = courier.connect(2).await;

    for _ in 0..3 {
        flooder.send_ping().await;
    }
    flooder.send_batch(9, 1, &[(10, "over the limit")]).await;
    let error = flooder.expect_error("rate_limited").await;
    assert_eq!(
        error["time_key"], 9,
        "the dropped frame is named so it can be resent"
    );
    assert_eq!(
        redis.cmd::<u64>(&["EXISTS", "inbox:{user:2}"]),
        1,
        "group exists"
    );
    assert_eq!(
        redis.cmd::<u64>(&["XLEN", "inbox:{user:2}"]),
        0,
        "nothing written"
    );

    for _ in 0..5 {
        flooder.send_text("received").await;
    }
    assert_eq!(
        flooder.expect_close().await,
        Some(1008),
        "persistent abuse closes"
    );

    let mut sender = courier.connect(1).await;
    sender
        .send_acked(10, 1, &[(10, "others are still served")])
        .await;
    assert_eq!(
        texts(&bystander.recv_batch().await.messages),
        ["others are still served"]
    );
}

#[tokio::test]
async fn repeated_protocol_errors_close_with_1008() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_MAX_CLIENT_ERRORS", "3")]);
    let mut client = courier.connect(1).await;
    for _ in 0..3 {
        client.send_text("{").await;
        client.expect_error("invalid_json").await;
    }
    client.send_text("{").await;
    client.expect_error("invalid_json").await;
    assert_eq!(client.expect_close().await, Some(1008));
}

#[tokio::test]
async fn connections_per_user_are_capped_with_429() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_MAX_CONNECTIONS_PER_USER", "2")]);
    let first = courier.connect(1).await;
    let _second = courier.connect(1).await;
    let url = format!("{}?token={}", courier.ws_url(), token(1));
    let refusal = WsClient::connect_with_header(&url, "", "")
        .await
        .err()
        .expect("third refused");
    assert_eq!(refusal.status, 429);
    assert_eq!(refusal.body["error"], "too_many_connections");
    courier.connect(2).await;

    first.close().await;
    Wait::new("the closed connection's slot to be freed")
        .every(Duration::from_millis(20))
        .until(async || WsClient::connect_with_header(&url, "", "").await.is_ok())
        .await;
}

#[tokio::test]
async fn malformed_frames_get_their_documented_answers_and_others_keep_being_served() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_MAX_CLIENT_ERRORS", "1000")]);
    redis.create_chat(10, &[1, 2]);
    let mut attacker = courier.connect(1).await;
    let mut bob = courier.connect(2).await;

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let battery: Vec<(String, &str)> = vec![
        (deep, "invalid_json"),
        ("{\"a\":".repeat(1000), "invalid_json"),
        (r#"{"type":"ack","time_key":123456789012345678901234567890}"#.into(), "invalid_frame"),
        (r#"{"type":"ack","time_key":1e3}"#.into(), "invalid_frame"),
        (r#"{"type":"ack","time_key":-1.5}"#.into(), "invalid_frame"),
        (
            r#"{"type":"messages","time_key":1,"messages":[{"sender_id":1.0,"chat_id":10,"content_text":"x"}]}"#.into(),
            "invalid_frame",
        ),
        (
            r#"{"type":"messages","time_key":1,"messages":[{"sender_id":1,"chat_id":99999999999999999999,"content_text":"x"}]}"#.into(),
            "invalid_frame",
        ),
        (
            r#"{"type":"messages","type":"ack","time_key":1,"messages":[]}"#.into(),
            "invalid_frame",
        ),
        (
            r#"{"type":"messages","time_key":1,"messages":[{"sender_id":1,"chat_id":10,"content_text":"x","admin":true}]}"#.into(),
            "invalid_frame",
        ),
        (r#"{"type":"messages","time_key":1,"messages":{}}"#.into(), "invalid_frame"),
        (r#"{"type":null}"#.into(), "invalid_frame"),
        ("\"just a string\"".into(), "invalid_frame"),
        ("null".into(), "invalid_frame"),
        ("".into(), "invalid_json"),
        ("\u{0}\u{1}".into(), "invalid_json"),
        (r#"{"type":"messages","time_key":1,"messages":[{"sender_id":1,"chat_id":10,"content_text":"\ud800"}]}"#.into(), "invalid_json"),
    ];
    for (frame, code) in &battery {
        attacker.send_text(frame).await;
        let error = attacker.expect_error(code).await;
        assert!(
            error["message"].as_str().is_some_and(|m| m.len() < 1000),
            "error messages stay short: {error}"
        );
    }
    attacker.send_binary(vec![0xff; 10]).await;
    attacker.expect_error("invalid_frame").await;
    for _ in 0..50 {
        attacker.send_ping().await;
    }

    let mut alice = courier.connect(1).await;
    alice.send_acked(2, 1, &[(10, "still fine")]).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["still fine"]);
    assert_eq!(
        redis.cmd::<u64>(&["XLEN", "inbox:{user:2}"]),
        1,
        "no attack wrote anything"
    );

    attacker
        .send_raw_text_frame(vec![b'{', 0xff, 0xfe, b'}'])
        .await;
    assert_eq!(
        attacker.expect_close().await,
        Some(1007),
        "text frames must be UTF-8"
    );
}

#[tokio::test]
async fn huge_ids_and_oversized_headers_are_refused_before_the_upgrade() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    let huge = token_with(json!({"id": 18446744073709551616u128 as f64, "username": "a"}));
    let refusal = WsClient::connect_with_header(&courier.ws_url(), "token", &huge)
        .await
        .err()
        .expect("id beyond 64 bits refused");
    assert_eq!(refusal.status, 401);

    let giant = "x".repeat(512 * 1024);
    let refusal = WsClient::connect_with_header(&courier.ws_url(), "token", &giant)
        .await
        .err()
        .expect("oversized header refused");
    assert!(matches!(refusal.status, 400 | 431), "{refusal:?}");
    assert_eq!(
        http_get(courier.addr, "/healthz").await.0,
        200,
        "courier is fine"
    );
}

/// An ACL user `courier` with this password and every permission.
fn add_acl_user(redis: &RedisNode, password: &str) {
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "courier", "on", &format!(">{password}")])
        .arg(&["~*", "&*", "+@all"])
        .query(&mut redis.conn())
        .expect("ACL SETUSER");
}

#[tokio::test]
async fn redis_acl_password_never_appears_in_logs_or_errors() {
    // One node: the URL is built from its port.
    let mut redis = RedisNode::start();
    let password = "s3cret-Pa55word";
    add_acl_user(&redis, password);
    let url = format!("redis://courier:{password}@127.0.0.1:{}", redis.port);
    let courier = Courier::start(&url, &[("COURIER_REDIS_TIMEOUT_MS", "300")]);
    let mut client = courier.connect(1).await;
    redis.kill();
    client.send_batch(1, 1, &[(10, "x")]).await;
    client.expect_error("unavailable").await;
    let (status, body) = http_get(courier.addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(!body.contains(password));

    let wrong = format!("redis://courier:wrong-{password}@127.0.0.1:{}", redis.port);
    let misconfigured = Courier::start(&wrong, &[("COURIER_REDIS_TIMEOUT_MS", "300")]);
    redis.restart();
    add_acl_user(&redis, password);
    let (status, body) = http_get(misconfigured.addr, "/readyz").await;
    assert_eq!(status, 503, "wrong password: not ready");
    assert!(!body.contains(password), "{body}");
    for log in [courier.log_text(), misconfigured.log_text()] {
        assert!(
            !log.contains(password),
            "password leaked into the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn rediss_url_with_a_private_ca_works() {
    let tls = RedisNode::start_tls();
    let ca = tls.ca_file();
    let courier = Courier::start(&tls.url(), &[("COURIER_REDIS_CA_FILE", ca.as_str())]);
    assert_eq!(
        http_get(courier.addr, "/readyz").await.0,
        200,
        "{}",
        courier.log_text()
    );
    tls.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice.send_acked(1, 1, &[(10, "over TLS")]).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["over TLS"]);

    let untrusting = Courier::start(&tls.url(), &[]);
    assert_eq!(
        http_get(untrusting.addr, "/readyz").await.0,
        503,
        "unknown CA is refused"
    );
}
