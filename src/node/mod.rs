//! The shared state of one courier instance: what every connection and every HTTP
//! request of the instance uses, built once from the configuration.
//!
//! The node sits between the edges that speak to clients (`session` for WebSockets,
//! `api` for HTTP, both above it, reached from `server`) and the services it owns
//! (below it: `store`, `publish`, `auth`, `metrics`). Nothing below it imports it;
//! it holds the edges' settings through their leaf `settings` modules, which import
//! only the configuration.

mod connections;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::settings::ApiSettings;
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::publish::{PublishSettings, Publisher};
use crate::session::settings::SessionSettings;
use crate::store::notify::Notifier;
use crate::store::{RedisOptions, Retention, Store};

pub use connections::{ConnectionSlot, UserConnections};

/// How many connections may join at once. Enough to keep the command connection's
/// pipeline and the notifier's batched SUBSCRIBEs full (a join is one round trip);
/// few enough that a storm of 20,000 reconnecting clients queues in courier, not in
/// Redis, where the last joins would run into the command timeout.
pub const MAX_CONCURRENT_JOINS: usize = 256;

/// Everything the connections of one instance share.
pub struct Node {
    /// This instance's name (`COURIER_INSTANCE_ID`), the prefix of its consumer names.
    pub instance_id: String,
    /// Token validation, for `/ws` and the API's service tokens.
    pub auth: Authenticator,
    /// Redis commands.
    pub store: Store,
    /// Redis wake-ups: one subscription per locally connected user.
    pub notifier: Notifier,
    /// The send path of WebSocket clients and the HTTP API.
    pub publisher: Publisher,
    /// Prometheus metrics, served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Per-connection settings.
    pub session: SessionSettings,
    /// The HTTP API's settings.
    pub api: ApiSettings,
    /// WebSocket connections per user on this instance, capped.
    pub connections: Arc<UserConnections>,
    /// Cancelled by `server::run` when the shutdown signal comes: every session
    /// watches it and closes with 1001, and the notifier task ends.
    pub shutdown: CancellationToken,
    /// The session tasks (one per WebSocket connection, spawned at the upgrade), so
    /// shutdown can wait for them. Nobody else spawns on it.
    pub sessions: TaskTracker,
    /// How long shutdown waits for connections to close (`COURIER_DRAIN_TIMEOUT_MS`).
    pub drain_timeout: Duration,
    /// Connections joining (subscribing and running the join script) at once, at
    /// most [`MAX_CONCURRENT_JOINS`]: in a connect storm the others wait here, in
    /// order, rather than pile up in Redis's command queue past the command timeout.
    pub joins: Semaphore,
    /// The notifier's task: it ends when `shutdown` is cancelled, and [`Node::close`]
    /// aborts it in case it is stuck on Redis.
    notifier_task: JoinHandle<()>,
}

impl Node {
    /// Builds the instance's state from the configuration. Redis is connected lazily
    /// (the first command opens the connections), so only an unusable setting fails
    /// here: a key or CA file that cannot be read, a malformed Redis URL.
    pub fn open(config: &Config) -> Result<Self, ConfigError> {
        let auth = Authenticator::from_config(config)?;
        let redis = RedisOptions::from_config(config)?;
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(&redis, Retention::from(config), metrics.clone())
            .map_err(|e| ConfigError(format!("COURIER_REDIS_URL: {e}")))?;
        let shutdown = CancellationToken::new();
        let (notifier, notifier_task) = Notifier::start(&redis, metrics.clone(), shutdown.clone())
            .map_err(|e| ConfigError(format!("COURIER_REDIS_URL: {e}")))?;
        let publisher = Publisher::new(
            store.clone(),
            metrics.clone(),
            PublishSettings::from(config),
        );
        let instance_id = config
            .instance_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
        Ok(Self {
            instance_id,
            auth,
            store,
            notifier,
            publisher,
            metrics,
            session: SessionSettings::from(config),
            api: ApiSettings::from(config),
            connections: Arc::new(UserConnections::new(config.max_connections_per_user)),
            shutdown,
            sessions: TaskTracker::new(),
            drain_timeout: config.drain_timeout,
            joins: Semaphore::new(MAX_CONCURRENT_JOINS),
            notifier_task,
        })
    }

    /// Stops what the node runs in the background (the notifier task), once the
    /// server has drained.
    pub fn close(&self) {
        self.notifier_task.abort();
    }
}
