//! The Redis a test runs against: one `redis-server`, or a three-primary Redis
//! Cluster when `COURIER_TEST_REDIS=cluster`, so the same tests check courier on
//! both (`scripts/test` runs the core suite once per mode).
//!
//! A test that needs one node's specifics (its port, for an ACL URL) uses
//! [`RedisNode`] directly.

use redis::cluster::ClusterConnection;
use redis::{Cmd, ConnectionLike, RedisResult, Value};

use super::{Fixtures, RedisCluster, RedisNode};

/// The environment variable choosing the Redis of [`RedisServer`]: unset or
/// `single` for one node, `cluster` for a three-primary cluster.
pub const MODE_VARIABLE: &str = "COURIER_TEST_REDIS";

/// Whether this test run is against a Redis Cluster.
pub fn cluster_mode() -> bool {
    match std::env::var(MODE_VARIABLE).as_deref() {
        Err(_) | Ok("") | Ok("single") => false,
        Ok("cluster") => true,
        Ok(other) => panic!("{MODE_VARIABLE}={other}: expected `single` or `cluster`"),
    }
}

/// A test's private Redis, in the mode [`cluster_mode`] chooses.
pub enum RedisServer {
    /// One `redis-server`.
    Single(RedisNode),
    /// Three primaries joined in a cluster.
    Cluster(RedisCluster),
}

impl RedisServer {
    /// Starts a Redis without persistence.
    pub fn start() -> Self {
        if cluster_mode() {
            Self::Cluster(RedisCluster::start())
        } else {
            Self::Single(RedisNode::start())
        }
    }

    /// Starts a Redis with AOF (`appendfsync always`) so restarts keep the data.
    pub fn start_persistent() -> Self {
        if cluster_mode() {
            Self::Cluster(RedisCluster::start_persistent())
        } else {
            Self::Single(RedisNode::start_persistent())
        }
    }

    /// The URL courier is given: `redis://…` or `redis+cluster://…`.
    pub fn url(&self) -> String {
        match self {
            Self::Single(node) => node.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }

    /// Publishes a wake-up for `user` the way courier does: `PUBLISH`, or sharded
    /// `SPUBLISH` on a cluster.
    pub fn notify(&self, user: u64) {
        let publish = match self {
            Self::Single(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        };
        self.cmd::<i64>(&[publish, &format!("notify:{{user:{user}}}"), ""]);
    }

    /// Kills every Redis process (SIGKILL): Redis is down.
    pub fn kill(&mut self) {
        match self {
            Self::Single(node) => node.kill(),
            Self::Cluster(cluster) => cluster.kill(),
        }
    }

    /// Appends a command to a killed persistent Redis's AOF (on a cluster, to the
    /// primary owning the key `args[1]`), as if it had run just before the kill.
    pub fn append_to_aof(&self, args: &[&str]) {
        match self {
            Self::Single(node) => node.append_to_aof(args),
            Self::Cluster(cluster) => cluster.append_to_aof(args),
        }
    }

    /// Starts it again on the same ports and directories and waits until it serves.
    pub fn restart(&mut self) {
        match self {
            Self::Single(node) => node.restart(),
            Self::Cluster(cluster) => cluster.restart(),
        }
    }

    /// The server, or every running primary of the cluster: where per-node commands
    /// (`FLUSHALL`, `INFO`) go.
    pub fn primaries(&self) -> Vec<&RedisNode> {
        match self {
            Self::Single(node) => vec![node],
            Self::Cluster(cluster) => cluster.primaries().collect(),
        }
    }

    /// Every process's id (the server, or every node of the cluster), for profilers.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::Single(node) => node.pid().into_iter().collect(),
            Self::Cluster(cluster) => cluster.nodes.iter().filter_map(RedisNode::pid).collect(),
        }
    }

    /// Empties every primary (`FLUSHALL`; loaded scripts stay).
    pub fn flush_all(&self) {
        for node in self.primaries() {
            node.cmd::<()>(&["FLUSHALL"]);
        }
    }
}

impl Fixtures for RedisServer {
    type Connection = TestConnection;

    /// On a cluster, it follows the keys' slots.
    fn conn(&self) -> TestConnection {
        match self {
            Self::Single(node) => TestConnection::Single(node.conn()),
            Self::Cluster(cluster) => TestConnection::Cluster(Box::new(cluster.conn())),
        }
    }
}

/// A synchronous connection to either kind of [`RedisServer`].
pub enum TestConnection {
    /// To the one node.
    Single(redis::Connection),
    /// To the cluster, routed by key.
    Cluster(Box<ClusterConnection>),
}

impl TestConnection {
    fn inner(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Self::Single(conn) => conn,
            Self::Cluster(conn) => conn.as_mut(),
        }
    }

    fn inner_ref(&self) -> &dyn ConnectionLike {
        match self {
            Self::Single(conn) => conn,
            Self::Cluster(conn) => conn.as_ref(),
        }
    }
}

impl ConnectionLike for TestConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.inner().req_packed_command(cmd)
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.inner().req_packed_commands(cmd, offset, count)
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        self.inner().req_command(cmd)
    }

    fn get_db(&self) -> i64 {
        self.inner_ref().get_db()
    }

    /// On a cluster, a pipeline goes to the node of its first command's key: the
    /// tests' pipelines stay within one slot.
    fn supports_pipelining(&self) -> bool {
        true
    }

    fn check_connection(&mut self) -> bool {
        self.inner().check_connection()
    }

    fn is_open(&self) -> bool {
        self.inner_ref().is_open()
    }
}
