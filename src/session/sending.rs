//! The send half of a session: a client batch is validated whole, written in one
//! atomic step, then acked — or answered with one error frame and nothing written.

use tracing::{Instrument, Span, debug, field};

use super::{Ending, Session, store_error};
use crate::protocol::{self, ErrorCode, ProtocolError, SendBatch, ServerFrame};
use crate::store::SendRequest;
use crate::store::send::{NewMessage, SendError, SendOutcome};
use crate::telemetry;

impl Session {
    /// A client batch. Its `client_batch` span starts a trace (linked to the
    /// connection); each message gets a `message` span whose `traceparent` goes into
    /// the stream entries, so deliveries and acks join the message's trace.
    pub(super) async fn on_send(&mut self, batch: SendBatch) -> Result<(), Ending> {
        let settings = &self.state.session;
        if let Err(error) = protocol::validate_batch(&batch, self.claims.id, settings.limits) {
            return self.reply_error(&error);
        }
        let time_key = batch.time_key;
        let chat_ids: Vec<u64> = batch.messages.iter().map(|m| m.chat_id).collect();
        let batch_span = tracing::info_span!(
            parent: None,
            "client_batch",
            user = self.claims.id,
            time_key = %time_key,
            messages = batch.messages.len(),
            chat_ids = ?chat_ids,
        );
        telemetry::link(&batch_span, &self.span);
        let message_spans: Vec<Span> = if telemetry::enabled() {
            batch
                .messages
                .iter()
                .map(|m| {
                    tracing::info_span!(
                        parent: &batch_span,
                        "message",
                        chat_id = m.chat_id,
                        message.id = field::Empty
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let request = SendRequest {
            sender: self.claims.id,
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
        self.state.metrics.batch("in", request.messages.len());
        let write_span = tracing::info_span!(parent: &batch_span, "redis.send", messages = request.messages.len());
        let outcome = self
            .state
            .store
            .send(&request, settings.send_policy)
            .instrument(write_span)
            .await;
        match outcome {
            Ok(outcome) => {
                debug!(parent: &batch_span, ?outcome, "batch written");
                if let SendOutcome::Written { first_id } = outcome {
                    self.state
                        .metrics
                        .messages_accepted
                        .inc_by(request.messages.len() as u64);
                    for (offset, span) in message_spans.iter().enumerate() {
                        span.record("message.id", first_id + offset as u64);
                    }
                }
                self.send_frame(&ServerFrame::Ack { time_key })
            }
            Err(SendError::NotAMember {
                user,
                chat_id,
                index,
            }) => self.reply_error(
                &ProtocolError::new(
                    ErrorCode::NotAMember,
                    format!(
                        "user {user} is not a member of chat {chat_id} (messages[{index}]); \
                         nothing was sent"
                    ),
                )
                .with_time_key(time_key),
            ),
            Err(SendError::Store(e)) => self.reply_error(&store_error(e).with_time_key(time_key)),
        }
    }
}
