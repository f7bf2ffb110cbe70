//! loadgen: a bounded load run against one courier instance on loopback.
//!
//! 1. Creates one chat per sender directly in Redis (`chat:<id>`: the sender and the
//!    `fanout` connections after it), a single server or a cluster.
//! 2. Opens `--connections` WebSocket connections, one user each, bound to source
//!    addresses 127.0.0.1..N in turn (each has its own ephemeral ports), with its own
//!    fd limit raised to the hard limit.
//! 3. Senders send at `--rate` or as fast as `--window` allows for warm-up + duration;
//!    every delivery batch is acked at once.
//! 4. After sending stops, waits (at most `--drain` s) until every acked message has
//!    reached every recipient, then reconciles: loss, duplicates, latency.
//! 5. Prints a human summary and, as the last line, a one-line JSON summary.
//!
//! `--idle` only opens the connections and holds them (memory per connection).

mod args;
mod client;
mod probes;
mod redis_nodes;
mod report;
mod tracker;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use args::{Args, Pace, Plan};
use client::{ClientSpec, ConnectStats, Ctx, Schedule};
use probes::{ProcSample, RedisSample};
use report::Report;
use tracker::{Layout, Tracker};

fn main() -> ExitCode {
    let plan = match Plan::from_args(Args::parse()) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if plan.args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(plan.args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit = plan.max_runtime();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("loadgen: run exceeded --max-runtime ({limit:?}); exiting");
        std::process::exit(3);
    });
    match runtime.block_on(run(plan)) {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    id: u64,
    username: &'a str,
    exp: u64,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

async fn run(plan: Plan) -> Result<Report, String> {
    let args = &plan.args;
    let (fd_soft, fd_hard) = probes::raise_fd_limit();
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
    let courier_fd_limit = args.courier_pid.and_then(|pid| probes::fd_limit(Some(pid)));
    if let Some(limit) = courier_fd_limit.filter(|&limit| n as u64 + 16 > limit) {
        eprintln!(
            "loadgen: warning: courier's fd limit is {limit}: it cannot hold {n} connections"
        );
    }
    let mut redis = redis_nodes::connect(&plan.redis).await?;

    let now = unix_now();
    let id_base = args.id_base.unwrap_or(now.as_secs() * 1_000_000);
    let run_id = now.subsec_nanos() ^ (now.as_secs() as u32);
    let senders = if plan.pace == Pace::Idle {
        0
    } else {
        plan.senders
    };
    let layout = Layout::new(n, args.fanout, senders);
    if senders > 0 {
        redis_nodes::create_chats(&plan.redis, &redis, &layout, id_base).await?;
    }
    let tracker = Arc::new(Tracker::new(layout, run_id));

    let exp = now.as_secs() + 24 * 3600;
    let key = jsonwebtoken::EncodingKey::from_secret(args.secret.as_bytes());
    let header = jsonwebtoken::Header::default();
    let sender_of = {
        let mut v = vec![None; n];
        for (k, &c) in tracker.layout.sender_conn.iter().enumerate() {
            v[c] = Some((k, id_base + c as u64));
        }
        v
    };

    let (schedule_tx, schedule_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        tracker: tracker.clone(),
        url: args.url.clone(),
        server: plan.server,
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
    });

    let baseline_courier = courier_sample(args.courier_pid);
    let baseline_redis = probes::redis_sample(&mut redis).await;
    eprintln!(
        "loadgen: opening {n} connections to {} from 127.0.0.1..{} (fd limit {fd_soft})",
        args.url, args.source_ips
    );
    let connect_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, sender) in sender_of.into_iter().enumerate().take(attempt) {
        let user = id_base + index as u64;
        let claims = Claims {
            id: user,
            username: "loadgen",
            exp,
        };
        let token = jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|e| format!("cannot sign a token: {e}"))?;
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
    if plan.pace != Pace::Idle && open < n {
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

    tokio::time::sleep(Duration::from_secs(if plan.pace == Pace::Idle {
        2
    } else {
        1
    }))
    .await;
    let connected_courier = courier_sample(args.courier_pid);
    let courier_fds_open = args.courier_pid.and_then(probes::fds_open);
    let connected_redis = probes::redis_sample(&mut redis).await;

    let mut rss_max = connected_courier.map(|s| s.rss_kib).unwrap_or_default();
    let measure = |rss_max: &mut u64| {
        if let Some(s) = courier_sample(args.courier_pid) {
            *rss_max = (*rss_max).max(s.rss_kib);
        }
    };
    let window_start;
    let window_end;
    let mut drained = true;
    let mut drain_s = 0.0;
    if plan.pace == Pace::Idle {
        window_start = (
            Instant::now(),
            connected_courier,
            connected_redis,
            own_sample(),
        );
        let until = Instant::now() + Duration::from_secs_f64(args.duration);
        sample_until(until, &mut rss_max, &measure).await;
        window_end = point(args.courier_pid, &mut redis).await;
    } else {
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
        sample_until(warm_end, &mut rss_max, &measure).await;
        window_start = point(args.courier_pid, &mut redis).await;
        sample_until(end, &mut rss_max, &measure).await;
        window_end = point(args.courier_pid, &mut redis).await;
        let drain_started = Instant::now();
        let drain_until = drain_started + Duration::from_secs_f64(args.drain);
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
        drain_s = drain_started.elapsed().as_secs_f64();
        // A short grace period shows duplicates that would follow the last acks.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let end_courier = courier_sample(args.courier_pid);
    let end_redis = probes::redis_sample(&mut redis).await;
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
        drained,
        drain_s,
        window_start,
        window_end,
        baseline_courier,
        connected_courier,
        end_courier,
        rss_max_kib: rss_max,
        baseline_redis,
        connected_redis,
        end_redis,
        courier_fds_open,
        courier_fd_limit: args.courier_pid.and_then(|pid| probes::fd_limit(Some(pid))),
        fd_soft,
        fd_hard,
    }))
}

/// File descriptors loadgen keeps for itself beyond its connections.
const FD_RESERVE: u64 = 64;

/// A point of the measurement: when, courier, Redis, loadgen itself.
pub type Point = (
    Instant,
    Option<ProcSample>,
    Option<RedisSample>,
    Option<ProcSample>,
);

/// A measurement point now: time, courier, Redis and loadgen itself.
async fn point(courier_pid: Option<u32>, redis: &mut [MultiplexedConnection]) -> Point {
    (
        Instant::now(),
        courier_sample(courier_pid),
        probes::redis_sample(redis).await,
        own_sample(),
    )
}

/// Waits until `deadline`, sampling courier's RSS every 250 ms.
async fn sample_until(deadline: Instant, rss_max: &mut u64, measure: &impl Fn(&mut u64)) {
    while Instant::now() < deadline {
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(250))).await;
        measure(rss_max);
    }
}

fn courier_sample(pid: Option<u32>) -> Option<ProcSample> {
    pid.and_then(|pid| probes::sample(Some(pid)))
}

fn own_sample() -> Option<ProcSample> {
    probes::sample(None)
}
