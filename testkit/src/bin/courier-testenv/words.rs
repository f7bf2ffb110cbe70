//! Splitting a command line into words, and a Redis reply into JSON (pure, tested
//! without I/O).

use redis::Value as RedisValue;
use serde_json::{Value, json};

/// The words of a command line: split on whitespace; a word that starts with `"` is
/// a JSON string (so it may hold spaces and escapes).
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        if rest.starts_with('"') {
            let mut strings = serde_json::Deserializer::from_str(rest).into_iter::<String>();
            let word = strings
                .next()
                .ok_or("an empty quoted word")?
                .map_err(|e| format!("a quoted word is not a JSON string: {e}"))?;
            let end = strings.byte_offset();
            if !rest[end..].is_empty() && !rest[end..].starts_with(char::is_whitespace) {
                return Err(format!("no space after the quoted word {word:?}"));
            }
            words.push(word);
            rest = rest[end..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    Ok(words)
}

/// A Redis reply as JSON: nil → null, integers and doubles → numbers, strings →
/// strings (invalid UTF-8 replaced), arrays, sets and pushes → arrays, maps →
/// objects; an error reply → `Err(its text)`.
pub fn reply_to_json(value: RedisValue) -> Result<Value, String> {
    Ok(match value {
        RedisValue::Nil => Value::Null,
        RedisValue::Int(n) => json!(n),
        RedisValue::Double(x) => json!(x),
        RedisValue::Boolean(b) => json!(b),
        RedisValue::Okay => json!("OK"),
        RedisValue::SimpleString(s) => json!(s),
        RedisValue::BulkString(bytes) => json!(String::from_utf8_lossy(&bytes)),
        RedisValue::VerbatimString { text, .. } => json!(text),
        RedisValue::BigNumber(n) => json!(n.to_string()),
        RedisValue::Array(items) | RedisValue::Set(items) => Value::Array(
            items
                .into_iter()
                .map(reply_to_json)
                .collect::<Result<_, _>>()?,
        ),
        RedisValue::Push { data, .. } => Value::Array(
            data.into_iter()
                .map(reply_to_json)
                .collect::<Result<_, _>>()?,
        ),
        RedisValue::Map(pairs) => {
            let mut object = serde_json::Map::new();
            for (key, value) in pairs {
                let key = match reply_to_json(key)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                object.insert(key, reply_to_json(value)?);
            }
            Value::Object(object)
        }
        RedisValue::Attribute { data, .. } => reply_to_json(*data)?,
        RedisValue::ServerError(e) => return Err(e.to_string()),
        other => json!(format!("{other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_on_spaces_and_quoted_words_are_json_strings() {
        assert_eq!(split("  chat 10 1  2 ").unwrap(), ["chat", "10", "1", "2"]);
        assert_eq!(
            split(r#"redis "SET" "a key" "line\nbreak" plain"#).unwrap(),
            ["redis", "SET", "a key", "line\nbreak", "plain"]
        );
        assert_eq!(split(r#"redis """#).unwrap(), ["redis", ""]);
        assert!(split(r#"redis "unterminated"#).is_err());
        assert!(split(r#"redis "a"b"#).is_err());
        assert!(split("").unwrap().is_empty());
    }

    #[test]
    fn replies_become_json() {
        let reply = RedisValue::Array(vec![
            RedisValue::BulkString(b"v".to_vec()),
            RedisValue::Int(3),
            RedisValue::Nil,
            RedisValue::Okay,
        ]);
        assert_eq!(reply_to_json(reply).unwrap(), json!(["v", 3, null, "OK"]));
        let map = RedisValue::Map(vec![(
            RedisValue::SimpleString("k".into()),
            RedisValue::Int(1),
        )]);
        assert_eq!(reply_to_json(map).unwrap(), json!({"k": 1}));
    }
}
