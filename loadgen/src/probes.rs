//! What the run observes besides its own frames: a process's RSS, CPU time and fd
//! limit from /proc, Redis's CPU time, clients, memory and calls per command from INFO
//! / CLIENT LIST (summed over every node of a cluster), and courier's own counters
//! from `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use redis::aio::MultiplexedConnection;

/// The name loadgen's own Redis connection carries, so CLIENT LIST can leave it out.
pub const CLIENT_NAME: &str = "loadgen";

/// One look at a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `pid` is `None` for this process.
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, so
    // utime (14) and stime (15) are at 11 and 12.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_kib,
        cpu_s: (utime + stime) / clock_ticks(),
    })
}

/// The soft "Max open files" of a process.
pub fn fd_limit(pid: Option<u32>) -> Option<u64> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    };
    let limits = std::fs::read_to_string(format!("{dir}/limits")).ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// File descriptors a process has open (`/proc/PID/fd` entries).
pub fn fds_open(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// One look at Redis: one server, or the sum over every node of a cluster.
#[derive(Debug, Clone, Default)]
pub struct RedisSample {
    /// Servers sampled.
    pub nodes: u64,
    /// used_cpu_sys + used_cpu_user, seconds.
    pub cpu_s: f64,
    pub connected_clients: u64,
    /// CLIENT LIST entries other than loadgen's own connection.
    pub other_clients: u64,
    pub used_memory: u64,
    /// `calls` of every command in `INFO commandstats` (`xreadgroup`, `client|list`).
    pub calls: BTreeMap<String, u64>,
}

impl RedisSample {
    /// Calls per command from `earlier` to this sample.
    pub fn calls_since(&self, earlier: &Self) -> BTreeMap<String, u64> {
        self.calls
            .iter()
            .map(|(name, &calls)| {
                let before = earlier.calls.get(name).copied().unwrap_or_default();
                (name.clone(), calls.saturating_sub(before))
            })
            .filter(|(_, calls)| *calls > 0)
            .collect()
    }
}

/// Whether a command is one of loadgen's own probes (INFO, CLIENT LIST/SETNAME),
/// left out of the totals of courier's Redis work.
pub fn is_probe(command: &str) -> bool {
    command == "info" || command.starts_with("client|")
}

/// `calls` per command of an `INFO commandstats` section
/// (`cmdstat_xack:calls=12,usec=...`).
fn command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .trim()
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Samples every node at once and sums; `None` if any of them did not answer.
pub async fn redis_sample(nodes: &mut [MultiplexedConnection]) -> Option<RedisSample> {
    futures_util::future::join_all(nodes.iter_mut().map(node_sample))
        .await
        .into_iter()
        .sum()
}

impl std::iter::Sum for RedisSample {
    fn sum<I: Iterator<Item = Self>>(samples: I) -> Self {
        samples.fold(Self::default(), |mut sum, node| {
            for (name, calls) in node.calls {
                *sum.calls.entry(name).or_default() += calls;
            }
            Self {
                nodes: sum.nodes + node.nodes,
                cpu_s: sum.cpu_s + node.cpu_s,
                connected_clients: sum.connected_clients + node.connected_clients,
                other_clients: sum.other_clients + node.other_clients,
                used_memory: sum.used_memory + node.used_memory,
                calls: sum.calls,
            }
        })
    }
}

async fn node_sample(conn: &mut MultiplexedConnection) -> Option<RedisSample> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("clients")
        .arg("memory")
        .arg("commandstats")
        .query_async(conn)
        .await
        .ok()?;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .ok()?;
    let other_clients = list
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.split(' ').any(|f| f == format!("name={CLIENT_NAME}")))
        .count() as u64;
    Some(RedisSample {
        nodes: 1,
        cpu_s: info_field(&info, "used_cpu_sys")? + info_field(&info, "used_cpu_user")?,
        connected_clients: info_field(&info, "connected_clients")? as u64,
        other_clients,
        used_memory: info_field(&info, "used_memory").unwrap_or_default() as u64,
        calls: command_calls(&info),
    })
}

/// courier's counters that say what happened to deliveries, from its `/metrics`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CourierCounters {
    /// `courier_messages_redelivered_total`: entries pushed again after an ack
    /// timeout (or a reconnect).
    pub redelivered: Option<u64>,
    /// `courier_errors_total` by code: error frames courier sent.
    pub errors_sent: BTreeMap<String, u64>,
    /// `courier_redis_errors_total`, summed over operations.
    pub redis_errors: u64,
}

/// Reads courier's `/metrics` at `addr`; `None` if it does not answer.
pub async fn courier_counters(addr: SocketAddr) -> Option<CourierCounters> {
    let (status, text) = courier_testkit::try_http_request(addr, "GET", "/metrics", &[], "")
        .await
        .ok()?;
    (status == 200).then(|| parse_counters(&text))
}

fn parse_counters(text: &str) -> CourierCounters {
    let mut counters = CourierCounters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "courier_messages_redelivered_total" => counters.redelivered = Some(value as u64),
            "courier_redis_errors_total" => counters.redis_errors += value as u64,
            "courier_errors_total" => {
                let code = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("code=\""))
                    .map(|c| c.trim_end_matches(['"', '}']))
                    .unwrap_or("?");
                *counters.errors_sent.entry(code.to_string()).or_default() += value as u64;
            }
            _ => {}
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(None).expect("own /proc");
        assert!(s.rss_kib > 0);
        assert!(fd_limit(None).is_some());
    }

    #[test]
    fn a_cluster_sample_is_the_sum_of_its_nodes_or_nothing() {
        let node = RedisSample {
            nodes: 1,
            cpu_s: 1.5,
            connected_clients: 3,
            other_clients: 2,
            used_memory: 10,
            calls: BTreeMap::from([("xack".to_string(), 5)]),
        };
        let total: Option<RedisSample> = [Some(node.clone()), Some(node.clone())].into_iter().sum();
        let total = total.expect("both nodes answered");
        assert_eq!((total.nodes, total.cpu_s), (2, 3.0));
        assert_eq!((total.other_clients, total.used_memory), (4, 20));
        assert_eq!(total.calls["xack"], 10);
        assert_eq!(
            total.calls_since(&node),
            BTreeMap::from([("xack".into(), 5)])
        );
        let partial: Option<RedisSample> = [Some(node), None].into_iter().sum();
        assert!(partial.is_none());
    }

    #[test]
    fn info_fields() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(info_field(info, "used_cpu_sys"), Some(1.5));
        assert_eq!(info_field(info, "used_cpu_user"), Some(2.25));
        let stats = "# Commandstats\r\ncmdstat_xreadgroup:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\ncmdstat_client|list:calls=2,usec=9\r\n";
        let calls = command_calls(stats);
        assert_eq!(calls["xreadgroup"], 12);
        assert_eq!(calls["client|list"], 2);
        assert!(is_probe("client|list") && !is_probe("xreadgroup"));
    }

    #[test]
    fn courier_counters_are_read_from_openmetrics_text() {
        let text = "# TYPE courier_messages_redelivered counter\n\
courier_messages_redelivered_total 7\n\
courier_errors_total{code=\"unavailable\"} 3\n\
courier_errors_total{code=\"rate_limited\"} 1\n\
courier_redis_errors_total{command=\"send\"} 2\n\
courier_redis_errors_total{command=\"read\"} 4\n# EOF\n";
        let counters = parse_counters(text);
        assert_eq!(counters.redelivered, Some(7));
        assert_eq!(counters.errors_sent["unavailable"], 3);
        assert_eq!(counters.errors_sent["rate_limited"], 1);
        assert_eq!(counters.redis_errors, 6);
    }
}
