//! The send strategy on a Redis Cluster, where one batch's keys live on many slots
//! and no script may span them. The batch is written in steps that each touch one
//! slot:
//!
//! 1. `send_reserve.lua` in the sender's slot, asked first without ids (in the same
//!    round trip as the chat membership read, `Store::send`), checks the dedup record
//!    `dedup:{user:<sender>}:<time_key>` (a batch already written ends here, having
//!    allocated nothing) and the id reservation
//!    `dedup:{user:<sender>}:<time_key>:ids` (an unfinished earlier attempt's ids are
//!    reused, so a retry writes the same ids); a fresh batch then gets its ids from
//!    `message:last_id` (`ids.lua`: an `INCRBY` that never falls below the clock) and
//!    reserves them with a second call;
//! 2. `send_slot.lua` once per slot of the recipients, all issued together (the
//!    client pipelines them per node): each recipient's stream entries, legacy items,
//!    marker `dedup:{user:<recipient>}:from:<sender>:<time_key>` and wake-up
//!    (`SPUBLISH`), atomically; a recipient whose marker exists is skipped;
//! 3. once every slot succeeded, `send_commit.lua` writes the dedup record and drops
//!    the reservation, atomically in the sender's slot.
//!
//! Each recipient is thus written in one atomic step, and the dedup record exists
//! only when all were. A failure in step 2 (a node down, a failover) answers
//! `unavailable` with some recipients possibly written; retrying the same
//! `time_key` completes the others, with the same ids, and writes nothing twice.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::cluster_routing::Slot;
use redis::{Script, Value};

use super::reply::value_text;
use super::send::{
    FanOut, SendError, SendOutcome, SendRequest, dedup_record, duplicate, push_messages,
    push_recipient,
};
use super::{Store, StoreError, keys};

/// `ids.lua`'s allocation on its own, for the counter's slot.
static IDS_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("ids.lua"),
        "return allocate_ids(KEYS[1], tonumber(ARGV[1]))\n"
    ))
});
static RESERVE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("send_reserve.lua")));
/// `send_writes.lua`, the functions it shares with `send.lua`, then its own text.
static SLOT_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("send_writes.lua"),
        include_str!("send_slot.lua")
    ))
});
static COMMIT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("send_commit.lua")));

/// What step 1 found for a batch.
pub(super) enum Reservation {
    /// Already written: the dedup record (`send::dedup_record`).
    Written(Value),
    /// The ids to write (reserved now or by an unfinished earlier attempt).
    Ids(u64),
    /// Not seen and nothing reserved: allocate ids, then reserve them.
    Fresh,
}

impl Store {
    /// Writes a validated batch one slot at a time (see the module docs), given what
    /// step 1 found when asked without ids.
    pub(super) async fn send_sharded(
        &self,
        request: &SendRequest,
        fan_out: &FanOut,
        found: Reservation,
    ) -> Result<SendOutcome, SendError> {
        let count = request.messages.len() as u64;
        let first = match found {
            Reservation::Written(first) => {
                return Ok(duplicate(first, request.messages.len())?);
            }
            Reservation::Ids(first) => first,
            Reservation::Fresh => {
                let allocated: u64 = IDS_SCRIPT
                    .key(keys::LAST_MESSAGE_ID)
                    .arg(count)
                    .invoke_async(&mut self.conn("send"))
                    .await
                    .map_err(|e| self.error(e))?;
                match self.reserve(request, Some(allocated)).await? {
                    Reservation::Written(first) => {
                        return Ok(duplicate(first, request.messages.len())?);
                    }
                    Reservation::Ids(first) => first,
                    Reservation::Fresh => {
                        return Err(StoreError::Internal("id reservation refused".into()).into());
                    }
                }
            }
        };

        let mut slots: HashMap<Slot, Vec<usize>> = HashMap::new();
        for (index, &user) in fan_out.recipients.iter().enumerate() {
            slots
                .entry(Slot::for_key(keys::inbox(user)))
                .or_default()
                .push(index);
        }
        let writes = slots
            .values()
            .map(|members| self.write_slot(request, fan_out, members, first));
        // Every slot's write runs to its end, so a failure leaves as little as possible
        // for the retry; then the first error, if any, is the answer.
        for result in futures_util::future::join_all(writes).await {
            result?;
        }

        COMMIT_SCRIPT
            .key(keys::dedup(request.sender, &request.time_key))
            .key(keys::dedup_ids(request.sender, &request.time_key))
            .arg(dedup_record(first))
            .arg(self.retention.dedup_window_s())
            .invoke_async::<()>(&mut self.conn("send"))
            .await
            .map_err(|e| self.error(e))?;
        Ok(SendOutcome::Written { first_id: first })
    }

    /// Step 1: the dedup check, and with `allocated` (the first of the ids just
    /// allocated) the reservation of the batch's ids.
    pub(super) async fn reserve(
        &self,
        request: &SendRequest,
        allocated: Option<u64>,
    ) -> Result<Reservation, StoreError> {
        let (state, first): (i64, Value) = RESERVE_SCRIPT
            .key(keys::dedup(request.sender, &request.time_key))
            .key(keys::dedup_ids(request.sender, &request.time_key))
            .arg(allocated.map(|id| id.to_string()).unwrap_or_default())
            .arg(request.messages.len())
            .arg(self.retention.dedup_window_s())
            .invoke_async(&mut self.conn("send"))
            .await
            .map_err(|e| self.error(e))?;
        let id = || {
            value_text(first.clone())
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| StoreError::Internal("unreadable id reservation".into()))
        };
        match state {
            0 => Ok(Reservation::Written(first)),
            1 => Ok(Reservation::Ids(id()?)),
            _ => Ok(Reservation::Fresh),
        }
    }

    /// Step 2 for the recipients `members` (indexes into `fan_out.recipients`), which
    /// share one slot.
    async fn write_slot(
        &self,
        request: &SendRequest,
        fan_out: &FanOut,
        members: &[usize],
        first: u64,
    ) -> Result<(), StoreError> {
        let mut invocation = SLOT_SCRIPT.prepare_invoke();
        for &member in members {
            let user = fan_out.recipients[member];
            invocation
                .key(keys::inbox(user))
                .key(keys::legacy_list(user))
                .key(keys::delivered_marker(
                    user,
                    request.sender,
                    &request.time_key,
                ));
        }
        // The batch's messages to any of these recipients, in batch order: the script
        // numbers them 1.. in this order.
        let mut local: Vec<usize> = members
            .iter()
            .flat_map(|&member| fan_out.messages_of[member].iter().copied())
            .collect();
        local.sort_unstable();
        local.dedup();
        invocation
            .arg(self.retention.dedup_window_s())
            .arg(dedup_record(first))
            .arg(first)
            .arg(self.conn.publish_command())
            .arg(members.len())
            .arg(local.len())
            .arg(&self.retention.script_limits()[..]);
        push_messages(&mut invocation, request, fan_out, &local);
        for &member in members {
            let numbers = fan_out.messages_of[member].iter().map(|index| {
                // Every message of a member is in `local`.
                local
                    .binary_search(index)
                    .map_or(0, |position| position + 1)
            });
            push_recipient(
                &mut invocation,
                fan_out.recipients[member],
                numbers,
                local.len(),
            );
        }
        let (_written, lost): (u64, Value) = self.write_script(invocation).await?;
        self.record_losses(lost, |r| {
            members
                .get(r.checked_sub(1)?)
                .map(|&member| fan_out.recipients[member])
        });
        Ok(())
    }
}
