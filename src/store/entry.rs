//! What one message looks like in Redis (DESIGN §3), in one place: the field names of
//! an inbox stream entry, what the send scripts write for a new message (encode), and
//! what a read entry holds (decode); and the legacy list item other services read.
//!
//! The stream entry of a message is
//! `id <id> sender_id <id> chat_id <id> content_text <text> [traceparent <w3c>]`;
//! the dead-letter script adds `deliveries <n>` to the copy it keeps, and the replay
//! script drops it again.

use redis::{RedisWrite, ToRedisArgs};
use serde::Serialize;

/// The global message id, the same at every recipient.
pub const ID: &str = "id";
/// Who sent the message.
pub const SENDER_ID: &str = "sender_id";
/// The chat it was sent to.
pub const CHAT_ID: &str = "chat_id";
/// The text.
pub const CONTENT_TEXT: &str = "content_text";
/// The W3C trace context of the send, when traced.
pub const TRACEPARENT: &str = "traceparent";
/// Added to a dead letter: how many times the entry had been delivered.
pub const DELIVERIES: &str = "deliveries";

/// One message of a batch to write, validated by the protocol layer.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Target chat.
    pub chat_id: u64,
    /// Text.
    pub content_text: String,
    /// W3C trace context of the send, stored in the entry when present.
    pub traceparent: Option<String>,
}

/// The fields of a new message's stream entry, as script arguments: their count `F`,
/// then `F` strings, names and values in turn. The message id comes first with an
/// empty value: the script allocates the ids (or is given the first), so it fills in
/// the second string before the `XADD` (`send_writes.lua`).
pub struct EntryFields<'a> {
    sender: u64,
    message: &'a NewMessage,
}

impl<'a> EntryFields<'a> {
    /// The fields of `message`, sent by `sender`.
    pub fn new(sender: u64, message: &'a NewMessage) -> Self {
        Self { sender, message }
    }

    fn count(&self) -> usize {
        if self.message.traceparent.is_some() {
            10
        } else {
            8
        }
    }
}

impl ToRedisArgs for EntryFields<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        self.count().write_redis_args(out);
        out.write_arg(ID.as_bytes());
        out.write_arg(b"");
        out.write_arg(SENDER_ID.as_bytes());
        self.sender.write_redis_args(out);
        out.write_arg(CHAT_ID.as_bytes());
        self.message.chat_id.write_redis_args(out);
        out.write_arg(CONTENT_TEXT.as_bytes());
        out.write_arg(self.message.content_text.as_bytes());
        if let Some(traceparent) = &self.message.traceparent {
            out.write_arg(TRACEPARENT.as_bytes());
            out.write_arg(traceparent.as_bytes());
        }
    }

    fn num_of_args(&self) -> usize {
        1 + self.count()
    }
}

/// The legacy list item (`user:<id>`) of a message: `{"sender_id","chat_id","content_text"}`.
pub fn legacy_item(sender: u64, message: &NewMessage) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct LegacyMessage<'a> {
        sender_id: u64,
        chat_id: u64,
        content_text: &'a str,
    }
    serde_json::to_string(&LegacyMessage {
        sender_id: sender,
        chat_id: message.chat_id,
        content_text: &message.content_text,
    })
}

/// A message as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Global message id, the same at every recipient and on every redelivery.
    pub id: u64,
    /// Who sent it.
    pub sender_id: u64,
    /// The chat it was sent to.
    pub chat_id: u64,
    /// The text.
    pub content_text: String,
}

/// One entry as read from an inbox stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The stream entry id (`<ms>-<seq>`), what XACK takes.
    pub stream_id: String,
    /// What the entry holds.
    pub body: EntryBody,
    /// Times Redis has handed it out, this delivery included.
    pub deliveries: u64,
}

/// The content of a read entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryBody {
    /// A message to deliver.
    Message {
        /// The message.
        message: StoredMessage,
        /// The send's trace context, when traced.
        traceparent: Option<String>,
    },
    /// Still pending but trimmed from the stream (MAXLEN): nothing left to deliver.
    Trimmed,
    /// Fields that do not make a message (written by hand?): dead-lettered.
    Malformed,
}

/// The body of an entry from its field/value pairs; unknown fields are ignored.
pub fn decode(fields: impl IntoIterator<Item = (String, String)>) -> EntryBody {
    let mut id = None;
    let mut sender_id = None;
    let mut chat_id = None;
    let mut content_text = None;
    let mut traceparent = None;
    for (name, value) in fields {
        match name.as_str() {
            ID => id = value.parse().ok(),
            SENDER_ID => sender_id = value.parse().ok(),
            CHAT_ID => chat_id = value.parse().ok(),
            CONTENT_TEXT => content_text = Some(value),
            TRACEPARENT => traceparent = Some(value),
            _ => {}
        }
    }
    match (id, sender_id, chat_id, content_text) {
        (Some(id), Some(sender_id), Some(chat_id), Some(content_text)) => EntryBody::Message {
            message: StoredMessage {
                id,
                sender_id,
                chat_id,
                content_text,
            },
            traceparent,
        },
        _ => EntryBody::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(traceparent: Option<&str>) -> NewMessage {
        NewMessage {
            chat_id: 10,
            content_text: "hi".into(),
            traceparent: traceparent.map(str::to_owned),
        }
    }

    fn strings(args: Vec<Vec<u8>>) -> Vec<String> {
        args.into_iter()
            .map(|a| String::from_utf8(a).expect("utf-8"))
            .collect()
    }

    #[test]
    fn encoded_fields_lead_with_their_count_and_an_empty_id() {
        let plain = message(None);
        let fields = EntryFields::new(7, &plain);
        let args = strings(fields.to_redis_args());
        assert_eq!(
            args,
            [
                "8",
                "id",
                "",
                "sender_id",
                "7",
                "chat_id",
                "10",
                "content_text",
                "hi"
            ]
        );
        assert_eq!(fields.num_of_args(), args.len());
        let traced = message(Some("00-ab-cd-01"));
        let args = strings(EntryFields::new(7, &traced).to_redis_args());
        assert_eq!(args[0], "10");
        assert_eq!(args[9..], ["traceparent", "00-ab-cd-01"]);
    }

    #[test]
    fn what_is_encoded_decodes_back() {
        let traced = message(Some("00-ab-cd-01"));
        let mut args = strings(EntryFields::new(7, &traced).to_redis_args());
        args[2] = "42".into();
        let pairs = args[1..]
            .chunks(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()));
        assert_eq!(
            decode(pairs),
            EntryBody::Message {
                message: StoredMessage {
                    id: 42,
                    sender_id: 7,
                    chat_id: 10,
                    content_text: "hi".into(),
                },
                traceparent: Some("00-ab-cd-01".into()),
            }
        );
    }

    #[test]
    fn entries_missing_a_field_are_malformed() {
        let fields = [("id", "1"), ("sender_id", "x"), ("chat_id", "2")]
            .map(|(n, v)| (n.to_string(), v.to_string()));
        assert_eq!(decode(fields), EntryBody::Malformed);
    }

    #[test]
    fn legacy_items_are_the_message_without_its_id() {
        assert_eq!(
            legacy_item(7, &message(None)).expect("json"),
            r#"{"sender_id":7,"chat_id":10,"content_text":"hi"}"#
        );
    }
}
