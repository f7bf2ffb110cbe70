//! The Rust SDK (`courier-client`'s `Client`) against a real courier and a real
//! Redis: sends resolve on ack, deliveries reach the app once and are acked only
//! after the app acks them, nothing acked is lost or doubled across a courier
//! SIGKILL, tokens are refreshed on 401 and 4001, error codes surface as typed
//! errors or retries, and the persistent outbox keeps its promises across a restart
//! of the client.
//!
//! Faults are made deterministic with Redis itself: `CLIENT PAUSE WRITE` holds
//! courier's send script in Redis (visible in `CLIENT LIST`), SIGSTOP freezes courier
//! while the script runs, and SIGKILL then loses the ack of a batch that *was*
//! written: only a resend with the same `time_key` keeps it from being written twice.
//! These tests run against a single Redis (`CLIENT PAUSE` is per node).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use courier_client::{
    Acked, Backoff, Client, ClientBuilder, ConnectionState, Deliveries, Delivery, Disconnect,
    ErrorCode, Event, SendError,
};
use serde_json::json;
use support::{Courier, Fixtures, RedisServer, WAIT, token, token_with, wait_for};
use tokio::sync::broadcast;

/// SIGKILLs courier and starts it again on the same port, so that the clients
/// reconnect to the same URL.
fn restart(courier: &mut Courier) {
    courier.kill();
    courier
        .start_again()
        .unwrap_or_else(|e| panic!("courier could not restart: {e}"));
}

const ALICE: u64 = 1;
const BOB: u64 = 2;
const CHAT: u64 = 10;

/// A Redis with chat 10 = {alice, bob}.
fn redis_with_chat() -> RedisServer {
    let redis = RedisServer::start();
    redis.create_chat(CHAT, &[ALICE, BOB]);
    redis
}

/// A client of `user` with a fast backoff (reconnects within a second).
fn client_of(url: &str, user: u64) -> ClientBuilder {
    Client::builder(url).token(token(user)).backoff(FAST)
}

const FAST: Backoff = Backoff {
    base: Duration::from_millis(50),
    cap: Duration::from_secs(1),
};

/// alice's and bob's clients on a courier started with `env` (bind every field: one
/// left to `..` is dropped at once, and with it its process or client).
struct TwoUsers {
    redis: RedisServer,
    _courier: Courier,
    alice: Client,
    bob: Client,
    bob_deliveries: Deliveries,
}

fn two_users(env: &[(&str, &str)]) -> TwoUsers {
    let redis = redis_with_chat();
    let courier = Courier::start(&redis.url(), env);
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .connect()
        .expect("alice");
    let (bob, bob_deliveries) = client_of(&courier.ws_url(), BOB).connect().expect("bob");
    TwoUsers {
        redis,
        _courier: courier,
        alice,
        bob,
        bob_deliveries,
    }
}

/// courier's answer to a send, within [`WAIT`].
async fn outcome(send: impl Future<Output = Result<Acked, SendError>>) -> Result<Acked, SendError> {
    tokio::time::timeout(WAIT, send)
        .await
        .expect("timed out waiting for courier's answer to a send")
}

/// courier's answers to sends, in order, within [`WAIT`].
async fn outcomes<F: Future<Output = Result<Acked, SendError>>>(
    sends: Vec<F>,
) -> Vec<Result<Acked, SendError>> {
    tokio::time::timeout(WAIT, futures_util::future::join_all(sends))
        .await
        .expect("timed out waiting for courier's answers to sends")
}

/// Asserts a send is acked within [`WAIT`].
async fn acked(send: impl Future<Output = Result<Acked, SendError>>) -> Acked {
    outcome(send)
        .await
        .unwrap_or_else(|e| panic!("not acked: {e}"))
}

/// Closes a client, within [`WAIT`].
async fn close(client: &Client) {
    tokio::time::timeout(WAIT, client.close())
        .await
        .expect("timed out closing a client");
}

async fn wait_open(client: &Client) {
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == ConnectionState::Open))
        .await
        .expect("timed out waiting for the client to connect")
        .expect("the client stopped");
}

async fn next_delivery(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(WAIT, deliveries.recv())
        .await
        .expect("timed out waiting for a delivery")
        .expect("the client stopped")
}

/// Receives and acks deliveries until `count` messages arrived; their texts.
async fn receive_texts(deliveries: &mut Deliveries, count: usize) -> Vec<String> {
    let mut texts = Vec::new();
    while texts.len() < count {
        let delivery = next_delivery(deliveries).await;
        texts.extend(delivery.messages.iter().map(|m| m.content_text.clone()));
        delivery.ack();
    }
    assert_eq!(
        texts.len(),
        count,
        "no more than {count} messages: {texts:?}"
    );
    texts
}

/// Sends `marker` from `sender` and asserts it is the next thing the app of
/// `deliveries` gets: whatever should not reach the app did not.
async fn assert_next_is_only(sender: &Client, deliveries: &mut Deliveries, marker: &str) {
    acked(sender.send(CHAT, marker)).await;
    let delivery = next_delivery(deliveries).await;
    let texts: Vec<&str> = delivery
        .messages
        .iter()
        .map(|m| m.content_text.as_str())
        .collect();
    assert_eq!(texts, [marker], "nothing reached the app before the marker");
    delivery.ack();
}

async fn wait_event(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("timed out waiting for {what}"),
            Ok(Ok(event)) if matches(&event) => return event,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => panic!("no more events: {what}"),
        }
    }
}

fn inbox_len(redis: &RedisServer, user: u64) -> u64 {
    redis.xlen(&format!("inbox:{{user:{user}}}"))
}

/// Whether courier's send script is held in Redis by `CLIENT PAUSE WRITE`.
fn send_script_paused(redis: &RedisServer) -> bool {
    let clients: String = redis.cmd(&["CLIENT", "LIST"]);
    clients
        .lines()
        .any(|c| c.contains(" flags=b ") && c.contains(" cmd=eval"))
}

/// courier settings under which it writes to Redis only when a client sends or acks:
/// no safety poll and no ack-timeout reclaim within a test's time.
const QUIET: [(&str, &str); 2] = [
    ("COURIER_POLL_INTERVAL_MS", "600000"),
    ("COURIER_ACK_TIMEOUT_MS", "600000"),
];

/// Makes courier write a batch and lose its ack: the send script is held by
/// `CLIENT PAUSE WRITE`, courier is frozen (SIGSTOP), the script runs, and courier is
/// SIGKILLed before it could answer. `send` must queue the batch. courier must have
/// no other write to make meanwhile (started with [`QUIET`], nothing left to ack),
/// or the script could queue behind it, out of `CLIENT LIST`'s sight.
async fn write_then_kill_courier(
    redis: &RedisServer,
    courier: &mut Courier,
    inbox_of: u64,
    send: impl FnOnce(),
) {
    let before = inbox_len(redis, inbox_of);
    redis.cmd::<String>(&["CLIENT", "PAUSE", "30000", "WRITE"]);
    send();
    wait_for("courier's send script held in Redis", async || {
        send_script_paused(redis)
    })
    .await;
    courier.signal("STOP");
    redis.cmd::<String>(&["CLIENT", "UNPAUSE"]);
    wait_for("the held batch written", async || {
        inbox_len(redis, inbox_of) == before + 1
    })
    .await;
    courier.kill();
}

#[tokio::test]
async fn sends_resolve_on_ack_and_each_message_reaches_the_app_once() {
    let TwoUsers {
        redis,
        _courier,
        alice,
        bob: _bob,
        mut bob_deliveries,
    } = two_users(&[]);
    let sends: Vec<_> = (0..5).map(|i| alice.send(CHAT, format!("m{i}"))).collect();
    for (i, sent) in outcomes(sends).await.into_iter().enumerate() {
        let acked = sent.unwrap_or_else(|e| panic!("m{i}: {e}"));
        assert!(acked.time_key < 1 << 53, "time_key below 2^53");
    }
    assert_eq!(inbox_len(&redis, BOB), 5, "written once each");

    let texts = receive_texts(&mut bob_deliveries, 5).await;
    assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4"], "in order");
    support::wait_for_pending(&redis, BOB, "default", 0).await;
}

#[tokio::test]
async fn messages_queued_together_go_in_batches_up_to_the_limit() {
    let redis = redis_with_chat();
    let courier = Courier::start(&redis.url(), &[]);
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .batch_max(100)
        .connect()
        .expect("alice");
    // A current-thread runtime: the client's task runs only once the test awaits,
    // so all 250 sends are queued before the first batch is formed.
    let sends: Vec<_> = (0..250)
        .map(|i| alice.send(CHAT, format!("m{i}")))
        .collect();
    let acks = outcomes(sends).await;
    let mut per_batch = std::collections::BTreeMap::new();
    for acked in acks {
        *per_batch.entry(acked.expect("acked").time_key).or_insert(0) += 1;
    }
    assert_eq!(
        per_batch.values().copied().collect::<Vec<_>>(),
        [100, 100, 50],
        "three batches, in order"
    );
    assert_eq!(inbox_len(&redis, BOB), 250);
}

#[tokio::test]
async fn a_delivery_is_acked_only_after_the_app_acks_it() {
    let TwoUsers {
        redis,
        _courier,
        alice,
        bob,
        bob_deliveries: mut deliveries,
    } = two_users(&[("COURIER_ACK_TIMEOUT_MS", "1000")]);
    let mut events = bob.events();

    acked(alice.send(CHAT, "dropped")).await;
    let first = next_delivery(&mut deliveries).await;
    let id = first.messages[0].id;
    drop(first);
    wait_event(&mut events, "the drop reported", |e| {
        *e == Event::DeliveryNotAcked { ids: vec![id] }
    })
    .await;
    // Not acked, so courier redelivers it after its ack timeout, and the app gets it
    // again: it never had it.
    let again = next_delivery(&mut deliveries).await;
    assert_eq!(again.messages[0].id, id, "the dropped message comes back");
    assert_eq!(
        redis.pending(BOB, "default"),
        1,
        "unacked while the app holds it"
    );
    again.ack();
    support::wait_for_pending(&redis, BOB, "default", 0).await;
}

#[tokio::test]
async fn a_redelivery_while_the_app_holds_a_delivery_is_not_handed_over_twice() {
    let TwoUsers {
        redis,
        _courier,
        alice,
        bob,
        bob_deliveries: mut deliveries,
    } = two_users(&[("COURIER_ACK_TIMEOUT_MS", "500")]);
    let mut events = bob.events();

    acked(alice.send(CHAT, "slow to process")).await;
    let held = next_delivery(&mut deliveries).await;
    let id = held.messages[0].id;
    // The app takes longer than courier's ack timeout: courier delivers it again.
    wait_event(&mut events, "the redelivery dropped", |e| {
        *e == Event::DuplicatesDropped { ids: vec![id] }
    })
    .await;
    held.ack();
    support::wait_for_pending(&redis, BOB, "default", 0).await;
    assert_next_is_only(&alice, &mut deliveries, "next").await;
}

/// Scenario of the two tests below: bob's app acks a message but courier never gets
/// the ack (frozen, then killed); after the restart courier delivers it again, and
/// the client drops it by id: the app does not see it twice. With `outbox`, bob's
/// client is also restarted, and the seen ids come from the file.
async fn ack_lost_then_redelivered(outbox: bool) {
    let redis = redis_with_chat();
    let env = [("COURIER_ACK_TIMEOUT_MS", "1000")];
    let mut courier = Courier::start(&redis.url(), &env);
    let url = courier.ws_url();
    let dir = tempfile::tempdir().expect("dir");
    let bob_client = || {
        let builder = client_of(&url, BOB);
        let builder = if outbox {
            builder.outbox_file(dir.path().join("bob.outbox"))
        } else {
            builder
        };
        builder.connect().expect("bob")
    };
    let (alice, _) = client_of(&url, ALICE).connect().expect("alice");
    let (mut bob, mut deliveries) = bob_client();
    let mut events = bob.events();

    acked(alice.send(CHAT, "once")).await;
    let delivery = next_delivery(&mut deliveries).await;
    let id = delivery.messages[0].id;
    courier.signal("STOP");
    delivery.ack();
    if outbox {
        close(&bob).await;
    }
    restart(&mut courier);
    if outbox {
        (bob, deliveries) = bob_client();
        events = bob.events();
    }
    wait_event(&mut events, "the redelivery dropped by id", |e| {
        *e == Event::DuplicatesDropped { ids: vec![id] }
    })
    .await;
    assert_next_is_only(&alice, &mut deliveries, "after").await;
    support::wait_for_pending(&redis, BOB, "default", 0).await;
}

#[tokio::test]
async fn a_redelivery_after_a_reconnect_is_dropped_by_id() {
    ack_lost_then_redelivered(false).await;
}

#[tokio::test]
async fn seen_ids_in_the_outbox_drop_a_redelivery_after_a_client_restart() {
    ack_lost_then_redelivered(true).await;
}

#[tokio::test]
async fn every_acked_message_arrives_once_across_a_courier_sigkill() {
    let redis = redis_with_chat();
    let mut courier = Courier::start(&redis.url(), &QUIET);
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .connect()
        .expect("alice");
    let (_bob, mut deliveries) = client_of(&courier.ws_url(), BOB).connect().expect("bob");
    let mut sends = Vec::new();
    for i in 0..20 {
        sends.push(alice.send(CHAT, format!("before-{i}")));
    }
    for send in sends.drain(..) {
        acked(send).await;
    }
    let before: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    assert_eq!(receive_texts(&mut deliveries, 20).await, before);
    support::wait_for_pending(&redis, BOB, "default", 0).await;

    // A batch courier writes but never acks: the resend must carry the same
    // time_key, or it is written twice.
    write_then_kill_courier(&redis, &mut courier, BOB, || {
        sends.push(alice.send(CHAT, "in-flight".to_string()));
    })
    .await;
    for i in 0..20 {
        sends.push(alice.send(CHAT, format!("after-{i}")));
    }
    restart(&mut courier);
    for send in sends {
        acked(send).await;
    }

    let mut expected = vec!["in-flight".to_string()];
    expected.extend((0..20).map(|i| format!("after-{i}")));
    assert_eq!(inbox_len(&redis, BOB), 41, "every message written once");
    let texts = receive_texts(&mut deliveries, 21).await;
    assert_eq!(texts, expected, "each once, in order");
    assert_next_is_only(&alice, &mut deliveries, "end").await;
}

#[tokio::test]
async fn a_token_refused_with_401_is_fetched_again() {
    let redis = redis_with_chat();
    let courier = Courier::start(&redis.url(), &[]);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (alice, _) = Client::builder(courier.ws_url())
        .backoff(FAST)
        .token_provider(move || {
            let now = jsonwebtoken::get_current_timestamp();
            // The first token expired a minute ago (beyond courier's 5 s leeway).
            let exp = match counter.fetch_add(1, Ordering::SeqCst) {
                0 => now - 60,
                _ => now + 3600,
            };
            let token = token_with(json!({"id": ALICE, "username": "alice", "exp": exp}));
            async move { Ok::<_, std::io::Error>(token) }
        })
        .connect()
        .expect("alice");
    let mut events = alice.events();
    wait_event(&mut events, "the 401", |e| {
        matches!(e, Event::State(ConnectionState::Reconnecting {
            reason: Disconnect::Refused(refusal), ..
        }) if refusal.status == 401)
    })
    .await;
    wait_open(&alice).await;
    acked(alice.send(CHAT, "hi")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "fetched again once");
}

#[tokio::test]
async fn a_fixed_token_refused_with_401_closes_the_client() {
    let redis = redis_with_chat();
    let courier = Courier::start(&redis.url(), &[]);
    let expired = token_with(json!({"id": ALICE, "username": "alice", "exp": 1_000_000}));
    let (alice, _) = Client::builder(courier.ws_url())
        .token(expired)
        .connect()
        .expect("alice");
    let sent = outcome(alice.send(CHAT, "never")).await;
    let Err(SendError::Closed(Disconnect::Refused(refusal))) = sent else {
        panic!("expected a 401 refusal, got {sent:?}");
    };
    assert_eq!(refusal.status, 401);
    assert_eq!(refusal.error.as_deref(), Some("invalid_token"));
    assert!(matches!(
        *alice.state().borrow(),
        ConnectionState::Closed { .. }
    ));
}

#[tokio::test]
async fn a_token_that_expires_while_open_is_refreshed_after_4001() {
    let redis = redis_with_chat();
    let courier = Courier::start(&redis.url(), &[]);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (alice, _) = Client::builder(courier.ws_url())
        .backoff(FAST)
        .token_provider(move || {
            let lifetime = match counter.fetch_add(1, Ordering::SeqCst) {
                0 => 2,
                _ => 3600,
            };
            let exp = jsonwebtoken::get_current_timestamp() + lifetime;
            let token = token_with(json!({"id": ALICE, "username": "alice", "exp": exp}));
            async move { Ok::<_, std::io::Error>(token) }
        })
        .connect()
        .expect("alice");
    let mut events = alice.events();
    wait_event(&mut events, "the 4001 close", |e| {
        matches!(e, Event::State(ConnectionState::Reconnecting {
            reason: Disconnect::Closed(close), ..
        }) if close.code == courier_client::CloseCode::TokenExpired)
    })
    .await;
    // The very next attempt carries a fresh token: no second 4001, no 401.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("timed out waiting for the reconnect")
            .expect("events");
        match event {
            Event::State(ConnectionState::Open) => break,
            Event::State(ConnectionState::Reconnecting { reason, .. }) => {
                panic!("the reconnect after 4001 failed: {reason}")
            }
            _ => {}
        }
    }
    acked(alice.send(CHAT, "with the new token")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh");
}

#[tokio::test]
async fn not_a_member_rejects_that_send_and_the_others_go_through() {
    let redis = redis_with_chat();
    redis.create_chat(20, &[BOB, 3]);
    let courier = Courier::start(&redis.url(), &[]);
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .connect()
        .expect("alice");
    let mut events = alice.events();
    let refused = outcome(alice.send(20, "not mine")).await;
    let Err(SendError::Rejected { code, message }) = refused else {
        panic!("expected a rejection, got {refused:?}");
    };
    assert_eq!(code, ErrorCode::NotAMember);
    assert!(message.contains("member"), "{message}");
    wait_event(&mut events, "the rejected batch", |e| {
        matches!(e, Event::BatchRejected { error, messages: 1, .. } if error.code == ErrorCode::NotAMember)
    })
    .await;
    acked(alice.send(CHAT, "mine")).await;
    assert_eq!(inbox_len(&redis, BOB), 1, "only the allowed message");
}

#[tokio::test]
async fn limits_lower_on_the_server_surface_as_invalid_frame() {
    let redis = redis_with_chat();
    let env = [("COURIER_MAX_TEXT_BYTES", "16"), ("COURIER_BATCH_MAX", "2")];
    let courier = Courier::start(&redis.url(), &env);
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .connect()
        .expect("alice");
    wait_open(&alice).await;
    let long = outcome(alice.send(CHAT, "x".repeat(17))).await;
    assert!(
        matches!(
            &long,
            Err(SendError::Rejected {
                code: ErrorCode::InvalidFrame,
                ..
            })
        ),
        "{long:?}"
    );
    // Three messages queued together form one batch of three: all-or-nothing.
    let three: Vec<_> = (0..3).map(|i| alice.send(CHAT, format!("m{i}"))).collect();
    for sent in outcomes(three).await {
        assert!(
            matches!(
                &sent,
                Err(SendError::Rejected {
                    code: ErrorCode::InvalidFrame,
                    ..
                })
            ),
            "{sent:?}"
        );
    }
    assert_eq!(inbox_len(&redis, BOB), 0, "nothing written");
    let text_limit = outcome(alice.send(CHAT, "x".repeat(4097))).await;
    assert_eq!(
        text_limit,
        Err(SendError::TextTooLong {
            bytes: 4097,
            max: 4096
        }),
        "the client's own limit is checked locally"
    );
}

#[tokio::test]
async fn rate_limited_batches_are_retried_and_written_once() {
    let redis = redis_with_chat();
    let env = [
        ("COURIER_RATE_LIMIT_FPS", "4"),
        ("COURIER_RATE_LIMIT_BURST", "2"),
        ("COURIER_MAX_CLIENT_ERRORS", "1000"),
    ];
    let courier = Courier::start(&redis.url(), &env);
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .batch_max(1)
        .backoff(Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(1),
        })
        .connect()
        .expect("alice");
    let (_bob, mut deliveries) = client_of(&courier.ws_url(), BOB).connect().expect("bob");
    let mut events = alice.events();
    let sends: Vec<_> = (0..8).map(|i| alice.send(CHAT, format!("m{i}"))).collect();
    wait_event(
        &mut events,
        "a rate_limited answer",
        |e| matches!(e, Event::ServerError(error) if error.code == ErrorCode::RateLimited),
    )
    .await;
    for send in sends {
        acked(send).await;
    }
    assert_eq!(inbox_len(&redis, BOB), 8, "each written once");
    let mut texts = receive_texts(&mut deliveries, 8).await;
    texts.sort();
    assert_eq!(texts, (0..8).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn unavailable_is_retried_until_redis_is_back_and_written_once() {
    let mut redis = RedisServer::start_persistent();
    redis.create_chat(CHAT, &[ALICE, BOB]);
    let courier = Courier::start(&redis.url(), &[]);
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .connect()
        .expect("alice");
    let (_bob, mut deliveries) = client_of(&courier.ws_url(), BOB).connect().expect("bob");
    wait_open(&alice).await;
    let mut events = alice.events();

    redis.kill();
    let sent = alice.send(CHAT, "through the outage");
    wait_event(
        &mut events,
        "an unavailable answer",
        |e| matches!(e, Event::ServerError(error) if error.code == ErrorCode::Unavailable),
    )
    .await;
    redis.restart();
    acked(sent).await;
    assert_eq!(inbox_len(&redis, BOB), 1, "written once");
    assert_eq!(
        receive_texts(&mut deliveries, 1).await,
        ["through the outage"]
    );
    assert_next_is_only(&alice, &mut deliveries, "end").await;
}

#[tokio::test]
async fn the_outbox_resends_after_a_client_restart_and_delivers_exactly_once() {
    let redis = redis_with_chat();
    let mut courier = Courier::start(&redis.url(), &QUIET);
    let dir = tempfile::tempdir().expect("dir");
    let outbox = dir.path().join("alice.outbox");
    let (_bob, mut deliveries) = client_of(&courier.ws_url(), BOB).connect().expect("bob");
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .outbox_file(&outbox)
        .connect()
        .expect("alice");
    acked(alice.send(CHAT, "acked")).await;
    assert_eq!(receive_texts(&mut deliveries, 1).await, ["acked"]);
    support::wait_for_pending(&redis, BOB, "default", 0).await;

    // Written by courier, never acked to alice: stored with its time_key.
    let mut in_flight = None;
    write_then_kill_courier(&redis, &mut courier, BOB, || {
        in_flight = Some(alice.send(CHAT, "in-flight"));
    })
    .await;
    // Sent while courier is down: stored before any batch is formed.
    let offline = alice.send(CHAT, "offline");
    close(&alice).await;
    for pending in [in_flight.expect("sent"), offline] {
        assert!(
            matches!(
                outcome(pending).await,
                Err(SendError::Closed(Disconnect::ClosedByApp))
            ),
            "not acked before the close"
        );
    }

    restart(&mut courier);
    let (alice, _) = client_of(&courier.ws_url(), ALICE)
        .outbox_file(&outbox)
        .connect()
        .expect("alice again");
    let texts = receive_texts(&mut deliveries, 2).await;
    assert_eq!(texts, ["in-flight", "offline"], "each once, in order");
    assert_next_is_only(&alice, &mut deliveries, "end").await;
    assert_eq!(
        inbox_len(&redis, BOB),
        4,
        "the stored batch was not written twice"
    );
}
