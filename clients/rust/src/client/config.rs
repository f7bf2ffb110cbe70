//! Every setting of a [`Client`](super::Client), with its default, and the builder
//! that sets them.

use std::path::PathBuf;
use std::time::Duration;

use crate::connection::{ConnectOptions, DEFAULT_CONNECT_TIMEOUT, TokenPlacement};

use super::backoff::Backoff;
use super::outbound::{FRAME_OVERHEAD, Limits, MESSAGE_OVERHEAD};
use super::token::{BoxError, TokenSource};

/// The settings of a client.
#[derive(Debug, Clone)]
pub struct Settings {
    /// courier's WebSocket URL, `ws://host:port/ws`.
    pub url: String,
    /// Where the token goes. Defaults to the `token` header.
    pub placement: TokenPlacement,
    /// The device id (`[A-Za-z0-9_-]{1,64}`): each device of a user gets every message
    /// once. Defaults to `default`.
    pub device: String,
    /// Extra upgrade request headers (`Origin`, `traceparent`). Defaults to none.
    pub headers: Vec<(String, String)>,
    /// Messages per sent batch: courier's `COURIER_BATCH_MAX`. Defaults to 100.
    pub batch_max: usize,
    /// Bytes per text: courier's `COURIER_MAX_TEXT_BYTES`; longer texts are refused
    /// locally. Defaults to 4096.
    pub max_text_bytes: usize,
    /// Bytes per frame: courier's `COURIER_MAX_FRAME_BYTES`; a batch stops growing
    /// before it. Defaults to 1 MiB.
    pub max_frame_bytes: usize,
    /// Batches in flight (sent, not acked) at once. Defaults to 4.
    pub window: usize,
    /// Delays between reconnects, and between retries of a batch courier answered
    /// with `unavailable`, `rate_limited` or `internal`. Defaults to 250 ms doubling
    /// up to 30 s, full jitter.
    pub backoff: Backoff,
    /// A connection open this long resets the reconnect backoff (so does its first
    /// ack or delivery). Defaults to 10 s.
    pub stable_after: Duration,
    /// Time for the TCP connect and the upgrade. Defaults to 10 s.
    pub connect_timeout: Duration,
    /// Time for one frame to be written; a stalled socket is dropped. Defaults to 10 s.
    pub write_timeout: Duration,
    /// After this long without a frame from courier the client pings; after twice
    /// this long it takes the connection for dead and reconnects. Defaults to 15 s
    /// (courier itself pings every 20 s by default).
    pub ping_interval: Duration,
    /// Delivered message ids remembered to drop redeliveries. Defaults to 10,000.
    pub seen_ids: usize,
}

impl Settings {
    fn new(url: String) -> Self {
        Self {
            url,
            placement: TokenPlacement::Header,
            device: "default".into(),
            headers: Vec::new(),
            batch_max: 100,
            max_text_bytes: 4096,
            max_frame_bytes: 1 << 20,
            window: 4,
            backoff: Backoff::default(),
            stable_after: Duration::from_secs(10),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            seen_ids: 10_000,
        }
    }

    /// The connection options for one attempt with `token`.
    pub fn connect_options(&self, token: &str) -> ConnectOptions {
        let mut options = ConnectOptions::new(&self.url)
            .token(token)
            .token_placement(self.placement)
            .device(&self.device)
            .connect_timeout(self.connect_timeout);
        for (name, value) in &self.headers {
            options = options.header(name, value);
        }
        options
    }

    /// How batches are formed.
    pub fn limits(&self) -> Limits {
        Limits {
            batch_max: self.batch_max,
            max_frame_bytes: self.max_frame_bytes,
            window: self.window,
        }
    }

    /// Checks the settings against each other and the contract.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("ws://") {
            return Err(format!(
                "url {:?}: only ws:// URLs are supported (TLS belongs in a proxy)",
                self.url
            ));
        }
        let device_ok = (1..=64).contains(&self.device.len())
            && self
                .device
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !device_ok {
            return Err(format!(
                "device {:?} is not [A-Za-z0-9_-]{{1,64}}",
                self.device
            ));
        }
        if self.batch_max == 0 || self.window == 0 || self.seen_ids == 0 {
            return Err("batch_max, window and seen_ids must be at least 1".into());
        }
        // The worst text: every byte a control character, escaped as \u00XX.
        let largest_message = FRAME_OVERHEAD + MESSAGE_OVERHEAD + 2 + 6 * self.max_text_bytes;
        if self.max_frame_bytes < largest_message {
            return Err(format!(
                "max_frame_bytes {} cannot hold one message of max_text_bytes {} (needs {largest_message})",
                self.max_frame_bytes, self.max_text_bytes
            ));
        }
        if self.ping_interval.is_zero() || self.write_timeout.is_zero() {
            return Err("ping_interval and write_timeout must not be zero".into());
        }
        Ok(())
    }
}

/// Builds a [`Client`](super::Client): `Client::builder(url).token(..).connect()`.
#[derive(Debug)]
pub struct ClientBuilder {
    pub(super) settings: Settings,
    pub(super) token: Option<TokenSource>,
    pub(super) outbox: Option<PathBuf>,
}

impl ClientBuilder {
    pub(super) fn new(url: String) -> Self {
        Self {
            settings: Settings::new(url),
            token: None,
            outbox: None,
        }
    }

    /// A fixed token. courier's 401 for it is final (the client closes).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(TokenSource::Fixed(token.into()));
        self
    }

    /// A token provider: called for the first connection, after courier refuses the
    /// token (401) and after it closes with 4001 (expired). Its errors are retried
    /// with backoff.
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.token = Some(TokenSource::provider(provider));
        self
    }

    /// Where the token goes. Defaults to [`TokenPlacement::Header`].
    pub fn token_placement(mut self, placement: TokenPlacement) -> Self {
        self.settings.placement = placement;
        self
    }

    /// The device id. Defaults to `default`.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.settings.device = device.into();
        self
    }

    /// An extra upgrade request header (`Origin`, `traceparent`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.headers.push((name.into(), value.into()));
        self
    }

    /// Messages per batch. Defaults to 100 (courier's default `COURIER_BATCH_MAX`).
    pub fn batch_max(mut self, batch_max: usize) -> Self {
        self.settings.batch_max = batch_max;
        self
    }

    /// Bytes per text. Defaults to 4096 (courier's default `COURIER_MAX_TEXT_BYTES`).
    pub fn max_text_bytes(mut self, max: usize) -> Self {
        self.settings.max_text_bytes = max;
        self
    }

    /// Bytes per frame. Defaults to 1 MiB (courier's default `COURIER_MAX_FRAME_BYTES`).
    pub fn max_frame_bytes(mut self, max: usize) -> Self {
        self.settings.max_frame_bytes = max;
        self
    }

    /// Batches in flight at once. Defaults to 4.
    pub fn window(mut self, window: usize) -> Self {
        self.settings.window = window;
        self
    }

    /// The backoff curve. Defaults to 250 ms doubling up to 30 s.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// How long a connection must stay open to reset the backoff. Defaults to 10 s.
    pub fn stable_after(mut self, duration: Duration) -> Self {
        self.settings.stable_after = duration;
        self
    }

    /// Time for the TCP connect and the upgrade. Defaults to 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Time for one frame to be written. Defaults to 10 s.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.settings.write_timeout = timeout;
        self
    }

    /// Silence before a ping (twice this: the connection is dead). Defaults to 15 s.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.settings.ping_interval = interval;
        self
    }

    /// Delivered ids remembered for dedup. Defaults to 10,000.
    pub fn seen_ids(mut self, count: usize) -> Self {
        self.settings.seen_ids = count;
        self
    }

    /// Keeps unacked messages and seen ids in this file, so that they survive a
    /// restart of the app. Off by default.
    pub fn outbox_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.outbox = Some(path.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::new("ws://127.0.0.1:8080/ws".into())
    }

    #[test]
    fn the_defaults_are_valid_and_match_courier() {
        let defaults = settings();
        assert_eq!(defaults.validate(), Ok(()));
        assert_eq!(
            (defaults.batch_max, defaults.max_text_bytes, defaults.window),
            (100, 4096, 4)
        );
        assert_eq!(defaults.device, "default");
    }

    #[test]
    fn invalid_settings_are_refused_with_a_reason() {
        type Breaker = fn(&mut Settings);
        let cases: [(&str, Breaker); 6] = [
            ("device", |s| s.device = "has space".into()),
            ("device", |s| s.device = "d".repeat(65)),
            ("ws://", |s| s.url = "wss://example.com/ws".into()),
            ("at least 1", |s| s.window = 0),
            ("max_frame_bytes", |s| s.max_frame_bytes = 10_000),
            ("zero", |s| s.ping_interval = Duration::ZERO),
        ];
        for (reason, break_it) in cases {
            let mut broken = settings();
            break_it(&mut broken);
            let error = broken.validate().expect_err(reason);
            assert!(error.contains(reason), "{error}");
        }
    }
}
