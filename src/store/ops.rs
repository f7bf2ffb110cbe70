//! What operators look at and repair, over the layout of DESIGN §3: a user's pending
//! summary (per device: the group's pending count, its oldest pending and oldest
//! unacked entries, its consumers, whether it is idle) and the replay of the user's
//! dead letters into the inbox.
//!
//! Each figure is the answer of one plain Redis command, so the HTTP ops endpoints and
//! `redis-cli` (README, "Operating courier") show the same thing. The summary is read
//! in three pipelined round trips, not atomically: a snapshot of a moving system.

use std::sync::LazyLock;

use redis::streams::{
    StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingCountReply, StreamRangeReply,
};
use redis::{Script, Value};
use serde::Serialize;

use super::{Store, StoreError, entry, keys};

static REPLAY_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("replay.lua")));

/// Dead letters moved per script call, so Redis is never held for long.
const REPLAY_CHUNK: u64 = 500;

/// A user's delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingSummary {
    /// The inbox owner.
    pub user_id: u64,
    /// `XLEN inbox:{user:<id>}`.
    pub inbox_length: u64,
    /// `XLEN dead:{user:<id>}`.
    pub dead_letters: u64,
    /// One per consumer group (`XINFO GROUPS`), that is per device.
    pub devices: Vec<DevicePending>,
}

/// One device's group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePending {
    /// The device id, which is the group name.
    pub device: String,
    /// Entries delivered to the device and not acked (`XPENDING <inbox> <device>`).
    pub pending: u64,
    /// The last entry the group handed out (`last-delivered-id` of `XINFO GROUPS`).
    pub last_delivered_id: String,
    /// The pending entry with the lowest id (`XPENDING <inbox> <device> - + 1`), if any.
    pub oldest_pending: Option<PendingEntry>,
    /// The oldest entry the device has not acked: its oldest pending one, else the
    /// first after `last_delivered_id` (`XRANGE <inbox> (<last-delivered-id> + COUNT 1`);
    /// none when it has acked everything. Trimming never passes it unless the device
    /// is idle (or the length cap is reached).
    pub oldest_unacked_id: Option<String>,
    /// Milliseconds since the oldest unacked entry was added (the age of its id, by
    /// Redis's clock).
    pub oldest_unacked_age_ms: Option<u64>,
    /// Idle: it has something unacked older than `COURIER_DEVICE_IDLE_S` and none of
    /// its consumers read within that time. An idle device no longer holds back the
    /// trimming of the inbox; what it had not acked and a trim removes is counted
    /// (`courier_unacked_trimmed_total{reason="idle_device"}`).
    pub idle: bool,
    /// The group's consumers (`XINFO CONSUMERS <inbox> <device>`): one per connection,
    /// plus those of ended connections that left entries pending.
    pub consumers: Vec<ConsumerPending>,
}

/// A pending entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingEntry {
    /// Stream entry id.
    pub id: String,
    /// The consumer it is pending on.
    pub consumer: String,
    /// Milliseconds since it was last delivered.
    pub idle_ms: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// One consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerPending {
    /// `<instance>-<connection uuid>`.
    pub name: String,
    /// Entries pending on it.
    pub pending: u64,
    /// Milliseconds since its last interaction with Redis.
    pub idle_ms: u64,
}

impl Store {
    /// The pending summary of `user`; a user without an inbox has no devices.
    pub async fn pending_summary(&self, user: u64) -> Result<PendingSummary, StoreError> {
        let inbox = keys::inbox(user);
        let (exists, inbox_length, dead_letters, (now_s, now_us)): (bool, u64, u64, (u64, u64)) =
            redis::pipe()
                .exists(&inbox)
                .xlen(&inbox)
                .xlen(keys::dead_letters(user))
                .cmd("TIME")
                .query_async(&mut self.conn("pending_summary"))
                .await
                .map_err(|e| self.error(e))?;
        let now_ms = now_s * 1000 + now_us / 1000;
        let groups = if exists {
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&inbox)
                .query_async::<StreamInfoGroupsReply>(&mut self.conn("pending_summary"))
                .await
                .map_err(|e| self.error(e))?
                .groups
        } else {
            Vec::new()
        };
        let mut devices = Vec::with_capacity(groups.len());
        if !groups.is_empty() {
            let mut pipe = redis::pipe();
            for group in &groups {
                pipe.xpending_count(&inbox, &group.name, "-", "+", 1)
                    .xinfo_consumers(&inbox, &group.name)
                    .xrange_count(&inbox, format!("({}", group.last_delivered_id), "+", 1);
            }
            let replies: Vec<Value> = pipe
                .query_async(&mut self.conn("pending_summary"))
                .await
                .map_err(|e| self.error(e))?;
            let mut replies = replies.into_iter();
            for group in groups {
                let (Some(oldest), Some(consumers), Some(undelivered)) =
                    (replies.next(), replies.next(), replies.next())
                else {
                    return Err(StoreError::Internal("short pipeline reply".into()));
                };
                let oldest: StreamPendingCountReply = parse(oldest)?;
                let consumers: StreamInfoConsumersReply = parse(consumers)?;
                let undelivered: StreamRangeReply = parse(undelivered)?;
                let oldest_pending = oldest.ids.into_iter().next().map(|p| PendingEntry {
                    id: p.id,
                    consumer: p.consumer,
                    idle_ms: p.last_delivered_ms as u64,
                    deliveries: p.times_delivered as u64,
                });
                let oldest_unacked_id = oldest_pending
                    .as_ref()
                    .map(|p| p.id.clone())
                    .or_else(|| undelivered.ids.into_iter().next().map(|e| e.id));
                let oldest_unacked_age_ms = oldest_unacked_id
                    .as_deref()
                    .and_then(id_millis)
                    .map(|added| now_ms.saturating_sub(added));
                let consumers: Vec<ConsumerPending> = consumers
                    .consumers
                    .into_iter()
                    .map(|c| ConsumerPending {
                        name: c.name,
                        pending: c.pending as u64,
                        idle_ms: c.idle as u64,
                    })
                    .collect();
                let idle_ms =
                    u64::try_from(self.retention.device_idle.as_millis()).unwrap_or(u64::MAX);
                let idle = oldest_unacked_age_ms.is_some_and(|age| age > idle_ms)
                    && consumers.iter().all(|c| c.idle_ms >= idle_ms);
                devices.push(DevicePending {
                    device: group.name,
                    pending: group.pending as u64,
                    last_delivered_id: group.last_delivered_id,
                    oldest_pending,
                    oldest_unacked_id,
                    oldest_unacked_age_ms,
                    idle,
                    consumers,
                });
            }
        }
        Ok(PendingSummary {
            user_id: user,
            inbox_length,
            dead_letters,
            devices,
        })
    }

    /// Moves every dead letter of `user` back into the inbox (see `replay.lua`), in
    /// chunks of `REPLAY_CHUNK`, each atomic, and wakes the user's connections.
    /// Returns how many were moved.
    pub async fn replay_dead_letters(&self, user: u64) -> Result<u64, StoreError> {
        let mut from = String::from("-");
        let mut moved = 0;
        loop {
            let (chunk, next): (u64, String) = REPLAY_SCRIPT
                .key(keys::dead_letters(user))
                .key(keys::inbox(user))
                .arg(&from)
                .arg(REPLAY_CHUNK)
                .arg(self.retention.stream_maxlen)
                .arg(keys::notify_channel(user))
                .arg(self.conn.publish_command())
                .arg(entry::DELIVERIES)
                .invoke_async(&mut self.conn("replay"))
                .await
                .map_err(|e| self.error(e))?;
            moved += chunk;
            if next.is_empty() {
                return Ok(moved);
            }
            from = next;
        }
    }
}

/// The milliseconds part of a stream id (`<ms>-<seq>`): when the entry was added.
fn id_millis(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

fn parse<T: redis::FromRedisValue>(value: Value) -> Result<T, StoreError> {
    redis::from_redis_value(value).map_err(|e| StoreError::Internal(e.to_string()))
}
