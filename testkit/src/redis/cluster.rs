//! A private Redis Cluster: [`RedisNode`]s in cluster mode on free loopback ports,
//! each in a fresh directory (a leftover `nodes.conf` would make a node rejoin an old
//! cluster), joined with `redis-cli --cluster create`. Every process is killed and
//! reaped on drop.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{ConnectionLike, Value};

use super::{Certificates, Fixtures, NodeOptions, RedisNode, append_to_aof_in};
use crate::{WAIT, Wait};

/// How a [`RedisCluster`] is started.
#[derive(Clone, Default)]
pub struct ClusterOptions {
    replicas: usize,
    tls: bool,
    /// What every node gets (persistence, extra arguments).
    node: NodeOptions,
    dir: Option<PathBuf>,
}

impl ClusterOptions {
    /// This many replicas per primary (for failover).
    pub fn replicas(self, replicas: usize) -> Self {
        Self { replicas, ..self }
    }

    /// TLS only, with a private CA ([`RedisCluster::ca_file`]).
    pub fn tls(self) -> Self {
        Self { tls: true, ..self }
    }

    /// AOF (`appendfsync always`), so [`RedisCluster::restart`] keeps the data.
    pub fn persistent(self) -> Self {
        Self {
            node: self.node.clone().persistent(),
            ..self
        }
    }

    /// Extra `redis-server` arguments for every node ([`NodeOptions::args`]).
    pub fn node_args<S: AsRef<str>>(self, args: impl IntoIterator<Item = S>) -> Self {
        Self {
            node: self.node.clone().args(args),
            ..self
        }
    }

    /// Keeps node `i`'s files in `<dir>/redis-node-<i>` (left in place).
    pub fn dir(self, dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            ..self
        }
    }

    /// Starts the nodes, creates the cluster and waits until every node serves every
    /// slot (and every replica is in sync).
    pub fn start(self) -> RedisCluster {
        let started = Instant::now();
        let tls = self.tls.then(|| Arc::new(Certificates::generate()));
        let nodes: Vec<RedisNode> = (0..3 * (1 + self.replicas))
            .map(|i| {
                let mut options = self.node.clone().cluster();
                if let Some(certs) = &tls {
                    options = options.tls(certs.clone());
                }
                if let Some(dir) = &self.dir {
                    options = options.dir(dir.join(format!("redis-node-{}", i + 1)));
                }
                options.start()
            })
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(certs) = &tls {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(certs.file("ca.crt"));
        }
        let output = create
            .args(["--cluster", "create"])
            .args(nodes.iter().map(RedisNode::addr))
            .args(["--cluster-replicas", &self.replicas.to_string()])
            .arg("--cluster-yes")
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster {
            nodes,
            tls,
            slots_at_kill: None,
        };
        cluster.wait_ready();
        if self.replicas > 0 {
            cluster.wait_for_replicas(self.replicas);
        }
        eprintln!("redis cluster ready in {:?}", started.elapsed());
        cluster
    }
}

/// A Redis Cluster of three primaries, optionally with replicas.
pub struct RedisCluster {
    /// Every node, in creation order: the primaries first, then the replicas (roles
    /// change on a failover: ask [`RedisNode::is_primary`]).
    pub nodes: Vec<RedisNode>,
    /// The certificates of a TLS cluster.
    tls: Option<Arc<Certificates>>,
    /// The slot map when [`Self::kill`] stopped every node.
    slots_at_kill: Option<Vec<(u16, u16, u16)>>,
}

impl RedisCluster {
    /// Three primaries, no replica.
    pub fn start() -> Self {
        Self::options().start()
    }

    /// Three primaries with AOF (`appendfsync always`), so [`Self::restart`] keeps
    /// the data.
    pub fn start_persistent() -> Self {
        Self::options().persistent().start()
    }

    /// Three primaries with one replica each (for failover).
    pub fn start_with_replicas() -> Self {
        Self::options().replicas(1).start()
    }

    /// Three primaries speaking only TLS, with a private CA ([`Self::ca_file`]).
    pub fn start_tls() -> Self {
        Self::options().tls().start()
    }

    /// Options for any other cluster.
    pub fn options() -> ClusterOptions {
        ClusterOptions::default()
    }

    /// Waits until every running node says `cluster_state:ok` with all slots
    /// assigned, and all agree on who owns every slot.
    pub fn wait_ready(&self) {
        self.wait("cluster_state:ok on every node, with one slot map", || {
            let running: Vec<&RedisNode> = self.nodes.iter().filter(|n| n.is_running()).collect();
            let healthy = running.iter().all(|n| {
                n.cluster_info_field("cluster_state").as_deref() == Some("ok")
                    && n.cluster_info_field("cluster_slots_assigned").as_deref() == Some("16384")
            });
            let maps: Vec<Option<Vec<(u16, u16, u16)>>> =
                running.iter().map(|n| slot_map(n)).collect();
            healthy && maps.iter().all(|m| m.is_some() && *m == maps[0])
        });
    }

    /// Waits until every replica is in sync with its primary. A replica may say
    /// `master_link_status:up` while its primary still holds it in `wait_bgsave` for
    /// another full sync: both sides are asked.
    fn wait_for_replicas(&self, replicas: usize) {
        self.wait("every replica to be in sync", || {
            self.nodes.iter().all(|n| {
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
        });
    }

    fn wait(&self, what: &str, ready: impl FnMut() -> bool) {
        Wait::new(what)
            .within(WAIT * 3)
            .every(Duration::from_millis(50))
            .until_blocking(ready);
    }

    /// Kills every node (SIGKILL): the whole cluster is down.
    pub fn kill(&mut self) {
        self.slots_at_kill = slot_map(self.running());
        self.nodes.iter_mut().for_each(RedisNode::kill);
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
        assert!(node.is_persistent(), "only on a persistent cluster");
        append_to_aof_in(node.dir(), args);
    }

    /// Starts every node again on its port and directory and waits until the
    /// cluster serves every slot (the data survives only if it is persistent).
    pub fn restart(&mut self) {
        for node in &mut self.nodes {
            node.restart();
        }
        self.wait_ready();
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// `redis+cluster://127.0.0.1:a,127.0.0.1:b,127.0.0.1:c` (the first three nodes
    /// as seeds).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes.iter().take(3).map(RedisNode::addr).collect();
        format!("{}+cluster://{}", self.scheme(), seeds.join(","))
    }

    /// Path of the CA certificate of a TLS cluster.
    pub fn ca_file(&self) -> String {
        self.tls.as_ref().expect("a TLS cluster").ca_file()
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
                n.is_running()
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
            // The pause is the point: traffic must meet the slot half-moved.
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

    /// The running primaries (for per-node commands such as FLUSHALL or INFO).
    pub fn primaries(&self) -> impl Iterator<Item = &RedisNode> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.is_primary())
    }

    fn running(&self) -> &RedisNode {
        self.nodes
            .iter()
            .find(|n| n.is_running() && n.try_cmd::<String>(&["PING"]).is_some())
            .expect("a running node")
    }
}

impl Fixtures for RedisCluster {
    type Connection = ClusterConnection;

    /// A cluster connection: it follows redirects.
    fn conn(&self) -> ClusterConnection {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| format!("{}://{}", self.scheme(), n.addr()))
            .collect();
        let mut builder = ClusterClient::builder(seeds).retries(20);
        if let Some(certs) = &self.tls {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(certs.ca_pem()),
            });
        }
        builder
            .build()
            .and_then(|c| c.get_connection())
            .expect("connect to the test cluster")
    }
}

/// `(start, end, primary port)` of every slot range a node reports, sorted; `None`
/// if it does not answer.
fn slot_map(node: &RedisNode) -> Option<Vec<(u16, u16, u16)>> {
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
pub fn key_slot(key: &str) -> u16 {
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

#[cfg(test)]
mod tests {
    use super::key_slot;

    #[test]
    fn key_slots_follow_the_hash_tag() {
        // Known values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user:1}"), key_slot("inbox:{user:1}"));
        assert_eq!(
            key_slot("inbox:{user:1}"),
            key_slot("user:1"),
            "as DESIGN §3 says"
        );
        assert_ne!(key_slot("user:1"), key_slot("user:2"));
    }
}
