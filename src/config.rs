//! Every setting of courier: its environment variable, its command-line flag and its
//! default, in one struct. DESIGN.md §5 is the contract for the names.
//!
//! Parsing is clap's (`derive` + `env`): a flag wins over the environment, the
//! environment over the default. [`Config::load`] turns any error into one line that
//! names the setting, so `main` can print it and exit with code 2.

use std::net::SocketAddr;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::{
    BoolishValueParser, PossibleValuesParser, RangedU64ValueParser, TypedValueParser,
};

/// courier's configuration. Each field's doc says what it does and its default.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "courier",
    version,
    about = "WebSocket chat delivery over Redis Streams"
)]
pub struct Config {
    /// Address for `/ws`, `/healthz`, `/readyz`, `/metrics` and `/api/v1`. Defaults to
    /// `0.0.0.0:8080`.
    #[arg(long, env = "COURIER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Redis URL (`redis://`, `rediss://`, with `user:password@` for ACLs), a Redis
    /// Cluster's seed nodes: `redis+cluster://host:port,host:port` (TLS:
    /// `rediss+cluster://`), or a Sentinel-managed primary:
    /// `redis+sentinel://host:port,host:port/<master-name>` (TLS: `rediss+sentinel://`).
    /// Defaults to `redis://127.0.0.1:6379`.
    #[arg(
        long,
        env = "COURIER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM file of the CA(s) to trust for `rediss://` (TLS), instead of the system
    /// roots. Defaults to none.
    #[arg(long, env = "COURIER_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Replicas that must confirm a send's write (Redis `WAIT`) before it is acked and
    /// a publish answered 202; fewer within the command timeout answer `unavailable`.
    /// Defaults to 0 (ack once the primary has it).
    #[arg(long, env = "COURIER_REDIS_MIN_REPLICAS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_min_replicas: u32,

    /// HS256 shared secret. At least one of this and the public key file is required.
    #[arg(long, env = "COURIER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Key that backends present as `Authorization: Bearer <key>` on `/api/v1/...`.
    /// Defaults to none: only service JWTs (with a `service` claim) are accepted there.
    #[arg(long, env = "COURIER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256).
    #[arg(long, env = "COURIER_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `aud` claim, when set. Defaults to none (not checked unless present).
    #[arg(long, env = "COURIER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim, when set. Defaults to none (not checked).
    #[arg(long, env = "COURIER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Redelivery of a delivered but unacked entry after this many milliseconds.
    /// Defaults to 30000.
    #[arg(long = "ack-timeout-ms", value_name = "ACK_TIMEOUT_MS",
          env = "COURIER_ACK_TIMEOUT_MS", default_value = "30000",
          value_parser = millis(1..))]
    pub ack_timeout: Duration,

    /// Deliveries of one entry before it is dead-lettered. Defaults to 10.
    #[arg(long, env = "COURIER_MAX_DELIVERIES", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_deliveries: u64,

    /// Messages per delivery batch, and the most a client may send in one batch.
    /// Defaults to 100.
    #[arg(long, env = "COURIER_BATCH_MAX", default_value_t = 100,
          value_parser = size(1..=10_000))]
    pub batch_max: usize,

    /// Largest `content_text`, in UTF-8 bytes. Defaults to 4096.
    #[arg(long, env = "COURIER_MAX_TEXT_BYTES", default_value_t = 4096,
          value_parser = size(1..=1_048_576))]
    pub max_text_bytes: usize,

    /// Approximate number of entries kept per inbox stream (`XADD MAXLEN ~`).
    /// Defaults to 10000.
    #[arg(long, env = "COURIER_STREAM_MAXLEN", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stream_maxlen: u64,

    /// Seconds acked history stays in an inbox: an entry every device group has acked is
    /// trimmed once it is older than this. Defaults to 604800 (7 days).
    #[arg(long = "history-retention-s", value_name = "HISTORY_RETENTION_S",
          env = "COURIER_HISTORY_RETENTION_S", default_value = "604800",
          value_parser = seconds(1..))]
    pub history_retention: Duration,

    /// Seconds after which a device group that has not read, and whose oldest unacked
    /// entry is older than this, stops holding back trimming (what it then loses is
    /// counted). Defaults to 2592000 (30 days).
    #[arg(long = "device-idle-s", value_name = "DEVICE_IDLE_S",
          env = "COURIER_DEVICE_IDLE_S", default_value = "2592000",
          value_parser = seconds(1..))]
    pub device_idle: Duration,

    /// Newest items kept in each legacy `user:<id>` list (`LTRIM` in the send script);
    /// 0 turns the lists off. Defaults to 10000.
    #[arg(long, env = "COURIER_LEGACY_LIST_MAXLEN", default_value_t = 10_000)]
    pub legacy_list_maxlen: u64,

    /// Seconds a sent batch's `time_key` is remembered for deduplication. Defaults to 300.
    #[arg(long = "dedup-window-s", value_name = "DEDUP_WINDOW_S",
          env = "COURIER_DEDUP_WINDOW_S", default_value = "300",
          value_parser = seconds(1..))]
    pub dedup_window: Duration,

    /// Also deliver each message to the sender's own inbox. Defaults to false.
    #[arg(long, env = "COURIER_DELIVER_TO_SENDER", default_value = "false",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub deliver_to_sender: bool,

    /// Comma-separated `Origin` allowlist for `/ws`. Defaults to any origin.
    #[arg(long, env = "COURIER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// This instance's name, the prefix of its consumer names. Defaults to a random id.
    #[arg(long, env = "COURIER_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// An optional safety net: every connection also reads its inbox this often (ms),
    /// without a wake-up. 0 (the default) turns it off: delivery does not depend on it,
    /// and each poll costs Redis a command per connection.
    #[arg(long = "poll-interval-ms", value_name = "POLL_INTERVAL_MS",
          env = "COURIER_POLL_INTERVAL_MS", default_value = "0",
          value_parser = millis_or_off())]
    pub poll_interval: Duration,

    /// Delivery batches a connection may have unacked at once; no more are read from
    /// Redis until the client acks. Defaults to 4.
    #[arg(long, env = "COURIER_MAX_INFLIGHT_BATCHES", default_value_t = 4,
          value_parser = size(1..=1024))]
    pub max_inflight_batches: usize,

    /// Frames queued for one connection's socket; a client that lets it fill is closed
    /// with 1013. Defaults to 64.
    #[arg(long, env = "COURIER_OUTBOUND_QUEUE", default_value_t = 64,
          value_parser = size(1..=65_536))]
    pub outbound_queue: usize,

    /// Ping interval, in milliseconds; a client silent for two intervals is dropped.
    /// Defaults to 20000.
    #[arg(long = "ping-interval-ms", value_name = "PING_INTERVAL_MS",
          env = "COURIER_PING_INTERVAL_MS", default_value = "20000",
          value_parser = millis(100..))]
    pub ping_interval: Duration,

    /// Largest WebSocket frame (and message) a client may send, in bytes; bigger ones
    /// close the connection with 1009. Also the largest HTTP API body. Defaults to
    /// 1048576.
    #[arg(long, env = "COURIER_MAX_FRAME_BYTES", default_value_t = 1_048_576,
          value_parser = size(1024..=67_108_864))]
    pub max_frame_bytes: usize,

    /// A socket write stalled this long (the client stopped reading) drops the
    /// connection as a slow consumer; its entries stay pending. Defaults to 10000.
    #[arg(long = "write-timeout-ms", value_name = "WRITE_TIMEOUT_MS",
          env = "COURIER_WRITE_TIMEOUT_MS", default_value = "10000",
          value_parser = millis(10..))]
    pub write_timeout: Duration,

    /// On SIGTERM/SIGINT, time allowed for connections (WebSocket sessions and HTTP
    /// requests in flight) to close before exiting, in milliseconds. Defaults to 10000.
    #[arg(long = "drain-timeout-ms", value_name = "DRAIN_TIMEOUT_MS",
          env = "COURIER_DRAIN_TIMEOUT_MS", default_value = "10000",
          value_parser = millis(..))]
    pub drain_timeout: Duration,

    /// Most WebSocket connections one user may hold on this instance; more are refused
    /// with HTTP 429 before the upgrade. Defaults to 32.
    #[arg(long, env = "COURIER_MAX_CONNECTIONS_PER_USER", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_user: u32,

    /// Sustained client frames per second per connection (pings included); excess
    /// frames are answered `rate_limited` and dropped. Defaults to 100.
    #[arg(long, env = "COURIER_RATE_LIMIT_FPS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_fps: u32,

    /// Burst of client frames allowed above the sustained rate. Defaults to 200.
    #[arg(long, env = "COURIER_RATE_LIMIT_BURST", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,

    /// Client errors (bad frames, rate-limited frames, unknown acks...) a connection may
    /// make per minute; one more closes it with 1008. Defaults to 30.
    #[arg(long, env = "COURIER_MAX_CLIENT_ERRORS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_client_errors: u32,

    /// Timeout of one Redis command, in milliseconds. Defaults to 5000.
    #[arg(long = "redis-timeout-ms", value_name = "REDIS_TIMEOUT_MS",
          env = "COURIER_REDIS_TIMEOUT_MS", default_value = "5000",
          value_parser = millis(1..))]
    pub redis_timeout: Duration,

    /// Redis commands one instance keeps in flight at once (to each primary, on a
    /// cluster);
    /// more wait in courier for their turn, acks first, without their timeout
    /// running. Defaults to 1024.
    #[arg(long, env = "COURIER_REDIS_MAX_INFLIGHT", default_value_t = 1024,
          value_parser = size(1..=65_536))]
    pub redis_max_inflight: usize,

    /// Log format: `text` or `json`. Defaults to `text`.
    #[arg(long, env = "COURIER_LOG_FORMAT", default_value = "text",
          value_parser = log_format())]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting in milliseconds within `range`, parsed into a `Duration`.
fn millis(range: impl RangeBounds<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_millis)
}

/// A period in milliseconds: 0 (off) or at least 10 ms.
fn millis_or_off() -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64).try_map(|ms| match ms {
        1..10 => Err("must be 0 (off) or at least 10"),
        ms => Ok(Duration::from_millis(ms)),
    })
}

/// A setting in seconds within `range`, parsed into a `Duration`.
fn seconds(range: impl RangeBounds<u64>) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(range)
        .map(Duration::from_secs)
}

/// `text` or `json`.
fn log_format() -> impl TypedValueParser<Value = LogFormat> {
    PossibleValuesParser::new(["text", "json"]).map(|format| match format.as_str() {
        "json" => LogFormat::Json,
        _ => LogFormat::Text,
    })
}

/// A size (a count of items or bytes) within `range`.
fn size(range: impl RangeBounds<u64>) -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(range)
}

/// A configuration that cannot be used. Its `Display` is the one line `main` prints.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Parses flags and environment, then checks what clap cannot (a JWT key is
    /// given). `--help` and `--version` print and exit here. The components check
    /// their own formats when built from the configuration (the Redis URL by the
    /// store, the key files by the authenticator), with errors of the same shape.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// [`Config::load`] over the given arguments (the first is the program name).
    pub fn load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let config = match Self::try_parse_from(args) {
            Ok(config) => config,
            Err(e) if !e.use_stderr() => e.exit(),
            Err(e) => return Err(ConfigError(describe_clap_error(&e))),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.jwt_secret.as_deref().is_none_or(str::is_empty)
            && self.jwt_public_key_file.is_none()
        {
            return Err(ConfigError(
                "COURIER_JWT_SECRET (--jwt-secret) or COURIER_JWT_PUBLIC_KEY_FILE \
                 (--jwt-public-key-file) must be set"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One line naming the setting (its env var) and what is wrong with it, from clap's
/// first line ("invalid value 'x' for '--flag <VALUE>': reason").
fn describe_clap_error(e: &clap::Error) -> String {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};

    let rendered = e.render().to_string();
    let first_line = rendered.lines().next().unwrap_or_default();
    let first_line = first_line.trim_start_matches("error: ");
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return first_line.to_string();
    };
    let flag = arg.split_whitespace().next().unwrap_or_default();
    let env = Config::command()
        .get_arguments()
        .find(|a| a.get_long().is_some_and(|long| flag == format!("--{long}")))
        .and_then(|a| a.get_env().map(|env| env.to_string_lossy().into_owned()));
    match env {
        Some(env) => format!("{env}: {first_line}"),
        None => first_line.to_string(),
    }
}
