//! A private Redis Cluster: `redis-server` processes in cluster mode on free loopback
//! ports, each in a fresh directory (a leftover `nodes.conf` would make a node rejoin
//! an old cluster), joined with `redis-cli --cluster create`. Every process is killed
//! and reaped on drop.
//!
//! Nodes run with `cluster-node-timeout 2000` (a failover takes a few seconds) and
//! `cluster-require-full-coverage no` (the other slots keep serving while a node is
//! down, as a partial failure needs).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{ConnectionLike, FromRedisValue, Value};

use super::{START_ATTEMPTS, WAIT, free_port, process_id_in, wait_for_own_redis};

/// One `redis-server` of the cluster.
pub struct ClusterNode {
    pub port: u16,
    /// The cluster bus port (by default `port + 10000`, which may not exist for a
    /// high ephemeral port).
    bus_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The directory of the CA and server certificate when the cluster speaks TLS
    /// only (clients, cluster bus and replication).
    tls: Option<Arc<tempfile::TempDir>>,
    /// Whether the node keeps its data across a restart (AOF, `appendfsync always`).
    persistent: bool,
}

impl ClusterNode {
    fn start(tls: Option<Arc<tempfile::TempDir>>, persistent: bool) -> Self {
        let mut node = Self {
            port: 0,
            bus_port: 0,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            tls,
            persistent,
        };
        for _ in 0..START_ATTEMPTS {
            (node.port, node.bus_port) = (free_port(), free_port());
            if node.spawn() {
                return node;
            }
        }
        panic!("a cluster node did not start on {START_ATTEMPTS} pairs of free ports");
    }

    /// Starts the node on its ports; false if one of them turned out to be taken.
    fn spawn(&mut self) -> bool {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(certs) => {
                let file = |name: &str| certs.path().join(name).to_string_lossy().into_owned();
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", &file("server.crt")])
                    .args(["--tls-key-file", &file("server.key")])
                    .args(["--tls-ca-cert-file", &file("ca.crt")])
                    .args(["--tls-auth-clients", "no"])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
            }
        };
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let mut child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--dir", &dir])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--cluster-config-file", &format!("{dir}/nodes.conf")])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--cluster-replica-validity-factor", "0"])
            // Disk-based sync: after a diskless one, Redis 7.0 streams writes to a
            // replica only from the replica's first ACK, up to a second later.
            .args(["--repl-diskless-sync", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        let ours = wait_for_own_redis(&mut child, || {
            process_id_in(&self.try_cmd::<String>(&["INFO", "server"])?)
        });
        self.child = Some(child);
        ours
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client of this node alone (TLS with the test CA when the cluster uses TLS).
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            None => redis::Client::open(format!("redis://{}", self.addr())),
            Some(certs) => redis::Client::build_with_tls(
                format!("rediss://{}", self.addr()),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(certs.path().join("ca.crt"))?),
                },
            ),
        }
    }

    /// Runs a command on this node (no redirection); `None` if it failed.
    pub fn try_cmd<T: FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let mut conn = self
            .client()
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        super::command(args).query(&mut conn).ok()
    }

    /// Runs a command on this node (no redirection) and returns its reply.
    pub fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = self
            .client()
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect to node {}: {e}", self.port));
        super::command(args)
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("{args:?} on node {}: {e}", self.port))
    }

    /// The node's cluster id.
    pub fn id(&self) -> String {
        self.cmd(&["CLUSTER", "MYID"])
    }

    /// Whether the node answers and is a primary.
    pub fn is_primary(&self) -> bool {
        self.try_cmd::<Vec<Value>>(&["ROLE"])
            .and_then(|role| role.into_iter().next())
            .is_some_and(|kind| kind == Value::BulkString(b"master".to_vec()))
    }

    /// Kills the node (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same port and directory: it rejoins the cluster
    /// from its `nodes.conf`, with its data only if it is persistent.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "a cluster node could not restart on port {}",
            self.port
        );
    }

    fn cluster_info_field(&self, field: &str) -> Option<String> {
        let info: String = self.try_cmd(&["CLUSTER", "INFO"])?;
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three primaries, optionally with one replica each.
pub struct RedisCluster {
    /// Every node, in creation order: the primaries first, then the replicas (roles
    /// change on a failover: ask [`ClusterNode::is_primary`]).
    pub nodes: Vec<ClusterNode>,
    /// The certificates' directory of a TLS cluster.
    tls: Option<Arc<tempfile::TempDir>>,
    /// The slot map when [`Self::kill`] stopped every node.
    slots_at_kill: Option<Vec<(u16, u16, u16)>>,
}

impl RedisCluster {
    /// Three primaries, no replica.
    pub fn start() -> Self {
        Self::start_with(0, false, false)
    }

    /// Three primaries with AOF (`appendfsync always`), so [`Self::restart`] keeps
    /// the data.
    pub fn start_persistent() -> Self {
        Self::start_with(0, false, true)
    }

    /// Three primaries with one replica each (for failover).
    pub fn start_with_replicas() -> Self {
        Self::start_with(1, false, false)
    }

    /// Three primaries speaking only TLS, with a private CA ([`Self::ca_file`]).
    pub fn start_tls() -> Self {
        Self::start_with(0, true, false)
    }

    fn start_with(replicas: usize, tls: bool, persistent: bool) -> Self {
        let started = Instant::now();
        let tls = tls.then(|| {
            let certs = tempfile::tempdir().expect("temp dir");
            super::make_tls_certificates(certs.path());
            Arc::new(certs)
        });
        let nodes: Vec<ClusterNode> = (0..3 * (1 + replicas))
            .map(|_| ClusterNode::start(tls.clone(), persistent))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(certs) = &tls {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(certs.path().join("ca.crt"));
        }
        let output = create
            .args(["--cluster", "create"])
            .args(nodes.iter().map(ClusterNode::addr))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self {
            nodes,
            tls,
            slots_at_kill: None,
        };
        cluster.wait_ready();
        if replicas > 0 {
            // A replica may say `master_link_status:up` while its primary still
            // holds it in `wait_bgsave` for another full sync: ask both sides.
            cluster.wait_for(
                || {
                    cluster.nodes.iter().all(|n| {
                        n.try_cmd::<String>(&["INFO", "replication"])
                            .is_some_and(|info| {
                                if info.contains("role:master") {
                                    info.contains(&format!("connected_slaves:{replicas}"))
                                        && !info.contains("state=wait_bgsave")
                                        && !info.contains("state=send_bulk")
                                        && info.contains("state=online")
                                } else {
                                    info.contains("master_link_status:up")
                                        && info.contains("master_sync_in_progress:0")
                                }
                            })
                    })
                },
                "every replica to be in sync",
            );
        }
        eprintln!("redis cluster ready in {:?}", started.elapsed());
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` with all slots
    /// assigned, and all agree on who owns every slot.
    pub fn wait_ready(&self) {
        self.wait_for(
            || {
                let running: Vec<&ClusterNode> =
                    self.nodes.iter().filter(|n| n.child.is_some()).collect();
                let healthy = running.iter().all(|n| {
                    n.cluster_info_field("cluster_state").as_deref() == Some("ok")
                        && n.cluster_info_field("cluster_slots_assigned").as_deref()
                            == Some("16384")
                });
                let maps: Vec<Option<Vec<(u16, u16, u16)>>> =
                    running.iter().map(|n| slot_map(n)).collect();
                healthy && maps.iter().all(|m| m.is_some() && *m == maps[0])
            },
            "cluster_state:ok on every node, with one slot map",
        );
    }

    /// Kills every node (SIGKILL): the whole cluster is down.
    pub fn kill(&mut self) {
        self.slots_at_kill = slot_map(self.running());
        self.nodes.iter_mut().for_each(ClusterNode::kill);
    }

    /// Appends a command to the AOF of the stopped primary that owned its key's slot
    /// (`args[1]`) when [`Self::kill`] ran, as if it had run just before.
    pub fn append_to_aof(&self, args: &[&str]) {
        let slots = self
            .slots_at_kill
            .as_ref()
            .expect("only on a killed cluster");
        let slot = key_slot(args[1]);
        let (_, _, port) = slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .expect("the slot was served");
        let node = self.nodes.iter().find(|n| n.port == *port).expect("ours");
        assert!(node.persistent, "only on a persistent cluster");
        super::node::append_to_aof_in(node.dir.path(), args);
    }

    /// Starts every node again on its port and directory and waits until the
    /// cluster serves every slot (the data survives only if it is persistent).
    pub fn restart(&mut self) {
        for node in &mut self.nodes {
            node.restart();
        }
        self.wait_ready();
    }

    fn wait_for(&self, mut ready: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + WAIT * 3;
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+cluster://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c` (the first three nodes
    /// as seeds).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().take(3).map(ClusterNode::addr).collect();
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}+cluster://{}", seeds.join(","))
    }

    /// Path of the CA certificate of a TLS cluster.
    pub fn ca_file(&self) -> String {
        let certs = self.tls.as_ref().expect("a TLS cluster");
        certs.path().join("ca.crt").to_string_lossy().into_owned()
    }

    /// A cluster connection (follows redirects) for assertions and fixtures.
    pub fn conn(&self) -> ClusterConnection {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| {
                let scheme = if self.tls.is_some() {
                    "rediss"
                } else {
                    "redis"
                };
                format!("{scheme}://{}", n.addr())
            })
            .collect();
        let mut builder = ClusterClient::builder(seeds).retries(20);
        if self.tls.is_some() {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(self.ca_file()).expect("the CA file")),
            });
        }
        builder
            .build()
            .and_then(|c| c.get_connection())
            .expect("connect to the test cluster")
    }

    /// Runs one keyed command through the cluster and returns its reply.
    pub fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> T {
        super::command(args)
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Creates `chat:<id>` with these members.
    pub fn create_chat(&self, chat: u64, members: &[u64]) {
        super::create_chat_in(&mut self.conn(), chat, members);
    }

    /// `XLEN key` (0 for a missing key).
    pub fn xlen(&self, key: &str) -> u64 {
        self.cmd(&["XLEN", key])
    }

    /// Number of entries pending in a user's device group.
    pub fn pending(&self, user: u64, device: &str) -> u64 {
        super::pending_in(&mut self.conn(), user, device)
    }

    /// The `id` fields of a user's inbox entries, in stream order.
    pub fn inbox_ids(&self, user: u64) -> Vec<u64> {
        self.inbox_field(user, "id")
            .iter()
            .map(|id| id.parse().expect("numeric id"))
            .collect()
    }

    /// One field of every entry of a user's inbox, in stream order.
    pub fn inbox_field(&self, user: u64, field: &str) -> Vec<String> {
        let entries: Vec<(String, Vec<(String, String)>)> =
            self.cmd(&["XRANGE", &format!("inbox:{{user:{user}}}"), "-", "+"]);
        entries
            .into_iter()
            .filter_map(|(_, fields)| {
                fields
                    .into_iter()
                    .find(|(name, _)| name == field)
                    .map(|(_, value)| value)
            })
            .collect()
    }

    /// The hash slot of a key.
    pub fn slot_of(&self, key: &str) -> u16 {
        self.running().cmd(&["CLUSTER", "KEYSLOT", key])
    }

    /// Index (in `nodes`) of the primary that serves `slot` now.
    pub fn primary_of_slot(&self, slot: u16) -> usize {
        let map = slot_map(self.running()).expect("CLUSTER SLOTS");
        let port = map
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, port)| *port)
            .expect("slot is served");
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of ours")
    }

    /// Index of the primary holding user `id`'s keys (`{user:<id>}`).
    pub fn primary_of_user(&self, user: u64) -> usize {
        self.primary_of_slot(self.slot_of(&format!("{{user:{user}}}")))
    }

    /// The first `count` user ids from `from` on whose keys live on pairwise
    /// different primaries.
    pub fn users_on_distinct_primaries(&self, from: u64, count: usize) -> Vec<u64> {
        let mut users = Vec::new();
        let mut primaries = Vec::new();
        for user in from.. {
            let primary = self.primary_of_user(user);
            if !primaries.contains(&primary) {
                primaries.push(primary);
                users.push(user);
                if users.len() == count {
                    return users;
                }
            }
        }
        unreachable!()
    }

    /// Index of the replica of the primary at `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        self.nodes
            .iter()
            .position(|n| {
                n.child.is_some()
                    && n.try_cmd::<String>(&["INFO", "replication"])
                        .is_some_and(|info| {
                            info.contains("role:slave")
                                && info
                                    .contains(&format!("master_port:{}", self.nodes[primary].port))
                        })
            })
            .expect("the primary has a replica")
    }

    /// Moves `slot` to the primary at `to`, the way `redis-cli --cluster reshard`
    /// does: IMPORTING/MIGRATING, then MIGRATE one key at a time with `pause` between
    /// keys (so traffic meets the slot half-moved: ASK and TRYAGAIN), then the new
    /// owner is announced to every primary.
    pub fn migrate_slot(&self, slot: u16, to: usize, pause: Duration) -> usize {
        let from = self.primary_of_slot(slot);
        assert_ne!(from, to, "the slot is already there");
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        let slot_arg = slot.to_string();
        let _: () = target.cmd(&["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &source.id()]);
        let _: () = source.cmd(&["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &target.id()]);
        let mut moved = 0;
        loop {
            let keys: Vec<String> = source.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot_arg, "1"]);
            let Some(key) = keys.first() else { break };
            let _: Value = source.cmd(&[
                "MIGRATE",
                "127.0.0.1",
                &target.port.to_string(),
                "",
                "0",
                "5000",
                "KEYS",
                key,
            ]);
            moved += 1;
            std::thread::sleep(pause);
        }
        let target_id = target.id();
        let _: () = target.cmd(&["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
        let _: () = source.cmd(&["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
        for node in self.nodes.iter().filter(|n| n.is_primary()) {
            let _: Value = node.cmd(&["CLUSTER", "SETSLOT", &slot_arg, "NODE", &target_id]);
        }
        moved
    }

    fn running(&self) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.child.is_some() && n.try_cmd::<String>(&["PING"]).is_some())
            .expect("a running node")
    }
}

/// `(start, end, primary port)` of every slot range a node reports, sorted; `None`
/// if it does not answer.
fn slot_map(node: &ClusterNode) -> Option<Vec<(u16, u16, u16)>> {
    let mut conn = node
        .client()
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let reply = conn.req_command(redis::cmd("CLUSTER").arg("SLOTS")).ok()?;
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut map = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return None;
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            return None;
        };
        map.push((*start as u16, *end as u16, *port as u16));
    }
    map.sort_unstable();
    Some(map)
}

/// The hash slot of a key (CRC16/XMODEM of its `{hash tag}` or whole name, mod
/// 16384), for when no node is running to answer `CLUSTER KEYSLOT`.
fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &bytes[open + 1..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for byte in tagged {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}
