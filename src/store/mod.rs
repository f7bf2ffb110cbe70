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

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

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
    url: std::sync::Arc<str>,
}

/// How [`Store`] connects.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The Redis URL.
    pub url: String,
    /// Timeout of one command.
    pub response_timeout: Duration,
}

impl Store {
    /// Connects lazily: the first command opens the connection, and a broken one is
    /// reopened on the next command. Fails only on a malformed URL.
    pub fn open(options: &StoreOptions) -> Result<Self, StoreError> {
        let client = Client::open(options.url.as_str())
            .map_err(|e| StoreError::from_redis(&e, &options.url))?;
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
        })
    }

    /// A connection for one command or pipeline.
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn error(&self, e: RedisError) -> StoreError {
        StoreError::from_redis(&e, &self.url)
    }

    /// `PING`: is Redis answering? Used by `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(|e| self.error(e))
    }
}
