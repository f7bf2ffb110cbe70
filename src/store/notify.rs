//! Wake-ups: one pub/sub subscription per instance, fanned out to the connections.
//!
//! The [`Notifier`] owns a RESP3 connection (auto-reconnecting, resubscribing by
//! itself) subscribed to `notify:{user:<id>}` for every user with at least one
//! connection here — a plain channel on a single node, a shard channel (`SSUBSCRIBE`,
//! on the node of the user's slot) on a Redis Cluster ([`RedisBackend`]). The send
//! script publishes on the recipients' channels; a message wakes every local
//! connection of that user, which then reads its inbox.
//!
//! Delivery rests on these wake-ups alone (there is no per-connection polling unless
//! configured), so every way one can be lost is closed here or in the session:
//! - a connection subscribes before its first read (`session::prepare`), so an entry
//!   is either read by that read or announced after the subscription;
//! - while the pub/sub connection is down, publishes are lost: once it is back (a
//!   PING answers), every local connection is woken once, spread over a short time
//!   ([`WAKE_CHUNK`] every [`WAKE_SPACING`]) so an instance does not stampede Redis;
//! - a half-dead connection (open, but no longer delivering) is found by a PING every
//!   [`PING_EVERY`]: one that fails replaces the connection, which then counts as
//!   lost and comes back as above;
//! - when a cluster moves a user's slot to another node, that node drops the shard
//!   subscription (an `sunsubscribe` push): the user is subscribed again, now on the
//!   new owner, and woken; a subscription that failed is retried every second, and
//!   its user woken once it holds;
//! - a wake-up whose read fails is not lost: the session retries the read.
//!
//! Subscribing and unsubscribing go through one task in request order, batched into
//! single SUBSCRIBE/UNSUBSCRIBE commands (on a cluster, one shard command per channel,
//! sent together), so a user leaving and another connection of the same user
//! arriving cannot race into a lost subscription. The wake-ups themselves are
//! dispatched apart from that task ([`dispatch`]): it awaits Redis, and on a cluster a
//! primary that stops answering would otherwise hold every wake-up, for every node,
//! behind its health PING.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{PushInfo, PushKind};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backend::RedisBackend;
use super::{RedisOptions, StoreError, keys};
use crate::metrics::Metrics;

/// Wakers of the local connections, by user.
type Wakers = HashMap<u64, Vec<(u64, Arc<Notify>)>>;

/// Handle to the instance's wake-up subscription. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    wakers: Arc<Mutex<Wakers>>,
    next_id: Arc<AtomicU64>,
    /// To the notifier task: users whose subscription may need to change. Sent by
    /// [`Notifier::subscribe`] and by dropped [`Subscription`]s; the task ends when
    /// shutdown is signalled.
    requests: mpsc::UnboundedSender<SyncRequest>,
}

struct SyncRequest {
    user: u64,
    /// Answered once the user's channel is subscribed (or that failed); `None` for
    /// an unsubscribe.
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// One connection's registration: woken on every notification for its user. Dropping
/// it unregisters, and the last one of a user unsubscribes the channel.
pub struct Subscription {
    user: u64,
    id: u64,
    waker: Arc<Notify>,
    notifier: Notifier,
}

impl Subscription {
    /// Completes at the next wake-up (or at once if one came since the last call).
    pub async fn notified(&self) {
        self.waker.notified().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut wakers = self.notifier.lock();
        if let Some(list) = wakers.get_mut(&self.user) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                wakers.remove(&self.user);
                let _ = self.notifier.requests.send(SyncRequest {
                    user: self.user,
                    done: None,
                });
            }
        }
    }
}

impl Notifier {
    /// Starts the notifier task. It connects lazily and runs until `shutdown`.
    pub fn start(
        options: &RedisOptions,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let url = options.url.clone();
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let conn = RedisBackend::open(options, Some(push_tx.clone()))?;
        let (requests, request_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let notifier = Self {
            wakers: Arc::default(),
            next_id: Arc::default(),
            requests,
        };
        let task = NotifierTask {
            conn,
            options: options.clone(),
            push_tx,
            last_ping: Instant::now(),
            url,
            wakers: notifier.wakers.clone(),
            subscribed: HashSet::new(),
            own_unsubscribes: HashMap::new(),
            metrics,
            connected: true,
        };
        tokio::spawn(dispatch(
            push_rx,
            task.conn.message_kind(),
            notifier.wakers.clone(),
            control_tx,
        ));
        let handle = tokio::spawn(task.run(request_rx, control_rx, shutdown));
        Ok((notifier, handle))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wakers> {
        lock(&self.wakers)
    }

    /// Registers a connection of `user` and returns once the user's channel is
    /// subscribed in Redis, so no notification published after this returns is
    /// missed.
    pub async fn subscribe(&self, user: u64) -> Result<Subscription, StoreError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(Notify::new());
        self.lock()
            .entry(user)
            .or_default()
            .push((id, waker.clone()));
        let subscription = Subscription {
            user,
            id,
            waker,
            notifier: self.clone(),
        };
        let (done, answer) = oneshot::channel();
        self.requests
            .send(SyncRequest {
                user,
                done: Some(done),
            })
            .map_err(|_| StoreError::Unavailable("notifier stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("notifier stopped".into()))??;
        Ok(subscription)
    }
}

/// The task behind [`Notifier`]: owns the pub/sub connection.
struct NotifierTask {
    conn: RedisBackend,
    /// To open a fresh connection when this one stops answering.
    options: RedisOptions,
    /// Where every connection it opens sends its pushes ([`dispatch`] reads them).
    push_tx: mpsc::UnboundedSender<PushInfo>,
    /// When the connection last answered a PING (or was opened).
    last_ping: Instant,
    url: String,
    wakers: Arc<Mutex<Wakers>>,
    /// Users whose channel is subscribed in Redis.
    subscribed: HashSet<u64>,
    /// Per user, confirmations still to come of UNSUBSCRIBEs we sent: an unsubscribe
    /// push beyond these comes from the server (a cluster slot moved away).
    own_unsubscribes: HashMap<u64, usize>,
    /// Counts reconnects.
    metrics: Arc<Metrics>,
    /// False between a disconnection and the next successful PING.
    connected: bool,
}

const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// How often a connected pub/sub connection is PINGed: one command per instance (per
/// primary on a cluster) every 5 s, whatever the number of connections.
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// Connections woken at a time when every one of them must be.
pub const WAKE_CHUNK: usize = 256;

/// The pause between two chunks of woken connections: 25,600 connections a second,
/// 20,000 within 0.8 s.
pub const WAKE_SPACING: Duration = Duration::from_millis(10);

/// Wakes the connections of each user a published message names, as the messages
/// arrive, and passes the other pushes (disconnections, unsubscribes) on to the
/// notifier task, in order. Apart from that task because it awaits Redis: a wake-up
/// needs nothing from Redis, and must not wait behind a node that stopped answering.
/// Ends when the pushes end or the notifier task has.
async fn dispatch(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    message_kind: PushKind,
    wakers: Arc<Mutex<Wakers>>,
    control: mpsc::UnboundedSender<PushInfo>,
) {
    while let Some(push) = pushes.recv().await {
        if push.kind == message_kind {
            if let Some(user) = user_of(&push) {
                wake(&wakers, user);
            }
        } else if control.send(push).is_err() {
            return;
        }
    }
}

/// The user a push's channel names (`notify:{user:<id>}`).
fn user_of(push: &PushInfo) -> Option<u64> {
    match push.data.first()? {
        redis::Value::BulkString(bytes) => keys::user_of_notify_channel(bytes),
        _ => None,
    }
}

/// The wakers, locked. A panic while they were locked leaves them usable (each change
/// is a push, a retain or a removal).
fn lock(wakers: &Mutex<Wakers>) -> std::sync::MutexGuard<'_, Wakers> {
    wakers.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes every local connection of `user`.
fn wake(wakers: &Mutex<Wakers>, user: u64) {
    if let Some(list) = lock(wakers).get(&user) {
        list.iter().for_each(|(_, waker)| waker.notify_one());
    }
}

impl NotifierTask {
    /// Serves subscription requests, the pushes other than wake-ups (`control`, from
    /// [`dispatch`]) and the health check, one at a time, until `shutdown`.
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<SyncRequest>,
        mut control: mpsc::UnboundedReceiver<PushInfo>,
        shutdown: CancellationToken,
    ) {
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(first) = requests.recv() => {
                    let mut batch = vec![first];
                    while let Ok(more) = requests.try_recv() {
                        batch.push(more);
                    }
                    self.sync(batch).await;
                }
                Some(push) = control.recv() => self.on_push(push).await,
                _ = health.tick() => self.check_health().await,
            }
        }
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, Wakers> {
        lock(&self.wakers)
    }

    /// Brings Redis subscriptions in line with the registered users named in `batch`,
    /// then answers the waiting subscribers.
    async fn sync(&mut self, batch: Vec<SyncRequest>) {
        let users: HashSet<u64> = batch.iter().map(|r| r.user).collect();
        let (to_subscribe, to_unsubscribe): (Vec<u64>, Vec<u64>) = {
            let wakers = self.wakers();
            let wanted = |u: &u64| wakers.contains_key(u);
            (
                users
                    .iter()
                    .copied()
                    .filter(|u| wanted(u) && !self.subscribed.contains(u))
                    .collect(),
                users
                    .iter()
                    .copied()
                    .filter(|u| !wanted(u) && self.subscribed.contains(u))
                    .collect(),
            )
        };
        if !to_unsubscribe.is_empty() {
            let channels: Vec<String> = to_unsubscribe
                .iter()
                .map(|&u| keys::notify_channel(u))
                .collect();
            match self.conn.unsubscribe(&channels).await {
                Ok(()) => to_unsubscribe.iter().for_each(|u| {
                    self.subscribed.remove(u);
                    *self.own_unsubscribes.entry(*u).or_default() += 1;
                }),
                Err(e) => {
                    tracing::warn!(error = %super::redact_error(&e, &self.url), "pub/sub unsubscribe failed")
                }
            }
        }
        let mut failure = None;
        if !to_subscribe.is_empty() {
            let channels: Vec<String> = to_subscribe
                .iter()
                .map(|&u| keys::notify_channel(u))
                .collect();
            let results = self.conn.subscribe(&channels).await;
            for (&user, result) in to_subscribe.iter().zip(results) {
                match result {
                    Ok(()) => {
                        self.subscribed.insert(user);
                    }
                    Err(e) => {
                        failure = Some(match StoreError::from_redis(&e, &self.url) {
                            StoreError::Unavailable(cause) | StoreError::Internal(cause) => cause,
                        })
                    }
                }
            }
            if let Some(cause) = &failure {
                tracing::debug!(%cause, "some wake-up subscriptions failed; retried every second");
            }
        }
        for request in batch {
            let Some(done) = request.done else { continue };
            let answer = match &failure {
                Some(cause) if !self.subscribed.contains(&request.user) => {
                    Err(StoreError::Unavailable(cause.clone()))
                }
                _ => Ok(()),
            };
            let _ = done.send(answer);
        }
    }

    /// A push other than a wake-up: a disconnection, or an unsubscribe.
    async fn on_push(&mut self, push: PushInfo) {
        if push.kind == PushKind::Disconnection {
            // On a cluster this may be one node of several, and its slots may come
            // back on a promoted replica: every subscription is made again (the
            // health check retries those that fail), and each user is woken once
            // subscribed.
            tracing::warn!("pub/sub connection lost; reconnecting");
            self.connected = false;
            self.subscribed.clear();
            self.own_unsubscribes.clear();
        } else if let Some(user) = user_of(&push)
            && self.conn.is_unsubscribe(&push.kind)
        {
            self.on_unsubscribed(user).await;
        }
    }

    /// A channel was unsubscribed: the confirmation of our own UNSUBSCRIBE (nothing
    /// to do), or the cluster moved the user's slot away from the node we were
    /// subscribed on. Then, if the user still has connections here, subscribe again
    /// (the client routes it to the slot's current owner) and wake them, since
    /// wake-ups may have been missed meanwhile.
    async fn on_unsubscribed(&mut self, user: u64) {
        if let Some(count) = self.own_unsubscribes.get_mut(&user) {
            *count -= 1;
            if *count == 0 {
                self.own_unsubscribes.remove(&user);
            }
            return;
        }
        self.subscribed.remove(&user);
        if !self.wakers().contains_key(&user) {
            return;
        }
        tracing::info!(
            user,
            "wake-up channel unsubscribed by Redis; subscribing again"
        );
        self.sync(vec![SyncRequest { user, done: None }]).await;
        self.wake(user);
    }

    fn wake(&self, user: u64) {
        wake(&self.wakers, user);
    }

    /// While disconnected, PINGs (which makes the connection reconnect and
    /// resubscribe); once back, wakes every connection, since notifications sent in
    /// between are lost. While connected, PINGs every [`PING_EVERY`] (a connection
    /// that fails to answer is replaced), and subscribes again the users whose
    /// subscription failed or was dropped by Redis, and wakes them.
    async fn check_health(&mut self) {
        let back = if !self.connected {
            if self.ping().await.is_err() {
                return;
            }
            tracing::info!("pub/sub connection back; subscribing again, waking every connection");
            self.connected = true;
            self.metrics.pubsub_reconnects.inc();
            true
        } else {
            self.conn.verify_primary().await;
            if self.last_ping.elapsed() >= PING_EVERY
                && let Err(e) = self.ping().await
            {
                tracing::warn!(
                    error = %super::redact_error(&e, &self.url),
                    "pub/sub connection did not answer PING; replacing it"
                );
                self.replace_connection();
                return;
            }
            false
        };
        let missing: Vec<u64> = self
            .wakers()
            .keys()
            .copied()
            .filter(|user| !self.subscribed.contains(user))
            .collect();
        if !missing.is_empty() {
            self.sync(
                missing
                    .iter()
                    .map(|&user| SyncRequest { user, done: None })
                    .collect(),
            )
            .await;
        }
        // Woken only once subscribed again, so that nothing published after their
        // read can go unannounced.
        if back {
            self.wake_everyone();
            return;
        }
        for user in missing {
            if self.subscribed.contains(&user) {
                self.wake(user);
            }
        }
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        redis::cmd("PING").query_async::<()>(&mut self.conn).await?;
        self.last_ping = Instant::now();
        Ok(())
    }

    /// Drops a connection that stopped answering (its subscriptions may be gone
    /// without a word) for a fresh one: the health check then PINGs it, subscribes
    /// every user again and wakes every connection, as after any disconnection.
    fn replace_connection(&mut self) {
        match RedisBackend::open(&self.options, Some(self.push_tx.clone())) {
            Ok(conn) => self.conn = conn,
            Err(e) => tracing::warn!(error = %e, "cannot open a new pub/sub connection"),
        }
        self.connected = false;
        self.subscribed.clear();
        self.own_unsubscribes.clear();
    }

    /// Wakes every local connection once: at once when they are few, else
    /// [`WAKE_CHUNK`] at a time every [`WAKE_SPACING`], so their reads reach Redis
    /// spread out rather than all in the same instant.
    fn wake_everyone(&self) {
        let wakers: Vec<Arc<Notify>> = self
            .wakers()
            .values()
            .flatten()
            .map(|(_, waker)| waker.clone())
            .collect();
        if wakers.len() <= WAKE_CHUNK {
            wakers.iter().for_each(|waker| waker.notify_one());
            return;
        }
        tokio::spawn(async move {
            let mut chunks = wakers.chunks(WAKE_CHUNK).peekable();
            while let Some(chunk) = chunks.next() {
                chunk.iter().for_each(|waker| waker.notify_one());
                if chunks.peek().is_some() {
                    tokio::time::sleep(WAKE_SPACING).await;
                }
            }
        });
    }
}
