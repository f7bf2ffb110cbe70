//! Wake-ups: one pub/sub subscription per instance, fanned out to the connections.
//!
//! The [`Notifier`] owns a RESP3 connection (auto-reconnecting, resubscribing by
//! itself) subscribed to `notify:{user:<id>}` for every user with at least one
//! connection here. The send script publishes on the recipients' channels; a message
//! wakes every local connection of that user, which then reads its inbox. Wake-ups
//! carry no data: a lost one only delays delivery until the connection's safety poll,
//! and after the pub/sub connection comes back every connection is woken.
//!
//! Subscribing and unsubscribing go through one task in request order, batched into
//! single SUBSCRIBE/UNSUBSCRIBE commands, so a user leaving and another connection of
//! the same user arriving cannot race into a lost subscription.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{StoreError, StoreOptions, keys};
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
        options: &StoreOptions,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), StoreError> {
        let url = options.url.clone();
        let client = options.client(ProtocolVersion::RESP3)?;
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::from_redis(&e, &url))?;
        let (requests, request_rx) = mpsc::unbounded_channel();
        let notifier = Self {
            wakers: Arc::default(),
            next_id: Arc::default(),
            requests,
        };
        let task = NotifierTask {
            conn,
            url,
            wakers: notifier.wakers.clone(),
            subscribed: HashSet::new(),
            metrics,
            connected: true,
        };
        let handle = tokio::spawn(task.run(request_rx, push_rx, shutdown));
        Ok((notifier, handle))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wakers> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Number of users with a local connection.
    pub fn users(&self) -> usize {
        self.lock().len()
    }
}

/// The task behind [`Notifier`]: owns the pub/sub connection.
struct NotifierTask {
    conn: ConnectionManager,
    url: String,
    wakers: Arc<Mutex<Wakers>>,
    /// Users whose channel is subscribed in Redis.
    subscribed: HashSet<u64>,
    /// Counts reconnects.
    metrics: Arc<Metrics>,
    /// False between a disconnection and the next successful PING.
    connected: bool,
}

const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

impl NotifierTask {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<SyncRequest>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
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
                Some(push) = pushes.recv() => self.on_push(push),
                _ = health.tick() => self.check_health().await,
            }
        }
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, Wakers> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
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
            match self.conn.unsubscribe(channels).await {
                Ok(()) => to_unsubscribe.iter().for_each(|u| {
                    self.subscribed.remove(u);
                }),
                Err(e) => {
                    tracing::warn!(error = %super::redact_error(&e, &self.url), "pub/sub unsubscribe failed")
                }
            }
        }
        let mut result = Ok(());
        if !to_subscribe.is_empty() {
            let channels: Vec<String> = to_subscribe
                .iter()
                .map(|&u| keys::notify_channel(u))
                .collect();
            match self.conn.subscribe(channels).await {
                Ok(()) => self.subscribed.extend(to_subscribe.iter().copied()),
                Err(e) => result = Err(StoreError::from_redis(&e, &self.url)),
            }
        }
        for request in batch {
            let Some(done) = request.done else { continue };
            let answer = match &result {
                Err(StoreError::Unavailable(cause) | StoreError::Internal(cause))
                    if !self.subscribed.contains(&request.user) =>
                {
                    Err(StoreError::Unavailable(cause.clone()))
                }
                _ => Ok(()),
            };
            let _ = done.send(answer);
        }
    }

    fn on_push(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::Message => {
                let Some(user) = push.data.first().and_then(|channel| match channel {
                    redis::Value::BulkString(bytes) => keys::user_of_notify_channel(bytes),
                    _ => None,
                }) else {
                    return;
                };
                if let Some(list) = self.wakers().get(&user) {
                    list.iter().for_each(|(_, waker)| waker.notify_one());
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("pub/sub connection lost; reconnecting");
                self.connected = false;
            }
            _ => {}
        }
    }

    /// While disconnected, PINGs (which makes the connection manager reconnect and
    /// resubscribe); once back, wakes every connection, since notifications sent in
    /// between are lost.
    async fn check_health(&mut self) {
        if self.connected {
            return;
        }
        if redis::cmd("PING")
            .query_async::<()>(&mut self.conn)
            .await
            .is_ok()
        {
            tracing::info!("pub/sub connection back; waking every connection");
            self.connected = true;
            self.metrics.pubsub_reconnects.inc();
            for list in self.wakers().values() {
                list.iter().for_each(|(_, waker)| waker.notify_one());
            }
        }
    }
}
