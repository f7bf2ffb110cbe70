//! A Redis Cluster connection that heals itself after a whole-cluster outage.
//!
//! redis-rs 1.8's async cluster connection can stay at "No connections found"
//! (`ClusterConnectionNotFound`) for good once every node was down at the same time,
//! even after all of them are back, while spinning a core (seen by running the core
//! test suite against a cluster restarted as a whole; upstream redis-rs#2277 describes
//! the same family of failures). [`HealingCluster`] runs every command on the current
//! connection and, when one fails that way, replaces it with a fresh one built from
//! the same client — which rediscovers the cluster from the seed nodes — at most once
//! per [`REPLACE_INTERVAL`], so an outage that lasts costs one lazy connection per
//! interval and nothing else.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisFuture, RedisResult, Value};

/// The shortest time between two replacements of the connection.
pub const REPLACE_INTERVAL: Duration = Duration::from_secs(1);

/// A cluster connection shared by every clone, replaced when it cannot recover.
#[derive(Clone)]
pub struct HealingCluster {
    shared: Arc<Shared>,
}

struct Shared {
    /// False for a connection carrying subscriptions, which a replacement would
    /// silently lose (the notifier reconnects its own and subscribes again).
    replaceable: bool,
    client: ClusterClient,
    config: ClusterConfig,
    current: RwLock<ClusterConnection>,
    /// When the current connection was created.
    created: Mutex<Instant>,
}

impl HealingCluster {
    /// A pending connection of `client` (it connects with the first command),
    /// replaced when it cannot recover if `replaceable`.
    pub fn new(client: ClusterClient, config: ClusterConfig, replaceable: bool) -> Self {
        let current = client.get_pending_async_connection_with_config(config.clone());
        Self {
            shared: Arc::new(Shared {
                replaceable,
                client,
                config,
                current: RwLock::new(current),
                created: Mutex::new(Instant::now()),
            }),
        }
    }

    /// The connection to use now (a cheap handle onto its background task).
    pub fn current(&self) -> ClusterConnection {
        match self.shared.current.read() {
            Ok(conn) => conn.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Looks at a command's result: a `ClusterConnectionNotFound` replaces the
    /// connection, unless it was replaced less than [`REPLACE_INTERVAL`] ago.
    fn observe<T>(&self, result: &RedisResult<T>) {
        let Err(error) = result else { return };
        if !self.shared.replaceable || error.kind() != ErrorKind::ClusterConnectionNotFound {
            return;
        }
        let mut created = match self.shared.created.lock() {
            Ok(created) => created,
            Err(poisoned) => poisoned.into_inner(),
        };
        if created.elapsed() < REPLACE_INTERVAL {
            return;
        }
        let fresh = self
            .shared
            .client
            .get_pending_async_connection_with_config(self.shared.config.clone());
        match self.shared.current.write() {
            Ok(mut conn) => *conn = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        *created = Instant::now();
        tracing::warn!("cluster connection found no node; replaced it with a fresh one");
    }
}

impl ConnectionLike for HealingCluster {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.current().req_packed_command(cmd).await;
            self.observe(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .current()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.observe(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
