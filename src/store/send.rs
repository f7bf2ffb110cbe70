//! The send path's Redis side: membership check, then the writes. On a single node,
//! one atomic script allocates the message ids and, for every recipient, appends the
//! stream entries and the legacy list items and publishes the wake-up — or, for a
//! batch already written within the dedup window, writes nothing and says so. On a
//! Redis Cluster the same writes are split into one atomic step per recipient slot
//! (`send_sharded.rs`); the API and the outcome are the same.
//!
//! Both strategies run the same Lua for a recipient's writes (`send_writes.lua`,
//! prepended to each script) and pass it the same arguments (`push_messages`,
//! `push_recipient`): the entries are encoded by [`super::entry`], the
//! wake-up channels named by [`keys`].

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use redis::{Script, ScriptInvocation, Value};

use super::entry::{self, EntryFields, NewMessage};
use super::reply::value_text;
use super::{Store, StoreError, keys};

/// Lua scripts cannot include files: the send scripts are `send_writes.lua`, the
/// functions they share, followed by their own text (here with `ids.lua`'s id
/// allocation in front).
static SEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("send_writes.lua"),
        include_str!("ids.lua"),
        include_str!("send.lua")
    ))
});

/// A whole batch to write for one sender.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The authenticated sender.
    pub sender: u64,
    /// The batch's client `time_key`, as text (the dedup key's suffix).
    pub time_key: String,
    /// The messages, in order.
    pub messages: Vec<NewMessage>,
}

/// Who receives a batch besides the members of its chats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendPolicy {
    /// Also write to the sender's inbox (`COURIER_DELIVER_TO_SENDER`).
    pub deliver_to_sender: bool,
}

/// What the send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Written now; messages got ids `first_id ..`.
    Written {
        /// Id of the batch's first message.
        first_id: u64,
    },
    /// The same `time_key` was already written; nothing was written again.
    Duplicate {
        /// Id of the first message of the earlier write.
        first_id: u64,
        /// Number of messages of the earlier write.
        count: u64,
    },
}

/// Why a batch was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The sender is not in the chat's member list.
    #[error("user {user} is not a member of chat {chat_id}")]
    NotAMember {
        /// The sender.
        user: u64,
        /// The chat.
        chat_id: u64,
        /// Index of the first offending message.
        index: usize,
    },
    /// Redis failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who gets what: the batch's recipients and, per recipient, which messages.
pub(super) struct FanOut {
    /// Distinct recipients, in first-seen order.
    pub recipients: Vec<u64>,
    /// Per recipient, the indexes (into the batch) of its messages, in batch order.
    pub messages_of: Vec<Vec<usize>>,
    /// Per message, the legacy list item (`user:<id>` JSON).
    pub legacy: Vec<String>,
}

impl Store {
    /// Writes a validated batch. On a single node it is all of it or, on any error,
    /// none of it (one script). On a Redis Cluster each recipient's slot is written
    /// atomically, and a failure may leave some recipients written: the retry with the
    /// same `time_key` completes the others with the same ids and writes nothing twice
    /// (`send_sharded.rs`).
    pub async fn send(
        &self,
        request: &SendRequest,
        policy: SendPolicy,
    ) -> Result<SendOutcome, SendError> {
        if self.conn.is_cluster() {
            // The dedup check reads only the sender's keys: it runs beside the
            // membership read, and a refusal (not a member) still comes first.
            let (fan_out, found) = futures_util::future::join(
                self.fan_out(request, policy),
                self.reserve(request, None),
            )
            .await;
            let fan_out = fan_out?;
            self.send_sharded(request, &fan_out, found?).await
        } else {
            let fan_out = self.fan_out(request, policy).await?;
            self.send_atomic(request, &fan_out).await
        }
    }

    /// Checks the sender's membership of every chat and works out the recipients.
    async fn fan_out(
        &self,
        request: &SendRequest,
        policy: SendPolicy,
    ) -> Result<FanOut, SendError> {
        let members = self
            .chat_members(request.messages.iter().map(|m| m.chat_id))
            .await?;
        let mut recipients: Vec<u64> = Vec::new();
        let mut messages_of: Vec<Vec<usize>> = Vec::new();
        let mut recipient_index: HashMap<u64, usize> = HashMap::new();
        let mut legacy = Vec::with_capacity(request.messages.len());
        for (index, message) in request.messages.iter().enumerate() {
            let chat_members = members
                .get(&message.chat_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !chat_members.contains(&request.sender) {
                return Err(SendError::NotAMember {
                    user: request.sender,
                    chat_id: message.chat_id,
                    index,
                });
            }
            for &member in chat_members {
                if member == request.sender && !policy.deliver_to_sender {
                    continue;
                }
                let number = *recipient_index.entry(member).or_insert_with(|| {
                    recipients.push(member);
                    messages_of.push(Vec::new());
                    recipients.len() - 1
                });
                // A member listed twice in a chat gets the message once.
                if messages_of[number].last() != Some(&index) {
                    messages_of[number].push(index);
                }
            }
            legacy.push(
                entry::legacy_item(request.sender, message)
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
            );
        }
        Ok(FanOut {
            recipients,
            messages_of,
            legacy,
        })
    }

    /// The single-node strategy: one script writes the whole batch (`send.lua`).
    async fn send_atomic(
        &self,
        request: &SendRequest,
        fan_out: &FanOut,
    ) -> Result<SendOutcome, SendError> {
        let mut invocation = SEND_SCRIPT.prepare_invoke();
        invocation
            .key(keys::dedup(request.sender, &request.time_key))
            .key(keys::LAST_MESSAGE_ID);
        for &user in &fan_out.recipients {
            invocation
                .key(keys::inbox(user))
                .key(keys::legacy_list(user));
        }
        invocation
            .arg(self.retention.dedup_window_s())
            .arg(request.messages.len())
            .arg(fan_out.recipients.len())
            .arg(self.conn.publish_command())
            .arg(&self.retention.script_limits()[..]);
        let all: Vec<usize> = (0..request.messages.len()).collect();
        push_messages(&mut invocation, request, fan_out, &all);
        for (number, &user) in fan_out.recipients.iter().enumerate() {
            let local = fan_out.messages_of[number].iter().map(|&index| index + 1);
            push_recipient(&mut invocation, user, local, all.len());
        }
        let reply: Vec<Value> = self.write_script(invocation).await?;
        let mut reply = reply.into_iter();
        match (reply.next(), reply.next(), reply.next()) {
            (Some(Value::Int(1)), Some(Value::Int(first_id)), lost) => {
                if let Some(lost) = lost {
                    self.record_losses(lost, |r| {
                        fan_out.recipients.get(r.checked_sub(1)?).copied()
                    });
                }
                Ok(SendOutcome::Written {
                    first_id: first_id.unsigned_abs(),
                })
            }
            (Some(Value::Int(0)), Some(seen), None) => Ok(duplicate(seen, request.messages.len())?),
            other => {
                Err(StoreError::Internal(format!("unexpected send script reply {other:?}")).into())
            }
        }
    }

    /// Members of each distinct chat. Non-numeric list items are ignored. The reads
    /// are issued together (pipelined by the client; on a cluster, per node, since
    /// chats live on different slots).
    async fn chat_members(
        &self,
        chats: impl Iterator<Item = u64>,
    ) -> Result<BTreeMap<u64, Vec<u64>>, StoreError> {
        let chats: Vec<u64> = chats
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let reads = chats.iter().map(|&chat| async move {
            redis::cmd("LRANGE")
                .arg(keys::chat(chat))
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut self.conn("chat_members"))
                .await
        });
        let lists = futures_util::future::try_join_all(reads)
            .await
            .map_err(|e| self.error(e))?;
        Ok(chats
            .into_iter()
            .zip(lists)
            .map(|(chat, list)| {
                (
                    chat,
                    list.iter().filter_map(|m| m.trim().parse().ok()).collect(),
                )
            })
            .collect())
    }
}

/// The messages part of a send script's arguments (`send_writes.lua`): for each
/// of `indexes` (into the batch, ascending), its index, its entry's fields and its
/// legacy item. The script numbers them 1.. in this order.
pub(super) fn push_messages(
    invocation: &mut ScriptInvocation<'_>,
    request: &SendRequest,
    fan_out: &FanOut,
    indexes: &[usize],
) {
    for &index in indexes {
        invocation
            .arg(index)
            .arg(EntryFields::new(request.sender, &request.messages[index]))
            .arg(&fan_out.legacy[index]);
    }
}

/// One recipient's part of a send script's arguments (`send_writes.lua`): its
/// wake-up channel, then the script's numbers of its messages, in order — or none
/// (a count of 0) when it gets all `pushed` messages.
pub(super) fn push_recipient(
    invocation: &mut ScriptInvocation<'_>,
    user: u64,
    numbers: impl ExactSizeIterator<Item = usize>,
    pushed: usize,
) {
    invocation.arg(keys::notify_channel(user));
    if numbers.len() == pushed {
        invocation.arg(0);
        return;
    }
    invocation.arg(numbers.len());
    for number in numbers {
        invocation.arg(number);
    }
}

/// The outcome for a dedup record found (see [`dedup_record`]) for a resend of
/// `count` messages.
pub(super) fn duplicate(seen: Value, count: usize) -> Result<SendOutcome, StoreError> {
    match value_text(seen).as_deref().and_then(parse_seen) {
        Some((first_id, recorded)) => Ok(SendOutcome::Duplicate {
            first_id,
            count: recorded.unwrap_or(count as u64),
        }),
        None => Err(StoreError::Internal("unreadable dedup record".into())),
    }
}

/// A dedup record's value: the batch's first id, an integer, which Redis keeps inside
/// the key's object with no string to allocate (BENCHMARKS.md, "Redis memory"). The
/// count is not kept: a resend of the same `time_key` is the same batch, so its count
/// is the resend's. (The first id alone takes 51 bits: with a count, the value would
/// no longer fit Redis's 64-bit integers and would be stored as a string.)
pub(super) fn dedup_record(first_id: u64) -> String {
    first_id.to_string()
}

/// Reads a dedup record: the first id of [`dedup_record`], or the
/// `<first_id>:<count>` that earlier versions wrote (still found within one dedup
/// window of an upgrade), with its count.
fn parse_seen(seen: &str) -> Option<(u64, Option<u64>)> {
    match seen.split_once(':') {
        Some((first_id, count)) => Some((first_id.parse().ok()?, Some(count.parse().ok()?))),
        None => Some((seen.parse().ok()?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_records_are_read_back() {
        assert_eq!(
            parse_seen(&dedup_record(1_796_009_949_988_123)),
            Some((1_796_009_949_988_123, None))
        );
        assert_eq!(
            parse_seen("42:3"),
            Some((42, Some(3))),
            "the earlier format"
        );
        assert_eq!(parse_seen("x"), None);
        assert_eq!(parse_seen("x:1"), None);
        assert!(matches!(
            duplicate(Value::Int(42), 2),
            Ok(SendOutcome::Duplicate {
                first_id: 42,
                count: 2
            })
        ));
    }
}
