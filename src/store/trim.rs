//! What the send scripts' inbox trims report (`send_writes.lua`, `trim`): entries a
//! device group had not acked that a trim removed — by the length cap, or past a
//! device group idle for `COURIER_DEVICE_IDLE_S`. Nothing is dropped silently: each
//! is counted in `courier_unacked_trimmed_total{reason}` and logged with its user and
//! device.

use redis::Value;
use tracing::warn;

use super::Store;
use super::reply::value_text;

/// One loss: a device group of a recipient missed `count` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TrimLoss {
    /// Position of the recipient in the script call (1-based).
    pub recipient: usize,
    /// The device group.
    pub device: String,
    /// `maxlen` or `idle_device`.
    pub reason: &'static str,
    /// Entries removed that the group had not acked.
    pub count: u64,
}

/// Reads a script's `lost` list: `{r, group, reason, count}` items. Unreadable items
/// are skipped: the write they report on has happened.
pub(super) fn parse_losses(value: Value) -> Vec<TrimLoss> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(fields) = item else {
                return None;
            };
            let [recipient, device, reason, count] = <[Value; 4]>::try_from(fields).ok()?;
            let reason = match value_text(reason)?.as_str() {
                "maxlen" => "maxlen",
                "idle_device" => "idle_device",
                _ => return None,
            };
            Some(TrimLoss {
                recipient: integer(recipient)?,
                device: value_text(device)?,
                reason,
                count: integer(count)?,
            })
        })
        .collect()
}

fn integer<T: TryFrom<i64>>(value: Value) -> Option<T> {
    match value {
        Value::Int(n) => T::try_from(n).ok(),
        _ => None,
    }
}

impl Store {
    /// Counts and logs the losses a send script reported; `user_of` maps a recipient
    /// position (1-based) to the user.
    pub(super) fn record_losses(&self, lost: Value, user_of: impl Fn(usize) -> Option<u64>) {
        for loss in parse_losses(lost) {
            let user = user_of(loss.recipient);
            self.metrics.trimmed_unacked(loss.reason, loss.count);
            warn!(
                user,
                device = %loss.device,
                reason = loss.reason,
                count = loss.count,
                "inbox trim removed entries this device had not acked"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn losses_are_read_and_unknown_reasons_skipped() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(2),
                text("phone"),
                text("idle_device"),
                Value::Int(5),
            ]),
            Value::Array(vec![Value::Int(1), text("x"), text("other"), Value::Int(1)]),
        ]);
        assert_eq!(
            parse_losses(reply),
            vec![TrimLoss {
                recipient: 2,
                device: "phone".into(),
                reason: "idle_device",
                count: 5
            }]
        );
        assert!(parse_losses(Value::Nil).is_empty());
    }
}
