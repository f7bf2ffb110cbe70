//! courier on a Redis Cluster (`redis+cluster://`): three primaries started by the
//! harness (plus a replica each for the failover test). What only a cluster has:
//! fan-out and dedup across users placed on different primaries, several instances
//! sharing the cluster, a partial failure retried, a primary that stops answering
//! (the others' users still served), TLS, a slot migration and a primary failover
//! under traffic. (The whole core suite also runs, unchanged, against a
//! cluster: `COURIER_TEST_REDIS=cluster`, the second pass of `scripts/test`.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Starts courier on the cluster. There is no safety poll (off by default), so only
/// wake-ups (sharded pub/sub) can explain a delivery.
fn courier_on(cluster: &RedisCluster, env: &[(&str, &str)]) -> Courier {
    Courier::start(&cluster.url(), env)
}

/// A cluster, a courier on it, and chat 10 of `count` users whose keys live on
/// pairwise different primaries.
fn setup(count: usize) -> (RedisCluster, Courier, Vec<u64>) {
    let cluster = RedisCluster::start();
    let courier = courier_on(&cluster, &[]);
    let users = cluster.users_on_distinct_primaries(1, count);
    cluster.create_chat(10, &users);
    (cluster, courier, users)
}

#[tokio::test]
async fn fan_out_across_slots_gets_one_global_id_and_a_wake_up_on_every_node() {
    let (cluster, courier, users) = setup(3);
    let (alice, bob, carol) = (users[0], users[1], users[2]);
    let mut to_bob = courier.connect(bob).await;
    let mut to_carol = courier.connect(carol).await;
    let mut from_alice = courier.connect(alice).await;

    from_alice
        .send_acked(7, alice, &[(10, "hi"), (10, "there")])
        .await;

    let at_bob = to_bob.recv_messages(2).await.0;
    let at_carol = to_carol.recv_messages(2).await.0;
    assert_eq!(
        at_bob, at_carol,
        "same messages, same ids at every recipient"
    );
    assert_eq!(texts(&at_bob), ["hi", "there"]);
    let ids = ids(&at_bob);
    assert_eq!(ids[1], ids[0] + 1, "consecutive ids within a batch");
    assert_eq!(cluster.xlen(&format!("inbox:{{user:{alice}}}")), 0);
    assert_eq!(cluster.cmd::<u64>(&["LLEN", &format!("user:{bob}")]), 2);
    let dedup: String = cluster.cmd(&["GET", &format!("dedup:{{user:{alice}}}:7")]);
    assert_eq!(
        dedup,
        ids[0].to_string(),
        "dedup record (the first id) written last"
    );
    let marker: String = cluster.cmd(&["GET", &format!("dedup:{{user:{carol}}}:from:{alice}:7")]);
    assert_eq!(
        marker, dedup,
        "per-recipient marker in the recipient's slot"
    );
    assert_eq!(
        cluster.cmd::<u64>(&["EXISTS", &format!("dedup:{{user:{alice}}}:7:ids")]),
        0,
        "the id reservation is dropped once the batch is written"
    );
    let ttl: i64 = cluster.cmd(&["TTL", &format!("dedup:{{user:{bob}}}:from:{alice}:7")]);
    assert!(
        ttl > 0 && ttl <= 300,
        "markers expire with the window: {ttl}"
    );
}

#[tokio::test]
async fn offline_messages_are_delivered_on_connect_and_acked_ones_never_again() {
    let (cluster, courier, users) = setup(2);
    let (alice, bob) = (users[0], users[1]);
    let mut from_alice = courier.connect(alice).await;
    from_alice
        .send_acked(1, alice, &[(10, "while you were away")])
        .await;

    let mut to_bob = courier.connect(bob).await;
    assert_eq!(
        texts(&to_bob.recv_and_ack(1).await),
        ["while you were away"]
    );
    wait_for("the ack to land", async || {
        cluster.pending(bob, "default") == 0
    })
    .await;
    to_bob.close().await;

    from_alice.send_acked(2, alice, &[(10, "second")]).await;
    let mut to_bob = courier.connect(bob).await;
    assert_eq!(
        texts(&to_bob.recv_batch().await.messages),
        ["second"],
        "only what was not acked"
    );
}

#[tokio::test]
async fn unacked_entries_come_back_after_reconnect_with_the_same_ids_on_each_device() {
    let (cluster, courier, users) = setup(2);
    let (alice, bob) = (users[0], users[1]);
    let mut from_alice = courier.connect(alice).await;
    let mut phone = courier.connect_device(bob, "phone").await;
    let mut laptop = courier.connect_device(bob, "laptop").await;

    from_alice
        .send_acked(1, alice, &[(10, "a"), (10, "b")])
        .await;
    let on_phone = phone.recv_messages(2).await.0;
    let on_laptop = laptop.recv_and_ack(2).await;
    assert_eq!(on_phone, on_laptop, "each device gets every message");
    wait_for("the laptop's ack", async || {
        cluster.pending(bob, "laptop") == 0
    })
    .await;
    phone.close().await;

    let mut phone = courier.connect_device(bob, "phone").await;
    let again = phone.recv_messages(2).await.0;
    assert_eq!(ids(&again), ids(&on_phone), "same global ids on redelivery");
    assert_eq!(cluster.pending(bob, "phone"), 2, "claimed, not duplicated");
    assert_eq!(cluster.pending(bob, "laptop"), 0, "the laptop's acks stand");
}

#[tokio::test]
async fn resent_time_key_is_acked_again_and_not_a_member_writes_nothing() {
    let cluster = RedisCluster::start();
    let courier = courier_on(&cluster, &[]);
    let users = cluster.users_on_distinct_primaries(1, 3);
    let (alice, bob, carol) = (users[0], users[1], users[2]);
    cluster.create_chat(10, &[alice, bob]);
    cluster.create_chat(11, &[bob, carol]);
    let mut from_alice = courier.connect(alice).await;

    from_alice
        .send_batch(5, alice, &[(10, "fine"), (11, "not my chat")])
        .await;
    let error = from_alice.expect_error("not_a_member").await;
    assert_eq!(error["time_key"], 5);
    for key in [
        format!("inbox:{{user:{bob}}}"),
        format!("user:{bob}"),
        format!("inbox:{{user:{carol}}}"),
        "message:last_id".to_string(),
    ] {
        assert_eq!(cluster.cmd::<u64>(&["EXISTS", &key]), 0, "{key} written");
    }

    from_alice.send_acked(42, alice, &[(10, "once")]).await;
    from_alice.send_acked(42, alice, &[(10, "once")]).await;
    assert_eq!(cluster.xlen(&format!("inbox:{{user:{bob}}}")), 1);
    assert_eq!(cluster.cmd::<u64>(&["LLEN", &format!("user:{bob}")]), 1);
}

/// An API call with the test key; returns the status and the JSON body.
async fn api(
    courier: &Courier,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let headers = [("Authorization", "Bearer test-api-key-0123456789")];
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = http_request(courier.addr, method, path, &headers, &body).await;
    (status, serde_json::from_str(&text).expect("a JSON body"))
}

#[tokio::test]
async fn http_publish_dead_letters_and_replay_work_on_a_cluster() {
    let cluster = RedisCluster::start();
    let courier = courier_on(
        &cluster,
        &[
            ("COURIER_API_KEY", "test-api-key-0123456789"),
            ("COURIER_ACK_TIMEOUT_MS", "200"),
            ("COURIER_MAX_DELIVERIES", "2"),
        ],
    );
    let users = cluster.users_on_distinct_primaries(1, 2);
    let (alice, bob) = (users[0], users[1]);
    cluster.create_chat(10, &users);
    let mut to_bob = courier.connect(bob).await;
    let batch = json!({"time_key": 9, "messages": [
        {"sender_id": alice, "chat_id": 10, "content_text": "poison"}]});
    let (status, body) = api(&courier, "POST", "/api/v1/messages", batch.clone()).await;
    assert_eq!(status, 202, "{body}");
    let id = body["first_id"].as_u64().expect("first_id");
    let (status, again) = api(&courier, "POST", "/api/v1/messages", batch).await;
    assert_eq!((status, again["status"].as_str()), (202, Some("duplicate")));
    assert_eq!(again["first_id"], body["first_id"]);

    for _ in 0..2 {
        assert_eq!(ids(&to_bob.recv_batch().await.messages), [id]);
    }
    let dead = format!("dead:{{user:{bob}}}");
    wait_for("the dead letter", async || cluster.xlen(&dead) == 1).await;
    let (status, summary) = api(
        &courier,
        "GET",
        &format!("/api/v1/users/{bob}/pending"),
        json!(null),
    )
    .await;
    assert_eq!(
        (status, summary["dead_letters"].as_u64()),
        (200, Some(1)),
        "{summary}"
    );

    // Replay publishes the wake-up with SPUBLISH on the user's shard channel.
    let path = format!("/api/v1/users/{bob}/dead-letters/replay");
    let (status, body) = api(&courier, "POST", &path, json!(null)).await;
    assert_eq!(
        (status, body["replayed"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let replayed = to_bob.recv_batch().await;
    assert_eq!(ids(&replayed.messages), [id]);
}

#[tokio::test]
async fn instances_share_nothing_but_the_cluster() {
    let cluster = RedisCluster::start();
    let east = courier_on(&cluster, &[("COURIER_INSTANCE_ID", "east")]);
    let mut west = courier_on(&cluster, &[("COURIER_INSTANCE_ID", "west")]);
    let users = cluster.users_on_distinct_primaries(1, 2);
    let (alice, bob) = (users[0], users[1]);
    cluster.create_chat(10, &users);
    let mut from_alice = east.connect(alice).await;
    let mut to_bob = west.connect(bob).await;

    // A send on one instance wakes the recipient on the other.
    from_alice.send_acked(1, alice, &[(10, "across")]).await;
    assert_eq!(texts(&to_bob.recv_and_ack(1).await), ["across"]);
    wait_for("the ack", async || cluster.pending(bob, "default") == 0).await;

    // The device moves to the other instance and gets exactly its pending entries.
    from_alice
        .send_acked(2, alice, &[(10, "p1"), (10, "p2")])
        .await;
    to_bob.recv_messages(2).await;
    to_bob.close().await;
    let mut to_bob = east.connect(bob).await;
    assert_eq!(texts(&to_bob.recv_and_ack(2).await), ["p1", "p2"]);
    wait_for("the acks", async || cluster.pending(bob, "default") == 0).await;
    to_bob.close().await;

    // An instance dies with entries pending: the device's next connection, on the
    // surviving instance, heals it.
    let mut to_bob = west.connect(bob).await;
    from_alice.send_acked(3, alice, &[(10, "orphan")]).await;
    to_bob.recv_messages(1).await;
    west.signal("KILL");
    west.wait_exit();
    let mut to_bob = east.connect(bob).await;
    assert_eq!(texts(&to_bob.recv_and_ack(1).await), ["orphan"]);
    wait_for("the ack", async || cluster.pending(bob, "default") == 0).await;
}

#[tokio::test]
async fn a_send_that_failed_on_one_node_is_completed_by_its_retry_with_the_same_ids() {
    let mut cluster = RedisCluster::start();
    let courier = courier_on(&cluster, &[("COURIER_REDIS_TIMEOUT_MS", "1000")]);
    // Every send needs the id counter's and the chat's nodes: Alice shares them,
    // Carol's is another.
    let counter = cluster.primary_of_slot(cluster.slot_of("message:last_id"));
    let mut users = cluster.users_on_distinct_primaries(1, 3);
    users.sort_by_key(|&user| cluster.primary_of_user(user) != counter);
    let (alice, bob, carol) = (users[0], users[1], users[2]);
    let chat = (10..)
        .find(|c| cluster.primary_of_slot(cluster.slot_of(&format!("chat:{c}"))) == counter)
        .expect("a chat on the counter's node");
    cluster.create_chat(chat, &users);
    let mut from_alice = courier.connect(alice).await;
    let mut to_bob = courier.connect(bob).await;
    from_alice.send_acked(1, alice, &[(chat, "warm-up")]).await;
    to_bob.recv_and_ack(1).await;

    // Carol's node goes down: Bob's slot is written, Carol's is not, and the sender
    // is told to retry.
    let carols_node = cluster.primary_of_user(carol);
    cluster.nodes[carols_node].kill();
    from_alice.send_batch(2, alice, &[(chat, "split")]).await;
    let error = from_alice.expect_error("unavailable").await;
    assert_eq!(error["time_key"], 2);
    assert_eq!(texts(&to_bob.recv_and_ack(1).await), ["split"]);
    assert_eq!(
        cluster.cmd::<u64>(&["EXISTS", &format!("dedup:{{user:{alice}}}:2")]),
        0,
        "no dedup record while a recipient is missing"
    );

    cluster.nodes[carols_node].restart();
    cluster.wait_ready();
    Wait::new("the retry to succeed")
        .every(Duration::from_millis(100))
        .until(async || {
            from_alice.send_batch(2, alice, &[(chat, "split")]).await;
            let frame = from_alice.recv_json().await;
            if frame != json!({"type": "ack", "time_key": 2}) {
                assert_eq!(frame["code"], "unavailable", "{frame}");
            }
            frame == json!({"type": "ack", "time_key": 2})
        })
        .await;

    let at_bob = cluster.inbox_ids(bob);
    let at_carol = cluster.inbox_ids(carol);
    assert_eq!(
        at_bob.len(),
        2,
        "Bob's copy was not written twice: {at_bob:?}"
    );
    assert_eq!(at_carol.len(), 1, "Carol got it once: {at_carol:?}");
    assert_eq!(at_carol[0], at_bob[1], "one id for every recipient");
    let mut to_carol = courier.connect(carol).await;
    assert_eq!(texts(&to_carol.recv_batch().await.messages), ["split"]);
}

#[tokio::test]
async fn a_primary_that_stops_answering_holds_back_only_its_own_users() {
    let cluster = RedisCluster::start();
    // Two commands in flight per primary, and a command timeout longer than the
    // test: what waits on the paused primary stays stuck while the test runs.
    let courier = courier_on(
        &cluster,
        &[
            ("COURIER_REDIS_MAX_INFLIGHT", "2"),
            ("COURIER_REDIS_TIMEOUT_MS", "30000"),
        ],
    );
    // Every send takes an id from the counter's primary: another one is paused.
    let healthy = cluster.primary_of_slot(cluster.slot_of("message:last_id"));
    let paused = (0..cluster.nodes.len())
        .find(|&node| node != healthy)
        .expect("three primaries");
    let cluster_ref = &cluster;
    let users_on =
        |node: usize| (1..).filter(move |&user| cluster_ref.primary_of_user(user) == node);
    let chats_on = |node: usize| {
        (100..).filter(move |&chat| {
            cluster_ref.primary_of_slot(cluster_ref.slot_of(&format!("chat:{chat}"))) == node
        })
    };
    let healthy_users: Vec<u64> = users_on(healthy).take(6).collect();
    let victim = users_on(paused)
        .next()
        .expect("a user on the paused primary");
    let mut chats = chats_on(healthy);
    let (alice, bob, senders) = (healthy_users[0], healthy_users[1], &healthy_users[2..]);
    let alice_and_bob = chats.next().expect("a chat");
    cluster.create_chat(alice_and_bob, &[alice, bob]);
    let mut to_bob = courier.connect(bob).await;
    let mut from_alice = courier.connect(alice).await;
    // The first send loads the scripts on every node, the paused one included.
    from_alice
        .send_acked(1, alice, &[(alice_and_bob, "warm-up")])
        .await;
    to_bob.recv_and_ack(1).await;
    let mut stuck = Vec::new();
    for &sender in senders {
        let chat = chats.next().expect("a chat");
        cluster.create_chat(chat, &[sender, victim]);
        stuck.push((courier.connect(sender).await, chat, sender));
    }

    cluster.nodes[paused].cmd::<()>(&["CLIENT", "PAUSE", "20000", "ALL"]);
    // Four writes to the victim's inbox: more than its primary's two turns.
    for (client, chat, sender) in &mut stuck {
        client
            .send_batch(1, *sender, &[(*chat, "to the paused primary")])
            .await;
    }
    from_alice
        .send_batch(2, alice, &[(alice_and_bob, "hello")])
        .await;
    let delivered = tokio::time::timeout(Duration::from_secs(10), to_bob.recv_and_ack(1))
        .await
        .expect("Bob's message arrives while another primary is paused");
    assert_eq!(texts(&delivered), ["hello"]);
    assert_eq!(
        from_alice.recv_json().await,
        json!({"type": "ack", "time_key": 2})
    );
}

#[tokio::test]
async fn a_tls_cluster_is_reached_with_rediss_cluster_and_a_private_ca() {
    let cluster = RedisCluster::start_tls();
    let ca_file = cluster.ca_file();
    let courier = courier_on(&cluster, &[("COURIER_REDIS_CA_FILE", &ca_file)]);
    let users = cluster.users_on_distinct_primaries(1, 3);
    cluster.create_chat(10, &users);
    let mut to_bob = courier.connect(users[1]).await;
    let mut to_carol = courier.connect(users[2]).await;
    let mut from_alice = courier.connect(users[0]).await;

    from_alice.send_acked(1, users[0], &[(10, "sealed")]).await;
    assert_eq!(texts(&to_bob.recv_batch().await.messages), ["sealed"]);
    assert_eq!(texts(&to_carol.recv_batch().await.messages), ["sealed"]);
    let (status, _) = http_get(courier.addr, "/readyz").await;
    assert_eq!(status, 200, "every node answers PING over TLS");
}

/// Starts a sender task that keeps sending one-message batches to chat 10, retrying
/// each `unavailable` with the same `time_key` until acked, until told to stop; it
/// returns the texts acked. The counter it returns counts the acks as they come.
fn spawn_sender(courier: &Courier, sender: u64) -> Sender {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let progress = Arc::new(AtomicUsize::new(0));
    let acks = progress.clone();
    let url = format!("{}?device=default", courier.ws_url());
    let task = tokio::spawn(async move {
        let mut client = WsClient::connect_with_header(&url, "token", &token(sender))
            .await
            .expect("connect the sender");
        let mut acked = Vec::new();
        let mut retries = 0;
        for n in 1i64.. {
            if *stop.borrow() {
                break;
            }
            let text = format!("m{n}");
            loop {
                client.send_batch(n, sender, &[(10, &text)]).await;
                let frame = client.recv_json().await;
                if frame == json!({"type": "ack", "time_key": n}) {
                    break;
                }
                assert_eq!(frame["code"], "unavailable", "{frame}");
                retries += 1;
                assert!(retries < 400, "too many retries");
                // A client's pause before it retries: part of the traffic, not a wait.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acked.push(text);
            acks.fetch_add(1, Ordering::Relaxed);
            // The sending pace (about 100 batches/s), not a wait.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("{} batches acked, {retries} retries", acked.len());
        acked
    });
    Sender {
        stop: stop_tx,
        task,
        progress,
    }
}

/// A running [`spawn_sender`].
struct Sender {
    /// Set to true to stop the sender after its current batch.
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<String>>,
    /// Batches acked so far.
    progress: Arc<AtomicUsize>,
}

impl Sender {
    fn acked_so_far(&self) -> usize {
        self.progress.load(Ordering::Relaxed)
    }
}

/// Waits until the sender has had `more` batches acked.
async fn wait_for_acks(sender: &Sender, more: usize, what: &str) {
    let target = sender.acked_so_far() + more;
    wait_for(what, async || sender.acked_so_far() >= target).await;
}

/// Stops the sender and returns its acked texts; if it failed, fails with the
/// courier's warnings.
async fn finish(sender: Sender, courier: &Courier) -> Vec<String> {
    let _ = sender.stop.send(true);
    match sender.task.await {
        Ok(acked) => acked,
        Err(e) => {
            let log = courier.log_text();
            let warnings: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            panic!("the sender failed: {e}\n{}", warnings.join("\n"));
        }
    }
}

/// Receives and acks until every text of `expected` arrived; returns the id each
/// text was delivered with (redeliveries must repeat the same id).
async fn receive_all(client: &mut WsClient, expected: &[String]) -> BTreeMap<String, u64> {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let wanted: BTreeSet<&String> = expected.iter().collect();
    while !wanted.iter().all(|t| seen.contains_key(*t)) {
        let batch = client.recv_batch().await;
        client.ack(batch.time_key).await;
        for message in batch.messages {
            let text = message["content_text"].as_str().expect("text").to_string();
            let id = message["id"].as_u64().expect("id");
            if let Some(earlier) = seen.insert(text.clone(), id) {
                assert_eq!(earlier, id, "{text} redelivered with another id");
            }
        }
    }
    seen
}

/// After traffic from `sender` to chat 10 (of `sender` and the two recipients):
/// each recipient's connection receives every acked text, with the same id at both;
/// each inbox holds each acked text exactly once; and a new send still wakes both.
async fn assert_every_acked_send_arrived_once(
    cluster: &RedisCluster,
    courier: &Courier,
    sender: u64,
    mut recipients: [(u64, &mut WsClient); 2],
    acked: &[String],
) {
    let mut delivered = Vec::new();
    for (user, client) in recipients.iter_mut() {
        delivered.push(receive_all(client, acked).await);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for text in cluster.inbox_field(*user, "content_text") {
            *counts.entry(text).or_default() += 1;
        }
        for text in acked {
            assert_eq!(counts.get(text), Some(&1), "{text} in user {user}'s inbox");
        }
    }
    assert_eq!(
        delivered[0], delivered[1],
        "one id per message at every recipient"
    );

    let mut from_sender = courier.connect(sender).await;
    from_sender.send_acked(-1, sender, &[(10, "after")]).await;
    for (_, client) in recipients {
        receive_all(client, &["after".to_string()]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_under_traffic_loses_no_acked_send() {
    let (cluster, courier, users) = setup(3);
    let (alice, bob, carol) = (users[0], users[1], users[2]);
    let mut to_bob = courier.connect(bob).await;
    let mut to_carol = courier.connect(carol).await;

    let sender = spawn_sender(&courier, alice);
    wait_for_acks(&sender, 10, "traffic to flow before the migration").await;
    // Bob's slot (his inbox, list, markers, wake-up channel), then Alice's (her dedup
    // records and reservations) move to another primary, one key at a time.
    let moves = [
        (bob, cluster.primary_of_user(carol)),
        (alice, cluster.primary_of_user(bob)),
    ];
    for (user, target) in moves {
        let slot = cluster.slot_of(&format!("{{user:{user}}}"));
        let (started, before) = (Instant::now(), sender.acked_so_far());
        let moved = tokio::task::block_in_place(|| {
            cluster.migrate_slot(slot, target, Duration::from_millis(20))
        });
        let during = sender.acked_so_far() - before;
        eprintln!(
            "slot {slot} of user {user}: {moved} keys moved in {:?}, {during} batches acked meanwhile",
            started.elapsed()
        );
        assert_eq!(cluster.primary_of_user(user), target);
        // A send whose keys are split between the two nodes is answered TRYAGAIN
        // and retried by the client until the slot has moved: sends stall, not fail.
        wait_for_acks(&sender, 10, "sends to resume after the migration").await;
    }
    let acked = finish(sender, &courier).await;
    // Bob's wake-ups now come from his slot's new node.
    assert_every_acked_send_arrived_once(
        &cluster,
        &courier,
        alice,
        [(bob, &mut to_bob), (carol, &mut to_carol)],
        &acked,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failover_under_traffic_loses_no_acked_send() {
    let mut cluster = RedisCluster::start_with_replicas();
    let courier = courier_on(&cluster, &[("COURIER_REDIS_TIMEOUT_MS", "1000")]);
    let users = cluster.users_on_distinct_primaries(1, 3);
    let (alice, bob, carol) = (users[0], users[1], users[2]);
    cluster.create_chat(10, &users);
    let mut to_bob = courier.connect(bob).await;
    let mut to_carol = courier.connect(carol).await;
    let bobs_primary = cluster.primary_of_user(bob);
    let bobs_replica = cluster.replica_of(bobs_primary);

    let sender = spawn_sender(&courier, alice);
    wait_for_acks(&sender, 10, "traffic to flow before the failover").await;
    let started = Instant::now();
    cluster.nodes[bobs_primary].kill();
    Wait::new("the replica to take over")
        .every(Duration::from_millis(50))
        .until(async || tokio::task::block_in_place(|| cluster.nodes[bobs_replica].is_primary()))
        .await;
    eprintln!("replica promoted {:?} after the kill", started.elapsed());
    wait_for_acks(&sender, 20, "sends to resume after the failover").await;
    let acked = finish(sender, &courier).await;
    assert_eq!(cluster.primary_of_user(bob), bobs_replica);
    assert_every_acked_send_arrived_once(
        &cluster,
        &courier,
        alice,
        [(bob, &mut to_bob), (carol, &mut to_carol)],
        &acked,
    )
    .await;
}
