//! Graceful shutdown of every HTTP connection, and no consumer left behind by a
//! client that goes away before its upgrade completes.
//!
//! Both tests hold courier's Redis work in flight by pausing Redis's writes
//! (`CLIENT PAUSE … WRITE`: reads still answer, scripts wait), so that the event under
//! test (SIGTERM, the client's reset) happens while courier waits on Redis.

mod support;

use std::net::SocketAddr;

use redis::Connection;
use serde_json::Value;
use support::*;
use tokio::io::AsyncWriteExt;

const API_KEY: &str = "test-api-key";

/// Holds every write command and script until [`unpause`].
fn pause_writes(conn: &mut Connection) {
    let _: () = command(&["CLIENT", "PAUSE", "60000", "WRITE"])
        .query(conn)
        .expect("CLIENT PAUSE");
}

fn unpause(conn: &mut Connection) {
    let _: () = command(&["CLIENT", "UNPAUSE"])
        .query(conn)
        .expect("CLIENT UNPAUSE");
}

/// Whether a client waits in the pause with a script call (`flags=b`, `cmd=evalsha`).
fn script_waiting(conn: &mut Connection) -> bool {
    let clients: String = command(&["CLIENT", "LIST"])
        .query(conn)
        .expect("CLIENT LIST");
    clients.lines().any(|client| {
        let fields: Vec<&str> = client.split_whitespace().collect();
        fields.iter().any(|f| {
            f.strip_prefix("flags=")
                .is_some_and(|flags| flags.contains('b'))
        }) && fields.contains(&"cmd=evalsha")
    })
}

/// Whether nothing listens on `addr` any more.
fn refuses_connections(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect(addr).is_err()
}

#[tokio::test]
async fn an_api_request_in_flight_at_sigterm_is_answered_before_courier_exits() {
    let redis = RedisNode::start();
    let mut conn = redis.conn();
    create_chat_in(&mut conn, 1, &[1, 2]);
    let mut courier = Courier::start(&redis.url(), &[("COURIER_API_KEY", API_KEY)]);

    pause_writes(&mut conn);
    let addr = courier.addr;
    let request = tokio::spawn(async move {
        let bearer = format!("Bearer {API_KEY}");
        http_request(
            addr,
            "POST",
            "/api/v1/messages",
            &[("Authorization", &bearer)],
            r#"{"time_key":7,"messages":[{"sender_id":1,"chat_id":1,"content_text":"late"}]}"#,
        )
        .await
    });
    wait_for("the publish's send script to wait in Redis", async || {
        script_waiting(&mut conn)
    })
    .await;

    courier.signal("TERM");
    wait_for("courier to stop accepting", async || {
        refuses_connections(addr)
    })
    .await;
    unpause(&mut conn);

    let (status, body) = tokio::time::timeout(WAIT, request)
        .await
        .expect("the request in flight is answered")
        .expect("the request got a whole HTTP response");
    assert_eq!(status, 202, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["status"], "accepted", "{body}");
    assert_eq!(courier.wait_exit(), Some(0), "{}", courier.log_text());
    let written: u64 = command(&["XLEN", "inbox:{user:2}"])
        .query(&mut conn)
        .expect("XLEN");
    assert_eq!(written, 1, "the message was written before the exit");
}

/// The consumers of `device`'s group in user `user`'s inbox; `None` until the group
/// exists.
fn consumers_of(conn: &mut Connection, user: u64, device: &str) -> Option<usize> {
    let inbox = format!("inbox:{{user:{user}}}");
    let groups: Vec<redis::Value> = command(&["XINFO", "GROUPS", &inbox]).query(conn).ok()?;
    if groups.is_empty() {
        return None;
    }
    let consumers: Vec<redis::Value> = command(&["XINFO", "CONSUMERS", &inbox, device])
        .query(conn)
        .ok()?;
    Some(consumers.len())
}

/// The wake-up channels subscribed on Redis.
fn subscribed_channels(conn: &mut Connection) -> Vec<String> {
    command(&["PUBSUB", "CHANNELS", "notify:*"])
        .query(conn)
        .expect("PUBSUB CHANNELS")
}

#[tokio::test]
async fn a_client_gone_before_the_101_leaves_no_consumer_and_no_subscription() {
    let redis = RedisNode::start();
    let mut conn = redis.conn();
    let courier = Courier::start(&redis.url(), &[]);

    pause_writes(&mut conn);
    let mut socket = tokio::net::TcpStream::connect(courier.addr)
        .await
        .expect("connect");
    let upgrade = format!(
        "GET /ws?device=gone HTTP/1.1\r\nHost: courier\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\ntoken: {}\r\n\r\n",
        token(7)
    );
    socket
        .write_all(upgrade.as_bytes())
        .await
        .expect("send the upgrade request");
    wait_for(
        "the join of user 7's consumer to wait in Redis",
        async || script_waiting(&mut conn),
    )
    .await;

    // A reset, not a close: the 101 can no longer be written.
    socket.set_zero_linger().expect("SO_LINGER 0");
    drop(socket);
    unpause(&mut conn);

    wait_for(
        "the group to exist with no consumer, and no wake-up subscription left",
        async || {
            consumers_of(&mut conn, 7, "gone") == Some(0)
                && subscribed_channels(&mut conn).is_empty()
        },
    )
    .await;
    assert!(
        courier.log_text().contains("went away before the upgrade")
            || courier.log_text().contains("upgrade failed"),
        "the log says why the consumer was released"
    );
}
