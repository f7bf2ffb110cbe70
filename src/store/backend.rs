//! The one place that knows whether Redis is a single node or a Cluster.
//!
//! [`Topology`] is what `COURIER_REDIS_URL` names: `redis://` / `rediss://` for one
//! server, `redis+cluster://` / `rediss+cluster://` with a comma-separated list of seed
//! nodes for a Redis Cluster, `redis+sentinel://…/<master-name>` for a primary found
//! through its sentinels (a single node that moves on a failover,
//! `sentinel_conn.rs`). [`RedisBackend`] is the connection of any kind behind
//! `redis::aio::ConnectionLike`, so every [`super::Store`] command and script runs
//! unchanged on both; what differs is said here once:
//!
//! - pub/sub: `SUBSCRIBE`/`PUBLISH` on a single node, sharded `SSUBSCRIBE`/`SPUBLISH`
//!   on a cluster (a shard channel lives on the node of its slot, so wake-ups scale
//!   with the cluster instead of being broadcast to every node);
//! - the send strategy ([`RedisBackend::is_cluster`]): one atomic script on a single
//!   node, one atomic script per recipient slot on a cluster (`send.rs`).
//!
//! The cluster client follows `MOVED`/`ASK` redirects, refreshes its slot map, and
//! retries within the command timeout; scripts missing on a node (`NOSCRIPT`, e.g. a
//! promoted replica) are loaded on every node and run again by `Script::invoke_async`.
//! The command connection is replaced when it stops finding any node after a
//! whole-cluster outage (`cluster_conn.rs`).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{
    Client, Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind, RedisError,
    RedisFuture, RedisResult, TlsCertificates, Value,
};
use tokio::sync::mpsc;

use super::StoreError;
use super::cluster_conn::HealingCluster;
use super::sentinel_conn::{NodeConfig, SentinelPrimary};
use super::settings::RedisOptions;
use super::topology::Topology;

/// A connection to Redis, single node or cluster. Cheap to clone: clones share the
/// underlying connection(s), and concurrent commands are pipelined by the client
/// (per node, on a cluster).
#[derive(Clone)]
pub enum RedisBackend {
    /// One server: an auto-reconnecting multiplexed connection.
    Single(ConnectionManager),
    /// A Redis Cluster: one multiplexed connection per node, routed by slot.
    Cluster(HealingCluster),
    /// A primary found through Sentinel: one server at a time, like `Single`.
    Sentinel(SentinelPrimary),
}

impl RedisBackend {
    /// Connects lazily (the first command opens the connection(s)). With `pushes`,
    /// the connection speaks RESP3 and sends pub/sub messages and disconnection
    /// notices there, resubscribing by itself after a reconnect; without, RESP2.
    pub(super) fn open(
        options: &RedisOptions,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<Self, StoreError> {
        let error = |e: RedisError| StoreError::from_redis(&e, &options.url);
        let protocol = match pushes {
            Some(_) => ProtocolVersion::RESP3,
            None => ProtocolVersion::RESP2,
        };
        // rustls (behind rediss://) needs one process-wide crypto provider; a second
        // install (by another client) is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates = options.ca_cert.as_ref().map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        });
        match &options.topology {
            Topology::Single(url) => {
                let info = url.as_str().into_connection_info().map_err(error)?;
                let settings = info.redis_settings().clone().set_protocol(protocol);
                let info = info.set_redis_settings(settings);
                let client = match certificates {
                    None => Client::open(info).map_err(error)?,
                    Some(certificates) => {
                        Client::build_with_tls(info, certificates).map_err(error)?
                    }
                };
                let config = manager_config(options, pushes);
                ConnectionManager::new_lazy_with_config(client, config)
                    .map(Self::Single)
                    .map_err(error)
            }
            Topology::Sentinel(sentinel) => Ok(Self::Sentinel(SentinelPrimary::new(
                sentinel.clone(),
                NodeConfig {
                    protocol,
                    certificates,
                    config: manager_config(options, pushes.clone()),
                    pushes,
                    timeout: options.response_timeout,
                },
            ))),
            Topology::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(protocol)
                    .connection_timeout(options.response_timeout)
                    .response_timeout(options.response_timeout)
                    // Redirects and a failover's "try again" are retried quickly, within
                    // the command timeout (the crate's default waits 1.28 s or more).
                    .min_retry_wait(25)
                    .max_retry_wait(500)
                    .retries(16);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                let replaceable = pushes.is_none();
                if let Some(pushes) = pushes {
                    builder = builder.push_sender(pushes);
                }
                let client = builder.build().map_err(error)?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(options.response_timeout)
                    .set_response_timeout(options.response_timeout);
                Ok(Self::Cluster(HealingCluster::new(
                    client,
                    config,
                    replaceable,
                )))
            }
        }
    }

    /// True on a Redis Cluster: multi-key steps must stay within one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Behind Sentinel, checks that the connected server is still the primary and
    /// follows the sentinels to the new one if not (a connection that only listens
    /// would otherwise stay on a demoted primary); nothing to do for the other kinds.
    pub async fn verify_primary(&self) {
        if let Self::Sentinel(conn) = self {
            let _ = conn.verify().await;
        }
    }

    /// The command that publishes a wake-up: `PUBLISH`, or `SPUBLISH` on a cluster.
    /// Scripts take it as an argument, so one script serves both.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) | Self::Sentinel(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }

    /// The kind of push a published message arrives as on the channels
    /// [`Self::subscribe`] subscribes: `message`, or `smessage` on a cluster.
    pub fn message_kind(&self) -> PushKind {
        match self {
            Self::Single(_) | Self::Sentinel(_) => PushKind::Message,
            Self::Cluster(_) => PushKind::SMessage,
        }
    }

    /// Whether a push says a channel was unsubscribed (by us, or — on a cluster —
    /// by the server, when the channel's slot moved to another node).
    pub fn is_unsubscribe(&self, kind: &PushKind) -> bool {
        matches!(kind, PushKind::Unsubscribe | PushKind::SUnsubscribe)
    }

    /// Subscribes to channels: one `SUBSCRIBE`, or one `SSUBSCRIBE` per channel on a
    /// cluster (a shard subscription names channels of one slot), sent concurrently.
    /// Returns one result per channel: on a cluster, channels on a node that is down
    /// fail while the others succeed.
    pub async fn subscribe(&mut self, channels: &[String]) -> Vec<RedisResult<()>> {
        match self {
            Self::Single(conn) => {
                let result = conn.subscribe(channels).await;
                vec![result; channels.len()]
            }
            Self::Sentinel(conn) => {
                let result = match conn.connection().await {
                    Ok(mut conn) => conn.subscribe(channels).await,
                    Err(e) => Err(e),
                };
                vec![result; channels.len()]
            }
            Self::Cluster(conn) => {
                let calls = channels.iter().map(|channel| {
                    let mut conn = conn.current();
                    async move { conn.ssubscribe(channel).await }
                });
                futures_util::future::join_all(calls).await
            }
        }
    }

    /// Unsubscribes channels, the counterpart of [`Self::subscribe`].
    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Single(conn) => conn.unsubscribe(channels).await,
            Self::Sentinel(conn) => conn.connection().await?.unsubscribe(channels).await,
            Self::Cluster(conn) => {
                let calls = channels.iter().map(|channel| {
                    let mut conn = conn.current();
                    async move { conn.sunsubscribe(channel).await }
                });
                futures_util::future::try_join_all(calls).await.map(drop)
            }
        }
    }
}

impl ConnectionLike for RedisBackend {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
            Self::Sentinel(conn) => conn.get_db(),
        }
    }
}

/// The settings of a single-node connection manager: the command timeout for
/// commands and connecting, one quick reconnect attempt per failure, and with
/// `pushes` the RESP3 push sender with automatic resubscription.
fn manager_config(
    options: &RedisOptions,
    pushes: Option<mpsc::UnboundedSender<PushInfo>>,
) -> ConnectionManagerConfig {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(options.response_timeout))
        .set_connection_timeout(Some(options.response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    match pushes {
        Some(pushes) => config
            .set_push_sender(pushes)
            .set_automatic_resubscription(),
        None => config,
    }
}
