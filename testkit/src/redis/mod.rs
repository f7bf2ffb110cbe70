//! Private Redis for tests and benchmarks: [`RedisNode`] (one `redis-server`, any
//! role), [`RedisCluster`] (three primaries, optionally with replicas), [`RedisServer`]
//! (one or the other, as `COURIER_TEST_REDIS` says), and the fixtures and assertions
//! the tests share (chats, pending counts, consumers).

mod cluster;
mod node;
mod server;
mod tls;

pub use cluster::{ClusterOptions, RedisCluster, key_slot};
pub use node::{NodeOptions, RedisNode, append_to_aof_in};
pub use server::{MODE_VARIABLE, RedisServer, TestConnection, cluster_mode};
pub use tls::Certificates;

use ::redis::{ConnectionLike, FromRedisValue};

use crate::wait_for;

/// Fixtures and assertions on a test's Redis, through a synchronous connection that
/// routes each key to its node: the same calls on a [`RedisNode`], a [`RedisCluster`]
/// and a [`RedisServer`]. Every call fails the test when Redis does.
pub trait Fixtures {
    /// The connection type: one node's, or the cluster's.
    type Connection: ConnectionLike;

    /// A fresh connection.
    fn conn(&self) -> Self::Connection;

    /// Runs one command and returns its reply.
    fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> T {
        command(args)
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Creates `chat:<id>` with these members, replacing any earlier list.
    fn create_chat(&self, chat: u64, members: &[u64]) {
        create_chat_in(&mut self.conn(), chat, members);
    }

    /// `XLEN key` (0 for a missing key).
    fn xlen(&self, key: &str) -> u64 {
        self.cmd(&["XLEN", key])
    }

    /// Number of entries pending in a user's device group.
    fn pending(&self, user: u64, device: &str) -> u64 {
        pending_in(&mut self.conn(), user, device)
    }
}

/// A command from its words: `command(&["XLEN", "inbox:{user:2}"])`.
pub fn command(args: &[&str]) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd
}

/// Creates `chat:<id>` with these members, replacing any earlier list.
pub fn create_chat_in(conn: &mut impl ::redis::ConnectionLike, chat: u64, members: &[u64]) {
    let key = format!("chat:{chat}");
    let _: () = ::redis::cmd("DEL").arg(&key).query(conn).expect("DEL chat");
    let _: () = ::redis::cmd("RPUSH")
        .arg(&key)
        .arg(members)
        .query(conn)
        .expect("RPUSH chat");
}

/// Number of entries pending in a user's device group (`XPENDING` summary).
pub fn pending_in(conn: &mut impl ::redis::ConnectionLike, user: u64, device: &str) -> u64 {
    let reply: ::redis::Value = ::redis::cmd("XPENDING")
        .arg(format!("inbox:{{user:{user}}}"))
        .arg(device)
        .query(conn)
        .expect("XPENDING");
    match reply {
        ::redis::Value::Array(items) => match items.first() {
            Some(::redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// Waits until `expected` entries are pending in a user's device group.
pub async fn wait_for_pending(redis: &RedisServer, user: u64, device: &str, expected: u64) {
    let what = format!("{expected} pending for user {user} device {device}");
    wait_for(&what, async || redis.pending(user, device) == expected).await;
}

/// Number of consumers in a user's device group.
pub fn consumers(redis: &RedisServer, user: u64, group: &str) -> usize {
    let reply: ::redis::Value = ::redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("inbox:{{user:{user}}}"))
        .arg(group)
        .query(&mut redis.conn())
        .expect("XINFO CONSUMERS");
    match reply {
        ::redis::Value::Array(items) => items.len(),
        _ => 0,
    }
}

/// The `process_id` field of `INFO server`.
fn process_id_in(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}
