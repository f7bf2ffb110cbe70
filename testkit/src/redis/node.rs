//! One private `redis-server` process on a free loopback port, in its own directory,
//! in any role: a plain server, a TLS-only server, a cluster node, a replica or a
//! Sentinel (through [`NodeOptions::args`] and [`NodeOptions::sentinel`]). It can be
//! killed (SIGKILL) and started again on the same port and directory, which is how
//! the fault tests stop and bring back a server.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use redis::FromRedisValue;

use super::{Certificates, Fixtures, command, process_id_in};
use crate::process::Process;
use crate::{WAIT, Wait, free_port, ports::START_ATTEMPTS};

/// How a [`RedisNode`] is started. Built with the methods below, then
/// [`NodeOptions::start`].
#[derive(Clone, Default)]
pub struct NodeOptions {
    persistent: bool,
    tls: Option<Arc<Certificates>>,
    cluster: bool,
    sentinel: Option<String>,
    args: Vec<String>,
    dir: Option<PathBuf>,
}

impl NodeOptions {
    /// AOF with `appendfsync always`, so a restart keeps every write.
    pub fn persistent(self) -> Self {
        Self {
            persistent: true,
            ..self
        }
    }

    /// TLS only (clients, replication and cluster bus), with these certificates.
    pub fn tls(self, certificates: Arc<Certificates>) -> Self {
        Self {
            tls: Some(certificates),
            ..self
        }
    }

    /// A cluster node: `cluster-enabled` with its own bus port, `cluster-node-timeout
    /// 2000` (a failover takes a few seconds), `cluster-require-full-coverage no`
    /// (the other slots keep serving while a node is down).
    pub fn cluster(self) -> Self {
        Self {
            cluster: true,
            ..self
        }
    }

    /// A Sentinel (`redis-server <dir>/sentinel.conf --sentinel`) with this
    /// configuration (`sentinel monitor <name> 127.0.0.1 <port> <quorum>`, ...). The
    /// file is written once: Sentinel rewrites it, and a restart keeps what it learnt.
    pub fn sentinel(self, config: &str) -> Self {
        Self {
            sentinel: Some(config.to_string()),
            ..self
        }
    }

    /// One more command-line argument, after the kit's own (so it can override them):
    /// `.args(["--replicaof", "127.0.0.1", "7000"])`, `.args(["--maxclients", "10000"])`.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Keeps the node's files in `dir` (created if missing, left in place) instead of
    /// a temporary directory removed on drop.
    pub fn dir(self, dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            ..self
        }
    }

    /// Starts the node and waits until it answers as itself.
    pub fn start(self) -> RedisNode {
        let dir = match &self.dir {
            Some(path) => {
                std::fs::create_dir_all(path).expect("create the node's directory");
                // Absolute: redis-server changes into it before it opens nodes.conf.
                NodeDir::Kept(std::path::absolute(path).expect("the node's directory"))
            }
            None => NodeDir::Temporary(tempfile::tempdir().expect("temp dir")),
        };
        let mut node = RedisNode {
            port: 0,
            bus_port: 0,
            dir,
            options: self,
            process: None,
        };
        for _ in 0..START_ATTEMPTS {
            node.port = free_port();
            node.bus_port = if node.options.cluster { free_port() } else { 0 };
            if node.spawn() {
                return node;
            }
        }
        panic!("redis-server did not start on {START_ATTEMPTS} free ports");
    }
}

/// Where a node keeps its files.
enum NodeDir {
    /// Removed with the node.
    Temporary(tempfile::TempDir),
    /// Given by the caller, left in place.
    Kept(PathBuf),
}

/// A private `redis-server` on a free port, in its own directory; killed and reaped
/// on drop.
pub struct RedisNode {
    pub port: u16,
    /// The cluster bus port of a cluster node (by default `port + 10000`, which may
    /// not exist for a high port), 0 otherwise.
    bus_port: u16,
    dir: NodeDir,
    options: NodeOptions,
    /// `None` while killed.
    process: Option<Process>,
}

impl RedisNode {
    /// Starts a server without persistence.
    pub fn start() -> Self {
        Self::options().start()
    }

    /// Starts a server with AOF (`appendfsync always`) so restarts keep the data.
    pub fn start_persistent() -> Self {
        Self::options().persistent().start()
    }

    /// Starts a server speaking only TLS, with a fresh private CA ([`Self::ca_file`]).
    pub fn start_tls() -> Self {
        Self::options()
            .tls(Arc::new(Certificates::generate()))
            .start()
    }

    /// Options for any other kind of node.
    pub fn options() -> NodeOptions {
        NodeOptions::default()
    }

    /// Starts redis-server on `self.port`; false if it exited at once because a port
    /// turned out to be taken.
    fn spawn(&mut self) -> bool {
        let dir = self.dir().to_string_lossy().into_owned();
        let output_path = self.dir().join("redis-server.out");
        let mut command = Command::new("redis-server");
        if let Some(config) = &self.options.sentinel {
            let file = self.dir().join("sentinel.conf");
            if !file.exists() {
                std::fs::write(&file, config).expect("write sentinel.conf");
            }
            command.arg(&file).arg("--sentinel");
        }
        match &self.options.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(certs) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(certs.file("server.crt"))
                .arg("--tls-key-file")
                .arg(certs.file("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(certs.file("ca.crt"))
                .args(["--tls-auth-clients", "no", "--tls-replication", "yes"]),
        };
        command.args(["--bind", "127.0.0.1", "--dir", &dir]);
        if self.options.sentinel.is_none() {
            command.args(["--save", ""]);
            if self.options.persistent {
                command.args(["--appendonly", "yes", "--appendfsync", "always"]);
            } else {
                command.args(["--appendonly", "no"]);
            }
        }
        if self.options.cluster {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &self.bus_port.to_string()])
                .args(["--cluster-config-file", &format!("{dir}/nodes.conf")])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--cluster-replica-validity-factor", "0"])
                // Disk-based sync: after a diskless one, Redis 7.0 streams writes to a
                // replica only from the replica's first ACK, up to a second later.
                .args(["--repl-diskless-sync", "no"]);
            if self.options.tls.is_some() {
                command.args(["--tls-cluster", "yes"]);
            }
        }
        command.args(&self.options.args);
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&output_path)
            .expect("the node's output file");
        command
            .stdout(output.try_clone().expect("output file"))
            .stderr(output);
        let mut process =
            Process::spawn(command, "redis-server").expect("spawn redis-server (is it installed?)");
        let mut ours = false;
        Wait::new("redis-server to start")
            .within(WAIT)
            .until_blocking(|| {
                if process.exit_status().is_some() {
                    return true;
                }
                ours = self.serving_pid() == Some(process.pid());
                ours
            });
        if !ours {
            let said = std::fs::read_to_string(&output_path).unwrap_or_default();
            assert!(
                said.is_empty() || said.contains("Address already in use"),
                "redis-server exited at start:\n{said}"
            );
            return false;
        }
        self.process = Some(process);
        true
    }

    /// The `process_id` of whatever answers on this node's port, once it has loaded
    /// its data (while it loads, it answers INFO but refuses other commands).
    fn serving_pid(&self) -> Option<u32> {
        let info = self.try_cmd::<String>(&["INFO", "server", "persistence"])?;
        if info.contains("loading:1") {
            return None;
        }
        process_id_in(&info)
    }

    /// The node's directory (data, `nodes.conf`, its output in `redis-server.out`).
    pub fn dir(&self) -> &Path {
        match &self.dir {
            NodeDir::Temporary(dir) => dir.path(),
            NodeDir::Kept(path) => path,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS node.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}", self.addr())
    }

    /// The CA that signed a TLS node's certificate (panics on a plain node).
    pub fn ca_file(&self) -> String {
        self.options.tls.as_ref().expect("a TLS node").ca_file()
    }

    /// Whether it keeps its data across a restart (AOF).
    pub fn is_persistent(&self) -> bool {
        self.options.persistent
    }

    /// Whether its process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// A client of this node alone (TLS with its CA on a TLS node).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.options.tls {
            None => redis::Client::open(self.url()),
            Some(certs) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(certs.ca_pem()),
                },
            ),
        }
    }

    /// Runs a command on this node (no redirection); `None` if it failed or the node
    /// did not answer within a second or so.
    pub fn try_cmd<T: FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let mut conn = self
            .client()
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        command(args).query(&mut conn).ok()
    }

    /// The node's cluster id.
    pub fn id(&self) -> String {
        self.cmd(&["CLUSTER", "MYID"])
    }

    /// Waits until this replica's link to its primary is up (`master_link_status:up`:
    /// the initial sync is done and writes stream to it).
    pub fn wait_for_primary_link(&self) {
        Wait::new("the replica to sync").until_blocking(|| {
            self.try_cmd::<String>(&["INFO", "replication"])
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
    }

    /// Whether the node answers and is a primary.
    pub fn is_primary(&self) -> bool {
        self.try_cmd::<Vec<redis::Value>>(&["ROLE"])
            .and_then(|role| role.into_iter().next())
            .is_some_and(|kind| kind == redis::Value::BulkString(b"master".to_vec()))
    }

    /// One field of `CLUSTER INFO`, if the node answers.
    pub fn cluster_info_field(&self, field: &str) -> Option<String> {
        let info: String = self.try_cmd(&["CLUSTER", "INFO"])?;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts it again on the same port and directory (killing it first if it runs):
    /// a cluster node rejoins from its `nodes.conf`, a persistent node keeps its data.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server could not restart on port {}",
            self.port
        );
    }

    /// Appends a command to the AOF of a stopped persistent server, as if it had run
    /// just before the stop (Redis 7 multi-part AOF: the `.incr.aof` file).
    pub fn append_to_aof(&self, args: &[&str]) {
        assert!(
            !self.is_running() && self.options.persistent,
            "only on a stopped persistent server"
        );
        append_to_aof_in(self.dir(), args);
    }
}

impl Fixtures for RedisNode {
    type Connection = redis::Connection;

    /// A connection to this node alone (no redirection on a cluster node).
    fn conn(&self) -> redis::Connection {
        self.client()
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect to redis on {}: {e}", self.port))
    }
}

/// Appends a command to the AOF in a stopped server's directory `dir`, as if it had
/// run just before the stop (Redis 7 multi-part AOF: the `.incr.aof` file).
pub fn append_to_aof_in(dir: &Path, args: &[&str]) {
    let incr = std::fs::read_dir(dir.join("appendonlydir"))
        .expect("appendonlydir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .expect("an incr AOF file");
    let mut resp = format!("*{}\r\n", args.len());
    for arg in args {
        resp.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    use std::io::Write;
    let mut file = OpenOptions::new()
        .append(true)
        .open(incr)
        .expect("open AOF");
    file.write_all(resp.as_bytes()).expect("append to AOF");
}
