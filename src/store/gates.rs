//! Which gate a command passes. One Redis server (or a Sentinel-managed primary) has
//! one [`Gate`]. A Redis Cluster has one per primary, from the cluster's slot map
//! (`CLUSTER SLOTS`, asked again every [`REFRESH_EVERY`]): a primary that stops
//! answering — hung, paused, cut off until its failover — then holds only its own
//! `COURIER_REDIS_MAX_INFLIGHT` permits, and the commands for the other primaries go
//! on. With one gate for the whole cluster, a hung primary's commands took every
//! permit within a fraction of a second, and the instance delivered nothing to anyone
//! until that node answered again (BENCHMARKS.md, "A hung cluster primary").
//!
//! A command is placed by its key's slot ([`Slot::for_key`], as the cluster client
//! routes it); a command without a key (`PING`, `SCRIPT LOAD`, `CLUSTER SLOTS`),
//! and every command before the first slot map, passes the default gate. A stale map
//! only places a command at the wrong primary's gate until the next refresh: the
//! cluster client still sends it to the right node.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::cluster_routing::Slot;
use redis::{Arg, Cmd, Pipeline, Value};

use super::backend::RedisBackend;
use super::gate::Gate;

/// How often the slot map is asked for (and the longest a map may be stale).
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The gates of one instance's command connection.
pub struct Gates {
    limit: usize,
    /// Every command on a single node; on a cluster, commands without a key and
    /// those sent before the first slot map.
    default: Arc<Gate>,
    /// On a cluster: the primaries' gates, by slot.
    by_primary: Option<RwLock<PrimaryGates>>,
}

/// A slot map turned into gates.
#[derive(Default)]
struct PrimaryGates {
    /// The gate of each slot's primary (empty before the first map).
    by_slot: HashMap<Slot, Arc<Gate>>,
    /// Each primary's gate, by address; kept across maps while the primary is in them.
    by_address: HashMap<String, Arc<Gate>>,
    /// The map these were built from: an unchanged map is not built again.
    ranges: Vec<(u16, u16, String)>,
}

impl Gates {
    /// One gate for a single node: `limit` commands in flight; with `fail_fast`,
    /// commands are refused at once while Redis is known to be down.
    pub fn single(limit: usize, fail_fast: bool) -> Arc<Self> {
        Arc::new(Self {
            limit,
            default: Gate::new(limit, fail_fast),
            by_primary: None,
        })
    }

    /// A gate per primary of the cluster behind `conn`, each letting `limit`
    /// commands be in flight, kept current by a task that lives as long as the gates.
    /// (No fail-fast: the cluster client reports each node's outage itself.)
    pub fn cluster(limit: usize, conn: RedisBackend) -> Arc<Self> {
        let gates = Arc::new(Self {
            limit,
            default: Gate::new(limit, false),
            by_primary: Some(RwLock::new(PrimaryGates::default())),
        });
        tokio::spawn(refresh(Arc::downgrade(&gates), conn));
        gates
    }

    /// The gate `cmd` passes.
    pub fn for_command(&self, cmd: &Cmd) -> Arc<Gate> {
        self.for_key(|| key_of(cmd))
    }

    /// The gate a pipeline passes: its first keyed command's (a pipeline on a
    /// cluster stays within one slot).
    pub fn for_pipeline(&self, pipeline: &Pipeline) -> Arc<Gate> {
        self.for_key(|| pipeline.cmd_iter().find_map(key_of))
    }

    /// The gate of the primary serving `key`'s slot. The key is only looked for on a
    /// cluster: a single node has one gate, and nothing to place.
    fn for_key<'a>(&self, key: impl FnOnce() -> Option<&'a [u8]>) -> Arc<Gate> {
        let Some(by_primary) = &self.by_primary else {
            return self.default.clone();
        };
        let Some(key) = key() else {
            return self.default.clone();
        };
        let by_primary = by_primary.read().unwrap_or_else(PoisonError::into_inner);
        by_primary
            .by_slot
            .get(&Slot::for_key(key))
            .unwrap_or(&self.default)
            .clone()
    }

    /// Takes a new slot map: `(first slot, last slot, primary address)` ranges.
    fn update(&self, ranges: &[(u16, u16, String)]) {
        let Some(by_primary) = &self.by_primary else {
            return;
        };
        let mut by_primary = by_primary.write().unwrap_or_else(PoisonError::into_inner);
        if by_primary.ranges == ranges {
            return;
        }
        let mut by_address = HashMap::new();
        let mut by_slot = HashMap::with_capacity(usize::from(SLOTS));
        for (first, last, address) in ranges {
            let gate = by_address
                .entry(address.clone())
                .or_insert_with(|| match by_primary.by_address.get(address) {
                    Some(gate) => Arc::clone(gate),
                    None => Gate::new(self.limit, false),
                })
                .clone();
            for slot in (*first..=*last).filter_map(Slot::new) {
                by_slot.insert(slot, gate.clone());
            }
        }
        *by_primary = PrimaryGates {
            by_slot,
            by_address,
            ranges: ranges.to_vec(),
        };
    }
}

/// Asks for the slot map now and every [`REFRESH_EVERY`] until the gates are
/// dropped. A failed or late answer leaves the last map in place. Not through the
/// gates: a full gate must not hold back the map that would relieve it.
async fn refresh(gates: Weak<Gates>, mut conn: RedisBackend) {
    let mut every = tokio::time::interval(REFRESH_EVERY);
    loop {
        every.tick().await;
        let mut ask = redis::cmd("CLUSTER");
        ask.arg("SLOTS");
        let reply = tokio::time::timeout(REFRESH_EVERY, ask.query_async(&mut conn)).await;
        let Some(gates) = gates.upgrade() else {
            return;
        };
        match reply {
            Ok(Ok(reply)) => match parse_slots(reply) {
                Some(ranges) => gates.update(&ranges),
                None => tracing::warn!("unexpected CLUSTER SLOTS reply; the last slot map stands"),
            },
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "CLUSTER SLOTS failed; the last slot map stands")
            }
            Err(_) => tracing::debug!("CLUSTER SLOTS timed out; the last slot map stands"),
        }
    }
}

/// The ranges of a `CLUSTER SLOTS` reply: `[[first, last, [host, port, …], …], …]`.
fn parse_slots(reply: Value) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges
        .into_iter()
        .map(|range| {
            let Value::Array(range) = range else {
                return None;
            };
            let (first, last) = match (range.first()?, range.get(1)?) {
                (Value::Int(first), Value::Int(last)) => {
                    (u16::try_from(*first).ok()?, u16::try_from(*last).ok()?)
                }
                _ => return None,
            };
            let Value::Array(primary) = range.get(2)? else {
                return None;
            };
            let host = match primary.first()? {
                Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Value::Int(port) = primary.get(1)? else {
                return None;
            };
            Some((first, last, format!("{host}:{port}")))
        })
        .collect()
}

/// The key a command is routed by, if it has one.
fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        Arg::Simple(arg) => Some(arg),
        _ => None,
    });
    let name = args.next()?;
    let is = |names: &[&str]| {
        names
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
    };
    if is(&[
        "EVALSHA",
        "EVAL",
        "EVALSHA_RO",
        "EVAL_RO",
        "FCALL",
        "FCALL_RO",
    ]) {
        let _script = args.next()?;
        let keys = args.next()?;
        (keys != b"0").then(|| args.next()).flatten()
    } else if is(&["XREADGROUP", "XREAD"]) {
        args.skip_while(|arg| !arg.eq_ignore_ascii_case(b"STREAMS"))
            .nth(1)
    } else if is(&["XGROUP", "XINFO"]) {
        args.nth(1)
    } else if is(&[
        "PING", "TIME", "SCRIPT", "CLUSTER", "INFO", "CLIENT", "WAIT", "ROLE", "SENTINEL", "HELLO",
        "AUTH", "SELECT", "CONFIG",
    ]) {
        None
    } else {
        args.next()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::gate::Lane;

    fn key(cmd: &Cmd) -> Option<String> {
        key_of(cmd).map(|k| String::from_utf8_lossy(k).into_owned())
    }

    #[test]
    fn a_command_is_placed_by_the_key_the_cluster_routes_it_by() {
        let mut xadd = redis::cmd("XADD");
        xadd.arg("inbox:{user:1}").arg("*").arg("f").arg("v");
        assert_eq!(key(&xadd).as_deref(), Some("inbox:{user:1}"));
        let mut script = redis::cmd("EVALSHA");
        script
            .arg("abc")
            .arg(2)
            .arg("inbox:{user:2}")
            .arg("x")
            .arg("argv");
        assert_eq!(key(&script).as_deref(), Some("inbox:{user:2}"));
        let mut keyless_script = redis::cmd("evalsha");
        keyless_script.arg("abc").arg(0).arg("argv");
        assert_eq!(key(&keyless_script), None);
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg("g").arg("c").arg("COUNT").arg(10);
        read.arg("STREAMS").arg("inbox:{user:3}").arg(">");
        assert_eq!(key(&read).as_deref(), Some("inbox:{user:3}"));
        let mut info = redis::cmd("XINFO");
        info.arg("GROUPS").arg("inbox:{user:4}");
        assert_eq!(key(&info).as_deref(), Some("inbox:{user:4}"));
        assert_eq!(key(&redis::cmd("PING")), None);
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(key(&load), None);
    }

    /// The first key `{user:<n>}` whose slot is (or is not) below 8192.
    fn user_key(low: bool) -> Vec<u8> {
        let low_slots: HashSet<Slot> = (0..8192).filter_map(Slot::new).collect();
        (0..)
            .map(|n| format!("{{user:{n}}}").into_bytes())
            .find(|key| low_slots.contains(&Slot::for_key(key)) == low)
            .expect("keys on both halves")
    }

    #[tokio::test]
    async fn on_a_cluster_each_primary_has_its_gate_and_keeps_it_across_maps() {
        let gates = Gates {
            limit: 1,
            default: Gate::new(1, false),
            by_primary: Some(RwLock::new(PrimaryGates::default())),
        };
        let (low, high) = (user_key(true), user_key(false));
        assert!(
            Arc::ptr_eq(&gates.for_key(|| Some(&low)), &gates.default),
            "before the first map: the default gate"
        );
        gates.update(&[(0, 8191, "a:1".into()), (8192, 16383, "b:1".into())]);
        let (gate_a, gate_b) = (gates.for_key(|| Some(&low)), gates.for_key(|| Some(&high)));
        assert!(!Arc::ptr_eq(&gate_a, &gate_b), "one gate per primary");
        assert!(Arc::ptr_eq(&gates.for_key(|| None), &gates.default));

        // A's only permit is held: B's commands still pass.
        let _held = gate_a.enter(Lane::Intake).await;
        let entered = tokio::time::timeout(Duration::from_secs(5), gate_b.enter(Lane::Intake));
        assert!(
            entered.await.is_ok(),
            "a full gate of one primary holds back no other"
        );

        // B's slots move to A: A's gate (and the permit it holds) stays A's.
        gates.update(&[(0, 16383, "a:1".into())]);
        assert!(Arc::ptr_eq(&gates.for_key(|| Some(&high)), &gate_a));
    }

    #[test]
    fn the_slot_map_is_read_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.3", 7002),
            ]),
        ]);
        assert_eq!(
            parse_slots(reply),
            Some(vec![
                (0, 5460, "10.0.0.1:7000".to_string()),
                (5461, 16383, "10.0.0.2:7001".to_string()),
            ])
        );
        assert_eq!(parse_slots(Value::Nil), None);
    }
}
