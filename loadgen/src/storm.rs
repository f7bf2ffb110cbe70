//! A connect storm (`--storm`): every client lost its connection when courier was
//! killed or restarted, and all of them reconnect at once when told `go`, each
//! retrying a failed attempt after a short jittered pause, until it is back or the
//! storm's deadline passes. Counted: joins and when they happened, every failed
//! attempt by kind (HTTP status, refused, reset, timeout), clients that never came back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier_client::{ConnectError, Connection, Refusal};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{ClientSpec, Ctx, connect};
use crate::tracker::{Percentiles, histogram};

/// What the clients of a storm share.
pub struct Storm {
    /// Set once by the main task when courier is back: the moment every client may
    /// reconnect.
    pub go: watch::Receiver<Option<Instant>>,
    /// Most time from `go` for a client to be back.
    pub timeout: Duration,
    /// Pause before retrying a failed attempt (jittered).
    pub retry: Duration,
    pub counters: StormCounters,
}

/// Counted as the storm goes.
pub struct StormCounters {
    pub joins: AtomicU64,
    pub attempts: AtomicU64,
    /// Clients still not back at the deadline.
    pub gave_up: AtomicU64,
    /// Failed attempts by kind.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Microseconds from `go` to each join.
    join_us: Mutex<Histogram<u64>>,
}

impl Default for StormCounters {
    fn default() -> Self {
        Self {
            joins: AtomicU64::default(),
            attempts: AtomicU64::default(),
            gave_up: AtomicU64::default(),
            errors: Mutex::default(),
            join_us: Mutex::new(histogram()),
        }
    }
}

impl StormCounters {
    /// Clients done with the storm: back, or given up.
    pub fn settled(&self) -> u64 {
        self.joins.load(Ordering::Relaxed) + self.gave_up.load(Ordering::Relaxed)
    }

    fn failed(&self, kind: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(kind).or_default() += 1;
    }
}

/// Waits for `go`, then reconnects until it works or the storm's deadline; the new
/// connection, or `None` if the client gave up (or the run ended first).
pub async fn rejoin(spec: &ClientSpec, ctx: &Ctx, storm: &Storm) -> Option<Connection> {
    let mut go = storm.go.clone();
    let mut stop = ctx.stop.clone();
    let go_at = loop {
        if let Some(at) = *go.borrow_and_update() {
            break at;
        }
        tokio::select! {
            changed = go.changed() => changed.ok()?,
            _ = stop.changed() => return None,
        }
    };
    let deadline = go_at + storm.timeout;
    let counters = &storm.counters;
    let mut pause_seed = spec.index as u64;
    loop {
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let left = deadline.saturating_duration_since(Instant::now());
        match connect(spec, &ctx.url, left.min(ctx.connect_timeout)).await {
            Ok(ws) => {
                counters.joins.fetch_add(1, Ordering::Relaxed);
                let us = go_at.elapsed().as_micros() as u64;
                let mut joins = counters.join_us.lock().unwrap_or_else(|e| e.into_inner());
                joins.saturating_record(us.max(1));
                return Some(ws);
            }
            Err(e) => counters.failed(error_kind(&e)),
        }
        pause_seed = pause_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let factor = 0.5 + (pause_seed >> 11) as f64 / (1u64 << 53) as f64;
        let resume = Instant::now() + storm.retry.mul_f64(factor);
        if resume >= deadline {
            counters.gave_up.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        tokio::time::sleep_until(resume).await;
    }
}

/// The kind of a failed connection attempt, for the report.
fn error_kind(error: &ConnectError) -> String {
    match error {
        ConnectError::Refused(Refusal { status, .. }) => format!("http {status}"),
        ConnectError::Timeout(_) => "timeout".into(),
        ConnectError::InvalidRequest(reason) | ConnectError::Network(reason) => {
            let reason = reason.to_lowercase();
            if reason.contains("connection refused") {
                "tcp refused".into()
            } else if reason.contains("reset") {
                "reset".into()
            } else if reason.contains("timed out") {
                "timeout".into()
            } else {
                reason.chars().take(80).collect()
            }
        }
    }
}

/// The storm's figures in the report.
#[derive(Debug, Clone, Serialize)]
pub struct StormStats {
    /// Connections open before courier went away.
    pub connections: usize,
    pub joins: u64,
    pub gave_up: u64,
    pub attempts: u64,
    /// Failed attempts by kind.
    pub errors: BTreeMap<String, u64>,
    /// From `go` to the first and to the last join, seconds.
    pub first_join_s: f64,
    pub last_join_s: f64,
    /// Joins ÷ (last join − first join).
    pub joins_per_s: f64,
    /// From `go` to each join.
    pub join_ms: Percentiles,
    /// Redis commands per second with every connection open and idle, before the
    /// storm (loadgen's own probes left out): what the connections cost at rest.
    pub idle_commands_per_s: f64,
    /// Redis commands from `go` to the last join (probes left out), by command.
    pub commands: BTreeMap<String, u64>,
    /// Their sum ÷ joins. It includes whatever the connections already back did
    /// meanwhile (see `idle_commands_per_s`).
    pub commands_per_join: f64,
}

impl StormStats {
    /// The figures once the storm has settled.
    pub fn collect(
        connections: usize,
        counters: &StormCounters,
        idle_commands_per_s: f64,
        commands: BTreeMap<String, u64>,
    ) -> Self {
        let histogram = counters.join_us.lock().unwrap_or_else(|e| e.into_inner());
        let join_ms = Percentiles::of(&histogram);
        let first = histogram.min() as f64 / 1e6;
        let last = histogram.max() as f64 / 1e6;
        let joins = counters.joins.load(Ordering::Relaxed);
        let total: u64 = commands.values().sum();
        Self {
            connections,
            joins,
            gave_up: counters.gave_up.load(Ordering::Relaxed),
            attempts: counters.attempts.load(Ordering::Relaxed),
            errors: counters
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            first_join_s: first,
            last_join_s: last,
            joins_per_s: if last > first {
                joins as f64 / (last - first)
            } else {
                0.0
            },
            join_ms,
            idle_commands_per_s,
            commands_per_join: if joins > 0 {
                total as f64 / joins as f64
            } else {
                0.0
            },
            commands,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_are_counted_by_kind() {
        let refused = ConnectError::Refused(Refusal::new(503, String::new()));
        assert_eq!(error_kind(&refused), "http 503");
        let tcp =
            ConnectError::Network("connect 127.0.0.1:80: Connection refused (os error 111)".into());
        assert_eq!(error_kind(&tcp), "tcp refused");
        let reset =
            ConnectError::Network("IO error: Connection reset by peer (os error 104)".into());
        assert_eq!(error_kind(&reset), "reset");
        let late = ConnectError::Timeout(Duration::from_secs(10));
        assert_eq!(error_kind(&late), "timeout");
    }

    #[test]
    fn the_rate_spans_the_first_to_the_last_join() {
        let counters = StormCounters::default();
        for us in [1_000_000, 1_500_000, 3_000_000] {
            counters.joins.fetch_add(1, Ordering::Relaxed);
            counters.join_us.lock().unwrap().record(us).unwrap();
        }
        let commands = BTreeMap::from([("xgroup|create".to_string(), 6)]);
        let stats = StormStats::collect(3, &counters, 0.0, commands);
        assert!(
            (stats.joins_per_s - 1.5).abs() < 0.01,
            "{}",
            stats.joins_per_s
        );
        assert_eq!(stats.commands_per_join, 2.0);
    }
}
