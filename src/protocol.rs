//! The wire protocol of DESIGN §2: typed frames, their decoding and encoding, and the
//! tables of error codes and close codes. Pure: no I/O, no clock, no Redis.
//!
//! Decoding never panics and allocates at most what the frame itself holds (the frame
//! size is capped by the WebSocket layer before it gets here).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Largest integer a JavaScript number holds exactly: every `time_key` the server
/// chooses (delivery batches, and the HTTP API's generated keys) is at most this.
pub const MAX_SAFE_TIME_KEY: u64 = (1 << 53) - 1;

/// A client's batch name: any integer that fits in 64 bits, signed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimeKey(i128);

impl TimeKey {
    /// A time key from a server-chosen value.
    pub fn from_u64(value: u64) -> Self {
        Self(i128::from(value))
    }

    /// The value, if it is one the server could have chosen (non-negative).
    pub fn as_u64(self) -> Option<u64> {
        u64::try_from(self.0).ok()
    }
}

impl fmt::Display for TimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for TimeKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(self.0) {
            Ok(v) => serializer.serialize_i64(v),
            Err(_) => {
                serializer.serialize_u64(u64::try_from(self.0).map_err(serde::ser::Error::custom)?)
            }
        }
    }
}

impl<'de> Deserialize<'de> for TimeKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeKeyVisitor;
        impl Visitor<'_> for TimeKeyVisitor {
            type Value = TimeKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer that fits in 64 bits")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TimeKey, E> {
                Ok(TimeKey(i128::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TimeKey, E> {
                Ok(TimeKey(i128::from(v)))
            }
        }
        deserializer.deserialize_any(TimeKeyVisitor)
    }
}

/// The error codes of DESIGN §2, one table for the code and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame is not JSON.
    InvalidJson,
    /// Wrong shape or types, empty batch, too many messages, text too long.
    InvalidFrame,
    /// One of the older client formats; the message names the current one.
    DeprecatedFormat,
    /// `sender_id` differs from the token's `id`.
    SenderMismatch,
    /// The sender is not a member of the chat.
    NotAMember,
    /// An ack names no batch in flight on this connection.
    UnknownTimeKey,
    /// Too many frames.
    RateLimited,
    /// Redis is down: retry the same batch with the same `time_key`.
    Unavailable,
    /// A bug or an unexpected Redis answer.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation checks.
    pub const ALL: [ErrorCode; 9] = [
        Self::InvalidJson,
        Self::InvalidFrame,
        Self::DeprecatedFormat,
        Self::SenderMismatch,
        Self::NotAMember,
        Self::UnknownTimeKey,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidFrame => "invalid_frame",
            Self::DeprecatedFormat => "deprecated_format",
            Self::SenderMismatch => "sender_mismatch",
            Self::NotAMember => "not_a_member",
            Self::UnknownTimeKey => "unknown_time_key",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// WebSocket close codes of DESIGN §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the client or the server ended the session normally.
    Normal,
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1007: a text frame that is not valid UTF-8 (RFC 6455 §8.1).
    InvalidPayload,
    /// 1008: policy (origin, too many errors).
    Policy,
    /// 1009: a frame was too big.
    TooBig,
    /// 1011: internal error.
    Internal,
    /// 1013: slow consumer; its unacked messages stay pending.
    Overloaded,
    /// 4001: the token expired.
    TokenExpired,
}

impl CloseCode {
    /// The numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::InvalidPayload => 1007,
            Self::Policy => 1008,
            Self::TooBig => 1009,
            Self::Internal => 1011,
            Self::Overloaded => 1013,
            Self::TokenExpired => 4001,
        }
    }
}

/// A message as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutgoingMessage {
    /// Must equal the token's `id`.
    pub sender_id: u64,
    /// The chat whose members receive it.
    pub chat_id: u64,
    /// The text, at most `COURIER_MAX_TEXT_BYTES` bytes.
    pub content_text: String,
}

/// A batch a client sends: all-or-nothing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBatch {
    #[serde(rename = "type")]
    _type: MessagesTag,
    /// The client's name for the batch, echoed in the ack and used for dedup.
    pub time_key: TimeKey,
    /// The messages, 1 to `COURIER_BATCH_MAX`.
    pub messages: Vec<OutgoingMessage>,
}

impl SendBatch {
    /// A batch built from another transport than a WebSocket frame (the HTTP publish
    /// API), to go through the same [`validate_batch`].
    pub fn new(time_key: TimeKey, messages: Vec<OutgoingMessage>) -> Self {
        Self {
            _type: MessagesTag::Messages,
            time_key,
            messages,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MessagesTag {
    Messages,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AckTag {
    Ack,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckFrame {
    #[serde(rename = "type")]
    _type: AckTag,
    time_key: TimeKey,
}

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"messages",...}`: a batch to send.
    Send(SendBatch),
    /// `{"type":"ack","time_key":...}`: acks that delivery batch.
    Ack(TimeKey),
    /// The bare text `received`: acks the oldest unacked delivery batch.
    Received,
}

/// Longest error message sent to a client, in bytes (before the closing `…`).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;

/// A client frame that could not be used, answered with an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The error code.
    pub code: ErrorCode,
    /// A sentence for the client author.
    pub message: String,
    /// The frame's `time_key`, when it had a readable one.
    pub time_key: Option<TimeKey>,
}

impl ProtocolError {
    /// An error about a frame without a readable `time_key`.
    /// The message is cut to [`MAX_ERROR_MESSAGE_BYTES`]: decoder messages quote the
    /// client's input (an unknown field's name), which must not be echoed unbounded.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_BYTES {
            let mut cut = MAX_ERROR_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        Self {
            code,
            message,
            time_key: None,
        }
    }

    /// The same error, naming the frame's `time_key`.
    pub fn with_time_key(mut self, time_key: TimeKey) -> Self {
        self.time_key = Some(time_key);
        self
    }
}

const CURRENT_FORMAT: &str = r#"{"type":"messages","time_key":<int>,"messages":[{"sender_id":<int>,"chat_id":<int>,"content_text":"..."}]}"#;

/// Decodes one text frame. Checks shape and types only; [`validate_batch`] checks a
/// batch against the limits and the sender.
///
/// Valid frames take one typed parse; only a frame that fails it is parsed again
/// into a generic value to name what is wrong (the slow path decides every error).
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, ProtocolError> {
    let trimmed = text.trim();
    if trimmed == "received" || trimmed == "\"received\"" {
        return Ok(ClientFrame::Received);
    }
    let fast = if text.contains("\"ack\"") {
        serde_json::from_str::<AckFrame>(text).map(|a| ClientFrame::Ack(a.time_key))
    } else {
        serde_json::from_str::<SendBatch>(text).map(ClientFrame::Send)
    };
    fast.or_else(|_| classify(text))
}

/// The slow path: why a frame is not valid (or, if it is after all, the frame).
fn classify(text: &str) -> Result<ClientFrame, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(ErrorCode::InvalidJson, format!("frame is not JSON: {e}"))
    })?;
    let Value::Object(object) = &value else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidFrame,
            "a frame is a JSON object with a \"type\", or the text `received`",
        ));
    };
    let time_key = object
        .get("time_key")
        .and_then(|v| TimeKey::deserialize(v).ok());
    let attach = |e: ProtocolError| match time_key {
        Some(tk) => e.with_time_key(tk),
        None => e,
    };
    if is_deprecated(object) {
        return Err(attach(ProtocolError::new(
            ErrorCode::DeprecatedFormat,
            format!(
                "this format is no longer accepted (receiver_id/content.text_content/token in the body); \
                 send {CURRENT_FORMAT} and put the token in the upgrade request"
            ),
        )));
    }
    let invalid =
        |e: serde_json::Error| attach(ProtocolError::new(ErrorCode::InvalidFrame, e.to_string()));
    match object.get("type").and_then(Value::as_str) {
        Some("messages") => serde_json::from_str(text)
            .map(ClientFrame::Send)
            .map_err(invalid),
        Some("ack") => serde_json::from_str::<AckFrame>(text)
            .map(|a| ClientFrame::Ack(a.time_key))
            .map_err(invalid),
        Some(other) => Err(attach(ProtocolError::new(
            ErrorCode::InvalidFrame,
            format!("unknown frame type {other:?}: expected \"messages\" or \"ack\""),
        ))),
        None => Err(attach(ProtocolError::new(
            ErrorCode::InvalidFrame,
            "missing string field \"type\": expected \"messages\" or \"ack\"",
        ))),
    }
}

/// The `time_key` of a frame that is a JSON object with an integer `time_key`, for
/// errors about frames that were not otherwise decoded.
pub fn time_key_of(text: &str) -> Option<TimeKey> {
    #[derive(Deserialize)]
    struct WithTimeKey {
        time_key: TimeKey,
    }
    serde_json::from_str::<WithTimeKey>(text)
        .ok()
        .map(|f| f.time_key)
}

/// The older formats of ORIGIN.md: a `token` or single `message` in the body, or
/// messages with `receiver_id` / `content.text_content`.
fn is_deprecated(object: &serde_json::Map<String, Value>) -> bool {
    const OLD_KEYS: [&str; 4] = ["token", "message", "receiver_id", "content"];
    if OLD_KEYS.iter().any(|k| object.contains_key(*k)) {
        return true;
    }
    object
        .get("messages")
        .and_then(Value::as_array)
        .is_some_and(|messages| {
            messages
                .iter()
                .any(|m| m.get("receiver_id").is_some() || m.get("content").is_some())
        })
}

/// Limits a sent batch must respect.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most messages in one batch.
    pub batch_max: usize,
    /// Most bytes in one `content_text`.
    pub max_text_bytes: usize,
}

/// Checks a whole batch before anything is written: size, texts, and that every
/// message is sent as the authenticated user. Membership needs Redis and is checked
/// by the store.
pub fn validate_batch(
    batch: &SendBatch,
    user_id: u64,
    limits: BatchLimits,
) -> Result<(), ProtocolError> {
    let fail = |code, message: String| {
        Err(ProtocolError::new(code, message).with_time_key(batch.time_key))
    };
    if batch.messages.is_empty() {
        return fail(
            ErrorCode::InvalidFrame,
            "empty batch: send 1 or more messages".into(),
        );
    }
    if batch.messages.len() > limits.batch_max {
        return fail(
            ErrorCode::InvalidFrame,
            format!(
                "too many messages: {} (at most {})",
                batch.messages.len(),
                limits.batch_max
            ),
        );
    }
    for (index, message) in batch.messages.iter().enumerate() {
        if message.content_text.len() > limits.max_text_bytes {
            return fail(
                ErrorCode::InvalidFrame,
                format!(
                    "messages[{index}].content_text is {} bytes (at most {})",
                    message.content_text.len(),
                    limits.max_text_bytes
                ),
            );
        }
        if message.sender_id != user_id {
            return fail(
                ErrorCode::SenderMismatch,
                format!(
                    "messages[{index}].sender_id is {} but the token is user {user_id}",
                    message.sender_id
                ),
            );
        }
    }
    Ok(())
}

/// A message as delivered: the stream entry's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveredMessage {
    /// Global message id, the same at every recipient and on every redelivery.
    pub id: u64,
    /// Who sent it.
    pub sender_id: u64,
    /// The chat it was sent to.
    pub chat_id: u64,
    /// The text.
    pub content_text: String,
}

/// A frame the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// A sent batch was durably written.
    Ack {
        /// The client's `time_key`.
        time_key: TimeKey,
    },
    /// A delivery batch (never empty).
    Messages {
        /// Server-chosen, below 2^53, increasing per connection.
        time_key: u64,
        /// The entries.
        messages: &'a [DeliveredMessage],
    },
    /// Something went wrong with a client frame.
    Error {
        /// The code.
        code: ErrorCode,
        /// A helpful sentence.
        message: &'a str,
        /// The frame's `time_key`, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        time_key: Option<TimeKey>,
    },
}

impl ServerFrame<'_> {
    /// The frame's `type`, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ack { .. } => "ack",
            Self::Messages { .. } => "messages",
            Self::Error { .. } => "error",
        }
    }

    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail: no maps with non-string keys, no
        // fallible Serialize impls on reachable values.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.into()
        })
    }
}

impl<'a> From<&'a ProtocolError> for ServerFrame<'a> {
    fn from(e: &'a ProtocolError) -> Self {
        ServerFrame::Error {
            code: e.code,
            message: &e.message,
            time_key: e.time_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        batch_max: 2,
        max_text_bytes: 5,
    };

    fn code(text: &str) -> ErrorCode {
        decode_client_frame(text).expect_err("should fail").code
    }

    #[test]
    fn decodes_the_current_formats() {
        let frame = decode_client_frame(
            r#"{"type":"messages","time_key":-5,"messages":[{"sender_id":1,"chat_id":10,"content_text":"hi"}]}"#,
        );
        let Ok(ClientFrame::Send(batch)) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(batch.time_key.to_string(), "-5");
        assert_eq!(batch.messages[0].content_text, "hi");
        assert_eq!(
            decode_client_frame(r#"{"type":"ack","time_key":18446744073709551615}"#),
            Ok(ClientFrame::Ack(TimeKey(u64::MAX.into())))
        );
        assert_eq!(decode_client_frame("received"), Ok(ClientFrame::Received));
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(code("{"), ErrorCode::InvalidJson);
        assert_eq!(code("[1]"), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"type":"nope"}"#), ErrorCode::InvalidFrame);
        assert_eq!(
            code(r#"{"type":"ack","time_key":1.5}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"type":"ack","time_key":1,"extra":1}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"type":"ack","time_key":1,"time_key":2}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"sender_id":1,"receiver_id":2,"content":{"text_content":"x"}}"#),
            ErrorCode::DeprecatedFormat
        );
        assert_eq!(
            code(r#"{"token":"t","message":{}}"#),
            ErrorCode::DeprecatedFormat
        );
        assert_eq!(
            code(r#"{"type":"messages","message":{"sender_id":1}}"#),
            ErrorCode::DeprecatedFormat
        );
    }

    #[test]
    fn error_messages_do_not_echo_unbounded_input() {
        let field = "é".repeat(2000);
        let frame = format!(r#"{{"type":"ack","time_key":1,"{field}":1}}"#);
        let error = decode_client_frame(&frame).expect_err("unknown field");
        assert_eq!(error.code, ErrorCode::InvalidFrame);
        assert!(error.message.len() <= MAX_ERROR_MESSAGE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn the_fast_path_agrees_with_the_slow_path() {
        let frames = [
            r#"{"type":"ack","time_key":1}"#,
            r#"{"type":"messages","time_key":1,"messages":[{"sender_id":1,"chat_id":2,"content_text":"ack"}]}"#,
            r#"{"type":"messages","time_key":1,"messages":[],"token":"t"}"#,
            r#"{"type":"ack","time_key":1,"content":{}}"#,
            r#"{"type":"messages","time_key":1,"messages":[{"receiver_id":1}]}"#,
        ];
        for frame in frames {
            assert_eq!(decode_client_frame(frame), classify(frame), "{frame}");
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_path_equals_slow_path_on_frame_like_input(
            kind in "(ack|messages|x)",
            time_key in "(1|-1|1\\.5|\"1\"|18446744073709551616)",
            extra in "(|,\"token\":1|,\"messages\":\\[\\]|,\"x\":1)",
            sender in "(1|\"1\")",
            field in "(content_text|receiver_id|content)",
        ) {
            let text = format!(
                r#"{{"type":"{kind}","time_key":{time_key}{extra},"messages":[{{"sender_id":{sender},"chat_id":2,"{field}":"t"}}]}}"#
            );
            proptest::prop_assert_eq!(decode_client_frame(&text), classify(&text));
        }
    }

    #[test]
    fn errors_carry_a_readable_time_key() {
        let e = decode_client_frame(
            r#"{"type":"messages","time_key":9,"messages":[{"sender_id":"x"}]}"#,
        )
        .expect_err("bad types");
        assert_eq!(e.time_key, Some(TimeKey(9)));
    }

    #[test]
    fn validates_limits_and_sender() {
        let batch = |n: usize, text: &str, sender: u64| SendBatch {
            _type: MessagesTag::Messages,
            time_key: TimeKey(1),
            messages: vec![
                OutgoingMessage {
                    sender_id: sender,
                    chat_id: 1,
                    content_text: text.into()
                };
                n
            ],
        };
        assert!(validate_batch(&batch(2, "hello", 1), 1, LIMITS).is_ok());
        let err = |b: SendBatch| validate_batch(&b, 1, LIMITS).expect_err("invalid").code;
        assert_eq!(err(batch(0, "", 1)), ErrorCode::InvalidFrame);
        assert_eq!(err(batch(3, "", 1)), ErrorCode::InvalidFrame);
        assert_eq!(err(batch(1, "toolong", 1)), ErrorCode::InvalidFrame);
        assert_eq!(err(batch(1, "ok", 2)), ErrorCode::SenderMismatch);
    }

    #[test]
    fn encodes_server_frames() {
        let messages = [DeliveredMessage {
            id: 42,
            sender_id: 1,
            chat_id: 10,
            content_text: "hi".into(),
        }];
        assert_eq!(
            ServerFrame::Messages {
                time_key: 7,
                messages: &messages
            }
            .encode(),
            r#"{"type":"messages","time_key":7,"messages":[{"id":42,"sender_id":1,"chat_id":10,"content_text":"hi"}]}"#
        );
        let e = ProtocolError::new(ErrorCode::NotAMember, "no").with_time_key(TimeKey(3));
        assert_eq!(
            ServerFrame::from(&e).encode(),
            r#"{"type":"error","code":"not_a_member","message":"no","time_key":3}"#
        );
        assert_eq!(
            ServerFrame::Ack {
                time_key: TimeKey(-1)
            }
            .encode(),
            r#"{"type":"ack","time_key":-1}"#
        );
    }
}
