//! The one send path of WebSocket clients and the HTTP API: a validated batch is
//! written atomically by the store, traced and counted the same way whoever sent it.
//!
//! Tracing: the batch's `client_batch` span starts a trace; each message gets a
//! `message` span whose `traceparent` goes into the stream entries, so every
//! recipient's deliveries and acks join the message's trace; `redis.send` times the
//! write.

use tracing::{Instrument, Span, debug, field};

use crate::protocol::{ErrorCode, ProtocolError, SendBatch, TimeKey};
use crate::server::AppState;
use crate::store::SendRequest;
use crate::store::send::{NewMessage, SendError, SendOutcome};
use crate::telemetry;

/// Writes a batch already validated for `sender` (size, texts, sender ids). `link`
/// is the span the batch came from (a connection), linked from the batch's trace.
pub async fn publish(
    state: &AppState,
    sender: u64,
    batch: SendBatch,
    link: Option<&Span>,
) -> Result<SendOutcome, SendError> {
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
    state.metrics.batch("in", count);
    let write_span = tracing::info_span!(parent: &batch_span, "redis.send", messages = count);
    let outcome = state
        .store
        .send(&request, state.session.send_policy)
        .instrument(write_span)
        .await?;
    debug!(parent: &batch_span, ?outcome, "batch written");
    if let SendOutcome::Written { first_id } = outcome {
        state.metrics.messages_accepted.inc_by(count as u64);
        for (offset, span) in message_spans.iter().enumerate() {
            span.record("message.id", first_id + offset as u64);
        }
    }
    Ok(outcome)
}

/// The `not_a_member` refusal of a batch.
pub fn not_a_member(user: u64, chat_id: u64, index: usize, time_key: TimeKey) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NotAMember,
        format!(
            "user {user} is not a member of chat {chat_id} (messages[{index}]); nothing was sent"
        ),
    )
    .with_time_key(time_key)
}
