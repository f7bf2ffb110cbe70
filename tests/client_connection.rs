//! `courier-client`'s frame-level `Connection` against a real courier: the three
//! token placements, every refused upgrade with its status and JSON body, every
//! error code decoded to its type, deliveries and acks, and the close codes courier
//! sends. What the test harness and the load generator rely on when they drive the
//! wire through it.

mod support;

use std::time::Duration;

use courier_client::protocol::{DeliveryBatch, ErrorFrame, OutgoingMessage};
use courier_client::{
    ClientFrame, CloseCode, ConnectError, ConnectOptions, Connection, ErrorCode, Refusal,
    ServerFrame, TimeKey, TokenPlacement,
};
use support::{Courier, Fixtures, RedisServer, WAIT, token};

const ALICE: u64 = 1;
const BOB: u64 = 2;
const CHAT: u64 = 10;

fn redis_with_chat() -> RedisServer {
    let redis = RedisServer::start();
    redis.create_chat(CHAT, &[ALICE, BOB]);
    redis
}

async fn connect(options: ConnectOptions) -> Connection {
    options.connect().await.expect("connect")
}

async fn refusal(options: ConnectOptions) -> Refusal {
    match options.connect().await {
        Err(ConnectError::Refused(refusal)) => refusal,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

fn batch(time_key: i64, sender: u64, chat: u64, text: &str) -> ClientFrame {
    ClientFrame::Messages {
        time_key: TimeKey::from(time_key),
        messages: vec![OutgoingMessage {
            sender_id: sender,
            chat_id: chat,
            content_text: text.into(),
        }],
    }
}

async fn recv(conn: &mut Connection) -> ServerFrame {
    conn.recv(WAIT).await.expect("a frame")
}

/// The next frame, an error with `code`; returns it.
async fn expect_error(conn: &mut Connection, code: ErrorCode) -> ErrorFrame {
    match recv(conn).await {
        ServerFrame::Error(error) if error.code == code => {
            assert!(!error.message.is_empty(), "a message: {error:?}");
            error
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn each_token_placement_authenticates() {
    let redis = redis_with_chat();
    let courier = Courier::start(&redis.url(), &[]);
    for (i, placement) in [
        TokenPlacement::Header,
        TokenPlacement::Bearer,
        TokenPlacement::Query,
    ]
    .into_iter()
    .enumerate()
    {
        let options = ConnectOptions::new(courier.ws_url())
            .token(token(ALICE))
            .token_placement(placement)
            .device(format!("d{i}"));
        let mut conn = connect(options).await;
        conn.send(&batch(-7, ALICE, CHAT, "hi"))
            .await
            .expect("send");
        assert_eq!(
            recv(&mut conn).await,
            ServerFrame::Ack {
                time_key: TimeKey::from(-7_i64)
            },
            "{placement:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_can_come_from_a_chosen_local_address() {
    let redis = redis_with_chat();
    let courier = Courier::start(&redis.url(), &[]);
    let options = ConnectOptions::new(courier.ws_url())
        .token(token(ALICE))
        .local_addr([127, 0, 0, 2].into());
    let mut conn = connect(options).await;
    conn.send(&batch(1, ALICE, CHAT, "from 127.0.0.2"))
        .await
        .expect("send");
    assert!(matches!(recv(&mut conn).await, ServerFrame::Ack { .. }));
}

#[tokio::test]
async fn refused_upgrades_carry_their_status_and_json_body() {
    let mut redis = redis_with_chat();
    let env = [
        ("COURIER_ALLOWED_ORIGINS", "https://chat.example"),
        ("COURIER_MAX_CONNECTIONS_PER_USER", "1"),
    ];
    let courier = Courier::start(&redis.url(), &env);
    let options = || ConnectOptions::new(courier.ws_url());

    let no_token = refusal(options()).await;
    assert_eq!(
        (no_token.status, no_token.error.as_deref()),
        (401, Some("invalid_token"))
    );
    assert!(no_token.message.is_some_and(|m| !m.is_empty()));
    let bad_token = refusal(options().token("not.a.jwt")).await;
    assert_eq!(bad_token.status, 401);

    let device = refusal(options().token(token(ALICE)).device("no spaces")).await;
    assert_eq!(
        (device.status, device.error.as_deref()),
        (400, Some("invalid_device"))
    );

    let origin = refusal(
        options()
            .token(token(ALICE))
            .header("Origin", "https://evil.example"),
    )
    .await;
    assert_eq!(
        (origin.status, origin.error.as_deref()),
        (403, Some("origin_not_allowed"))
    );
    let allowed = options()
        .token(token(ALICE))
        .header("Origin", "https://chat.example");
    let _held = connect(allowed).await;

    let second = refusal(options().token(token(ALICE)).device("other")).await;
    assert_eq!(
        (second.status, second.error.as_deref()),
        (429, Some("too_many_connections"))
    );

    redis.kill();
    let down = refusal(options().token(token(BOB))).await;
    assert_eq!(
        (down.status, down.error.as_deref()),
        (503, Some("unavailable"))
    );
    assert_eq!(down.json()["error"], "unavailable");
}

#[tokio::test]
async fn every_error_code_decodes_to_its_type() {
    let redis = redis_with_chat();
    redis.create_chat(20, &[BOB]);
    let env = [
        ("COURIER_RATE_LIMIT_BURST", "20"),
        ("COURIER_MAX_CLIENT_ERRORS", "10000"),
    ];
    let courier = Courier::start(&redis.url(), &env);
    let mut conn = connect(ConnectOptions::new(courier.ws_url()).token(token(ALICE))).await;

    conn.send_text("{").await.expect("send");
    expect_error(&mut conn, ErrorCode::InvalidJson).await;
    conn.send_text(r#"{"type":"nope","time_key":3}"#)
        .await
        .expect("send");
    let error = expect_error(&mut conn, ErrorCode::InvalidFrame).await;
    assert_eq!(error.time_key, Some(TimeKey::from(3_u64)));
    conn.send_binary(vec![1, 2, 3]).await.expect("send");
    expect_error(&mut conn, ErrorCode::InvalidFrame).await;
    conn.send_text(r#"{"sender_id":1,"receiver_id":2,"content":{"text_content":"x"}}"#)
        .await
        .expect("send");
    expect_error(&mut conn, ErrorCode::DeprecatedFormat).await;
    conn.send(&batch(4, BOB, CHAT, "as bob"))
        .await
        .expect("send");
    let error = expect_error(&mut conn, ErrorCode::SenderMismatch).await;
    assert_eq!(error.time_key, Some(TimeKey::from(4_u64)));
    conn.send(&batch(5, ALICE, 20, "not a member"))
        .await
        .expect("send");
    let error = expect_error(&mut conn, ErrorCode::NotAMember).await;
    assert_eq!(error.time_key, Some(TimeKey::from(5_u64)));
    conn.send(&ClientFrame::Ack {
        time_key: TimeKey::from(6_u64),
    })
    .await
    .expect("send");
    expect_error(&mut conn, ErrorCode::UnknownTimeKey).await;
    conn.send(&ClientFrame::Received).await.expect("send");
    expect_error(&mut conn, ErrorCode::UnknownTimeKey).await;

    // Past the burst, frames are answered `rate_limited`, with their time_key.
    for time_key in 100..140 {
        conn.send(&ClientFrame::Ack {
            time_key: TimeKey::from(time_key as u64),
        })
        .await
        .expect("send");
    }
    loop {
        let ServerFrame::Error(error) = recv(&mut conn).await else {
            panic!("only errors expected");
        };
        if error.code == ErrorCode::RateLimited {
            assert!(error.time_key.is_some(), "{error:?}");
            break;
        }
    }
}

#[tokio::test]
async fn deliveries_decode_and_acks_are_accepted() {
    let redis = redis_with_chat();
    let courier = Courier::start(&redis.url(), &[]);
    let mut alice = connect(ConnectOptions::new(courier.ws_url()).token(token(ALICE))).await;
    let mut bob = connect(ConnectOptions::new(courier.ws_url()).token(token(BOB))).await;
    for (time_key, text) in [(1, "first"), (2, "second")] {
        alice
            .send(&batch(time_key, ALICE, CHAT, text))
            .await
            .expect("send");
        assert!(matches!(recv(&mut alice).await, ServerFrame::Ack { .. }));
        let ServerFrame::Messages(DeliveryBatch { time_key, messages }) = recv(&mut bob).await
        else {
            panic!("expected a delivery");
        };
        assert_eq!(messages.len(), 1);
        assert_eq!(
            (
                messages[0].sender_id,
                messages[0].chat_id,
                messages[0].content_text.as_str()
            ),
            (ALICE, CHAT, text)
        );
        // The first is acked by time_key, the second by the older `received`.
        let ack = match text {
            "first" => ClientFrame::Ack {
                time_key: TimeKey::from(time_key),
            },
            _ => ClientFrame::Received,
        };
        bob.send(&ack).await.expect("ack");
    }
    support::wait_for_pending(&redis, BOB, "default", 0).await;
    bob.close(CloseCode::Normal, WAIT).await.expect("close");
}

#[tokio::test]
async fn close_codes_reach_the_connection() {
    let redis = redis_with_chat();
    let env = [
        ("COURIER_MAX_FRAME_BYTES", "1024"),
        ("COURIER_MAX_CLIENT_ERRORS", "3"),
    ];
    let courier = Courier::start(&redis.url(), &env);
    let options = || ConnectOptions::new(courier.ws_url()).token(token(ALICE));

    let mut big = connect(options()).await;
    big.send(&batch(1, ALICE, CHAT, &"x".repeat(2000)))
        .await
        .expect("send");
    let close = big.closed(WAIT).await.expect("closed");
    assert_eq!(close.map(|c| c.code), Some(CloseCode::TooBig));

    let mut not_utf8 = connect(options()).await;
    not_utf8
        .send_raw_text_frame(vec![0xff, 0xfe])
        .await
        .expect("send");
    let close = not_utf8.closed(WAIT).await.expect("closed");
    assert_eq!(close.map(|c| c.code), Some(CloseCode::InvalidPayload));

    let mut abusive = connect(options()).await;
    for _ in 0..5 {
        // The socket may already be closing: the close code is what counts.
        let _ = abusive.send_text("not json").await;
    }
    let close = abusive.closed(WAIT).await.expect("closed");
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Policy));

    let mut quiet = connect(options()).await;
    assert!(
        matches!(
            quiet.recv(Duration::from_millis(50)).await,
            Err(courier_client::connection::RecvError::Timeout(_))
        ),
        "nothing arrives unasked"
    );
}
