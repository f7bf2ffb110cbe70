//! The `memory` scenario's own measurements (issue 13): Redis `used_memory` (summed
//! over the primaries) sampled every second while steady traffic runs for several
//! retention windows and then while it rests, and what a dedup record costs.
//!
//! From the samples: the spread of `used_memory` once the window is reached (the
//! last two thirds of the traffic, which start after two windows), the growth per
//! delivered message over the first window (what a message costs while Redis keeps
//! it), and the growth per user once the traffic has stopped and every delivery is
//! acked (at rest).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use courier_testkit::RedisServer;
use serde_json::{Value, json};

/// Courier's settings in the `memory` scenario, for a retention window of `window`
/// seconds: history and dedup records kept for one window, legacy lists bounded to
/// 2 items per second of the window (what a user receives in under a window at the
/// scenario's 5 messages per second, so they are full before the window is reached).
pub fn courier_env(window: u64) -> Vec<(String, String)> {
    [
        ("COURIER_HISTORY_RETENTION_S", window.to_string()),
        ("COURIER_DEDUP_WINDOW_S", window.to_string()),
        ("COURIER_LEGACY_LIST_MAXLEN", (2 * window).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// One sample: `used_memory` and `used_memory_dataset` (without Redis's overhead:
/// client buffers, the keyspace's tables, scripts), summed over the primaries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    pub memory: u64,
    pub dataset: u64,
}

/// [`Used`] now; `None` if a primary did not answer.
pub fn used(clients: &[redis::Client]) -> Option<Used> {
    let mut total = Used::default();
    for client in clients {
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).ok()?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        total.memory += field("used_memory")?;
        total.dataset += field("used_memory_dataset")?;
    }
    Some(total)
}

/// `used_memory` now, summed over the primaries.
pub fn used_memory(clients: &[redis::Client]) -> Option<u64> {
    used(clients).map(|u| u.memory)
}

/// A client per primary of the benchmark's Redis.
pub fn clients(redis: &RedisServer) -> Vec<redis::Client> {
    redis
        .primaries()
        .iter()
        .filter_map(|node| node.client().ok())
        .collect()
}

/// Samples `used_memory` every second on its own thread until stopped.
pub struct Sampler {
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(f64, Used)>>,
}

impl Sampler {
    pub fn start(clients: Vec<redis::Client>) -> Self {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let tick = Instant::now();
                if let Some(used) = used(&clients) {
                    samples.push((started.elapsed().as_secs_f64(), used));
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
            }
            samples
        });
        Self {
            started,
            stop,
            thread,
        }
    }

    /// Seconds since the sampler started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn finish(self) -> Vec<(f64, Used)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The figures of one run. `base`: Redis before loadgen; `samples` from the sampler;
/// `traffic_end`: when loadgen exited (seconds on the sampler's clock); `report`:
/// loadgen's JSON report; `window`: the retention window (s).
pub fn figures(
    base: Used,
    samples: &[(f64, Used)],
    traffic_end: f64,
    report: &Value,
    window: f64,
) -> Value {
    let deliveries = report["deliveries"].as_f64().unwrap_or(0.0);
    let users = report["connections_open"].as_f64().unwrap_or(0.0);
    let sending =
        report["warmup_s"].as_f64().unwrap_or(0.0) + report["measured_s"].as_f64().unwrap_or(0.0);
    // Traffic starts when the dataset first grows by half a megabyte (connections and
    // chats cost less than that); it sends for `sending` seconds.
    let start = samples
        .iter()
        .find(|(_, used)| used.dataset > base.dataset + 500_000)
        .map(|(t, _)| *t)
        .unwrap_or(0.0);
    let at = |t: f64| {
        samples
            .iter()
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .map(|s| s.1)
            .unwrap_or(base)
    };
    let steady: Vec<Used> = samples
        .iter()
        .filter(|(t, _)| *t >= start + 2.0 * window && *t <= start + sending)
        .map(|s| s.1)
        .collect();
    let spread = |pick: fn(&Used) -> u64| {
        let low = steady.iter().map(pick).min().unwrap_or(0);
        let high = steady.iter().map(pick).max().unwrap_or(0);
        let pct = if low > 0 {
            round((high - low) as f64 * 100.0 / low as f64)
        } else {
            0.0
        };
        json!({"min_bytes": low, "max_bytes": high, "spread_pct": pct})
    };
    // The mean of each whole window once the window is reached: the streams of users
    // who all started at once trim in step, so the raw samples show a sawtooth of a
    // stream node (about 4 KB) per user; the windows' means show the level.
    let mut window_means = Vec::new();
    let mut from = start + 2.0 * window;
    while from + window <= start + sending + 0.5 {
        let inside: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < from + window)
            .map(|s| s.1.memory)
            .collect();
        if !inside.is_empty() {
            window_means.push(inside.iter().sum::<u64>() / inside.len() as u64);
        }
        from += window;
    }
    let means_low = window_means.iter().min().copied().unwrap_or(0);
    let means_high = window_means.iter().max().copied().unwrap_or(0);
    let means_spread = if means_low > 0 {
        round((means_high - means_low) as f64 * 100.0 / means_low as f64)
    } else {
        0.0
    };
    let rate = if sending > 0.0 {
        deliveries / sending
    } else {
        0.0
    };
    let first_window = at(start + window).memory.saturating_sub(at(start).memory) as f64;
    let at_rest = samples.last().map(|s| s.1).unwrap_or(base);
    let per = |bytes: f64, count: f64| {
        if count > 0.0 {
            round(bytes / count)
        } else {
            0.0
        }
    };
    json!({
        "window_s": window,
        "base_bytes": base.memory,
        "samples": samples
            .iter()
            .map(|(t, used)| json!([round(*t), used.memory, used.dataset]))
            .collect::<Vec<_>>(),
        "traffic_start_s": round(start),
        "traffic_end_s": round(traffic_end),
        "steady_used_memory": spread(|u| u.memory),
        "steady_used_memory_dataset": spread(|u| u.dataset),
        "steady_window_means_bytes": window_means,
        "steady_window_means_spread_pct": means_spread,
        "delivered_per_s": round(rate),
        "bytes_per_delivered_first_window": per(first_window, rate * window),
        "bytes_per_delivered_whole_run": per(
            at(start + sending).memory.saturating_sub(base.memory) as f64,
            deliveries
        ),
        "at_rest_bytes": at_rest.memory,
        "bytes_per_user_at_rest": per(at_rest.memory.saturating_sub(base.memory) as f64, users),
    })
}

/// The summary line's part for a `memory` run.
pub fn line(figures: &Value) -> String {
    let mb = |v: &Value| v.as_f64().unwrap_or(0.0) / 1e6;
    let (memory, dataset) = (
        &figures["steady_used_memory"],
        &figures["steady_used_memory_dataset"],
    );
    format!(
        "used_memory once the window is reached {:.1}..{:.1} MB (spread {}%), dataset \
         {:.1}..{:.1} MB (spread {}%), means of each window {} MB (spread {}%); {} \
         B/delivered msg (first window), {} B/delivered msg (whole run), {} B/user at rest",
        mb(&memory["min_bytes"]),
        mb(&memory["max_bytes"]),
        memory["spread_pct"],
        mb(&dataset["min_bytes"]),
        mb(&dataset["max_bytes"]),
        dataset["spread_pct"],
        figures["steady_window_means_bytes"]
            .as_array()
            .map(|means| means
                .iter()
                .map(|m| format!("{:.1}", mb(m)))
                .collect::<Vec<_>>()
                .join("/"))
            .unwrap_or_default(),
        figures["steady_window_means_spread_pct"],
        figures["bytes_per_delivered_first_window"],
        figures["bytes_per_delivered_whole_run"],
        figures["bytes_per_user_at_rest"],
    )
}

/// What one dedup record costs in `used_memory` (key, value, expiry), as written by
/// each format with today's ids (microseconds since 1970): `{"text": B, "integer": B}`
/// — `<first_id>:<count>` before, the first id alone now — over `count` records
/// written by a script on `client` (its database is flushed before and after).
pub fn dedup_record_cost(client: &redis::Client, count: u64) -> Option<Value> {
    const SCRIPT: &str = r"
        local n = tonumber(ARGV[1])
        for i = 1, n do
          local key = 'dedup:{user:' .. (100000 + i % 1000) .. '}:' .. string.format('%.0f', 1732400000000123 + i * 7919)
          local first = 1796000000000000 + i * 10
          if ARGV[2] == 'text' then
            redis.call('SET', key, string.format('%.0f', first) .. ':10', 'EX', 300)
          else
            redis.call('SET', key, string.format('%.0f', first), 'EX', 300)
          end
        end
        return n";
    let mut conn = client.get_connection().ok()?;
    let mut cost = serde_json::Map::new();
    for format in ["text", "integer"] {
        redis::cmd("FLUSHALL").query::<()>(&mut conn).ok()?;
        let before = used_memory(std::slice::from_ref(client))?;
        redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(0)
            .arg(count)
            .arg(format)
            .query::<u64>(&mut conn)
            .ok()?;
        let after = used_memory(std::slice::from_ref(client))?;
        cost.insert(
            format.into(),
            json!(after.saturating_sub(before) / count.max(1)),
        );
    }
    redis::cmd("FLUSHALL").query::<()>(&mut conn).ok()?;
    Some(Value::Object(cost))
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
