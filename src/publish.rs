//! The one send path of WebSocket clients and the HTTP API: the [`Publisher`]
//! validates a batch whole ([`protocol::validate_batch`]), has the store write it
//! atomically, and traces and counts it the same way whoever sent it.
//!
//! Tracing: the batch's `client_batch` span starts a trace; each message gets a
//! `message` span whose `traceparent` goes into the stream entries, so every
//! recipient's deliveries and acks join the message's trace; `redis.send` times the
//! write.

use std::sync::Arc;

use tracing::{Instrument, Span, debug, field};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{self, BatchLimits, ErrorCode, ProtocolError, SendBatch, TimeKey};
use crate::store::send::{SendError, SendOutcome, SendPolicy};
use crate::store::{NewMessage, SendRequest, Store, StoreError};
use crate::telemetry;

/// The send path's settings: what a batch may hold, and who receives it.
#[derive(Debug, Clone, Copy)]
pub struct PublishSettings {
    /// `COURIER_BATCH_MAX` messages per batch, `COURIER_MAX_TEXT_BYTES` per text.
    pub limits: BatchLimits,
    /// `COURIER_DELIVER_TO_SENDER`.
    pub policy: SendPolicy,
}

impl From<&Config> for PublishSettings {
    fn from(config: &Config) -> Self {
        Self {
            limits: BatchLimits {
                batch_max: config.batch_max,
                max_text_bytes: config.max_text_bytes,
            },
            policy: SendPolicy {
                deliver_to_sender: config.deliver_to_sender,
            },
        }
    }
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The batch breaks the protocol (limits, sender, membership): nothing was
    /// written. The error names the batch's `time_key`.
    #[error("{}", .0.message)]
    Refused(ProtocolError),
    /// Redis failed: retry the same batch with the same `time_key`.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes sent batches. Shared by every connection and the HTTP API.
pub struct Publisher {
    store: Store,
    metrics: Arc<Metrics>,
    settings: PublishSettings,
}

impl Publisher {
    /// A publisher writing through `store`.
    pub fn new(store: Store, metrics: Arc<Metrics>, settings: PublishSettings) -> Self {
        Self {
            store,
            metrics,
            settings,
        }
    }

    /// Whether a sender's messages are delivered to its own inbox too
    /// (`COURIER_DELIVER_TO_SENDER`).
    pub fn delivers_to_sender(&self) -> bool {
        self.settings.policy.deliver_to_sender
    }

    /// Validates a batch sent by `sender` and writes it. `link` is the span the batch
    /// came from (a connection, a request), linked from the batch's trace.
    pub async fn publish(
        &self,
        sender: u64,
        batch: SendBatch,
        link: Option<&Span>,
    ) -> Result<SendOutcome, PublishError> {
        protocol::validate_batch(&batch, sender, self.settings.limits)
            .map_err(PublishError::Refused)?;
        let time_key = batch.time_key;
        let chat_ids: Vec<u64> = batch.messages.iter().map(|m| m.chat_id).collect();
        let batch_span = tracing::info_span!(
            parent: None,
            "client_batch",
            user = sender,
            time_key = %time_key,
            messages = batch.messages.len(),
            chat_ids = ?chat_ids,
        );
        if let Some(link) = link {
            telemetry::link(&batch_span, link);
        }
        let message_spans: Vec<Span> = if telemetry::enabled() {
            chat_ids
                .iter()
                .map(|chat_id| {
                    tracing::info_span!(
                        parent: &batch_span,
                        "message",
                        chat_id,
                        message.id = field::Empty
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let request = SendRequest {
            sender,
            time_key: time_key.to_string(),
            messages: batch
                .messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| NewMessage {
                    chat_id: m.chat_id,
                    content_text: m.content_text,
                    traceparent: message_spans.get(i).and_then(telemetry::traceparent),
                })
                .collect(),
        };
        let count = request.messages.len();
        self.metrics.batch("in", count);
        let write_span = tracing::info_span!(parent: &batch_span, "redis.send", messages = count);
        let outcome = self
            .store
            .send(&request, self.settings.policy)
            .instrument(write_span)
            .await
            .map_err(|e| match e {
                SendError::NotAMember {
                    user,
                    chat_id,
                    index,
                } => PublishError::Refused(not_a_member(user, chat_id, index, time_key)),
                SendError::Store(e) => PublishError::Store(e),
            })?;
        debug!(parent: &batch_span, ?outcome, "batch written");
        if let SendOutcome::Written { first_id } = outcome {
            self.metrics.messages_accepted.inc_by(count as u64);
            for (offset, span) in message_spans.iter().enumerate() {
                span.record("message.id", first_id + offset as u64);
            }
        }
        Ok(outcome)
    }
}

/// The `not_a_member` refusal of a batch.
fn not_a_member(user: u64, chat_id: u64, index: usize, time_key: TimeKey) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NotAMember,
        format!(
            "user {user} is not a member of chat {chat_id} (messages[{index}]); nothing was sent"
        ),
    )
    .with_time_key(time_key)
}
