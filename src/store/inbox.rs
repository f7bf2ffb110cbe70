//! A connection's side of the user's inbox stream: its consumer in the device's
//! group, the reads that deliver entries, the acks, dead letters, and leaving.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};

use super::entry::{self, StreamEntry};
use super::reply::{parse_counted_entries, parse_entries};
use super::{Store, StoreError, keys};

static JOIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("join.lua")));
static LEAVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("leave.lua")));
static READ_PENDING_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("read_pending.lua")));
static RECLAIM_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("reclaim.lua")));
static DEAD_LETTER_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("dead_letter.lua")));

/// One connection's consumer: user, device (the group) and consumer name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRef {
    /// The inbox owner.
    pub user: u64,
    /// The device id, which is the group name.
    pub device: String,
    /// `<instance>-<connection uuid>`.
    pub consumer: String,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom<'a> {
    /// The consumer's own pending entries after this id (`0` for all).
    PendingAfter(&'a str),
    /// Entries never delivered to the group (`>`).
    New,
}

/// What joining found, and the connection's first batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinReport {
    /// Entries claimed from earlier consumers of the device.
    pub claimed: u64,
    /// Pending entries found trimmed from the stream.
    pub trimmed: u64,
    /// Other consumers of the device with nothing pending, deleted.
    pub deleted_consumers: u64,
    /// The first batch: the consumer's own pending history (what it claimed) when
    /// `claimed > 0`, else new entries.
    pub first: Vec<StreamEntry>,
}

/// What a reclaim took back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reclaimed {
    /// Where the next reclaim continues (`0-0`: from the start).
    pub cursor: String,
    /// Entries now owned by this consumer, with their delivery counts.
    pub entries: Vec<StreamEntry>,
    /// Pending entries found trimmed from the stream (removed from the PEL).
    pub trimmed: u64,
}

impl Store {
    /// Creates the device's group if missing, claims for this consumer what earlier
    /// connections of the device left pending, deletes the group's other consumers
    /// (they have nothing pending left), and reads the first batch of up to `count`
    /// entries: the claimed ones first, else new ones. One round trip (`join.lua`).
    pub async fn join(
        &self,
        consumer: &ConsumerRef,
        count: usize,
    ) -> Result<JoinReport, StoreError> {
        let (claimed, trimmed, deleted_consumers, first): (u64, u64, u64, Value) = JOIN_SCRIPT
            .key(keys::inbox(consumer.user))
            .arg(&consumer.device)
            .arg(&consumer.consumer)
            .arg(count)
            .invoke_async(&mut self.conn("join"))
            .await
            .map_err(|e| self.error(e))?;
        Ok(JoinReport {
            claimed,
            trimmed,
            deleted_consumers,
            first: parse_counted_entries(first).map_err(StoreError::Internal)?,
        })
    }

    /// Reads up to `count` entries for the consumer (never blocking). Every read bumps
    /// the entries' delivery count in Redis; reads of pending entries report it.
    pub async fn read(
        &self,
        consumer: &ConsumerRef,
        from: ReadFrom<'_>,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let after = match from {
            ReadFrom::PendingAfter(after) => after,
            ReadFrom::New => return self.read_new(consumer, count).await,
        };
        let reply: Value = self
            .in_group(consumer, || async {
                READ_PENDING_SCRIPT
                    .key(keys::inbox(consumer.user))
                    .arg(&consumer.device)
                    .arg(&consumer.consumer)
                    .arg(after)
                    .arg(count)
                    .invoke_async(&mut self.conn("read_pending"))
                    .await
            })
            .await?;
        parse_counted_entries(reply).map_err(StoreError::Internal)
    }

    /// Claims, for this consumer, up to `count` entries of the group unacked for at
    /// least `min_idle` (timed-out deliveries, its own or a dead connection's),
    /// scanning the pending list from `cursor`.
    pub async fn reclaim(
        &self,
        consumer: &ConsumerRef,
        min_idle: Duration,
        cursor: &str,
        count: usize,
    ) -> Result<Reclaimed, StoreError> {
        let (cursor, entries, trimmed): (String, Value, u64) = self
            .in_group(consumer, || async {
                RECLAIM_SCRIPT
                    .key(keys::inbox(consumer.user))
                    .arg(&consumer.device)
                    .arg(&consumer.consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg(cursor)
                    .arg(count)
                    .invoke_async(&mut self.conn("reclaim"))
                    .await
            })
            .await?;
        let entries = parse_counted_entries(entries).map_err(StoreError::Internal)?;
        Ok(Reclaimed {
            cursor,
            entries,
            trimmed,
        })
    }

    async fn read_new(
        &self,
        consumer: &ConsumerRef,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let reply: Value = self
            .in_group(consumer, || async {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&consumer.device)
                    .arg(&consumer.consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(keys::inbox(consumer.user))
                    .arg(">")
                    .query_async(&mut self.conn("read_new"))
                    .await
            })
            .await?;
        parse_entries(reply).map_err(StoreError::Internal)
    }

    /// XACKs the given entries in the device's group; returns how many were pending.
    pub async fn ack(
        &self,
        consumer: &ConsumerRef,
        stream_ids: &[String],
    ) -> Result<u64, StoreError> {
        if stream_ids.is_empty() {
            return Ok(0);
        }
        redis::cmd("XACK")
            .arg(keys::inbox(consumer.user))
            .arg(&consumer.device)
            .arg(stream_ids)
            .query_async(&mut self.conn("ack"))
            .await
            .map_err(|e| self.error(e))
    }

    /// Copies entries to `dead:{user:<id>}` with their delivery count and acks them,
    /// atomically. Returns how many were copied (trimmed ones are only acked).
    pub async fn dead_letter(
        &self,
        consumer: &ConsumerRef,
        entries: &[(String, u64)],
    ) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut invocation = DEAD_LETTER_SCRIPT.prepare_invoke();
        invocation
            .key(keys::inbox(consumer.user))
            .key(keys::dead_letters(consumer.user))
            .arg(&consumer.device)
            .arg(self.retention.stream_maxlen)
            .arg(entry::DELIVERIES);
        for (id, deliveries) in entries {
            invocation.arg(id).arg(deliveries);
        }
        invocation
            .invoke_async(&mut self.conn("dead_letter"))
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs a read of the device's group; if the group is gone (`NOGROUP`: a failover
    /// lost it, or the inbox, before it reached the replica), creates it again at `0`
    /// and runs the read once more. The device then gets again what the stream
    /// retains: duplicates, which clients drop by message id, never a gap. (A consumer
    /// that is gone needs nothing: reads and claims create it.)
    async fn in_group<T, F, Fut>(&self, consumer: &ConsumerRef, read: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match read().await {
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(
                    user = consumer.user,
                    device = %consumer.device,
                    "the device's consumer group is missing (lost in a Redis failover?); \
                     creating it again at 0: the device gets what its inbox retains again"
                );
                let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(keys::inbox(consumer.user))
                    .arg(&consumer.device)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut self.conn("join"))
                    .await;
                match created {
                    Err(e) if e.code() != Some("BUSYGROUP") => return Err(self.error(e)),
                    _ => {}
                }
                read().await.map_err(|e| self.error(e))
            }
            result => result.map_err(|e| self.error(e)),
        }
    }

    /// Deletes the consumer if nothing is pending on it; returns whether it did.
    pub async fn leave(&self, consumer: &ConsumerRef) -> Result<bool, StoreError> {
        let deleted: i64 = LEAVE_SCRIPT
            .key(keys::inbox(consumer.user))
            .arg(&consumer.device)
            .arg(&consumer.consumer)
            .invoke_async(&mut self.conn("leave"))
            .await
            .map_err(|e| self.error(e))?;
        Ok(deleted == 1)
    }
}
