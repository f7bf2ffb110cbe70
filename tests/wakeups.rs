//! Delivery without polling: an idle connection costs Redis nothing, and no wake-up
//! is lost — not to a lost pub/sub connection, not to a read whose reply was lost
//! after Redis executed it. (The fault tests — Redis restart, failover, slot
//! migration — run with polling off too: it is off by default.)

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Commands each primary ran for connections (`INFO commandstats`), summed: all but
/// the instance-wide housekeeping — the notifier's PING, the cluster client's
/// topology queries — and the test's own INFO and connection set-up.
fn connection_commands(nodes: &mut [redis::Connection]) -> u64 {
    const HOUSEKEEPING: [&str; 5] = ["info", "ping", "client", "hello", "cluster"];
    nodes
        .iter_mut()
        .map(|node| {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(node)
                .expect("INFO commandstats");
            info.lines()
                .filter_map(|line| line.strip_prefix("cmdstat_"))
                .filter_map(|line| line.split_once(":calls="))
                .filter(|(name, _)| {
                    let family = name.split('|').next().unwrap_or(name);
                    !HOUSEKEEPING.contains(&family)
                })
                .filter_map(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Opens `count` idle connections, then counts the commands Redis runs for them over
/// `window`. The window is a measurement, not a wait for something to happen: with
/// the ack timeout at 400 ms, every connection's timer ticks every 100 ms in it.
async fn commands_of_idle_connections(env: &[(&str, &str)], count: u64, window: Duration) -> u64 {
    let redis = RedisServer::start();
    let mut settings = vec![("COURIER_ACK_TIMEOUT_MS", "400")];
    settings.extend_from_slice(env);
    let courier = Courier::start(&redis.url(), &settings);
    let mut clients = Vec::new();
    for user in 1..=count {
        clients.push(courier.connect(user).await);
    }
    let mut nodes: Vec<redis::Connection> = redis.primaries().iter().map(|n| n.conn()).collect();
    let before = connection_commands(&mut nodes);
    tokio::time::sleep(window).await;
    let after = connection_commands(&mut nodes);
    drop(clients);
    after - before
}

#[tokio::test]
async fn an_idle_connection_sends_redis_no_command() {
    let commands = commands_of_idle_connections(&[], 20, Duration::from_secs(2)).await;
    assert_eq!(
        commands, 0,
        "20 idle connections over 2 s (20 timer ticks each) made Redis run {commands} commands"
    );
}

#[tokio::test]
async fn the_optional_safety_poll_reads_every_idle_connections_inbox() {
    let env = [("COURIER_POLL_INTERVAL_MS", "200")];
    let commands = commands_of_idle_connections(&env, 20, Duration::from_secs(2)).await;
    assert!(
        commands >= 20,
        "20 connections polling every 200 ms for 2 s made Redis run only {commands} commands"
    );
}

#[tokio::test]
async fn an_entry_whose_wake_up_was_lost_with_the_pubsub_connection_is_delivered_once_it_is_back() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    alice.send_acked(1, 1, &[(10, "before")]).await;
    let before = bob.recv_batch().await;
    bob.ack(before.time_key).await;
    wait_for_pending(&redis, 2, "default", 0).await;

    // An entry whose PUBLISH never reached courier: written with no wake-up at all.
    // Nothing reads bob's inbox until courier's pub/sub connection is lost and back.
    let _: String = redis.cmd(&[
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
        "announced to nobody",
    ]);
    for node in redis.primaries() {
        let _: u64 = node.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    }
    let woken = bob.recv_batch().await;
    assert_eq!(texts(&woken.messages), ["announced to nobody"]);
    bob.ack(woken.time_key).await;

    // Subscribed again: wake-ups work as before.
    alice.send_acked(2, 1, &[(10, "after")]).await;
    assert_eq!(texts(&bob.recv_batch().await.messages), ["after"]);
}

/// A TCP proxy in front of one Redis that injects two faults. Once armed with
/// [`Proxy::cut_next_read`], it passes the next `XREADGROUP … >` on to Redis and,
/// when Redis's reply comes back, drops that connection instead of passing the reply
/// on: Redis executed the read (the entries are pending on the reader's consumer),
/// the reader never hears of it. [`Proxy::freeze_subscribers`] makes the connections
/// open so far that subscribed go silent both ways, sockets left open: a half-dead
/// pub/sub connection.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<Fault>,
}

#[derive(Default)]
struct Fault {
    /// The next new-entries read is to be cut.
    armed: AtomicBool,
    /// A read's reply was cut.
    done: AtomicBool,
    /// Connections numbered below this that subscribed are frozen.
    frozen_below: AtomicU64,
    next_connection: AtomicU64,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(Fault::default());
        let fault = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let number = fault.next_connection.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(Self::pipe(client, server, number, fault.clone()));
            }
        });
        Self { addr, cut }
    }

    fn cut_next_read(&self) {
        self.cut.armed.store(true, Ordering::SeqCst);
    }

    fn freeze_subscribers(&self) {
        let next = self.cut.next_connection.load(Ordering::SeqCst);
        self.cut.frozen_below.store(next, Ordering::SeqCst);
    }

    async fn pipe(client: TcpStream, server: TcpStream, number: u64, fault: Arc<Fault>) {
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        let cutting = AtomicBool::new(false);
        let subscriber = AtomicBool::new(false);
        let frozen = || {
            subscriber.load(Ordering::SeqCst) && number < fault.frozen_below.load(Ordering::SeqCst)
        };
        let up = async {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if contains(chunk, b"SUBSCRIBE") {
                    subscriber.store(true, Ordering::SeqCst);
                }
                if frozen() {
                    continue;
                }
                let new_read = contains(chunk, b"XREADGROUP") && contains(chunk, b"$1\r\n>\r\n");
                if new_read && fault.armed.swap(false, Ordering::SeqCst) {
                    cutting.store(true, Ordering::SeqCst);
                }
                if to_server.write_all(chunk).await.is_err() {
                    return;
                }
            }
        };
        let down = async {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = match from_server.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if cutting.load(Ordering::SeqCst) {
                    fault.done.store(true, Ordering::SeqCst);
                    return;
                }
                if frozen() {
                    continue;
                }
                if to_client.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        // Either direction ending drops both sockets.
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_read_whose_reply_was_lost_delivers_its_entries_at_once_not_after_the_ack_timeout() {
    let redis = RedisNode::start();
    let proxy = Proxy::start(redis.addr()).await;
    let courier = Courier::start(
        &format!("redis://{}", proxy.addr),
        &[("COURIER_ACK_TIMEOUT_MS", "600000")],
    );
    let mut bob = courier.connect(2).await;

    proxy.cut_next_read();
    let _: String = redis.cmd(&[
        "XADD",
        "inbox:{user:2}",
        "*",
        "id",
        "7",
        "sender_id",
        "1",
        "chat_id",
        "10",
        "content_text",
        "read twice",
    ]);
    let _: u64 = redis.cmd(&["PUBLISH", "notify:{user:2}", ""]);

    // The wake-up's read ran in Redis and its reply was lost with the connection; the
    // entry is pending on bob's consumer. It arrives well before the ack timeout
    // (10 minutes): the next read goes to the consumer's own pending entries.
    let batch = bob.recv_batch().await;
    assert_eq!(texts(&batch.messages), ["read twice"]);
    assert!(
        proxy.cut.done.load(Ordering::SeqCst),
        "the read's reply was cut"
    );
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg("inbox:{user:2}")
        .arg("default")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut redis.conn())
        .expect("XPENDING detail");
    assert_eq!(
        pending.iter().map(|p| p.3).collect::<Vec<_>>(),
        [2],
        "read once by the lost read, once by the recovery"
    );
    bob.ack(batch.time_key).await;
    wait_for("the ack to land", async || redis.pending(2, "default") == 0).await;
}

#[tokio::test]
async fn a_pubsub_connection_that_goes_silent_is_found_by_its_ping_and_replaced() {
    let redis = RedisNode::start();
    let proxy = Proxy::start(redis.addr()).await;
    let courier = Courier::start(
        &format!("redis://{}", proxy.addr),
        &[("COURIER_REDIS_TIMEOUT_MS", "500")],
    );
    let mut bob = courier.connect(2).await;

    // The subscription goes silent without a word: its wake-up never arrives.
    proxy.freeze_subscribers();
    let _: String = redis.cmd(&[
        "XADD",
        "inbox:{user:2}",
        "*",
        "id",
        "8",
        "sender_id",
        "1",
        "chat_id",
        "10",
        "content_text",
        "announced into the void",
    ]);
    let _: u64 = redis.cmd(&["PUBLISH", "notify:{user:2}", ""]);

    // Within a PING interval (5 s) and its timeout, courier replaces the connection,
    // subscribes again and wakes bob, whose read delivers the entry.
    Wait::new("the silent pub/sub connection to be replaced and bob woken")
        .within(Duration::from_secs(30))
        .until(async || redis.pending(2, "default") == 1)
        .await;
    let batch = bob.recv_batch().await;
    assert_eq!(texts(&batch.messages), ["announced into the void"]);
    assert!(
        courier.log_text().contains("did not answer PING"),
        "found by the PING"
    );
}
