//! Bounded Redis memory: inbox history kept for the retention window once every device
//! group acked it, never an unacked entry (except past the length cap, or past a device
//! group idle for `COURIER_DEVICE_IDLE_S`, and then counted), legacy lists bounded or
//! off. Windows are seconds long here; the waits send traffic until the trim shows.

mod support;

use std::time::Duration;

use redis::streams::StreamRangeReply;
use serde_json::Value;
use support::*;

const API_KEY: &str = "test-api-key-0123456789";
const INBOX: &str = "inbox:{user:2}";

/// Redis, chat 10 of users 1 and 2, and a courier with these settings.
fn setup(env: &[(&str, &str)]) -> (RedisServer, Courier) {
    let redis = RedisServer::start();
    redis.create_chat(10, &[1, 2]);
    let mut settings = vec![("COURIER_API_KEY", API_KEY)];
    settings.extend_from_slice(env);
    let courier = Courier::start(&redis.url(), &settings);
    (redis, courier)
}

/// The message ids in user 2's inbox, oldest first.
fn inbox_ids(redis: &RedisServer) -> Vec<u64> {
    let entries: StreamRangeReply = redis.cmd(&["XRANGE", INBOX, "-", "+"]);
    entries
        .ids
        .iter()
        .filter_map(|entry| entry.get::<u64>("id"))
        .collect()
}

/// Milliseconds since the entry of message `id` was added to user 2's inbox (Redis's
/// clock), or `None` when it is not there.
fn entry_age_ms(redis: &RedisServer, id: u64) -> Option<u64> {
    let entries: StreamRangeReply = redis.cmd(&["XRANGE", INBOX, "-", "+"]);
    let entry = entries
        .ids
        .iter()
        .find(|entry| entry.get::<u64>("id") == Some(id))?;
    let added: u64 = entry.id.split('-').next()?.parse().ok()?;
    let time: Vec<String> = redis.cmd(&["TIME"]);
    let now = time[0].parse::<u64>().ok()? * 1000 + time[1].parse::<u64>().ok()? / 1000;
    Some(now.saturating_sub(added))
}

/// The value of a counter sample of courier's `/metrics` (0 when absent).
async fn metric(courier: &Courier, sample: &str) -> u64 {
    let (status, text) = http_get(courier.addr, "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The `devices` of user 2's pending summary (`GET /api/v1/users/2/pending`).
async fn pending_devices(courier: &Courier) -> Vec<Value> {
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http_request(
        courier.addr,
        "GET",
        "/api/v1/users/2/pending",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let summary: Value = serde_json::from_str(&body).expect("JSON");
    summary["devices"].as_array().cloned().unwrap_or_default()
}

/// A wait long enough for windows of seconds on a loaded machine.
fn patiently(what: &str) -> Wait<'_> {
    Wait::new(what)
        .within(Duration::from_secs(40))
        .every(Duration::from_millis(200))
}

/// Sends one message from user 1 to chat 10 (acked to the sender) with the next
/// `time_key`, and acks it on each of `devices`; returns the message's id.
async fn send_and_ack(
    alice: &mut WsClient,
    time_key: &mut i64,
    devices: &mut [&mut WsClient],
) -> u64 {
    *time_key += 1;
    alice
        .send_acked(*time_key, 1, &[(10, &format!("m{time_key}"))])
        .await;
    let mut id = 0;
    for device in devices.iter_mut() {
        id = ids(&device.recv_and_ack(1).await)[0];
    }
    id
}

#[tokio::test]
async fn acked_history_older_than_the_window_is_trimmed() {
    let (redis, courier) = setup(&[("COURIER_HISTORY_RETENTION_S", "1")]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    let mut time_key = 0;
    let mut early = Vec::new();
    for _ in 0..3 {
        early.push(send_and_ack(&mut alice, &mut time_key, &mut [&mut bob]).await);
    }
    wait_for_pending(&redis, 2, "default", 0).await;
    assert_eq!(inbox_ids(&redis), early, "kept within the window");

    patiently("the acked entries to be trimmed once older than the window")
        .until(async || {
            send_and_ack(&mut alice, &mut time_key, &mut [&mut bob]).await;
            inbox_ids(&redis).first() > early.last()
        })
        .await;
    assert!(
        redis.xlen(INBOX) < 10,
        "only the last second's entries stay: {:?}",
        inbox_ids(&redis)
    );
    assert_eq!(
        metric(&courier, "courier_unacked_trimmed_total{reason=\"maxlen\"}").await,
        0
    );
}

#[tokio::test]
async fn unacked_entries_outlive_the_window_and_a_catching_up_device_gets_them_all() {
    let (redis, courier) = setup(&[("COURIER_HISTORY_RETENTION_S", "1")]);
    let mut alice = courier.connect(1).await;
    let mut laptop = courier.connect_device(2, "laptop").await;
    let mut phone = courier.connect_device(2, "phone").await;
    let mut time_key = 0;
    let mut read_by_both = Vec::new();
    for _ in 0..2 {
        read_by_both
            .push(send_and_ack(&mut alice, &mut time_key, &mut [&mut laptop, &mut phone]).await);
    }
    wait_for_pending(&redis, 2, "phone", 0).await;
    phone.close().await;

    let mut missed_by_phone = Vec::new();
    patiently("the entries both devices acked to be trimmed, and later ones to age")
        .until(async || {
            missed_by_phone.push(send_and_ack(&mut alice, &mut time_key, &mut [&mut laptop]).await);
            inbox_ids(&redis).first() > read_by_both.last()
                && entry_age_ms(&redis, missed_by_phone[0]).is_some_and(|age| age > 2_000)
        })
        .await;
    assert_eq!(
        inbox_ids(&redis),
        missed_by_phone,
        "every entry the phone has not acked is kept, even past the window"
    );

    let mut phone = courier.connect_device(2, "phone").await;
    let caught_up = ids(&phone.recv_and_ack(missed_by_phone.len()).await);
    assert_eq!(
        caught_up, missed_by_phone,
        "the phone gets everything it had not acked, in order"
    );
    assert_eq!(
        metric(
            &courier,
            "courier_unacked_trimmed_total{reason=\"idle_device\"}"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn an_idle_device_stops_holding_history_and_what_it_missed_is_counted() {
    let (redis, courier) = setup(&[
        ("COURIER_HISTORY_RETENTION_S", "1"),
        ("COURIER_DEVICE_IDLE_S", "2"),
    ]);
    let mut alice = courier.connect(1).await;
    let mut laptop = courier.connect_device(2, "laptop").await;
    courier.connect_device(2, "phone").await.close().await;
    wait_for("the phone's connection to leave", async || {
        consumers(&redis, 2, "phone") == 0
    })
    .await;

    let mut time_key = 0;
    let mut sent = Vec::new();
    for _ in 0..5 {
        sent.push(send_and_ack(&mut alice, &mut time_key, &mut [&mut laptop]).await);
    }
    patiently("the operator view to show the phone idle")
        .until(async || {
            let devices = pending_devices(&courier).await;
            devices
                .iter()
                .all(|d| d["idle"] == (d["device"] == "phone"))
        })
        .await;
    assert_eq!(inbox_ids(&redis), sent, "nothing is trimmed without a send");

    sent.push(send_and_ack(&mut alice, &mut time_key, &mut [&mut laptop]).await);
    let kept = inbox_ids(&redis);
    assert_eq!(
        kept,
        sent[5..],
        "the idle phone no longer holds back what the laptop acked"
    );
    assert_eq!(
        metric(
            &courier,
            "courier_unacked_trimmed_total{reason=\"idle_device\"}"
        )
        .await,
        5,
        "every entry trimmed past the idle phone is counted"
    );

    let mut phone = courier.connect_device(2, "phone").await;
    let now_read = ids(&phone.recv_and_ack(kept.len()).await);
    assert_eq!(now_read, kept, "back, the phone reads what is left");
}

#[tokio::test]
async fn entries_over_the_length_cap_are_trimmed_and_the_unacked_ones_counted() {
    let (redis, courier) = setup(&[("COURIER_STREAM_MAXLEN", "10")]);
    let mut alice = courier.connect(1).await;
    let mut laptop = courier.connect_device(2, "laptop").await;
    courier.connect_device(2, "phone").await.close().await;

    let mut time_key = 0;
    let mut sent = Vec::new();
    for _ in 0..15 {
        sent.push(send_and_ack(&mut alice, &mut time_key, &mut [&mut laptop]).await);
    }

    let kept = inbox_ids(&redis);
    assert_eq!(kept, sent[5..], "the newest 10 entries stay");
    assert_eq!(
        metric(&courier, "courier_unacked_trimmed_total{reason=\"maxlen\"}").await,
        5,
        "the phone had not acked the 5 trimmed entries; the laptop had"
    );
    let mut phone = courier.connect_device(2, "phone").await;
    assert_eq!(ids(&phone.recv_and_ack(10).await), kept);
}

#[tokio::test]
async fn legacy_lists_keep_only_their_newest_items() {
    let (redis, courier) = setup(&[("COURIER_LEGACY_LIST_MAXLEN", "3")]);
    let mut alice = courier.connect(1).await;

    alice.send_acked(1, 1, &[(10, "one"), (10, "two")]).await;
    alice
        .send_acked(2, 1, &[(10, "three"), (10, "four"), (10, "five")])
        .await;
    alice.send_acked(3, 1, &[(10, "six")]).await;

    let items: Vec<String> = redis.cmd(&["LRANGE", "user:2", "0", "-1"]);
    let texts: Vec<String> = items
        .iter()
        .map(|item| {
            let item: Value = serde_json::from_str(item).expect("JSON item");
            item["content_text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(texts, ["four", "five", "six"]);
    assert_eq!(
        redis.xlen(INBOX),
        6,
        "the inbox is not bound by the list's limit"
    );
}

#[tokio::test]
async fn legacy_lists_are_not_written_when_turned_off() {
    let (redis, courier) = setup(&[("COURIER_LEGACY_LIST_MAXLEN", "0")]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;

    alice.send_acked(1, 1, &[(10, "one"), (10, "two")]).await;

    assert_eq!(texts(&bob.recv_and_ack(2).await), ["one", "two"]);
    assert_eq!(redis.cmd::<u64>(&["EXISTS", "user:2"]), 0);
}
