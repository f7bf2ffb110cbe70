//! Property tests of the pure protocol decoder: it never panics on any input, every
//! error carries a known code and a bounded message, and every valid batch decodes to
//! exactly what was encoded.

use courier::protocol::{
    BatchLimits, ClientFrame, ErrorCode, TimeKey, decode_client_frame, validate_batch,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("time_key".to_string()),
                    Just("messages".to_string()),
                    Just("sender_id".to_string()),
                    Just("chat_id".to_string()),
                    Just("content_text".to_string()),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A frame-like object: the right `type` with arbitrary other fields.
fn frame_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("messages"), Just("ack"), Just("x")],
        json_value(),
        json_value(),
    )
        .prop_map(|(kind, time_key, messages)| {
            json!({"type": kind, "time_key": time_key, "messages": messages})
        })
}

fn assert_well_formed_error(text: &str) {
    if let Err(e) = decode_client_frame(text) {
        assert!(ErrorCode::ALL.contains(&e.code));
        assert!(
            !e.message.is_empty() && e.message.len() < 2048,
            "{}",
            e.message
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_text(text in ".{0,400}") {
        assert_well_formed_error(&text);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        assert_well_formed_error(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn never_panics_on_arbitrary_json(value in json_value()) {
        assert_well_formed_error(&value.to_string());
    }

    #[test]
    fn never_panics_on_frame_like_json(value in frame_like()) {
        let text = value.to_string();
        assert_well_formed_error(&text);
        if let Ok(ClientFrame::Send(batch)) = decode_client_frame(&text) {
            let limits = BatchLimits { batch_max: 100, max_text_bytes: 4096 };
            let _ = validate_batch(&batch, 1, limits);
        }
    }

    #[test]
    fn valid_batches_decode_to_what_was_sent(
        time_key in prop_oneof![any::<i64>().prop_map(i128::from), any::<u64>().prop_map(i128::from)],
        messages in prop::collection::vec((any::<u64>(), any::<u64>(), ".{0,40}"), 1..20),
    ) {
        let time_key_json = match i64::try_from(time_key) {
            Ok(signed) => json!(signed),
            Err(_) => json!(u64::try_from(time_key).unwrap_or(u64::MAX)),
        };
        let frame = json!({
            "type": "messages",
            "time_key": time_key_json,
            "messages": messages.iter().map(|(s, c, t)| json!({"sender_id": s, "chat_id": c, "content_text": t})).collect::<Vec<_>>(),
        });
        let decoded = decode_client_frame(&frame.to_string());
        let Ok(ClientFrame::Send(batch)) = decoded else {
            panic!("valid frame refused: {decoded:?}");
        };
        prop_assert_eq!(batch.time_key.to_string(), time_key.to_string());
        prop_assert_eq!(batch.messages.len(), messages.len());
        for (got, (s, c, t)) in batch.messages.iter().zip(&messages) {
            prop_assert_eq!((got.sender_id, got.chat_id, got.content_text.as_str()), (*s, *c, t.as_str()));
        }
    }

    #[test]
    fn acks_decode_any_64_bit_time_key(time_key in any::<u64>()) {
        let decoded = decode_client_frame(&json!({"type": "ack", "time_key": time_key}).to_string());
        prop_assert_eq!(decoded, Ok(ClientFrame::Ack(TimeKey::from_u64(time_key))));
    }
}
