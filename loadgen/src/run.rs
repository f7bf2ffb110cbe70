//! One run, phase by phase: set up (fd limit, Redis, chats), open the connections,
//! measure (idle, traffic or a connect storm), close, and gather the report.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::args::{Pace, Plan};
use crate::client::{self, ClientSpec, ConnectStats, Ctx, Schedule};
use crate::probes::{self, ProcSample, RedisSample, is_probe};
use crate::redis_nodes;
use crate::report::{self, Report};
use crate::storm::{Storm, StormCounters, StormStats};
use crate::tracker::{Layout, Tracker};

/// File descriptors loadgen keeps for itself beyond its connections.
const FD_RESERVE: u64 = 64;

/// A point of the measurement: when, courier, Redis, loadgen itself.
pub type Point = (
    Instant,
    Option<ProcSample>,
    Option<RedisSample>,
    Option<ProcSample>,
);

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// What the measuring phase found besides the counters.
struct Measured {
    window_start: Point,
    window_end: Point,
    drained: bool,
    drain_s: f64,
    pending_after_drain: Option<u64>,
    storm: Option<StormStats>,
}

pub async fn run(plan: Plan) -> Result<Report, String> {
    let args = &plan.args;
    let (fd_soft, fd_hard) = courier_testkit::process::raise_fd_limit();
    let n = args.connections;
    // Keep fds for /proc reads, Redis and the runtime: a process at its fd limit cannot
    // even read its peer's /proc files.
    let fd_budget = fd_soft.saturating_sub(FD_RESERVE) as usize;
    let attempt = n.min(fd_budget);
    if attempt < n {
        eprintln!(
            "loadgen: warning: {n} connections need more than this process's fd limit \
             ({fd_soft}, hard {fd_hard}, {FD_RESERVE} kept for itself); opening {attempt}"
        );
    }
    let mut courier_pid = args.courier_pid;
    let courier_fd_limit = courier_pid.and_then(|pid| probes::fd_limit(Some(pid)));
    if let Some(limit) = courier_fd_limit.filter(|&limit| n as u64 + 16 > limit) {
        eprintln!(
            "loadgen: warning: courier's fd limit is {limit}: it cannot hold {n} connections"
        );
    }
    let mut redis = redis_nodes::connect(&plan.redis).await?;

    let now = unix_now();
    let id_base = args.id_base.unwrap_or(now.as_secs() * 1_000_000);
    let run_id = now.subsec_nanos() ^ (now.as_secs() as u32);
    let senders = if plan.pace.sends() { plan.senders } else { 0 };
    let layout = Layout::new(n, args.fanout, senders);
    if senders > 0 {
        redis_nodes::create_chats(&plan.redis, &redis, &layout, id_base).await?;
    }
    let tracker = Arc::new(Tracker::new(layout, run_id));

    let exp = now.as_secs() + 24 * 3600;
    let sender_of = {
        let mut v = vec![None; n];
        for (k, &c) in tracker.layout.sender_conn.iter().enumerate() {
            v[c] = Some((k, id_base + c as u64));
        }
        v
    };

    let (schedule_tx, schedule_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(None);
    let storm = (plan.pace == Pace::Storm).then(|| Storm {
        go: go_rx,
        timeout: Duration::from_secs_f64(args.storm_timeout),
        retry: Duration::from_millis(args.storm_retry_ms),
        counters: StormCounters::default(),
    });
    let ctx = Arc::new(Ctx {
        tracker: tracker.clone(),
        url: args.url.clone(),
        pace: plan.pace,
        senders: senders.max(1),
        batch: args.batch,
        window: args.window,
        text_bytes: args.text_bytes,
        connect_timeout: Duration::from_secs_f64(args.connect_timeout),
        max_connect_failures: args.max_connect_failures,
        connecting: Semaphore::new(args.connect_concurrency),
        schedule: schedule_rx,
        stop: stop_rx,
        connect: ConnectStats::default(),
        storm,
    });

    let baseline_courier = courier_sample(courier_pid);
    let baseline_redis = probes::redis_sample(&mut redis).await;
    eprintln!(
        "loadgen: opening {n} connections to {} from 127.0.0.1..{} (fd limit {fd_soft})",
        args.url, args.source_ips
    );
    let connect_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, sender) in sender_of.into_iter().enumerate().take(attempt) {
        let user = id_base + index as u64;
        let claims = serde_json::json!({ "id": user, "username": "loadgen", "exp": exp });
        let token = courier_testkit::sign(&args.secret, &claims);
        let spec = ClientSpec {
            index,
            user,
            token,
            source: Ipv4Addr::new(127, 0, 0, 1 + (index % args.source_ips as usize) as u8),
            sender,
        };
        tasks.spawn(client::run_client(spec, ctx.clone()));
        if index % 1024 == 1023 {
            tokio::task::yield_now().await;
        }
    }
    let mut last_report = Instant::now();
    while ctx.connect.done() < attempt {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            eprintln!(
                "loadgen: {} open, {} failed",
                ctx.connect.open.load(Ordering::Relaxed),
                ctx.connect.failed.load(Ordering::Relaxed)
            );
        }
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let open = ctx.connect.open.load(Ordering::Relaxed);
    eprintln!("loadgen: {open} of {n} connections open in {connect_s:.1} s");
    if plan.pace.sends() && open < n {
        let _ = stop_tx.send(true);
        return Err(format!(
            "only {open} of {n} connections opened ({}); loss cannot be accounted \
             for chats with absent members, so nothing was sent",
            ctx.connect
                .first_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default()
        ));
    }

    // Let the joins settle before the connected sample (courier's last reads, RSS).
    tokio::time::sleep(Duration::from_secs(if plan.pace.sends() { 1 } else { 2 })).await;
    let connected_courier = courier_sample(courier_pid);
    let courier_fds_open = courier_pid.and_then(probes::fds_open);
    let connected_redis = probes::redis_sample(&mut redis).await;
    let connected: Point = (
        Instant::now(),
        connected_courier,
        connected_redis.clone(),
        own_sample(),
    );

    let mut rss = RssMax(connected_courier.map(|s| s.rss_kib).unwrap_or_default());
    let measured = match plan.pace {
        Pace::Idle => {
            let until = Instant::now() + Duration::from_secs_f64(args.duration);
            rss.sample_until(until, courier_pid).await;
            Measured {
                window_start: connected,
                window_end: point(courier_pid, &mut redis).await,
                drained: true,
                drain_s: 0.0,
                pending_after_drain: None,
                storm: None,
            }
        }
        Pace::Storm => {
            let storm = ctx.storm.as_ref().expect("a storm run has its storm");
            let idle_until = Instant::now() + Duration::from_secs_f64(args.storm_idle);
            rss.sample_until(idle_until, courier_pid).await;
            let idle_end = point(courier_pid, &mut redis).await;
            let idle_commands_per_s = commands_per_s(&connected, &idle_end);
            eprintln!(
                "loadgen: storm ready: {open} connections open; waiting for `go <courier pid>` on stdin"
            );
            courier_pid = Some(read_go().await?);
            let go_point = point(courier_pid, &mut redis).await;
            let _ = go_tx.send(Some(Instant::now()));
            let deadline = Instant::now() + Duration::from_secs_f64(args.storm_timeout + 1.0);
            while storm.counters.settled() < open as u64 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let end = point(courier_pid, &mut redis).await;
            let commands = match (&go_point.2, &end.2) {
                (Some(before), Some(after)) => after
                    .calls_since(before)
                    .into_iter()
                    .filter(|(name, _)| !is_probe(name))
                    .collect(),
                _ => Default::default(),
            };
            let stats = StormStats::collect(open, &storm.counters, idle_commands_per_s, commands);
            Measured {
                window_start: go_point,
                window_end: end,
                drained: true,
                drain_s: 0.0,
                pending_after_drain: None,
                storm: Some(stats),
            }
        }
        Pace::Rate(_) | Pace::Max => {
            let start = Instant::now() + Duration::from_millis(100);
            let warm_end = start + Duration::from_secs_f64(args.warmup);
            let end = warm_end + Duration::from_secs_f64(args.duration);
            let since = |t: Instant| (t.into_std() - tracker.start).as_nanos() as u64;
            tracker.set_window(since(warm_end), since(end));
            let _ = schedule_tx.send(Some(Schedule { start, end }));
            eprintln!(
                "loadgen: sending ({:?}) for {} s warm-up + {} s measured",
                plan.pace, args.warmup, args.duration
            );
            rss.sample_until(warm_end, courier_pid).await;
            let window_start = point(courier_pid, &mut redis).await;
            rss.sample_until(end, courier_pid).await;
            let window_end = point(courier_pid, &mut redis).await;
            let drain_started = Instant::now();
            let drain_until = drain_started + Duration::from_secs_f64(args.drain);
            let mut drained = true;
            loop {
                let inflight = tracker.counters.inflight_batches.load(Ordering::Relaxed);
                if inflight == 0 && tracker.outstanding() == 0 {
                    break;
                }
                if Instant::now() >= drain_until {
                    drained = false;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let drain_s = drain_started.elapsed().as_secs_f64();
            // A grace period shows duplicates that would follow the last acks, and lets
            // the last acks land before the pending entries are counted.
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let users = (0..open as u64).map(|i| id_base + i);
            let pending = redis_nodes::pending_total(&plan.redis, &redis, users).await;
            let pending_after_drain = pending.map_err(|e| eprintln!("loadgen: {e}")).ok();
            Measured {
                window_start,
                window_end,
                drained,
                drain_s,
                pending_after_drain,
                storm: None,
            }
        }
    };
    let end_courier = courier_sample(courier_pid);
    let courier_counters = probes::courier_counters(plan.server).await;
    let _ = stop_tx.send(true);
    let closing = tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if closing.is_err() {
        eprintln!("loadgen: some connections did not close within 15 s");
        tasks.abort_all();
    }

    let reconciled = tracker.reconcile();
    let first_error = ctx
        .connect
        .first_error
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    Ok(Report::build(report::Inputs {
        plan: &plan,
        fd_capped: n - attempt,
        senders,
        tracker: &tracker,
        reconciled,
        open,
        failed: ctx.connect.failed.load(Ordering::Relaxed),
        skipped: ctx.connect.skipped.load(Ordering::Relaxed),
        first_error,
        connect_s,
        drained: measured.drained,
        drain_s: measured.drain_s,
        window_start: measured.window_start,
        window_end: measured.window_end,
        baseline_courier,
        connected_courier,
        end_courier,
        rss_max_kib: rss.0,
        baseline_redis,
        connected_redis,
        courier_fds_open,
        courier_fd_limit,
        fd_soft,
        fd_hard,
        pending_after_drain: measured.pending_after_drain,
        courier_counters,
        storm: measured.storm,
    }))
}

/// Reads `go <courier pid>` from stdin (the driver sends it once courier is back).
async fn read_go() -> Result<u32, String> {
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await
        .map_err(|e| format!("reading stdin for `go`: {e}"))?;
    line.trim()
        .strip_prefix("go ")
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| format!("expected `go <courier pid>` on stdin, got {line:?}"))
}

/// Redis commands per second between two points, loadgen's probes left out.
fn commands_per_s(from: &Point, to: &Point) -> f64 {
    let secs = (to.0 - from.0).as_secs_f64();
    match (&from.2, &to.2) {
        (Some(before), Some(after)) if secs > 0.0 => {
            let calls: u64 = after
                .calls_since(before)
                .iter()
                .filter(|(name, _)| !is_probe(name))
                .map(|(_, calls)| calls)
                .sum();
            calls as f64 / secs
        }
        _ => 0.0,
    }
}

/// A measurement point now: time, courier, Redis and loadgen itself.
async fn point(courier_pid: Option<u32>, redis: &mut [MultiplexedConnection]) -> Point {
    (
        Instant::now(),
        courier_sample(courier_pid),
        probes::redis_sample(redis).await,
        own_sample(),
    )
}

/// The highest courier RSS seen, in KiB.
struct RssMax(u64);

impl RssMax {
    /// Waits until `deadline`, sampling courier's RSS every 250 ms.
    async fn sample_until(&mut self, deadline: Instant, courier_pid: Option<u32>) {
        while Instant::now() < deadline {
            tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(250)))
                .await;
            if let Some(s) = courier_sample(courier_pid) {
                self.0 = self.0.max(s.rss_kib);
            }
        }
    }
}

fn courier_sample(pid: Option<u32>) -> Option<ProcSample> {
    pid.and_then(|pid| probes::sample(Some(pid)))
}

fn own_sample() -> Option<ProcSample> {
    probes::sample(None)
}
