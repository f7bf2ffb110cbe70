//! courier's wire protocol (DESIGN §2) as typed frames: what a client sends
//! ([`ClientFrame`], encoded) and what courier sends ([`ServerFrame`], decoded), with
//! the tables of error codes ([`ErrorCode`]) and close codes ([`CloseCode`]).
//!
//! Pure: no I/O, no clock. Decoding is lenient where the contract allows growth (an
//! unknown field is ignored, an unknown error code is kept as
//! [`ErrorCode::Unknown`]) and strict where a client relies on a value (a delivery
//! batch has an integer `time_key` and messages with integer ids).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The largest `time_key` courier chooses, and the largest the SDK generates: 2^53 − 1,
/// so that JavaScript clients read it exactly.
pub const MAX_SAFE_TIME_KEY: u64 = (1 << 53) - 1;

/// A batch name: any integer that fits in 64 bits, signed or not (DESIGN §2: courier
/// echoes it exactly). Client batches may use negative values; courier's delivery
/// batches never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimeKey(i128);

impl TimeKey {
    /// The value as a `u64`, when it is not negative.
    pub fn as_u64(self) -> Option<u64> {
        u64::try_from(self.0).ok()
    }

    /// The value as an `i64`, when it fits.
    pub fn as_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }
}

impl From<u64> for TimeKey {
    fn from(value: u64) -> Self {
        Self(i128::from(value))
    }
}

impl From<i64> for TimeKey {
    fn from(value: i64) -> Self {
        Self(i128::from(value))
    }
}

impl fmt::Display for TimeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for TimeKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self.as_i64(), self.as_u64()) {
            (Some(v), _) => serializer.serialize_i64(v),
            (None, Some(v)) => serializer.serialize_u64(v),
            (None, None) => Err(serde::ser::Error::custom("time_key out of 64-bit range")),
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
                Ok(TimeKey::from(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TimeKey, E> {
                Ok(TimeKey::from(v))
            }
        }
        deserializer.deserialize_any(TimeKeyVisitor)
    }
}

/// A message as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    /// The sender: courier refuses a value other than the token's `id`
    /// ([`ErrorCode::SenderMismatch`]).
    pub sender_id: u64,
    /// The chat whose members receive it.
    pub chat_id: u64,
    /// The text, at most `COURIER_MAX_TEXT_BYTES` UTF-8 bytes (4096 by default).
    pub content_text: String,
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The global message id: the same for every recipient and on every redelivery,
    /// so it is what a client deduplicates by.
    pub id: u64,
    /// Who sent it.
    pub sender_id: u64,
    /// The chat it was sent to.
    pub chat_id: u64,
    /// The text.
    pub content_text: String,
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"messages",...}`: a batch to send, all-or-nothing, answered by
    /// [`ServerFrame::Ack`] with the same `time_key` or by an error.
    Messages {
        /// The batch's name: its ack carries it, and a resend with the same value within
        /// courier's dedup window is acked again without being written twice.
        time_key: TimeKey,
        /// 1 to `COURIER_BATCH_MAX` messages.
        messages: Vec<OutgoingMessage>,
    },
    /// `{"type":"ack","time_key":...}`: acks the delivery batch with that `time_key`.
    Ack {
        /// The delivery batch's `time_key`.
        time_key: TimeKey,
    },
    /// The bare text `received` (the older client's ack): acks the oldest unacked
    /// delivery batch of the connection.
    Received,
}

impl ClientFrame {
    /// The text of the frame.
    pub fn encode(&self) -> String {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "lowercase")]
        enum Wire<'a> {
            Messages {
                time_key: TimeKey,
                messages: &'a [OutgoingMessage],
            },
            Ack {
                time_key: TimeKey,
            },
        }
        let wire = match self {
            Self::Messages { time_key, messages } => Wire::Messages {
                time_key: *time_key,
                messages,
            },
            Self::Ack { time_key } => Wire::Ack {
                time_key: *time_key,
            },
            Self::Received => return "received".to_string(),
        };
        // Integers and strings only: serialising cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// A delivery batch: courier's `{"type":"messages",...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryBatch {
    /// Chosen by courier: below 2^53 and strictly increasing per connection. Ack it
    /// with [`ClientFrame::Ack`].
    pub time_key: u64,
    /// Never empty.
    pub messages: Vec<Message>,
}

/// An error frame: courier did not accept a client frame. The connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// What went wrong.
    pub code: ErrorCode,
    /// A sentence for the client author.
    pub message: String,
    /// The `time_key` of the frame it concerns, when that frame had one: a sent batch,
    /// or an ack the client sent.
    pub time_key: Option<TimeKey>,
}

/// A frame courier sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// The batch with this `time_key` is durably written for every recipient.
    Ack {
        /// The client's `time_key`, echoed exactly.
        time_key: TimeKey,
    },
    /// Messages for this client.
    Messages(DeliveryBatch),
    /// A client frame was refused.
    Error(ErrorFrame),
}

/// A text frame that is not a courier frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a courier frame: {0}")]
pub struct DecodeError(String);

impl ServerFrame {
    /// Decodes a text frame. Unknown fields are ignored (the contract may grow); a
    /// missing or ill-typed field that the frame's type needs is an error.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        ServerFrameRef::decode(text).map(ServerFrameRef::into_owned)
    }
}

/// A delivered message whose text borrows from the frame it came in, when the text
/// needed no unescaping (see [`ServerFrameRef`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageRef<'a> {
    /// The global message id.
    pub id: u64,
    /// Who sent it.
    pub sender_id: u64,
    /// The chat it was sent to.
    pub chat_id: u64,
    /// The text.
    #[serde(borrow)]
    pub content_text: Cow<'a, str>,
}

impl MessageRef<'_> {
    /// The message with its own copy of the text.
    pub fn into_owned(self) -> Message {
        Message {
            id: self.id,
            sender_id: self.sender_id,
            chat_id: self.chat_id,
            content_text: self.content_text.into_owned(),
        }
    }
}

/// A [`ServerFrame`] decoded without copying the delivered texts out of the frame's
/// text: for a client that only looks at them, such as a load generator reading the
/// deliveries of thousands of connections. [`ServerFrame::decode`] is this decode
/// followed by [`into_owned`](Self::into_owned), so both accept exactly the same
/// frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrameRef<'a> {
    /// See [`ServerFrame::Ack`].
    Ack {
        /// The client's `time_key`, echoed exactly.
        time_key: TimeKey,
    },
    /// See [`ServerFrame::Messages`].
    Messages {
        /// Below 2^53 and strictly increasing per connection.
        time_key: u64,
        /// Never empty.
        messages: Vec<MessageRef<'a>>,
    },
    /// See [`ServerFrame::Error`].
    Error(ErrorFrame),
}

impl<'a> ServerFrameRef<'a> {
    /// Decodes a text frame, as [`ServerFrame::decode`] does.
    pub fn decode(text: &'a str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
            time_key: Option<TimeKey>,
            #[serde(borrow)]
            messages: Option<Vec<MessageRef<'a>>>,
            #[serde(borrow)]
            code: Option<Cow<'a, str>>,
            message: Option<String>,
        }
        let raw: Raw<'a> = serde_json::from_str(text).map_err(|e| DecodeError(e.to_string()))?;
        let missing = |field: &str| DecodeError(format!("{:?} frame without {field}", raw.kind));
        match raw.kind.as_ref() {
            "ack" => Ok(Self::Ack {
                time_key: raw.time_key.ok_or_else(|| missing("time_key"))?,
            }),
            "messages" => {
                let time_key = raw
                    .time_key
                    .ok_or_else(|| missing("time_key"))?
                    .as_u64()
                    .ok_or_else(|| DecodeError("negative delivery time_key".into()))?;
                let messages = raw.messages.ok_or_else(|| missing("messages"))?;
                Ok(Self::Messages { time_key, messages })
            }
            "error" => Ok(Self::Error(ErrorFrame {
                code: ErrorCode::from(raw.code.as_deref().ok_or_else(|| missing("code"))?),
                message: raw.message.unwrap_or_default(),
                time_key: raw.time_key,
            })),
            other => Err(DecodeError(format!("unknown frame type {other:?}"))),
        }
    }

    /// The frame with its own copies of the texts.
    pub fn into_owned(self) -> ServerFrame {
        match self {
            Self::Ack { time_key } => ServerFrame::Ack { time_key },
            Self::Messages { time_key, messages } => ServerFrame::Messages(DeliveryBatch {
                time_key,
                messages: messages.into_iter().map(MessageRef::into_owned).collect(),
            }),
            Self::Error(error) => ServerFrame::Error(error),
        }
    }
}

/// The error codes of DESIGN §2, with a fallback for codes a newer courier may add.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `invalid_json`: the text frame is not JSON.
    InvalidJson,
    /// `invalid_frame`: wrong shape or types, empty batch, too many messages, text too
    /// long, a binary frame.
    InvalidFrame,
    /// `deprecated_format`: an older client format.
    DeprecatedFormat,
    /// `sender_mismatch`: a `sender_id` differs from the token's `id`.
    SenderMismatch,
    /// `not_a_member`: the sender is not a member of a chat of the batch.
    NotAMember,
    /// `unknown_time_key`: an ack named no unacked delivery batch of this connection.
    UnknownTimeKey,
    /// `rate_limited`: too many frames; resend the same frame later.
    RateLimited,
    /// `unavailable`: Redis is down; retry the same batch with the same `time_key`.
    Unavailable,
    /// `internal`: courier failed; retrying may help.
    Internal,
    /// A code this client does not know.
    Unknown(String),
}

impl ErrorCode {
    /// Every code DESIGN §2 defines.
    pub const KNOWN: [ErrorCode; 9] = [
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
    pub fn as_str(&self) -> &str {
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
            Self::Unknown(code) => code,
        }
    }
}

impl From<&str> for ErrorCode {
    fn from(code: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|known| known.as_str() == code)
            .unwrap_or_else(|| Self::Unknown(code.to_string()))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The close codes of DESIGN §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the session ended normally.
    Normal,
    /// 1001: courier is shutting down.
    GoingAway,
    /// 1007: a text frame was not UTF-8.
    InvalidPayload,
    /// 1008: policy (too many client errors).
    Policy,
    /// 1009: a frame over `COURIER_MAX_FRAME_BYTES`.
    TooBig,
    /// 1011: courier failed.
    Internal,
    /// 1013: the client was too slow to read (its unacked messages come back on the
    /// next connection).
    Overloaded,
    /// 4001: the token expired while the connection was open.
    TokenExpired,
    /// Any other code.
    Other(u16),
}

impl CloseCode {
    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::InvalidPayload => 1007,
            Self::Policy => 1008,
            Self::TooBig => 1009,
            Self::Internal => 1011,
            Self::Overloaded => 1013,
            Self::TokenExpired => 4001,
            Self::Other(code) => code,
        }
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        match code {
            1000 => Self::Normal,
            1001 => Self::GoingAway,
            1007 => Self::InvalidPayload,
            1008 => Self::Policy,
            1009 => Self::TooBig,
            1011 => Self::Internal,
            1013 => Self::Overloaded,
            4001 => Self::TokenExpired,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_u16().fmt(f)
    }
}

/// A close frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code.
    pub code: CloseCode,
    /// The reason text (may be empty).
    pub reason: String,
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "close {}", self.code)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// The length of `text` as a JSON string literal (quotes and escapes included), as
/// serde_json writes it: what a message adds to a frame's size.
pub fn json_string_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("JSON")
    }

    #[test]
    fn client_frames_encode_as_the_contract_shows() {
        let batch = ClientFrame::Messages {
            time_key: TimeKey::from(123_u64),
            messages: vec![OutgoingMessage {
                sender_id: 1,
                chat_id: 10,
                content_text: "hi \"there\"".into(),
            }],
        };
        assert_eq!(
            parse(&batch.encode()),
            json!({"type":"messages","time_key":123,
                   "messages":[{"sender_id":1,"chat_id":10,"content_text":"hi \"there\""}]})
        );
        let ack = ClientFrame::Ack {
            time_key: TimeKey::from(u64::MAX),
        };
        assert_eq!(
            ack.encode(),
            r#"{"type":"ack","time_key":18446744073709551615}"#
        );
        let negative = ClientFrame::Ack {
            time_key: TimeKey::from(-5_i64),
        };
        assert_eq!(negative.encode(), r#"{"type":"ack","time_key":-5}"#);
        assert_eq!(ClientFrame::Received.encode(), "received");
    }

    #[test]
    fn server_frames_decode_to_their_types() {
        assert_eq!(
            ServerFrame::decode(r#"{"type":"ack","time_key":-1}"#),
            Ok(ServerFrame::Ack {
                time_key: TimeKey::from(-1_i64)
            })
        );
        let delivery = ServerFrame::decode(
            r#"{"type":"messages","time_key":1732400000000123,"future_field":true,
                "messages":[{"id":42,"sender_id":1,"chat_id":10,"content_text":"hi"}]}"#,
        );
        assert_eq!(
            delivery,
            Ok(ServerFrame::Messages(DeliveryBatch {
                time_key: 1_732_400_000_000_123,
                messages: vec![Message {
                    id: 42,
                    sender_id: 1,
                    chat_id: 10,
                    content_text: "hi".into()
                }],
            }))
        );
        assert_eq!(
            ServerFrame::decode(
                r#"{"type":"error","code":"not_a_member","message":"no","time_key":7}"#
            ),
            Ok(ServerFrame::Error(ErrorFrame {
                code: ErrorCode::NotAMember,
                message: "no".into(),
                time_key: Some(TimeKey::from(7_u64)),
            }))
        );
    }

    #[test]
    fn the_borrowed_decode_borrows_plain_texts_and_unescapes_the_others() {
        let text = r#"{"type":"messages","time_key":5,"messages":[
            {"id":1,"sender_id":2,"chat_id":3,"content_text":"plain"},
            {"id":4,"sender_id":2,"chat_id":3,"content_text":"q\"b"}]}"#;
        let Ok(ServerFrameRef::Messages { time_key, messages }) = ServerFrameRef::decode(text)
        else {
            panic!("a delivery batch");
        };
        assert_eq!(time_key, 5);
        assert!(matches!(messages[0].content_text, Cow::Borrowed("plain")));
        assert_eq!(messages[1].content_text, "q\"b");
        assert_eq!(
            ServerFrameRef::decode(text).map(ServerFrameRef::into_owned),
            ServerFrame::decode(text)
        );
    }

    #[test]
    fn malformed_server_frames_are_decode_errors() {
        for text in [
            "received",
            "{}",
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","time_key":1.5}"#,
            r#"{"type":"ack","time_key":"1"}"#,
            r#"{"type":"messages","time_key":-1,"messages":[]}"#,
            r#"{"type":"messages","time_key":1}"#,
            r#"{"type":"messages","time_key":1,"messages":[{"id":"x"}]}"#,
            r#"{"type":"error","message":"no code"}"#,
            r#"{"type":"hello"}"#,
        ] {
            assert!(
                ServerFrame::decode(text).is_err(),
                "{text} should not decode"
            );
        }
    }

    #[test]
    fn every_error_code_round_trips_and_unknown_ones_are_kept() {
        for code in ErrorCode::KNOWN {
            assert_eq!(ErrorCode::from(code.as_str()), code);
        }
        assert_eq!(
            ErrorCode::from("quota_exceeded"),
            ErrorCode::Unknown("quota_exceeded".into())
        );
        assert_eq!(
            ErrorCode::from("quota_exceeded").to_string(),
            "quota_exceeded"
        );
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [1000, 1001, 1007, 1008, 1009, 1011, 1013, 4001, 4999] {
            assert_eq!(CloseCode::from(code).as_u16(), code);
        }
        assert_eq!(CloseCode::from(4001), CloseCode::TokenExpired);
        assert_eq!(CloseCode::from(3000), CloseCode::Other(3000));
    }

    #[test]
    fn json_string_len_matches_serde_json() {
        for text in [
            "",
            "plain",
            "é ü 日本",
            "q\"b\\",
            "\n\r\t\u{8}\u{c}",
            "\u{1}\u{1f}",
        ] {
            let encoded = serde_json::to_string(text).expect("encode");
            assert_eq!(json_string_len(text), encoded.len(), "{text:?}");
        }
    }
}
