//! The store's settings, built once from the configuration: how to reach Redis
//! ([`RedisOptions`]) and how much of what the store writes Redis keeps
//! ([`Retention`]).

use std::time::Duration;

use super::replicated::ReplicaPolicy;
use super::topology::Topology;
use crate::config::{Config, ConfigError};

/// How the store and the notifier reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The Redis URL (`COURIER_REDIS_URL`), as given: its password is masked in every
    /// error the store reports.
    pub url: String,
    /// What the URL names: one server, or a cluster's seed nodes.
    pub topology: Topology,
    /// Timeout of one command (`COURIER_REDIS_TIMEOUT_MS`), also used to connect.
    pub response_timeout: Duration,
    /// PEM CA certificate(s) trusted for `rediss://` instead of the system roots
    /// (the contents of `COURIER_REDIS_CA_FILE`).
    pub ca_cert: Option<Vec<u8>>,
    /// Commands in flight at once on the command connection
    /// (`COURIER_REDIS_MAX_INFLIGHT`); more wait in courier, most urgent first.
    pub max_inflight: usize,
    /// Replicas that must confirm a send before it is acked
    /// (`COURIER_REDIS_MIN_REPLICAS`; 0: none, no `WAIT`).
    pub min_replicas: u32,
}

impl RedisOptions {
    /// Checks the URL (its password is masked in the error) and reads the CA file;
    /// either failing is a configuration error naming the setting.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let topology = Topology::parse(&config.redis_url)
            .map_err(|e| ConfigError(format!("COURIER_REDIS_URL (--redis-url): {e}")))?;
        let ca_cert = match &config.redis_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError(format!(
                    "COURIER_REDIS_CA_FILE: cannot read {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        Ok(Self {
            url: config.redis_url.clone(),
            topology,
            response_timeout: config.redis_timeout,
            ca_cert,
            max_inflight: config.redis_max_inflight,
            min_replicas: config.redis_min_replicas,
        })
    }

    /// What replicated acks ask for, when `min_replicas` > 0: `WAIT` waits up to half
    /// the command timeout, so its answer comes back within the command's own timeout.
    pub fn replica_policy(&self) -> Option<ReplicaPolicy> {
        (self.min_replicas > 0).then(|| ReplicaPolicy {
            min_replicas: self.min_replicas,
            timeout: self.response_timeout / 2,
        })
    }
}

/// How much history Redis keeps of what the store writes. Every script that appends
/// to an inbox trims it with the same bounds, whoever calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The hard cap: approximate entries kept per inbox and dead-letter stream
    /// (`COURIER_STREAM_MAXLEN`). Unacked entries removed by it are counted.
    pub stream_maxlen: u64,
    /// How long acked history stays in an inbox (`COURIER_HISTORY_RETENTION_S`).
    pub history: Duration,
    /// After how long without reading a device group stops holding back trimming
    /// (`COURIER_DEVICE_IDLE_S`).
    pub device_idle: Duration,
    /// Newest items kept in each legacy `user:<id>` list; 0: no list is written
    /// (`COURIER_LEGACY_LIST_MAXLEN`).
    pub legacy_list_maxlen: u64,
    /// How long a sent batch's dedup record lives (`COURIER_DEDUP_WINDOW_S`); Redis
    /// expires it in whole seconds.
    pub dedup_window: Duration,
}

impl Retention {
    /// The dedup window in seconds, as `SET … EX` takes it.
    pub fn dedup_window_s(&self) -> u64 {
        self.dedup_window.as_secs()
    }

    /// The bounds the send scripts apply to each recipient's keys, as
    /// `send_writes.lua`'s `read_limits` reads them: stream cap, legacy list cap,
    /// history retention (ms), device idle time (ms).
    pub(super) fn script_limits(&self) -> [u64; 4] {
        [
            self.stream_maxlen,
            self.legacy_list_maxlen,
            millis(self.history),
            millis(self.device_idle),
        ]
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl From<&Config> for Retention {
    fn from(config: &Config) -> Self {
        Self {
            stream_maxlen: config.stream_maxlen,
            history: config.history_retention,
            device_idle: config.device_idle,
            legacy_list_maxlen: config.legacy_list_maxlen,
            dedup_window: config.dedup_window,
        }
    }
}
