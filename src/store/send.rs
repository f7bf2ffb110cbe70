//! The send path's Redis side: membership check, then the writes. On a single node,
//! one atomic script allocates the message ids and, for every recipient, appends the
//! stream entry and the legacy list item and publishes the wake-up — or, for a batch
//! already written within the dedup window, writes nothing and says so. On a Redis
//! Cluster the same writes are split into one atomic step per recipient slot
//! (`send_sharded.rs`); the API and the outcome are the same.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use redis::{Script, Value};
use serde::Serialize;

use super::reply::value_text;
use super::{Store, StoreError, keys};

static SEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("send.lua")));

/// One message of a batch, validated by the protocol layer.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Target chat.
    pub chat_id: u64,
    /// Text.
    pub content_text: String,
    /// W3C trace context of the send, stored in the entry when present.
    pub traceparent: Option<String>,
}

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

/// Fan-out and retention settings of the send path.
#[derive(Debug, Clone, Copy)]
pub struct SendPolicy {
    /// Also write to the sender's inbox.
    pub deliver_to_sender: bool,
    /// `XADD MAXLEN ~` bound.
    pub stream_maxlen: u64,
    /// Dedup record lifetime, seconds.
    pub dedup_window_s: u64,
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

#[derive(Serialize)]
struct LegacyMessage<'a> {
    sender_id: u64,
    chat_id: u64,
    content_text: &'a str,
}

/// Who gets what: the batch's recipients and, per message, which of them.
pub(super) struct FanOut {
    /// Distinct recipients, in first-seen order.
    pub recipients: Vec<u64>,
    /// Per message, the indexes (into `recipients`) of its recipients.
    pub targets: Vec<Vec<usize>>,
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
                self.reserve(request, policy, None),
            )
            .await;
            let fan_out = fan_out?;
            self.send_sharded(request, policy, &fan_out, found?).await
        } else {
            let fan_out = self.fan_out(request, policy).await?;
            self.send_atomic(request, policy, &fan_out).await
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
        let mut recipient_index: HashMap<u64, usize> = HashMap::new();
        let mut targets: Vec<Vec<usize>> = Vec::with_capacity(request.messages.len());
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
            let mut message_targets = Vec::new();
            for &member in chat_members {
                if member == request.sender && !policy.deliver_to_sender {
                    continue;
                }
                let next = recipients.len();
                let number = *recipient_index.entry(member).or_insert_with(|| {
                    recipients.push(member);
                    next
                });
                if !message_targets.contains(&number) {
                    message_targets.push(number);
                }
            }
            targets.push(message_targets);
            legacy.push(
                serde_json::to_string(&LegacyMessage {
                    sender_id: request.sender,
                    chat_id: message.chat_id,
                    content_text: &message.content_text,
                })
                .map_err(|e| StoreError::Internal(e.to_string()))?,
            );
        }
        Ok(FanOut {
            recipients,
            targets,
            legacy,
        })
    }

    /// The single-node strategy: one script writes the whole batch (`send.lua`).
    async fn send_atomic(
        &self,
        request: &SendRequest,
        policy: SendPolicy,
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
            .arg(policy.dedup_window_s)
            .arg(policy.stream_maxlen)
            .arg(request.messages.len())
            .arg(request.sender)
            .arg(fan_out.recipients.len());
        for &user in &fan_out.recipients {
            invocation.arg(user);
        }
        for ((message, targets), legacy) in request
            .messages
            .iter()
            .zip(&fan_out.targets)
            .zip(&fan_out.legacy)
        {
            invocation
                .arg(message.chat_id)
                .arg(&message.content_text)
                .arg(legacy)
                .arg(message.traceparent.as_deref().unwrap_or(""))
                .arg(targets.len());
            for &number in targets {
                invocation.arg(number + 1);
            }
        }
        let reply: (i64, Value) = invocation
            .invoke_async(&mut self.conn("send"))
            .await
            .map_err(|e| self.error(e))?;
        match reply {
            (1, Value::Int(first_id)) => Ok(SendOutcome::Written {
                first_id: first_id.unsigned_abs(),
            }),
            (0, seen) => Ok(duplicate(seen)?),
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

/// The outcome for a dedup record found (`<first_id>:<count>`).
pub(super) fn duplicate(seen: Value) -> Result<SendOutcome, StoreError> {
    match value_text(seen).as_deref().and_then(parse_seen) {
        Some((first_id, count)) => Ok(SendOutcome::Duplicate { first_id, count }),
        None => Err(StoreError::Internal("unreadable dedup record".into())),
    }
}

/// A dedup record's value, `<first_id>:<count>` (written by `send.lua`, or by the
/// cluster strategy's last step).
fn parse_seen(seen: &str) -> Option<(u64, u64)> {
    let (first_id, count) = seen.split_once(':')?;
    Some((first_id.parse().ok()?, count.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_records_are_read_back() {
        assert_eq!(parse_seen("42:3"), Some((42, 3)));
        assert_eq!(parse_seen("42"), None);
        assert_eq!(parse_seen("x:1"), None);
    }
}
