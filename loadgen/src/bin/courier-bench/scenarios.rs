//! The scenarios: what each one asks of loadgen, in full and in `--quick` form. Every
//! run is bounded in time (loadgen's own phases, and its `--max-runtime`).

use clap::ValueEnum;

/// A scenario name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Throughput,
    Latency,
    Idle,
    Fanout,
    Conns,
    Profile,
    /// throughput latency idle fanout conns
    All,
    Overload,
    IdleCost,
    ConnectStorm,
    Memory,
    LatencySweep,
}

/// What the help says about the scenarios.
pub const HELP: &str = "\
Scenarios (default: throughput latency idle), each bounded in time:
  throughput    1,000 connections, fan-out 10, 100 senders as fast as a window of 4
                allows, batches of 10 (BENCH_SENDERS, BENCH_BATCH, BENCH_WINDOW)
  latency       1,000 connections, fan-out 10, a steady 2,000 sends/s of one message
                = 20,000 delivered msgs/s: the send->deliver percentiles
  idle          N idle connections (--idle-connections, default 100,000; capped by
                the fd limit): RSS per connection and Redis connections
  fanout        throughput at fan-out 1, 10 and 100 (1,000 connections)
  conns         1k, 10k and N connections, 100 of them sending 2,000 msgs/s, fan-out 10
  profile       throughput with courier built with frame pointers under `perf record`
  all           throughput latency idle fanout conns
  overload      past saturation: 100 -> 1,000 -> 10,000 -> 19,000 senders
                (--overload-senders), one connection each, fan-out 10, batch 10, as
                fast as a window of 4 allows, then a window of 1; per point 5 s warm-up
                + 20 s measured + a drain of at most 60 s: delivered msgs/s, batches
                sent/acked/refused, error frames by code (`unavailable`...), lost,
                duplicates after ack, p50/p99 send->deliver, entries left pending after
                the drain (they wait for the ack timeout) and courier's redeliveries
  idle-cost     N idle connections (--edge-connections, default 19,900) held 60 s:
                Redis commands/s by command (INFO commandstats), Redis and courier CPU,
                RSS per connection
  connect-storm N connections (--edge-connections, default 19,900); courier is killed
                (SIGKILL; --storm-signal term: SIGTERM) and started again on its port,
                then every client reconnects at once (retrying failures, at most 60 s):
                joins/s from the first to the last join, failed attempts by kind (HTTP
                503/429, refused, timeout), Redis commands per join

  latency-sweep the latency load at 500 -> 1,000 -> 1,500 -> 2,000 -> 2,500 -> 3,000
                sends/s (5,000 -> 30,000 delivered msgs/s), 1,000 connections, fan-out
                10: send->deliver p50/p99 along the load, where the tail leaves the
                target and where it collapses (--quick: 1,000 and 2,000 sends/s)
  memory        Redis memory under steady traffic for several retention windows: 1,000
                connections, fan-out 10, 500 sends/s of one message (5,000 delivered
                msgs/s) for 60 s with courier's history, dedup window and legacy
                lists bounded to a 10 s window (COURIER_HISTORY_RETENTION_S=10,
                COURIER_DEDUP_WINDOW_S=10, COURIER_LEGACY_LIST_MAXLEN=20), then 12 s
                at rest: used_memory (and used_memory_dataset) every second, their
                spread once the window is reached, bytes per delivered message and
                per user at rest; and what one dedup record costs (single
                redis-server). --quick: a 5 s window, 20 s of traffic

--quick shortens every scenario (3 s runs, 1,000 connections for idle/idle-cost/
connect-storm, an overload sweep of 100 and 1,000 senders) for a smoke test.

19,000 senders and 19,900 edge connections fit one loadgen process and one courier
under this machine's limit of 20,000 open files per process (loadgen keeps 64 for
itself); client sockets are spread over 127.0.0.1-16 for ports.";

/// How a run is driven besides starting loadgen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    /// courier is profiled with `perf record` during the run.
    Profile,
    /// A connect storm: courier is stopped with this signal and started again when
    /// loadgen is ready.
    Storm(StormSignal),
    /// Redis `used_memory` is sampled through the run and a rest of a window after it,
    /// for a retention window of this many seconds.
    Memory(u64),
}

/// How courier goes away in a connect storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StormSignal {
    /// SIGKILL: a crash; every connection drops at once.
    Kill,
    /// SIGTERM: a graceful restart; courier closes every connection (1001) first.
    Term,
}

/// One loadgen run: its name (and results files), its arguments, how it is driven.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub args: Vec<String>,
    pub kind: Kind,
    /// Settings for courier besides the driver's environment.
    pub courier_env: Vec<(String, String)>,
}

/// The knobs of every scenario, from the command line and the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub warmup: f64,
    pub duration: f64,
    pub senders: usize,
    pub batch: usize,
    pub window: usize,
    pub idle_connections: usize,
    pub edge_connections: usize,
    pub overload_senders: Vec<usize>,
    pub profile_seconds: f64,
    pub storm_signal: StormSignal,
    /// The most connections a run with traffic can open (fd limit minus a reserve).
    pub max_connections: usize,
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

impl Settings {
    /// The runs of one scenario, in order.
    pub fn runs(&self, scenario: Scenario) -> Vec<Run> {
        let plain = |name: String, args: Vec<String>| Run {
            name,
            args,
            kind: Kind::Plain,
            courier_env: Vec::new(),
        };
        let timing = |duration: f64| {
            vec![
                "--warmup".to_string(),
                self.warmup.to_string(),
                "--duration".to_string(),
                duration.to_string(),
            ]
        };
        let half = if self.duration / 2.0 > 2.0 {
            self.duration / 2.0
        } else {
            self.duration
        };
        let max_load = |fanout: usize| {
            let mut a = args(&["--connections", "1000", "--senders"]);
            a.push(self.senders.to_string());
            a.extend(args(&["--max", "--fanout"]));
            a.extend([fanout.to_string(), "--batch".into(), self.batch.to_string()]);
            a.extend(["--window".into(), self.window.to_string()]);
            a
        };
        match scenario {
            Scenario::Throughput => {
                let mut a = max_load(10);
                a.extend(timing(self.duration));
                vec![plain("throughput".into(), a)]
            }
            Scenario::Latency => {
                let mut a = args(&["--connections", "1000"]);
                a.extend(steady_load(STEADY_SENDS_PER_S));
                a.extend(timing(self.duration));
                vec![plain("latency".into(), a)]
            }
            Scenario::Idle => {
                let n = self.idle_connections;
                if n > self.max_connections {
                    eprintln!(
                        "bench: note: {n} connections exceed this machine's fd limit; the \
                         run shows where it stops"
                    );
                }
                let hold = if self.quick { 2.0 } else { 10.0 };
                vec![plain(format!("idle-{n}"), idle_args(n, hold))]
            }
            Scenario::Fanout => [1, 10, 100]
                .into_iter()
                .map(|f| {
                    let mut a = max_load(f);
                    a.extend(timing(half));
                    plain(format!("fanout-{f}"), a)
                })
                .collect(),
            Scenario::Conns => {
                let sweep = if self.quick {
                    vec![1000, 2000]
                } else {
                    vec![1000, 10_000, self.idle_connections]
                };
                sweep
                    .into_iter()
                    .map(|n| {
                        let n = if n > self.max_connections {
                            eprintln!(
                                "bench: note: {n} connections capped to {} (fd limit)",
                                self.max_connections
                            );
                            self.max_connections
                        } else {
                            n
                        };
                        let mut a = vec!["--connections".to_string(), n.to_string()];
                        a.extend(steady_load(STEADY_SENDS_PER_S));
                        a.extend(args(&["--connect-concurrency", "128"]));
                        a.extend(timing(half));
                        plain(format!("conns-{n}"), a)
                    })
                    .collect()
            }
            Scenario::Profile => {
                let mut a = max_load(10);
                a.extend(timing(self.profile_seconds + 4.0));
                vec![Run {
                    name: "profile".into(),
                    args: a,
                    kind: Kind::Profile,
                    courier_env: Vec::new(),
                }]
            }
            Scenario::All => [
                Scenario::Throughput,
                Scenario::Latency,
                Scenario::Idle,
                Scenario::Fanout,
                Scenario::Conns,
            ]
            .into_iter()
            .flat_map(|s| self.runs(s))
            .collect(),
            Scenario::Overload => self.overload(),
            Scenario::LatencySweep => {
                let rates: &[u32] = if self.quick {
                    &[1000, 2000]
                } else {
                    &[500, 1000, 1500, 2000, 2500, 3000]
                };
                rates
                    .iter()
                    .map(|rate| {
                        let mut a = args(&["--connections", "1000"]);
                        a.extend(steady_load(*rate));
                        a.extend(timing(half));
                        plain(format!("latency-{}", rate * 10), a)
                    })
                    .collect()
            }
            Scenario::IdleCost => {
                let n = self.edge_connections;
                let hold = if self.quick { 5.0 } else { 60.0 };
                vec![plain(format!("idle-cost-{n}"), idle_args(n, hold))]
            }
            Scenario::ConnectStorm => {
                let n = self.edge_connections;
                let mut a = vec!["--connections".to_string(), n.to_string(), "--storm".into()];
                a.extend(args(&[
                    "--storm-idle",
                    if self.quick { "2" } else { "10" },
                    "--storm-timeout",
                    if self.quick { "20" } else { "60" },
                    "--connect-concurrency",
                    "128",
                    "--max-connect-failures",
                    "100",
                ]));
                vec![Run {
                    name: format!("connect-storm-{n}"),
                    args: a,
                    kind: Kind::Storm(self.storm_signal),
                    courier_env: Vec::new(),
                }]
            }
            Scenario::Memory => {
                let (window, duration) = if self.quick { (5, 20) } else { (10, 60) };
                let mut a = args(&[
                    "--connections",
                    "1000",
                    "--fanout",
                    "10",
                    "--senders",
                    "100",
                    "--rate",
                    "500",
                    "--batch",
                    "1",
                    "--warmup",
                    "2",
                    "--drain",
                    "10",
                ]);
                a.extend(["--duration".into(), duration.to_string()]);
                vec![Run {
                    name: format!("memory-w{window}"),
                    args: a,
                    kind: Kind::Memory(window),
                    courier_env: crate::memory::courier_env(window),
                }]
            }
        }
    }

    /// The overload sweep: every sender count at a window of 4, then of 1.
    fn overload(&self) -> Vec<Run> {
        let (warmup, duration, drain) = if self.quick {
            (1.0, 3.0, 10.0)
        } else {
            (5.0, 20.0, 60.0)
        };
        let mut runs = Vec::new();
        for window in [4, 1] {
            for &senders in &self.overload_senders {
                if senders > self.max_connections {
                    eprintln!(
                        "bench: note: overload at {senders} senders skipped: more than the \
                         {} connections this machine's fd limit allows",
                        self.max_connections
                    );
                    continue;
                }
                let mut a = vec!["--connections".to_string(), senders.to_string()];
                a.extend(["--senders".into(), senders.to_string()]);
                a.extend(args(&[
                    "--fanout", "10", "--batch", "10", "--max", "--window",
                ]));
                a.push(window.to_string());
                a.extend(["--warmup".into(), warmup.to_string()]);
                a.extend(["--duration".into(), duration.to_string()]);
                a.extend(["--drain".into(), drain.to_string()]);
                a.extend(args(&[
                    "--connect-concurrency",
                    "128",
                    "--max-connect-failures",
                    "100",
                ]));
                runs.push(Run {
                    name: format!("overload-w{window}-{senders}"),
                    args: a,
                    kind: Kind::Plain,
                    courier_env: Vec::new(),
                });
            }
        }
        runs
    }
}

/// The steady 20,000 delivered msgs/s of `latency` and `conns`.
const STEADY_SENDS_PER_S: u32 = 2000;

/// 100 senders at a steady `rate` sends/s of one message, fan-out 10: ten times
/// `rate` delivered msgs/s.
fn steady_load(rate: u32) -> Vec<String> {
    let mut a = args(&["--fanout", "10", "--senders", "100", "--batch", "1"]);
    a.extend(["--rate".into(), rate.to_string()]);
    a
}

/// Holding `n` idle connections for `hold` seconds.
fn idle_args(n: usize, hold: f64) -> Vec<String> {
    let mut a = vec!["--connections".to_string(), n.to_string(), "--idle".into()];
    a.extend(["--duration".into(), hold.to_string()]);
    a.extend(args(&[
        "--connect-concurrency",
        "128",
        "--connect-timeout",
        "5",
        "--max-connect-failures",
        "100",
    ]));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(quick: bool) -> Settings {
        Settings {
            quick,
            warmup: 5.0,
            duration: 20.0,
            senders: 100,
            batch: 10,
            window: 4,
            idle_connections: 100_000,
            edge_connections: 19_900,
            overload_senders: vec![100, 1000, 10_000, 19_000],
            profile_seconds: 10.0,
            storm_signal: StormSignal::Kill,
            max_connections: 19_900,
        }
    }

    #[test]
    fn the_overload_sweep_has_every_point_at_both_windows() {
        let names: Vec<String> = settings(false)
            .runs(Scenario::Overload)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [
                "overload-w4-100",
                "overload-w4-1000",
                "overload-w4-10000",
                "overload-w4-19000",
                "overload-w1-100",
                "overload-w1-1000",
                "overload-w1-10000",
                "overload-w1-19000"
            ]
        );
        let point = &settings(false).runs(Scenario::Overload)[3];
        let joined = point.args.join(" ");
        assert!(
            joined.contains(
                "--connections 19000 --senders 19000 --fanout 10 --batch 10 --max --window 4"
            ),
            "{joined}"
        );
        assert!(joined.contains("--duration 20 --drain 60"), "{joined}");
    }

    #[test]
    fn the_latency_sweep_names_each_point_by_its_delivered_rate() {
        let runs = settings(false).runs(Scenario::LatencySweep);
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "latency-5000",
                "latency-10000",
                "latency-15000",
                "latency-20000",
                "latency-25000",
                "latency-30000"
            ]
        );
        let joined = runs[0].args.join(" ");
        assert!(joined.contains("--rate 500"), "{joined}");
    }

    #[test]
    fn all_is_the_five_original_scenarios_and_conns_is_capped_by_the_fd_limit() {
        let runs = settings(false).runs(Scenario::All);
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "throughput",
                "latency",
                "idle-100000",
                "fanout-1",
                "fanout-10",
                "fanout-100",
                "conns-1000",
                "conns-10000",
                "conns-19900"
            ]
        );
        let storm = &settings(true).runs(Scenario::ConnectStorm)[0];
        assert_eq!(storm.kind, Kind::Storm(StormSignal::Kill));
    }
}
