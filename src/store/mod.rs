//! The Redis layout of DESIGN §3 in one place: key names, scripts, the send fan-out,
//! the consumer-group reads and acks, the wake-up notifications, and what operators
//! read and repair (pending summaries, dead-letter replay).
//!
//! courier keeps a fixed number of Redis connections per instance, whatever the
//! number of WebSocket clients: one multiplexed, auto-reconnecting connection for
//! commands (pipelined by the client library) and one RESP3 connection for pub/sub
//! ([`notify::Notifier`]) — per node on a Redis Cluster. Nothing ever blocks a
//! connection (no `BLOCK`). Single node or cluster is decided once, in [`backend`];
//! every operation here runs on both.
//!
//! Every command of the store goes through one choke point, `Store::conn` (timed and
//! counted per operation): what must apply to all Redis work goes there. It passes
//! the [`gate`] first: a bound on commands in flight, lanes that put acks before
//! sends, and refusal at once while Redis is down. What a
//! message looks like in Redis is [`entry`]'s, every key and channel name [`keys`]'s,
//! and how much Redis keeps [`settings::Retention`]'s.

pub mod backend;
mod cluster_conn;
pub mod entry;
mod gate;
mod gates;
pub mod inbox;
pub mod keys;
pub mod notify;
pub mod ops;
mod replicated;
mod reply;
pub mod send;
mod send_sharded;
mod sentinel_conn;
pub mod settings;
pub mod topology;
mod trim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

use crate::metrics::Metrics;
use backend::RedisBackend;
use gate::{Gate, Health, Lane};
use gates::Gates;

pub use entry::{EntryBody, NewMessage, StoredMessage, StreamEntry};
pub use inbox::ConsumerRef;
pub use replicated::ReplicaPolicy;
pub use send::{SendOutcome, SendRequest};
pub use settings::{RedisOptions, Retention};
pub use topology::Topology;

/// A Redis failure as the rest of courier sees it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached or timed out: the client may retry.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered something courier did not expect.
    #[error("redis error: {0}")]
    Internal(String),
}

impl StoreError {
    /// Sorts a Redis error: what a retry can cure (the server or a cluster node is
    /// unreachable, loading, busy, or a slot is moving or failing over — `MOVED`,
    /// `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY` from a demoted
    /// primary) is `Unavailable`; anything else is `Internal`.
    fn from_redis(e: &RedisError, url: &str) -> Self {
        let text = redact_error(e, url);
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            || matches!(
                e.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                    )
            )
            || matches!(
                e.code(),
                Some("LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN")
            )
        {
            Self::Unavailable(text)
        } else {
            Self::Internal(text)
        }
    }
}

/// The error text of a Redis error, with the URL's password (if any) masked.
pub fn redact_error(e: &RedisError, url: &str) -> String {
    redact(&e.to_string(), url)
}

/// `text` with the password of `url` replaced by `***`.
pub fn redact(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => text.replace(p, "***"),
        None => text.to_string(),
    }
}

/// Handle on Redis for commands. Cheap to clone: every clone shares one connection
/// (one per node on a cluster).
#[derive(Clone)]
pub struct Store {
    conn: RedisBackend,
    url: Arc<str>,
    metrics: Arc<Metrics>,
    /// The trim bound and dedup window every write applies.
    retention: Retention,
    /// What every command passes before it is sent (a gate per primary on a
    /// cluster).
    gates: Arc<Gates>,
    /// With `COURIER_REDIS_MIN_REPLICAS` > 0: the send writes' own connection, each
    /// followed by `WAIT` (`replicated.rs`).
    replicated: Option<Arc<replicated::Replicated>>,
}

/// How often the gate probes Redis while it is down.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// The shared connection, seen by one operation: every command sent through it
/// first waits at the gate in the operation's lane, then is timed (from sending to
/// the reply: the wait is not part of the command's timeout) and counted under the
/// operation's name. [`Store::conn`] is the only way to it, so every Redis command of
/// the store passes here.
struct TimedConnection {
    inner: RedisBackend,
    operation: &'static str,
    metrics: Arc<Metrics>,
    gates: Arc<Gates>,
}

impl TimedConnection {
    /// Runs one request (a command or a pipeline) through `gate`.
    async fn through_gate<T>(
        &mut self,
        gate: Arc<Gate>,
        request: impl AsyncFnOnce(&mut RedisBackend) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let lane = Lane::of(self.operation);
        let arrived = Instant::now();
        let Ok(permit) = gate.enter(lane).await else {
            self.metrics.redis_refused(self.operation);
            return Err(redis_down());
        };
        self.metrics.redis_wait(lane.name(), arrived.elapsed());
        let started = Instant::now();
        let result = gate::in_flight(permit, request(&mut self.inner)).await;
        self.metrics
            .redis(self.operation, started.elapsed(), result.is_ok());
        if gate.observe(Health::of(&result)) {
            let conn = self.inner.clone();
            tokio::spawn(async move {
                gate.probe(PROBE_EVERY, || {
                    let mut conn = conn.clone();
                    async move { redis::cmd("PING").query_async::<()>(&mut conn).await }
                })
                .await;
            });
        }
        result
    }
}

/// The error of a command refused because Redis is known to be down.
fn redis_down() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "redis is down: command not sent until it answers again",
    ))
}

impl ConnectionLike for TimedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let gate = self.gates.for_command(cmd);
        Box::pin(
            self.through_gate(gate, async move |conn: &mut RedisBackend| {
                conn.req_packed_command(cmd).await
            }),
        )
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let gate = self.gates.for_pipeline(pipeline);
        Box::pin(
            self.through_gate(gate, async move |conn: &mut RedisBackend| {
                conn.req_packed_commands(pipeline, offset, count).await
            }),
        )
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl Store {
    /// Connects lazily: the first command opens the connection, and a broken one is
    /// reopened on the next command. Fails only on a malformed URL. With replicated
    /// acks, starts the task that groups the send writes (so within a runtime).
    pub fn open(
        options: &RedisOptions,
        retention: Retention,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let conn = RedisBackend::open(options, None)?;
        // On a cluster one node's outage must not hold back, nor refuse, the others'
        // commands: a gate per primary, without fail-fast.
        let gates = if conn.is_cluster() {
            Gates::cluster(options.max_inflight, conn.clone())
        } else {
            Gates::single(options.max_inflight, true)
        };
        let replicated = match options.replica_policy() {
            Some(policy) => Some(replicated::Replicated::start(
                policy,
                RedisBackend::open(options, None)?,
                metrics.clone(),
                gates.clone(),
            )),
            None => None,
        };
        Ok(Self {
            conn,
            url: options.url.as_str().into(),
            metrics,
            retention,
            gates,
            replicated,
        })
    }

    /// The shared connection for one operation (named in the metrics).
    fn conn(&self, operation: &'static str) -> TimedConnection {
        TimedConnection {
            inner: self.conn.clone(),
            operation,
            metrics: self.metrics.clone(),
            gates: self.gates.clone(),
        }
    }

    fn error(&self, e: RedisError) -> StoreError {
        StoreError::from_redis(&e, &self.url)
    }

    /// Runs a send script that writes: on the shared connection, or with replicated
    /// acks on the writes' own connection, followed by `WAIT` (fewer replicas than
    /// required in time: `Unavailable`).
    async fn write_script<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Result<T, StoreError> {
        let Some(replicated) = &self.replicated else {
            return invocation
                .invoke_async(&mut self.conn("send"))
                .await
                .map_err(|e| self.error(e));
        };
        match replicated.invoke(invocation, &self.metrics).await {
            Ok(value) => redis::from_redis_value(value).map_err(|e| self.error(e.into())),
            Err(replicated::Failure::Redis(e)) => Err(self.error(e)),
            Err(replicated::Failure::NotReplicated { confirmed }) => {
                Err(StoreError::Unavailable(format!(
                    "the write reached {confirmed} of the {} replicas required in time",
                    replicated.min_replicas()
                )))
            }
        }
    }

    /// `PING`: is Redis answering (every node, on a cluster)? Used by `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn("ping"))
            .await
            .map_err(|e| self.error(e))
    }
}
