//! The Prometheus registry and every metric handle, served at `/metrics`
//! (OpenMetrics text, `prometheus-client`: no global state, so each test's courier
//! has its own).
//!
//! Names follow Prometheus conventions: `courier_` prefix, counters end in `_total`,
//! durations are histograms in `_seconds`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A frame kind (`messages`, `ack`, `received`, `error`, `invalid`, `binary`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabel {
    /// The kind.
    pub frame: &'static str,
}

/// An error code of DESIGN §2.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code.
    pub code: &'static str,
}

/// A Redis operation (`chat_members`, `send`, `join`, `read_new`, `read_pending`,
/// `ack`, `reclaim`, `dead_letter`, `leave`, `ping`, `pending_summary`, `replay`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    /// The operation.
    pub command: &'static str,
}

/// A lane of the Redis gate (`control`, `catch_up`, `read`, `intake`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// The lane.
    pub lane: &'static str,
}

/// Why a trim removed unacked entries: `maxlen` (the inbox's length cap) or
/// `idle_device` (past a device group idle for `COURIER_DEVICE_IDLE_S`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: &'static str,
}

/// Which way a batch went: `in` (sent by a client) or `out` (delivered).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// The direction.
    pub direction: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric courier exports.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Client frames received, by kind.
    pub frames_in: Family<FrameLabel, Counter>,
    /// Frames sent to clients, by kind.
    pub frames_out: Family<FrameLabel, Counter>,
    /// Messages written for their recipients (acked to the sender).
    pub messages_accepted: Counter,
    /// Messages pushed to clients the first time.
    pub messages_delivered: Counter,
    /// Messages pushed again (ack timeout, reconnect).
    pub messages_redelivered: Counter,
    /// Messages moved to dead letters.
    pub messages_dead_lettered: Counter,
    /// Pending entries found trimmed before delivery.
    pub messages_trimmed: Counter,
    /// Entries a device group had not acked, removed by an inbox trim, by reason.
    pub unacked_trimmed: Family<ReasonLabel, Counter>,
    /// Client acks applied (XACKed batches).
    pub acks: Counter,
    /// Error frames sent, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Messages per batch, sent and delivered.
    pub batch_size: HistogramFamily<DirectionLabel>,
    /// From the stream entry's creation to its first push to a client.
    pub send_to_deliver: Histogram,
    /// From a batch's push to the client's ack.
    pub deliver_to_ack: Histogram,
    /// Redis round-trip time, by operation.
    pub redis_command: HistogramFamily<CommandLabel>,
    /// Redis failures, by operation.
    pub redis_errors: Family<CommandLabel, Counter>,
    /// Time commands waited in courier for their turn to be sent, by lane.
    pub redis_wait: HistogramFamily<LaneLabel>,
    /// Commands not sent because Redis was known to be down, by operation.
    pub redis_refused: Family<CommandLabel, Counter>,
    /// Times the pub/sub connection came back after a loss.
    pub pubsub_reconnects: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("courier");
        let metrics = Self {
            connections: Gauge::default(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            messages_accepted: Counter::default(),
            messages_delivered: Counter::default(),
            messages_redelivered: Counter::default(),
            messages_dead_lettered: Counter::default(),
            messages_trimmed: Counter::default(),
            unacked_trimmed: Family::default(),
            acks: Counter::default(),
            errors: Family::default(),
            batch_size: Family::new_with_constructor(batch_histogram),
            send_to_deliver: latency_histogram(),
            deliver_to_ack: latency_histogram(),
            redis_command: Family::new_with_constructor(latency_histogram),
            redis_errors: Family::default(),
            redis_wait: Family::new_with_constructor(latency_histogram),
            redis_refused: Family::default(),
            pubsub_reconnects: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        r.register(
            "frames_in",
            "Client frames received, by kind",
            metrics.frames_in.clone(),
        );
        r.register(
            "frames_out",
            "Frames sent to clients, by kind",
            metrics.frames_out.clone(),
        );
        r.register(
            "messages_accepted",
            "Messages written for their recipients and acked to the sender",
            metrics.messages_accepted.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages pushed to a client for the first time",
            metrics.messages_delivered.clone(),
        );
        r.register(
            "messages_redelivered",
            "Messages pushed again after an ack timeout or a reconnect",
            metrics.messages_redelivered.clone(),
        );
        r.register(
            "messages_dead_lettered",
            "Messages moved to dead:{user:<id>} after the maximum deliveries",
            metrics.messages_dead_lettered.clone(),
        );
        r.register(
            "messages_trimmed",
            "Pending entries trimmed from the stream before delivery (lost)",
            metrics.messages_trimmed.clone(),
        );
        r.register(
            "unacked_trimmed",
            "Entries a device group had not acked, removed by an inbox trim (per device), \
             by reason: maxlen (the length cap) or idle_device (past an idle device group)",
            metrics.unacked_trimmed.clone(),
        );
        r.register(
            "acks",
            "Client acks applied (batches XACKed)",
            metrics.acks.clone(),
        );
        r.register(
            "errors",
            "Error frames sent, by code",
            metrics.errors.clone(),
        );
        r.register(
            "batch_size",
            "Messages per batch, by direction (in: sent by clients, out: delivered)",
            metrics.batch_size.clone(),
        );
        r.register_with_unit(
            "send_to_deliver",
            "Time from a message's stream entry to its first push to a client",
            Unit::Seconds,
            metrics.send_to_deliver.clone(),
        );
        r.register_with_unit(
            "deliver_to_ack",
            "Time from a batch's push to the client's ack",
            Unit::Seconds,
            metrics.deliver_to_ack.clone(),
        );
        r.register_with_unit(
            "redis_command",
            "Redis round-trip time, by operation",
            Unit::Seconds,
            metrics.redis_command.clone(),
        );
        r.register(
            "redis_errors",
            "Redis failures, by operation",
            metrics.redis_errors.clone(),
        );
        r.register_with_unit(
            "redis_wait",
            "Time Redis commands waited in courier for their turn to be sent, by lane",
            Unit::Seconds,
            metrics.redis_wait.clone(),
        );
        r.register(
            "redis_refused",
            "Redis commands not sent because Redis was known to be down, by operation",
            metrics.redis_refused.clone(),
        );
        r.register(
            "pubsub_reconnects",
            "Times the pub/sub connection came back after a loss",
            metrics.pubsub_reconnects.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a client frame.
    pub fn frame_in(&self, frame: &'static str) {
        self.frames_in.get_or_create(&FrameLabel { frame }).inc();
    }

    /// Counts a frame sent.
    pub fn frame_out(&self, frame: &'static str) {
        self.frames_out.get_or_create(&FrameLabel { frame }).inc();
    }

    /// Counts an error frame.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts entries a trim removed unacked.
    pub fn trimmed_unacked(&self, reason: &'static str, count: u64) {
        self.unacked_trimmed
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count);
    }

    /// Records a batch's size.
    pub fn batch(&self, direction: &'static str, size: usize) {
        self.batch_size
            .get_or_create(&DirectionLabel { direction })
            .observe(size as f64);
    }

    /// Records one Redis operation's duration and outcome.
    pub fn redis(&self, command: &'static str, took: Duration, ok: bool) {
        let label = CommandLabel { command };
        self.redis_command
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if !ok {
            self.redis_errors.get_or_create(&label).inc();
        }
    }

    /// Records how long a command waited for its turn in a lane of the gate.
    pub fn redis_wait(&self, lane: &'static str, waited: Duration) {
        self.redis_wait
            .get_or_create(&LaneLabel { lane })
            .observe(waited.as_secs_f64());
    }

    /// Counts a command not sent because Redis was known to be down.
    pub fn redis_refused(&self, command: &'static str) {
        self.redis_refused
            .get_or_create(&CommandLabel { command })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        metrics.frame_in("ack");
        metrics.redis("send", Duration::from_millis(2), false);
        metrics.messages_accepted.inc();
        let text = metrics.encode();
        for name in [
            "courier_connections ",
            "courier_frames_in_total{frame=\"ack\"} 1",
            "courier_messages_accepted_total 1",
            "courier_redis_errors_total{command=\"send\"} 1",
            "courier_redis_command_seconds_bucket{",
            "courier_send_to_deliver_seconds_count 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
