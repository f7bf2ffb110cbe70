//! Decoding of raw Redis replies that typed replies cannot express (entries whose
//! fields are nil because they were trimmed while pending). Accepts RESP2 arrays and
//! RESP3 maps alike; never panics on an unexpected shape.

use redis::Value;

use super::entry::{self, EntryBody, StreamEntry};

/// A bulk or simple string as UTF-8 text.
pub fn value_text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        Value::VerbatimString { text, .. } => Some(text),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Pairs of a RESP2 flat array or a RESP3 map.
fn pairs(value: Value) -> Option<Vec<(Value, Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs),
        Value::Array(items) => {
            let mut iter = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
                pairs.push((k, v));
            }
            Some(pairs)
        }
        _ => None,
    }
}

/// The entries of an XREADGROUP reply for a single stream (nil: none).
pub fn parse_entries(reply: Value) -> Result<Vec<StreamEntry>, String> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(_, entries)| entries)
            .collect::<Vec<_>>(),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut key_and_entries) if key_and_entries.len() == 2 => {
                    key_and_entries.pop()
                }
                _ => None,
            })
            .collect(),
        other => return Err(format!("unexpected XREADGROUP reply {other:?}")),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            return Err("unexpected XREADGROUP entries".into());
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                return Err("unexpected XREADGROUP entry".into());
            };
            if parts.len() != 2 {
                return Err("unexpected XREADGROUP entry length".into());
            }
            let fields = parts
                .pop()
                .and_then(|f| if f == Value::Nil { None } else { pairs(f) });
            let id = parts.pop().and_then(value_text).ok_or("entry without id")?;
            out.push(stream_entry(id, fields, 1));
        }
    }
    Ok(out)
}

/// Entries as the read-pending and reclaim scripts return them:
/// `{{id, fields or nil, deliveries}, ...}`.
pub fn parse_counted_entries(reply: Value) -> Result<Vec<StreamEntry>, String> {
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(entries) => entries,
        other => return Err(format!("unexpected script reply {other:?}")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err("unexpected script entry".into());
        };
        let mut parts = parts.into_iter();
        let (Some(id), Some(fields), Some(Value::Int(deliveries))) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err("unexpected script entry shape".into());
        };
        let id = value_text(id).ok_or("entry without id")?;
        let fields = match fields {
            Value::Nil | Value::Boolean(false) => None,
            fields => pairs(fields),
        };
        out.push(stream_entry(id, fields, deliveries.unsigned_abs()));
    }
    Ok(out)
}

/// An entry from its id and field/value pairs (`None`: trimmed from the stream).
/// Pairs that are not text are skipped.
fn stream_entry(
    stream_id: String,
    fields: Option<Vec<(Value, Value)>>,
    deliveries: u64,
) -> StreamEntry {
    let body = match fields {
        None => EntryBody::Trimmed,
        Some(fields) => entry::decode(
            fields
                .into_iter()
                .filter_map(|(name, value)| Some((value_text(name)?, value_text(value)?))),
        ),
    };
    StreamEntry {
        stream_id,
        body,
        deliveries,
    }
}
