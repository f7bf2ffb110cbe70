//! `POST /api/v1/messages`: a backend sends a batch as one user.
//!
//! The body is a client batch without its `type`, and with `time_key` optional:
//! `{"time_key": 123, "messages": [{"sender_id": 1, "chat_id": 10, "content_text": "hi"}]}`.
//! It goes where a WebSocket batch goes: the node's
//! [`Publisher`](crate::publish::Publisher), as the batch's sender (validation,
//! membership of the sender, atomic fan-out, dedup of the `time_key` per sender). All
//! messages of a request must have the same `sender_id`, so a request stays
//! all-or-nothing: one script writes it.
//!
//! Without a `time_key`, courier picks a random one below 2^53, so two requests never
//! deduplicate each other by accident; the answer names it, and a caller that wants
//! safe retries sends its own.

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::StatusCode;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tracing::{Instrument, debug};

use super::ApiError;
use super::access::Caller;
use crate::http::{HttpResponse, json_response};
use crate::node::Node;
use crate::protocol::{
    ErrorCode, MAX_SAFE_TIME_KEY, OutgoingMessage, ProtocolError, SendBatch, TimeKey,
};
use crate::publish::PublishError;
use crate::store::SendOutcome;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// The batch's idempotency key; generated when absent.
    #[serde(default)]
    time_key: Option<TimeKey>,
    /// 1 to `COURIER_BATCH_MAX` messages, all from one sender.
    messages: Vec<OutgoingMessage>,
}

/// The answer to a written (or already written) batch.
#[derive(Debug, Serialize)]
struct Accepted {
    /// `accepted` when written now, `duplicate` when the `time_key` was already
    /// written for this sender within the dedup window (nothing written again).
    status: &'static str,
    /// The batch's `time_key`, given or generated.
    time_key: TimeKey,
    /// Id of the first message; the others follow it.
    first_id: u64,
    /// Number of messages written.
    count: u64,
}

/// Reads, validates and writes one batch; answers 202 with [`Accepted`].
pub async fn publish(
    node: &Node,
    caller: &Caller,
    body: Incoming,
) -> Result<HttpResponse, ApiError> {
    let limit = node.api.max_body_bytes;
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(ApiError::TooLarge { limit }),
        Err(e) => {
            return Err(ApiError::Refused(ProtocolError::new(
                ErrorCode::InvalidJson,
                format!("could not read the body: {e}"),
            )));
        }
    };
    let batch = decode(&bytes, random_time_key).map_err(ApiError::Refused)?;
    let sender = single_sender(&batch).map_err(ApiError::Refused)?;
    let time_key = batch.time_key;
    let count = batch.messages.len() as u64;
    let span = tracing::info_span!("publish", %caller, sender, %time_key, count);
    let outcome = node
        .publisher
        .publish(sender, batch, Some(&span))
        .instrument(span.clone())
        .await;
    let accepted = match outcome {
        Ok(SendOutcome::Written { first_id }) => Accepted {
            status: "accepted",
            time_key,
            first_id,
            count,
        },
        Ok(SendOutcome::Duplicate { first_id, count }) => Accepted {
            status: "duplicate",
            time_key,
            first_id,
            count,
        },
        Err(PublishError::Refused(e)) => return Err(ApiError::Refused(e)),
        Err(PublishError::Store(e)) => return Err(e.into()),
    };
    debug!(parent: &span, status = accepted.status, first_id = accepted.first_id, "batch written");
    Ok(json_response(StatusCode::ACCEPTED, &accepted))
}

/// The body as a batch: `invalid_json` when it is not JSON, `invalid_frame` when it
/// has the wrong shape (unknown or duplicate fields included). A missing `time_key`
/// is taken from `generate`.
fn decode(bytes: &[u8], generate: impl FnOnce() -> TimeKey) -> Result<SendBatch, ProtocolError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| {
        ProtocolError::new(ErrorCode::InvalidJson, format!("body is not JSON: {e}"))
    })?;
    let body: PublishBody = serde_json::from_slice(bytes)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidFrame, e.to_string()))?;
    Ok(SendBatch::new(
        body.time_key.unwrap_or_else(generate),
        body.messages,
    ))
}

/// The batch's one sender (the publisher then validates the batch as sent by it).
/// Several senders in one request are `invalid_frame`.
fn single_sender(batch: &SendBatch) -> Result<u64, ProtocolError> {
    let sender = batch.messages.first().map_or(0, |m| m.sender_id);
    if let Some((index, other)) = batch
        .messages
        .iter()
        .enumerate()
        .find(|(_, m)| m.sender_id != sender)
    {
        return Err(ProtocolError::new(
            ErrorCode::InvalidFrame,
            format!(
                "one sender per request: messages[{index}].sender_id is {} but messages[0].sender_id is {sender}",
                other.sender_id
            ),
        )
        .with_time_key(batch.time_key));
    }
    Ok(sender)
}

/// A random `time_key` below 2^53 (safe in JavaScript).
fn random_time_key() -> TimeKey {
    TimeKey::from_u64(uuid::Uuid::new_v4().as_u64_pair().0 & MAX_SAFE_TIME_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, BatchLimits};

    const LIMITS: BatchLimits = BatchLimits {
        batch_max: 2,
        max_text_bytes: 5,
    };

    fn fixed() -> TimeKey {
        TimeKey::from_u64(99)
    }

    fn code(body: &str) -> ErrorCode {
        decode(body.as_bytes(), fixed)
            .and_then(|batch| {
                let sender = single_sender(&batch)?;
                protocol::validate_batch(&batch, sender, LIMITS)
            })
            .expect_err("refused")
            .code
    }

    #[test]
    fn time_key_is_optional() {
        let batch = decode(
            br#"{"messages":[{"sender_id":1,"chat_id":10,"content_text":"hi"}]}"#,
            fixed,
        )
        .expect("valid");
        assert_eq!(batch.time_key, fixed());
        assert_eq!(single_sender(&batch), Ok(1));
        let batch = decode(
            br#"{"time_key":-4,"messages":[{"sender_id":1,"chat_id":10,"content_text":"hi"}]}"#,
            fixed,
        )
        .expect("valid");
        assert_eq!(batch.time_key.to_string(), "-4");
    }

    #[test]
    fn bad_bodies_are_classified() {
        assert_eq!(code("{"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"messages":[]}"#), ErrorCode::InvalidFrame);
        assert_eq!(
            code(r#"{"type":"messages","messages":[]}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"time_key":1.5,"messages":[{"sender_id":1,"chat_id":1,"content_text":"a"}]}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"messages":[{"sender_id":1,"chat_id":1,"content_text":"too long"}]}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(
                r#"{"messages":[{"sender_id":1,"chat_id":1,"content_text":"a"},{"sender_id":2,"chat_id":1,"content_text":"b"}]}"#
            ),
            ErrorCode::InvalidFrame
        );
    }

    #[test]
    fn generated_time_keys_are_safe_integers() {
        for _ in 0..100 {
            let key = random_time_key().as_u64().expect("non-negative");
            assert!(key <= MAX_SAFE_TIME_KEY);
        }
    }
}
