//! What the run observes besides its own frames: a process's RSS, CPU time and fd
//! limit from /proc, and Redis's CPU time, clients and memory from INFO / CLIENT LIST
//! (summed over every node of a cluster).

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

/// Raises this process's soft RLIMIT_NOFILE to the hard limit; returns (soft, hard).
pub fn raise_fd_limit() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur, limit.rlim_max)
}

/// One look at Redis: one server, or the sum over every node of a cluster.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisSample {
    /// Servers sampled.
    pub nodes: u64,
    /// used_cpu_sys + used_cpu_user, seconds.
    pub cpu_s: f64,
    pub connected_clients: u64,
    /// CLIENT LIST entries other than loadgen's own connection.
    pub other_clients: u64,
    pub used_memory: u64,
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
        samples.fold(Self::default(), |sum, node| Self {
            nodes: sum.nodes + node.nodes,
            cpu_s: sum.cpu_s + node.cpu_s,
            connected_clients: sum.connected_clients + node.connected_clients,
            other_clients: sum.other_clients + node.other_clients,
            used_memory: sum.used_memory + node.used_memory,
        })
    }
}

async fn node_sample(conn: &mut MultiplexedConnection) -> Option<RedisSample> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .arg("clients")
        .arg("memory")
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
    })
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
        };
        let total: Option<RedisSample> = [Some(node), Some(node)].into_iter().sum();
        let total = total.expect("both nodes answered");
        assert_eq!((total.nodes, total.cpu_s), (2, 3.0));
        assert_eq!((total.other_clients, total.used_memory), (4, 20));
        let partial: Option<RedisSample> = [Some(node), None].into_iter().sum();
        assert!(partial.is_none());
    }

    #[test]
    fn info_fields() {
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(info_field(info, "used_cpu_sys"), Some(1.5));
        assert_eq!(info_field(info, "used_cpu_user"), Some(2.25));
    }
}
