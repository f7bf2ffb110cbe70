//! Every Redis key and channel name of DESIGN §3. No other module formats a key.
//!
//! A user's keys share the hash tag `{user:<id>}`, so in Redis Cluster they live on
//! one slot (the same slot as the legacy `user:<id>` list).

/// `inbox:{user:<id>}`: the user's stream; one consumer group per device.
pub fn inbox(user: u64) -> String {
    format!("inbox:{{user:{user}}}")
}

/// `user:<id>`: the legacy JSON list other services read.
pub fn legacy_list(user: u64) -> String {
    format!("user:{user}")
}

/// `dead:{user:<id>}`: entries that reached the maximum deliveries.
pub fn dead_letters(user: u64) -> String {
    format!("dead:{{user:{user}}}")
}

/// `notify:{user:<id>}`: pub/sub wake-up channel of the user's consumers.
pub fn notify_channel(user: u64) -> String {
    format!("notify:{{user:{user}}}")
}

/// The user id of a `notify:{user:<id>}` channel name.
pub fn user_of_notify_channel(channel: &[u8]) -> Option<u64> {
    std::str::from_utf8(channel)
        .ok()?
        .strip_prefix("notify:{user:")?
        .strip_suffix('}')?
        .parse()
        .ok()
}

/// `dedup:{user:<id>}:<time_key>`: idempotency record of a sent batch; its value is
/// the batch's first id, an integer (`send::dedup_record`).
pub fn dedup(user: u64, time_key: &str) -> String {
    format!("dedup:{{user:{user}}}:{time_key}")
}

/// `dedup:{user:<sender>}:<time_key>:ids`: the ids reserved for a batch being
/// written on a Redis Cluster, `<first_id>:<count>`, so that a retry after a partial
/// failure writes the same ids. Expires with the dedup window. (Cluster only; an
/// addition to DESIGN §3, see the README.)
pub fn dedup_ids(sender: u64, time_key: &str) -> String {
    format!("dedup:{{user:{sender}}}:{time_key}:ids")
}

/// `dedup:{user:<recipient>}:from:<sender>:<time_key>`: marks, in the recipient's
/// slot, that a batch was written to that recipient (the dedup record's value), so a retry
/// on a Redis Cluster skips it. Expires with the dedup window. (Cluster only; an
/// addition to DESIGN §3, see the README.)
pub fn delivered_marker(recipient: u64, sender: u64, time_key: &str) -> String {
    format!("dedup:{{user:{recipient}}}:from:{sender}:{time_key}")
}

/// `chat:<id>`: the chat's member ids, written by other services.
pub fn chat(chat: u64) -> String {
    format!("chat:{chat}")
}

/// `message:last_id`: the counter behind global message ids.
pub const LAST_MESSAGE_ID: &str = "message:last_id";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        assert_eq!(inbox(7), "inbox:{user:7}");
        assert_eq!(legacy_list(7), "user:7");
        assert_eq!(dead_letters(7), "dead:{user:7}");
        assert_eq!(dedup(7, "-3"), "dedup:{user:7}:-3");
        assert_eq!(dedup_ids(7, "-3"), "dedup:{user:7}:-3:ids");
        assert_eq!(delivered_marker(2, 7, "-3"), "dedup:{user:2}:from:7:-3");
        assert_eq!(chat(10), "chat:10");
        assert_eq!(
            user_of_notify_channel(notify_channel(42).as_bytes()),
            Some(42)
        );
        assert_eq!(user_of_notify_channel(b"notify:{user:x}"), None);
    }
}
