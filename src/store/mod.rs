//! The Redis layout of DESIGN §3 in one place: key names, scripts, the send fan-out,
//! the consumer-group reads and acks, the wake-up notifications, and what operators
//! read and repair (pending summaries, dead-letter replay).
//!
//! courier keeps a fixed number of Redis connections per instance, whatever the
//! number of WebSocket clients: one multiplexed, auto-reconnecting connection for
//! commands (pipelined by the client library) and one RESP3 connection for pub/sub
//! ([`notify::Notifier`]). Nothing ever blocks a connection (no `BLOCK`).

pub mod inbox;
pub mod keys;
pub mod notify;
pub mod ops;
mod reply;
pub mod send;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisError, RedisFuture,
    TlsCertificates, Value,
};

use crate::metrics::Metrics;

pub use inbox::{ConsumerRef, StreamEntry};
pub use send::{SendOutcome, SendRequest};

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
    fn from_redis(e: &RedisError, url: &str) -> Self {
        let text = redact_error(e, url);
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
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

/// Handle on Redis for commands. Cheap to clone: every clone shares one connection.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    url: Arc<str>,
    metrics: Arc<Metrics>,
}

/// The shared connection, seen by one operation: every command sent through it is
/// timed and counted under that operation's name.
pub(crate) struct TimedConnection {
    inner: ConnectionManager,
    operation: &'static str,
    metrics: Arc<Metrics>,
}

impl ConnectionLike for TimedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.req_packed_command(cmd).await;
            self.metrics
                .redis(self.operation, started.elapsed(), result.is_ok());
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
            let started = Instant::now();
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.metrics
                .redis(self.operation, started.elapsed(), result.is_ok());
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// How [`Store`] connects.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The Redis URL.
    pub url: String,
    /// Timeout of one command.
    pub response_timeout: Duration,
    /// PEM CA certificate(s) trusted for `rediss://` instead of the system roots.
    pub ca_cert: Option<Vec<u8>>,
}

impl StoreOptions {
    /// A client for these options speaking `protocol` (RESP3 for pub/sub pushes).
    fn client(&self, protocol: ProtocolVersion) -> Result<Client, StoreError> {
        let error = |e: RedisError| StoreError::from_redis(&e, &self.url);
        let info = self.url.as_str().into_connection_info().map_err(error)?;
        let settings = info.redis_settings().clone().set_protocol(protocol);
        let info = info.set_redis_settings(settings);
        // rustls (behind rediss://) needs one process-wide crypto provider; a second
        // install (by another client) is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match &self.ca_cert {
            None => Client::open(info).map_err(error),
            Some(ca) => {
                let certificates = TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                };
                Client::build_with_tls(info, certificates).map_err(error)
            }
        }
    }
}

impl Store {
    /// Connects lazily: the first command opens the connection, and a broken one is
    /// reopened on the next command. Fails only on a malformed URL.
    pub fn open(options: &StoreOptions, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let client = options.client(ProtocolVersion::RESP2)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::from_redis(&e, &options.url))?;
        Ok(Self {
            conn,
            url: options.url.as_str().into(),
            metrics,
        })
    }

    /// The shared connection for one operation (named in the metrics).
    fn conn(&self, operation: &'static str) -> TimedConnection {
        TimedConnection {
            inner: self.conn.clone(),
            operation,
            metrics: self.metrics.clone(),
        }
    }

    fn error(&self, e: RedisError) -> StoreError {
        StoreError::from_redis(&e, &self.url)
    }

    /// `PING`: is Redis answering? Used by `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn("ping"))
            .await
            .map_err(|e| self.error(e))
    }
}
