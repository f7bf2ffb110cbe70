//! `courier-bench`: courier's load benchmarks (`scripts/bench` builds and runs it).
//!
//! Starts a private Redis (one `redis-server`, or with `--cluster` a 3-primary
//! cluster) through the test kit, and for every run of every scenario empties Redis,
//! starts a fresh courier on a free port, runs `loadgen` against it as a child
//! process, and stops courier. Results: `target/bench/<timestamp>/` (one `.txt` and
//! `.json` per run, `all.jsonl`, `courier.log`, the Redis nodes' directories), and a
//! summary at the end. Several `--courier-bin`s alternate within every scenario (A/B
//! in one sitting).

mod compare;
mod profile;
mod runner;
mod scenarios;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use courier_testkit::process::{end_children_with_this_thread, raise_fd_limit};
use courier_testkit::{ClusterOptions, NodeOptions, RedisNode, RedisServer, Wait};

use runner::{Bench, CourierBin};
use scenarios::{Scenario, Settings, StormSignal};

/// Connections loadgen or courier need besides one fd each (listener, Redis, epoll,
/// stdio, /proc reads).
const FD_RESERVE: u64 = 100;

#[derive(Debug, Parser)]
#[command(
    name = "courier-bench",
    about = "courier's load benchmarks on loopback: a private Redis (or cluster), a fresh \
             courier per run, loadgen against it; results in target/bench/<timestamp>/",
    after_help = scenarios::HELP
)]
struct Args {
    /// Scenarios to run (default: throughput latency idle).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,

    /// Shorter runs and fewer connections: a smoke test.
    #[arg(long)]
    quick: bool,

    /// First measure Redis's own limit with redis-benchmark (XADD, and courier's send
    /// script call for 1 and 10 messages at fan-out 10, captured from courier itself)
    /// and report delivered msgs/s as ratios to it. Single redis-server only.
    #[arg(long)]
    compare: bool,

    /// A private 3-primary Redis Cluster instead of one redis-server (or
    /// BENCH_REDIS=cluster).
    #[arg(long)]
    cluster: bool,

    /// Connections of `idle` and the largest point of `conns` (default 100,000; 1,000
    /// with --quick).
    #[arg(long)]
    idle_connections: Option<usize>,

    /// Connections of `idle-cost` and `connect-storm` (default 19,900; 1,000 with
    /// --quick).
    #[arg(long)]
    edge_connections: Option<usize>,

    /// Sender counts of the `overload` sweep (default 100,1000,10000,19000; 100,1000
    /// with --quick).
    #[arg(long, value_delimiter = ',')]
    overload_senders: Vec<usize>,

    /// How courier goes away in `connect-storm`.
    #[arg(long, value_enum, default_value = "kill")]
    storm_signal: StormSignal,

    /// The courier binary to benchmark, `[LABEL=]PATH` (default: courier next to this
    /// program). Given several times, every run alternates between them (A/B in one
    /// sitting), labelled LABEL (default bin1, bin2, ...).
    #[arg(long = "courier-bin", value_name = "[LABEL=]PATH")]
    courier_bins: Vec<String>,

    /// Environment for the couriers of one `--courier-bin` label (`LABEL:NAME=VALUE`)
    /// or of all (`NAME=VALUE`); repeatable. E.g. two labels of one binary with
    /// `--courier-env mr1:COURIER_REDIS_MIN_REPLICAS=1` compare a setting in one sitting.
    #[arg(long = "courier-env", value_name = "[LABEL:]NAME=VALUE")]
    courier_env: Vec<String>,

    /// Replicas of the single redis-server (`--replicaof`, disk-based sync), for
    /// `COURIER_REDIS_MIN_REPLICAS` runs.
    #[arg(long, default_value_t = 0)]
    replicas: usize,

    /// With several --courier-bin: how many times each run alternates (A B, A B, ...).
    #[arg(long, default_value_t = 1)]
    rounds: usize,

    /// Where the timestamped results directory goes.
    #[arg(long, default_value = "target/bench")]
    results: PathBuf,

    /// Seconds of sending before each measurement.
    #[arg(long, env = "BENCH_WARMUP")]
    warmup: Option<f64>,

    /// Measured seconds per run.
    #[arg(long, env = "BENCH_DURATION")]
    duration: Option<f64>,

    /// loadgen's tokio threads.
    #[arg(long, env = "BENCH_THREADS", default_value_t = 1)]
    threads: usize,

    /// Senders of `throughput` and `profile`.
    #[arg(long, env = "BENCH_SENDERS", default_value_t = 100)]
    senders: usize,

    /// Messages per sent batch in `throughput`, `fanout`, `profile`.
    #[arg(long, env = "BENCH_BATCH", default_value_t = 10)]
    batch: usize,

    /// Unacked batches per sender in `throughput`, `fanout`, `profile`.
    #[arg(long, env = "BENCH_WINDOW", default_value_t = 4)]
    window: usize,

    /// courier's RUST_LOG.
    #[arg(long, env = "BENCH_RUST_LOG", default_value = "warn")]
    rust_log: String,

    /// LD_PRELOAD for courier only (e.g. an allocator).
    #[arg(long, env = "BENCH_COURIER_PRELOAD")]
    courier_preload: Option<String>,

    /// Seconds `perf record` runs in `profile`.
    #[arg(long, env = "BENCH_PROFILE_SECONDS", default_value_t = 10.0)]
    profile_seconds: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: Args) -> Result<(), String> {
    // Every process (Redis, courier, loadgen) is spawned from this thread and dies
    // with it, even if this program is killed.
    end_children_with_this_thread();
    let (fd_limit, _) = raise_fd_limit();
    let cluster = args.cluster
        || match std::env::var("BENCH_REDIS").as_deref() {
            Err(_) | Ok("" | "single") => false,
            Ok("cluster") => true,
            Ok(other) => return Err(format!("BENCH_REDIS={other}: single or cluster")),
        };
    let settings = settings(&args, fd_limit);
    let scenarios = if args.scenarios.is_empty() {
        vec![Scenario::Throughput, Scenario::Latency, Scenario::Idle]
    } else {
        args.scenarios.clone()
    };
    let bins = courier_bins(&args.courier_bins, &args.courier_env)?;
    let here = std::env::current_exe().map_err(|e| e.to_string())?;
    let loadgen = here.with_file_name("loadgen");
    if !loadgen.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p loadgen",
            loadgen.display()
        ));
    }

    let results = args.results.join(timestamp());
    std::fs::create_dir_all(&results).map_err(|e| format!("{}: {e}", results.display()))?;
    let redis = if cluster {
        RedisServer::Cluster(
            ClusterOptions::default()
                .node_args(["--maxclients", "10000"])
                .dir(&results)
                .start(),
        )
    } else {
        RedisServer::Single(
            NodeOptions::default()
                .args(["--maxclients", "10000"])
                .dir(results.join("redis-node-1"))
                .start(),
        )
    };
    if cluster && args.replicas > 0 {
        return Err("--replicas is for a single redis-server".into());
    }
    // Running until the benchmark ends.
    let _replicas = start_replicas(&redis, args.replicas, &results);
    let redis_desc = if cluster {
        "3-primary Redis Cluster".to_string()
    } else if args.replicas > 0 {
        format!("single redis-server with {} replica(s)", args.replicas)
    } else {
        "single redis-server".to_string()
    };
    let ports: Vec<String> = redis
        .primaries()
        .iter()
        .map(|n| n.port.to_string())
        .collect();
    println!(
        "bench: {redis_desc} :{} (pid {:?}), fd limit {fd_limit}, results in {}",
        ports.join(","),
        redis.pids(),
        results.display()
    );
    let mut bench = Bench {
        results: results.clone(),
        redis,
        secret: format!("bench-secret-{}", std::process::id() ^ timestamp_nanos()),
        loadgen,
        threads: args.threads,
        rust_log: args.rust_log.clone(),
        preload: args.courier_preload.clone().filter(|p| !p.is_empty()),
        baseline: Vec::new(),
        warmup: settings.warmup,
        profile_seconds: args.profile_seconds,
        summary: Vec::new(),
    };

    if args.compare {
        match &bench.redis {
            RedisServer::Cluster(_) => eprintln!(
                "bench: --compare skipped: redis-benchmark runs against a single \
                 redis-server (the send script's keys span slots); run it without --cluster"
            ),
            RedisServer::Single(node) => {
                let courier = bench.start_courier(&bins[0].path, &bins[0].env)?;
                let requests = if args.quick { 20_000 } else { 200_000 };
                bench.baseline =
                    compare::measure(node, &courier, &bench.secret, requests, &results)?;
            }
        }
    }

    for scenario in scenarios {
        for run in settings.runs(scenario) {
            if run.kind == scenarios::Kind::Profile {
                let bin = profile::build_courier()?;
                bench.run(&run, &run.name, &bin, &[]);
                continue;
            }
            for round in 1..=args.rounds {
                for bin in &bins {
                    let mut name = run.name.clone();
                    if bins.len() > 1 {
                        name = format!("{name}.{}", bin.label);
                    }
                    if args.rounds > 1 {
                        name = format!("{name}.r{round}");
                    }
                    bench.run(&run, &name, &bin.path, &bin.env);
                }
            }
        }
    }

    println!();
    println!("== summary ({}, {redis_desc})", results.display());
    if !bench.baseline.is_empty() {
        let limits: Vec<String> = bench
            .baseline
            .iter()
            .map(|(name, rps)| format!("{name}={rps}"))
            .collect();
        println!("redis-benchmark: {}", limits.join(" "));
    }
    for line in &bench.summary {
        println!("{line}");
    }
    Ok(())
}

/// The scenarios' knobs: the command line over the defaults, `--quick` shortening them.
fn settings(args: &Args, fd_limit: u64) -> Settings {
    let quick = args.quick;
    let pick = |given: Option<usize>, full: usize, short: usize| {
        given.unwrap_or(if quick { short } else { full })
    };
    Settings {
        quick,
        warmup: args.warmup.unwrap_or(if quick { 1.0 } else { 5.0 }),
        duration: args.duration.unwrap_or(if quick { 3.0 } else { 20.0 }),
        senders: args.senders,
        batch: args.batch,
        window: args.window,
        idle_connections: pick(args.idle_connections, 100_000, 1000),
        edge_connections: pick(args.edge_connections, 19_900, 1000),
        overload_senders: if !args.overload_senders.is_empty() {
            args.overload_senders.clone()
        } else if quick {
            vec![100, 1000]
        } else {
            vec![100, 1000, 10_000, 19_000]
        },
        profile_seconds: args.profile_seconds,
        storm_signal: args.storm_signal,
        max_connections: fd_limit.saturating_sub(FD_RESERVE) as usize,
    }
}

/// Starts `count` replicas of the single redis-server and waits until they are in
/// sync.
fn start_replicas(redis: &RedisServer, count: usize, results: &std::path::Path) -> Vec<RedisNode> {
    let RedisServer::Single(primary) = redis else {
        return Vec::new();
    };
    let port = primary.port.to_string();
    (0..count)
        .map(|i| {
            let replica = NodeOptions::default()
                .args(["--maxclients", "10000", "--repl-diskless-sync", "no"])
                .args(["--replicaof", "127.0.0.1", &port])
                .dir(results.join(format!("redis-replica-{}", i + 1)))
                .start();
            Wait::new("the replica to sync").until_blocking(|| {
                replica
                    .try_cmd::<String>(&["INFO", "replication"])
                    .is_some_and(|info| info.contains("master_link_status:up"))
            });
            replica
        })
        .collect()
}

/// `--courier-bin` values: `[LABEL=]PATH`; none means `courier` next to this program.
/// `--courier-env` values (`[LABEL:]NAME=VALUE`) go to the bins of that label, or
/// to all.
fn courier_bins(given: &[String], env: &[String]) -> Result<Vec<CourierBin>, String> {
    let mut bins = bins_of(given)?;
    for setting in env {
        let (label, assignment) = match setting.split_once(':') {
            Some((label, rest)) if rest.contains('=') && !label.contains('=') => {
                (Some(label), rest)
            }
            _ => (None, setting.as_str()),
        };
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(format!("--courier-env {setting}: [LABEL:]NAME=VALUE"));
        };
        let mut matched = false;
        for bin in bins
            .iter_mut()
            .filter(|bin| label.is_none_or(|l| l == bin.label))
        {
            bin.env.push((name.to_string(), value.to_string()));
            matched = true;
        }
        if !matched {
            return Err(format!(
                "--courier-env {setting}: no --courier-bin labelled so"
            ));
        }
    }
    Ok(bins)
}

fn bins_of(given: &[String]) -> Result<Vec<CourierBin>, String> {
    if given.is_empty() {
        let here = std::env::current_exe().map_err(|e| e.to_string())?;
        return Ok(vec![CourierBin {
            label: "courier".into(),
            path: here.with_file_name("courier"),
            env: Vec::new(),
        }]);
    }
    given
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let (label, path) = match value.split_once('=') {
                Some((label, path)) if !label.is_empty() => (label.to_string(), path),
                _ => (format!("bin{}", i + 1), value.as_str()),
            };
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(format!("--courier-bin {}: no such file", path.display()));
            }
            Ok(CourierBin {
                label,
                path,
                env: Vec::new(),
            })
        })
        .collect()
}

/// Local time as `YYYYmmdd-HHMMSS`.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or_default();
    // SAFETY: localtime_r writes into the `tm` we own and reads only `now`.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn timestamp_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn courier_bins_take_an_optional_label() {
        let this = std::env::current_exe()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let bins = courier_bins(
            &[format!("main={this}"), this.clone()],
            &["bin2:A=1".into(), "B=x=y".into()],
        )
        .unwrap();
        assert_eq!(bins[0].label, "main");
        assert_eq!(bins[1].label, "bin2");
        assert_eq!(bins[0].env, [("B".into(), "x=y".into())]);
        assert_eq!(
            bins[1].env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(courier_bins(&["/no/such/courier".into()], &[]).is_err());
        assert!(courier_bins(std::slice::from_ref(&this), &["other:A=1".into()]).is_err());
        assert_eq!(timestamp().len(), "20261125-073253".len());
    }
}
