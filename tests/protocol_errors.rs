//! Every error code of DESIGN §2 on a live connection, which survives each of them.

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn every_recoverable_error_keeps_the_connection_open() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;

    alice.send_text("{not json").await;
    alice.expect_error("invalid_json").await;

    alice
        .send_text(r#"{"type":"messages","time_key":"abc","messages":[]}"#)
        .await;
    alice.expect_error("invalid_frame").await;

    alice.send_text(r#"{"type":"subscribe"}"#).await;
    alice.expect_error("invalid_frame").await;

    alice.send_text(r#"{"type":"messages","time_key":3,"messages":[{"sender_id":1,"chat_id":10,"content_text":"x","extra":1}]}"#).await;
    let error = alice.expect_error("invalid_frame").await;
    assert_eq!(error["time_key"], 3);

    let old_formats = [
        json!({"token": "t", "message": {"sender_id": 1, "receiver_id": 2, "content": {"text_content": "x"}}}),
        json!({"sender_id": 1, "receiver_id": 2, "content": {"text_content": "x"}}),
        json!({"type": "messages", "message": {"sender_id": 1, "receiver_id": 2, "content": {"text_content": "x"}}}),
    ];
    for old in old_formats {
        alice.send_json(old).await;
        let error = alice.expect_error("deprecated_format").await;
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("\"type\":\"messages\"")),
            "{error}"
        );
    }

    alice
        .send_json(json!({"type": "ack", "time_key": 12345}))
        .await;
    let error = alice.expect_error("unknown_time_key").await;
    assert_eq!(error["time_key"], 12345);

    alice.send_text("received").await;
    alice.expect_error("unknown_time_key").await;

    alice.send_batch(4, 1, &[(99, "no such chat")]).await;
    alice.expect_error("not_a_member").await;

    alice.send_batch(5, 2, &[(10, "as bob")]).await;
    alice.expect_error("sender_mismatch").await;

    // After all that, the connection still works both ways.
    alice.send_acked(6, 1, &[(10, "still here")]).await;
    let mut bob = courier.connect(2).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["still here"]);
}

#[tokio::test]
async fn binary_frames_get_invalid_frame() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    let mut alice = courier.connect(1).await;
    alice.send_binary(vec![1, 2, 3]).await;
    alice.expect_error("invalid_frame").await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_MAX_FRAME_BYTES", "2048")]);
    let mut alice = courier.connect(1).await;
    alice.send_text(&"x".repeat(4096)).await;
    assert_eq!(alice.expect_close().await, Some(1009));
}
