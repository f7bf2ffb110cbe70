//! The run's results: a human summary, then one JSON line (the last line of stdout).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::args::{Pace, Plan};
use crate::probes::{CourierCounters, ProcSample, RedisSample, is_probe};
use crate::run::Point;
use crate::storm::StormStats;
use crate::tracker::{Percentiles, Reconciled, Tracker};

/// Everything [`Report::build`] needs.
pub struct Inputs<'a> {
    pub plan: &'a Plan,
    /// Connections not attempted because loadgen's own fd limit is too low.
    pub fd_capped: usize,
    pub senders: usize,
    pub tracker: &'a Tracker,
    pub reconciled: Reconciled,
    pub open: usize,
    pub failed: usize,
    pub skipped: usize,
    pub first_error: Option<String>,
    pub connect_s: f64,
    pub drained: bool,
    pub drain_s: f64,
    pub window_start: Point,
    pub window_end: Point,
    pub baseline_courier: Option<ProcSample>,
    pub connected_courier: Option<ProcSample>,
    pub end_courier: Option<ProcSample>,
    pub rss_max_kib: u64,
    pub baseline_redis: Option<RedisSample>,
    pub connected_redis: Option<RedisSample>,
    pub courier_fds_open: Option<u64>,
    pub courier_fd_limit: Option<u64>,
    pub fd_soft: u64,
    pub fd_hard: u64,
    pub pending_after_drain: Option<u64>,
    pub courier_counters: Option<CourierCounters>,
    pub storm: Option<StormStats>,
}

#[derive(Debug, Serialize)]
pub struct CourierStats {
    pub rss_kib_baseline: u64,
    pub rss_kib_connected: u64,
    pub rss_kib_end: u64,
    pub rss_kib_max: u64,
    /// (RSS with the connections open − RSS before) ÷ open connections.
    pub rss_per_conn_bytes: f64,
    /// Percent of one core over the measured window.
    pub cpu_pct: f64,
    /// courier CPU microseconds per delivered message over the window (less sensitive
    /// to a noisy machine than msgs/s).
    pub cpu_us_per_delivered: Option<f64>,
    /// File descriptors open with the connections open.
    pub fds_open: Option<u64>,
    pub fd_limit: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct RedisStats {
    /// Redis servers sampled: 1, or every node of a cluster (the figures below are sums).
    pub nodes: u64,
    /// Percent of one core (used_cpu_sys + used_cpu_user) over the measured window.
    pub cpu_pct: f64,
    /// Redis CPU microseconds per delivered message over the window.
    pub cpu_us_per_delivered: Option<f64>,
    /// INFO clients connected_clients with the connections open (loadgen's own included).
    pub connected_clients: u64,
    /// CLIENT LIST entries other than loadgen's: courier's connections.
    pub courier_connections: u64,
    pub used_memory_bytes_baseline: u64,
    pub used_memory_bytes_connected: u64,
    /// Commands per second over the window (INFO commandstats), loadgen's own INFO
    /// and CLIENT probes left out: courier's Redis work.
    pub commands_per_s: f64,
    /// The same, per command (probes included, so nothing is hidden).
    pub commands_per_s_by_command: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct LoadgenStats {
    pub cpu_pct: f64,
    pub fd_limit_soft: u64,
    pub fd_limit_hard: u64,
    pub threads: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub mode: &'static str,
    pub run_id: u32,
    pub connections_requested: usize,
    pub connections_open: usize,
    pub connect_failures: usize,
    pub connect_skipped: usize,
    /// Not attempted: beyond loadgen's own fd limit.
    pub connect_fd_capped: usize,
    pub connect_error: Option<String>,
    pub connect_s: f64,
    pub senders: usize,
    pub fanout: usize,
    pub batch: usize,
    pub window: usize,
    pub rate_target: Option<f64>,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub measured_s: f64,
    pub text_bytes: usize,
    pub sent_msgs: u64,
    pub sent_batches: u64,
    pub acked_msgs: u64,
    pub acked_batches: u64,
    pub refused_msgs: u64,
    /// Sent batches answered with an error frame (by code in `errors`).
    pub refused_batches: u64,
    pub unanswered_msgs: u64,
    pub deliveries: u64,
    pub unique_deliveries: u64,
    pub expected_deliveries: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub lost_messages: u64,
    pub delivered_unacked: u64,
    pub foreign: u64,
    pub stalls: u64,
    pub dropped_connections: u64,
    pub drops: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub drained: bool,
    pub drain_s: f64,
    /// Entries still pending in the users' groups after the drain (every delivery
    /// was acked): they wait for courier's ack timeout.
    pub pending_after_drain: Option<u64>,
    /// Sends acked by courier per second, over the measured window.
    pub acked_per_s: f64,
    /// Messages delivered per second (recipient deliveries), over the measured window.
    pub delivered_per_s: f64,
    pub avg_delivery_batch: f64,
    pub latency_ms: Percentiles,
    pub ack_latency_ms: Percentiles,
    pub courier: Option<CourierStats>,
    /// courier's own counters at the end (`/metrics`): redeliveries, error frames
    /// sent, Redis errors.
    pub courier_counters: Option<CourierCounters>,
    pub redis: Option<RedisStats>,
    /// The connect storm (`--storm`).
    pub storm: Option<StormStats>,
    pub loadgen: LoadgenStats,
    /// redis-benchmark requests/s of the same run, as given with `--baseline`.
    pub baseline_rps: BTreeMap<String, f64>,
    /// `delivered_per_s` ÷ the stream entries/s each baseline writes.
    pub ratios: BTreeMap<String, f64>,
}

fn pct(from: Option<ProcSample>, to: Option<ProcSample>, secs: f64) -> f64 {
    match (from, to) {
        (Some(a), Some(b)) if secs > 0.0 => (b.cpu_s - a.cpu_s) / secs * 100.0,
        _ => 0.0,
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

impl Report {
    pub fn build(i: Inputs<'_>) -> Self {
        let args = &i.plan.args;
        let c = &i.tracker.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (t0, courier0, redis0, own0) = i.window_start;
        let (t1, courier1, redis1, own1) = i.window_end;
        let commands_per_s_by_command: BTreeMap<String, f64> = match (&redis0, &redis1) {
            (Some(a), Some(b)) if (t1 - t0).as_secs_f64() > 0.0 => b
                .calls_since(a)
                .into_iter()
                .map(|(name, calls)| (name, round(calls as f64 / (t1 - t0).as_secs_f64(), 2)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let commands_per_s = round(
            commands_per_s_by_command
                .iter()
                .filter(|(name, _)| !is_probe(name))
                .fold(0.0, |sum, (_, rate)| sum + rate),
            2,
        );
        let secs = (t1 - t0).as_secs_f64();
        let window_deliveries = load(&c.window_deliveries);
        let per_s = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
        let courier = i.connected_courier.map(|connected| {
            let baseline = i.baseline_courier.unwrap_or_default();
            CourierStats {
                rss_kib_baseline: baseline.rss_kib,
                rss_kib_connected: connected.rss_kib,
                rss_kib_end: i.end_courier.map(|s| s.rss_kib).unwrap_or_default(),
                rss_kib_max: i.rss_max_kib,
                rss_per_conn_bytes: if i.open > 0 {
                    round(
                        (connected.rss_kib as f64 - baseline.rss_kib as f64) * 1024.0
                            / i.open as f64,
                        0,
                    )
                } else {
                    0.0
                },
                cpu_pct: round(pct(courier0, courier1, secs), 1),
                cpu_us_per_delivered: match (courier0, courier1) {
                    (Some(a), Some(b)) if window_deliveries > 0 => Some(round(
                        (b.cpu_s - a.cpu_s) * 1e6 / window_deliveries as f64,
                        3,
                    )),
                    _ => None,
                },
                fds_open: i.courier_fds_open,
                fd_limit: i.courier_fd_limit,
            }
        });
        let redis = match (redis0, redis1, i.connected_redis) {
            (Some(a), Some(b), Some(connected)) => {
                let cpu = b.cpu_s - a.cpu_s;
                Some(RedisStats {
                    nodes: connected.nodes,
                    cpu_pct: round(if secs > 0.0 { cpu / secs * 100.0 } else { 0.0 }, 1),
                    cpu_us_per_delivered: (window_deliveries > 0)
                        .then(|| round(cpu * 1e6 / window_deliveries as f64, 3)),
                    connected_clients: connected.connected_clients,
                    courier_connections: connected.other_clients,
                    used_memory_bytes_baseline: i
                        .baseline_redis
                        .map(|s| s.used_memory)
                        .unwrap_or_default(),
                    used_memory_bytes_connected: connected.used_memory,
                    commands_per_s,
                    commands_per_s_by_command,
                })
            }
            _ => None,
        };
        let delivered_per_s = per_s(window_deliveries);
        let baseline_rps = i
            .plan
            .baseline
            .iter()
            .map(|(name, rps, _)| (name.clone(), *rps))
            .collect();
        let ratios = i
            .plan
            .baseline
            .iter()
            .filter(|(_, rps, entries)| rps * entries > 0.0 && delivered_per_s > 0.0)
            .map(|(name, rps, entries)| {
                (
                    format!("delivered_per_{name}"),
                    round(delivered_per_s / (rps * entries), 4),
                )
            })
            .collect();
        let deliveries = load(&c.deliveries);
        let batches = load(&c.delivery_batches);
        Self {
            scenario: args.scenario.clone(),
            mode: match i.plan.pace {
                Pace::Idle => "idle",
                Pace::Storm => "storm",
                Pace::Rate(_) => "rate",
                Pace::Max => "max",
            },
            run_id: i.tracker.run,
            connections_requested: args.connections,
            connections_open: i.open,
            connect_failures: i.failed,
            connect_skipped: i.skipped,
            connect_fd_capped: i.fd_capped,
            connect_error: i.first_error,
            connect_s: round(i.connect_s, 2),
            senders: i.senders,
            fanout: if i.senders > 0 { args.fanout } else { 0 },
            batch: args.batch,
            window: args.window,
            rate_target: match i.plan.pace {
                Pace::Rate(r) => Some(r),
                _ => None,
            },
            warmup_s: args.warmup,
            duration_s: args.duration,
            measured_s: round(secs, 3),
            text_bytes: args.text_bytes,
            sent_msgs: load(&c.sent_msgs),
            sent_batches: load(&c.sent_batches),
            acked_msgs: load(&c.acked_msgs),
            acked_batches: load(&c.acked_batches),
            refused_msgs: load(&c.refused_msgs),
            refused_batches: load(&c.refused_batches),
            unanswered_msgs: i.reconciled.unanswered_msgs,
            deliveries,
            unique_deliveries: load(&c.unique),
            expected_deliveries: load(&c.acked_msgs) * i.tracker.layout.fanout as u64,
            duplicates: load(&c.duplicates),
            lost: i.reconciled.lost,
            lost_messages: i.reconciled.lost_messages,
            delivered_unacked: i.reconciled.delivered_unacked,
            foreign: load(&c.foreign),
            stalls: load(&c.stalls),
            dropped_connections: load(&c.dropped),
            drops: i.reconciled.drops,
            errors: i.reconciled.errors,
            drained: i.drained,
            drain_s: round(i.drain_s, 3),
            pending_after_drain: i.pending_after_drain,
            acked_per_s: round(per_s(load(&c.window_acked)), 1),
            delivered_per_s: round(delivered_per_s, 1),
            avg_delivery_batch: if batches > 0 {
                round(deliveries as f64 / batches as f64, 2)
            } else {
                0.0
            },
            latency_ms: i.reconciled.latency,
            ack_latency_ms: i.reconciled.ack_latency,
            courier,
            courier_counters: i.courier_counters,
            redis,
            storm: i.storm,
            loadgen: LoadgenStats {
                cpu_pct: round(pct(own0, own1, secs), 1),
                fd_limit_soft: i.fd_soft,
                fd_limit_hard: i.fd_hard,
                threads: args.threads,
            },
            baseline_rps,
            ratios,
        }
    }

    pub fn print(&self) {
        println!("== loadgen: {} ({})", self.scenario, self.mode);
        println!(
            "connections   {} open of {} ({} failed, {} skipped, {} beyond loadgen's fd limit) in {:.1} s{}",
            self.connections_open,
            self.connections_requested,
            self.connect_failures,
            self.connect_skipped,
            self.connect_fd_capped,
            self.connect_s,
            self.connect_error
                .as_ref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        );
        if self.mode == "rate" || self.mode == "max" {
            println!(
                "load          {} senders, fan-out {}, batch {}, window {}, {}; {} s warm-up + {} s",
                self.senders,
                self.fanout,
                self.batch,
                self.window,
                self.rate_target
                    .map(|r| format!("{r} msgs/s"))
                    .unwrap_or_else(|| "max".into()),
                self.warmup_s,
                self.duration_s
            );
            println!(
                "sent          {} msgs ({} batches): {} acked by courier ({} batches), {} refused ({} batches), {} unanswered",
                self.sent_msgs,
                self.sent_batches,
                self.acked_msgs,
                self.acked_batches,
                self.refused_msgs,
                self.refused_batches,
                self.unanswered_msgs
            );
            println!(
                "delivered     {} ({} unique of {} expected), {} duplicates, {} lost ({} msgs), {} foreign; drained: {} in {:.2} s",
                self.deliveries,
                self.unique_deliveries,
                self.expected_deliveries,
                self.duplicates,
                self.lost,
                self.lost_messages,
                self.foreign,
                self.drained,
                self.drain_s
            );
            println!(
                "throughput    {:.0} delivered msgs/s, {:.0} acked sends/s (avg delivery batch {:.1})",
                self.delivered_per_s, self.acked_per_s, self.avg_delivery_batch
            );
            let l = &self.latency_ms;
            println!(
                "send→deliver  p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2} ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
            let a = &self.ack_latency_ms;
            println!(
                "send→ack      p50 {:.2} ms, p99 {:.2}, max {:.2}",
                a.p50, a.p99, a.max
            );
            if let Some(pending) = self.pending_after_drain {
                println!(
                    "pending       {pending} entries left pending after the drain (they wait for the ack timeout)"
                );
            }
            if self.stalls > 0 {
                println!(
                    "stalls        {} rate slots skipped (window full)",
                    self.stalls
                );
            }
        }
        if let Some(c) = &self.courier {
            println!(
                "courier       RSS {} KiB before, {} KiB connected ({:.0} B/connection), {} KiB max; CPU {:.1}%{}; {} fds open of {}",
                c.rss_kib_baseline,
                c.rss_kib_connected,
                c.rss_per_conn_bytes,
                c.rss_kib_max,
                c.cpu_pct,
                c.cpu_us_per_delivered
                    .map(|us| format!(" ({us:.2} µs per delivered msg)"))
                    .unwrap_or_default(),
                c.fds_open.map(|l| l.to_string()).unwrap_or("?".into()),
                c.fd_limit.map(|l| l.to_string()).unwrap_or("?".into())
            );
        }
        if let Some(s) = &self.storm {
            println!(
                "storm         {} of {} back ({} gave up) after {} attempts; first join {:.2} s, last {:.2} s after go: {:.0} joins/s",
                s.joins,
                s.connections,
                s.gave_up,
                s.attempts,
                s.first_join_s,
                s.last_join_s,
                s.joins_per_s
            );
            println!(
                "storm         join p50 {:.0} ms, p99 {:.0} ms; failed attempts {:?}",
                s.join_ms.p50, s.join_ms.p99, s.errors
            );
            println!(
                "storm         {:.1} Redis commands per join ({:.1}/s while idle before); {:?}",
                s.commands_per_join, s.idle_commands_per_s, s.commands
            );
        }
        if let Some(c) = &self.courier_counters {
            println!(
                "courier       {} redelivered, {} Redis errors, error frames sent {:?}",
                c.redelivered.map(|n| n.to_string()).unwrap_or("?".into()),
                c.redis_errors,
                c.errors_sent
            );
        }
        if let Some(r) = &self.redis {
            println!(
                "redis         {:.1} commands/s (loadgen's probes left out): {:?}",
                r.commands_per_s, r.commands_per_s_by_command
            );
            println!(
                "redis         CPU {:.1}%{}; {} clients ({} of them courier's){}",
                r.cpu_pct,
                r.cpu_us_per_delivered
                    .map(|us| format!(" ({us:.2} µs per delivered msg)"))
                    .unwrap_or_default(),
                r.connected_clients,
                r.courier_connections,
                if r.nodes > 1 {
                    format!("; summed over {} nodes", r.nodes)
                } else {
                    String::new()
                }
            );
        }
        println!(
            "loadgen       CPU {:.1}% ({} thread(s)), fd limit {}/{}",
            self.loadgen.cpu_pct,
            self.loadgen.threads,
            self.loadgen.fd_limit_soft,
            self.loadgen.fd_limit_hard
        );
        for (name, ratio) in &self.ratios {
            println!("ratio         {name} = {ratio:.4}");
        }
        if !self.errors.is_empty() {
            println!("errors        {:?}", self.errors);
        }
        if !self.drops.is_empty() {
            println!("drops         {:?}", self.drops);
        }
        match serde_json::to_string(self) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("loadgen: cannot encode the summary: {e}"),
        }
    }
}
