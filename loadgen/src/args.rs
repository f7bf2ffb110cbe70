//! Command-line settings of one load run, and their checks (loopback only, bounded).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;

/// One bounded load run against one courier instance on loopback.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for courier: opens N WebSocket connections on loopback, \
             creates chats in Redis, sends, acks everything, and reports loss, \
             duplicates, throughput, latency, courier RSS/CPU and Redis CPU/connections"
)]
pub struct Args {
    /// courier's WebSocket URL, on loopback (`ws://127.0.0.1:PORT/ws`).
    #[arg(long)]
    pub url: String,

    /// Redis URL, on loopback: chats are created there and Redis CPU/connections are read.
    /// `redis+cluster://host:port,host:port` names a cluster by its seed nodes, as courier
    /// takes it: every node is sampled and the figures summed.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,

    /// HS256 secret courier was started with.
    #[arg(long, env = "COURIER_JWT_SECRET", hide_env_values = true)]
    pub secret: String,

    /// WebSocket connections to open (one user each).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,

    /// Recipients per message: each sender's chat has the sender plus this many members.
    #[arg(long, default_value_t = 10)]
    pub fanout: usize,

    /// Connections that send (spread evenly over all connections). Defaults to
    /// min(connections, 100).
    #[arg(long)]
    pub senders: Option<usize>,

    /// Total sent messages per second over all senders (open loop).
    #[arg(long, conflicts_with = "max")]
    pub rate: Option<f64>,

    /// Send as fast as possible, with at most `--window` unacked sent batches per sender.
    #[arg(long)]
    pub max: bool,

    /// Unacked sent batches per sender (the bound of `--max`; in `--rate` mode a sender
    /// with this many unacked skips its slot and counts a stall).
    #[arg(long, default_value_t = 4)]
    pub window: usize,

    /// Messages per sent batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Bytes of each `content_text` (the timestamp header, padded).
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,

    /// Measured seconds (after the warm-up); in `--idle` mode, how long the
    /// connections are held once open.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds of sending before the measurement starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Most seconds to wait after sending stops for acked messages to be delivered.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,

    /// Only open the connections and hold them (memory test): no chats, no sending.
    #[arg(long)]
    pub idle: bool,

    /// A connect storm: open the connections, measure their idle cost for
    /// `--storm-idle` s, print `loadgen: storm ready` on stderr and wait for a line
    /// `go <courier pid>` on stdin (meanwhile the driver kills and restarts courier,
    /// which drops every connection); then every client reconnects at once, retrying
    /// failed attempts, until all are back or `--storm-timeout` s have passed.
    #[arg(long, conflicts_with_all = ["idle", "rate", "max"])]
    pub storm: bool,

    /// Seconds of idle measurement before a storm.
    #[arg(long, default_value_t = 5.0)]
    pub storm_idle: f64,

    /// Most seconds from `go` for every client to be back.
    #[arg(long, default_value_t = 60.0)]
    pub storm_timeout: f64,

    /// Milliseconds a client waits before retrying a failed reconnect (times a random
    /// factor in [0.5, 1.5)).
    #[arg(long, default_value_t = 200)]
    pub storm_retry_ms: u64,

    /// courier's process id: its RSS (VmRSS) and CPU (utime+stime) are sampled.
    #[arg(long)]
    pub courier_pid: Option<u32>,

    /// Client sockets are bound to 127.0.0.1 .. 127.0.0.<N> in turn (each source
    /// address has its own ephemeral ports).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_ips: u8,

    /// WebSocket handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Seconds one connection attempt (TCP + handshake) may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Stop opening connections after this many failed attempts.
    #[arg(long, default_value_t = 200)]
    pub max_connect_failures: usize,

    /// First user id (user i is id-base + i); defaults to a value derived from the
    /// clock, so runs against the same Redis do not share users.
    #[arg(long)]
    pub id_base: Option<u64>,

    /// Tokio worker threads (1: a single-threaded runtime, leaving more CPU to courier
    /// and Redis on a small machine).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// The Redis limit measured by redis-benchmark in the same run, for ratios:
    /// comma-separated `name=requests_per_s`. `xadd=R`: one stream entry per request;
    /// `send<B>x<F>=R`: one send-script call writing B messages to F recipients (B×F
    /// entries per request). Each becomes `delivered_per_s ÷ (R × entries)`.
    #[arg(long, value_delimiter = ',')]
    pub baseline: Vec<String>,

    /// A label copied into the JSON summary.
    #[arg(long, default_value = "custom")]
    pub scenario: String,

    /// Hard limit on the whole run, seconds; past it the process exits with code 3.
    /// Defaults to warmup + duration + drain + 300.
    #[arg(long)]
    pub max_runtime: Option<f64>,
}

/// How senders pace themselves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// No sending (`--idle`).
    Idle,
    /// No sending; the connections are dropped and come back at once (`--storm`).
    Storm,
    /// Total sent messages per second.
    Rate(f64),
    /// As fast as the window allows.
    Max,
}

impl Pace {
    /// Whether senders send in this mode.
    pub fn sends(self) -> bool {
        matches!(self, Self::Rate(_) | Self::Max)
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub args: Args,
    pub pace: Pace,
    /// courier's address (from `--url`), for its `/metrics`.
    pub server: SocketAddr,
    pub redis: RedisTarget,
    pub senders: usize,
    /// `(name, requests/s, stream entries written per request)`.
    pub baseline: Vec<(String, f64, f64)>,
}

/// Parses one `--baseline` item.
fn baseline_item(item: &str) -> Result<(String, f64, f64), String> {
    let bad = || format!("--baseline {item:?}: expected xadd=<rps> or send<B>x<F>=<rps>");
    let (name, rps) = item.split_once('=').ok_or_else(bad)?;
    let rps: f64 = rps.trim().parse().map_err(|_| bad())?;
    let entries = if name == "xadd" {
        1.0
    } else {
        let (b, f) = name
            .strip_prefix("send")
            .and_then(|shape| shape.split_once('x'))
            .ok_or_else(bad)?;
        let b: f64 = b.parse().map_err(|_| bad())?;
        let f: f64 = f.parse().map_err(|_| bad())?;
        b * f
    };
    Ok((name.to_string(), rps, entries))
}

impl Plan {
    pub fn from_args(args: Args) -> Result<Self, String> {
        let server = ws_addr(&args.url)?;
        let redis = redis_target(&args.redis)?;
        let pace = match (args.idle, args.rate, args.max) {
            _ if args.storm => Pace::Storm,
            (true, None, false) => Pace::Idle,
            (true, _, _) => return Err("--idle takes neither --rate nor --max".into()),
            (false, Some(rate), false) if rate > 0.0 && rate <= 10_000_000.0 => Pace::Rate(rate),
            (false, Some(_), _) => return Err("--rate must be in (0, 10_000_000]".into()),
            (false, None, true) => Pace::Max,
            (false, None, false) => return Err("give --rate <msgs/s>, --max or --idle".into()),
        };
        if !(1..=1_000_000).contains(&args.connections) {
            return Err("--connections must be 1..=1000000".into());
        }
        let senders = args.senders.unwrap_or(args.connections.min(100));
        if pace.sends() {
            if args.fanout == 0 || args.fanout >= args.connections {
                return Err("--fanout must be at least 1 and below --connections".into());
            }
            if !(1..=args.connections).contains(&senders) {
                return Err("--senders must be 1..=connections".into());
            }
            if !(1..=10_000).contains(&args.batch) || args.window == 0 {
                return Err("--batch must be 1..=10000 and --window at least 1".into());
            }
            if args.text_bytes > 1_000_000 {
                return Err("--text-bytes must be at most 1000000".into());
            }
        }
        let durations = [
            args.duration,
            args.warmup,
            args.drain,
            args.connect_timeout,
            args.storm_idle,
            args.storm_timeout,
        ];
        if durations.iter().any(|d| !(0.0..=3600.0).contains(d)) {
            return Err("durations must be within 0..=3600 s".into());
        }
        if args.threads == 0 || args.connect_concurrency == 0 {
            return Err("--threads and --connect-concurrency must be at least 1".into());
        }
        let baseline = args
            .baseline
            .iter()
            .filter(|item| !item.trim().is_empty())
            .map(|item| baseline_item(item.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            args,
            pace,
            server,
            redis,
            senders,
            baseline,
        })
    }

    pub fn max_runtime(&self) -> Duration {
        let a = &self.args;
        let phases = match self.pace {
            Pace::Storm => a.storm_idle + a.storm_timeout + 600.0,
            _ => a.warmup + a.duration + a.drain,
        };
        Duration::from_secs_f64(
            a.max_runtime
                .unwrap_or(phases + 300.0)
                .clamp(1.0, 4.0 * 3600.0),
        )
    }
}

/// The socket address of a `ws://` URL, which must be on loopback.
fn ws_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("--url must start with ws:// (loopback only, no TLS)")?;
    let hostport = rest.split('/').next().unwrap_or_default();
    loopback_addr(hostport, 80).map_err(|e| format!("--url: {e}"))
}

/// Where Redis is: one server, or a cluster named by its seed nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisTarget {
    /// The server's URL as given, or `redis://[userinfo@]host:port` of each seed node.
    pub urls: Vec<String>,
    /// `user:password@` of a cluster URL (or empty), to reach the nodes it lists.
    pub userinfo: String,
    pub cluster: bool,
}

impl RedisTarget {
    /// The URL of one node of the cluster at `host:port`.
    pub fn node_url(&self, hostport: &str) -> String {
        format!("redis://{}{hostport}", self.userinfo)
    }
}

/// Parses `--redis`: `redis://[userinfo@]host:port[/db]`, or
/// `redis+cluster://[userinfo@]host:port,host:port[/]`; every host must be on loopback.
fn redis_target(url: &str) -> Result<RedisTarget, String> {
    let (cluster, rest) = match url.strip_prefix("redis+cluster://") {
        Some(rest) => (true, rest),
        None => (
            false,
            url.strip_prefix("redis://")
                .ok_or("--redis must start with redis:// or redis+cluster://")?,
        ),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if cluster && !matches!(&rest[authority.len()..], "" | "/") {
        return Err("--redis: a cluster URL takes no database or options".into());
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), authority),
    };
    let hosts: Vec<&str> = if cluster {
        hosts.split(',').collect()
    } else {
        vec![hosts]
    };
    for hostport in &hosts {
        loopback_addr(hostport, 6379).map_err(|e| format!("--redis: {e}"))?;
    }
    let urls = if cluster {
        hosts
            .iter()
            .map(|h| format!("redis://{userinfo}{h}"))
            .collect()
    } else {
        vec![url.to_string()]
    };
    Ok(RedisTarget {
        urls,
        userinfo,
        cluster,
    })
}

pub fn loopback_addr(hostport: &str, default_port: u16) -> Result<SocketAddr, String> {
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !hostport.ends_with(']')
    {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{hostport} has no IPv4 address"))?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ok(addr),
        _ => Err(format!("{hostport} is not a loopback address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(ws_addr("ws://127.0.0.1:8080/ws").is_ok());
        assert!(ws_addr("ws://localhost:8080/ws").is_ok());
        assert!(ws_addr("ws://10.0.0.1:8080/ws").is_err());
        assert!(ws_addr("wss://127.0.0.1:8080/ws").is_err());
        assert!(redis_target("redis://127.0.0.1:7000").is_ok());
        assert!(redis_target("redis://u:p@127.0.0.1:7000/0").is_ok());
        assert!(redis_target("redis://192.168.1.2:7000").is_err());
        assert!(redis_target("redis+cluster://127.0.0.1:7000,localhost:7001/").is_ok());
        assert!(redis_target("redis+cluster://127.0.0.1:7000,10.0.0.1:7001").is_err());
        assert!(redis_target("redis+cluster://127.0.0.1:7000/2").is_err());
    }

    #[test]
    fn a_cluster_url_names_its_seed_nodes_with_the_credentials() {
        let target = redis_target("redis+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert!(target.cluster);
        assert_eq!(
            target.urls,
            ["redis://u:p@127.0.0.1:7000", "redis://u:p@127.0.0.1:7001"]
        );
        assert_eq!(
            target.node_url("127.0.0.1:7002"),
            "redis://u:p@127.0.0.1:7002"
        );
        let single = redis_target("redis://127.0.0.1:7000/1").unwrap();
        assert!(!single.cluster);
        assert_eq!(single.urls, ["redis://127.0.0.1:7000/1"]);
    }

    #[test]
    fn baseline_items() {
        assert_eq!(
            baseline_item("xadd=1000.5"),
            Ok(("xadd".into(), 1000.5, 1.0))
        );
        assert_eq!(
            baseline_item("send10x10=20"),
            Ok(("send10x10".into(), 20.0, 100.0))
        );
        assert!(baseline_item("send10=20").is_err());
    }
}
