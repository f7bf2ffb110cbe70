//! Fan-out of a batch whose messages go to different chats: each recipient gets the
//! messages of its chats, and only those, in batch order and with the batch's ids,
//! in its stream and its legacy list; a member listed twice in a chat gets a message
//! once. On a Redis Cluster users 98 and 2964 share a hash slot (10526, the CRC16
//! of `user:98` and `user:2964`), so one slot's script writes two different subsets.

mod support;

use serde_json::Value;
use support::*;

/// The `content_text`s of a user's legacy list.
fn legacy_texts(redis: &RedisServer, user: u64) -> Vec<String> {
    let items: Vec<String> = redis.cmd(&["LRANGE", &format!("user:{user}"), "0", "-1"]);
    items
        .iter()
        .map(|item| {
            let item: Value = serde_json::from_str(item).expect("legacy items are JSON");
            item["content_text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn each_recipient_gets_the_messages_of_its_chats_in_batch_order() {
    let redis = RedisServer::start();
    redis.create_chat(10, &[1, 2, 98]);
    redis.create_chat(11, &[1, 3, 2964]);
    redis.create_chat(12, &[1, 98, 98]);
    let courier = Courier::start(&redis.url(), &[]);
    let mut alice = courier.connect(1).await;
    let mut recipients = Vec::new();
    for user in [2, 98, 3, 2964] {
        recipients.push((user, courier.connect(user).await));
    }

    let batch = [(10, "a"), (11, "b"), (10, "c"), (12, "d"), (11, "e")];
    alice.send_acked(1, 1, &batch).await;

    let expected: [(u64, &[&str]); 4] = [
        (2, &["a", "c"]),
        (98, &["a", "c", "d"]),
        (3, &["b", "e"]),
        (2964, &["b", "e"]),
    ];
    let mut first_ids = Vec::new();
    for ((user, client), (expected_user, texts_of_user)) in recipients.iter_mut().zip(expected) {
        assert_eq!(*user, expected_user);
        let messages = client.recv_and_ack(texts_of_user.len()).await;
        assert_eq!(texts(&messages), texts_of_user, "user {user}'s messages");
        assert_eq!(legacy_texts(&redis, *user), texts_of_user, "user:{user}");
        // Message i of the batch has id first + i at every recipient.
        for (message, id) in messages.iter().zip(ids(&messages)) {
            let text = message["content_text"].as_str().unwrap_or_default();
            let index = batch
                .iter()
                .position(|(_, t)| *t == text)
                .expect("a message of the batch") as u64;
            first_ids.push(id - index);
        }
    }
    first_ids.dedup();
    assert_eq!(
        first_ids.len(),
        1,
        "one id per message, shared by its recipients"
    );
}
