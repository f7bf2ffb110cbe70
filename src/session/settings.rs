//! The settings of a WebSocket connection, from the upgrade to the last ack, built
//! once from the configuration. A leaf: it imports only the configuration, so the
//! node can hold it without importing the session.

use std::time::Duration;

use crate::config::Config;

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// `Origin`s allowed to upgrade (`COURIER_ALLOWED_ORIGINS`); empty: any.
    pub allowed_origins: Vec<String>,
    /// Largest client frame and message (`COURIER_MAX_FRAME_BYTES`); bigger ones close
    /// the connection with 1009.
    pub max_frame_bytes: usize,
    /// Messages per delivery batch (`COURIER_BATCH_MAX`).
    pub batch_max: usize,
    /// Unacked delivery batches per connection (`COURIER_MAX_INFLIGHT_BATCHES`).
    pub max_inflight_batches: usize,
    /// Frames queued for the socket (`COURIER_OUTBOUND_QUEUE`).
    pub outbound_queue: usize,
    /// The optional safety poll (`COURIER_POLL_INTERVAL_MS`); `None`: off, the
    /// default. Delivery is driven by wake-ups (`store::notify`).
    pub poll_interval: Option<Duration>,
    /// Ping interval; a peer silent for two intervals is dropped
    /// (`COURIER_PING_INTERVAL_MS`).
    pub ping_interval: Duration,
    /// Redelivery after this long unacked (`COURIER_ACK_TIMEOUT_MS`).
    pub ack_timeout: Duration,
    /// Deliveries before an entry is dead-lettered (`COURIER_MAX_DELIVERIES`).
    pub max_deliveries: u64,
    /// A socket write stalled this long closes the connection (slow consumer,
    /// `COURIER_WRITE_TIMEOUT_MS`).
    pub write_timeout: Duration,
    /// Sustained client frames per second (`COURIER_RATE_LIMIT_FPS`).
    pub rate_limit_fps: u32,
    /// Burst of client frames above the sustained rate (`COURIER_RATE_LIMIT_BURST`).
    pub rate_limit_burst: u32,
    /// Client errors per minute before a 1008 close (`COURIER_MAX_CLIENT_ERRORS`).
    pub max_client_errors: u32,
}

impl From<&Config> for SessionSettings {
    fn from(config: &Config) -> Self {
        Self {
            allowed_origins: config.allowed_origins.clone(),
            max_frame_bytes: config.max_frame_bytes,
            batch_max: config.batch_max,
            max_inflight_batches: config.max_inflight_batches,
            outbound_queue: config.outbound_queue,
            poll_interval: Some(config.poll_interval).filter(|every| !every.is_zero()),
            ping_interval: config.ping_interval,
            ack_timeout: config.ack_timeout,
            max_deliveries: config.max_deliveries,
            write_timeout: config.write_timeout,
            rate_limit_fps: config.rate_limit_fps,
            rate_limit_burst: config.rate_limit_burst,
            max_client_errors: config.max_client_errors,
        }
    }
}
