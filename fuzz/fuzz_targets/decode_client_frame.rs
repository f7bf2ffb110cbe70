//! Fuzz target: the frame decoder and batch validation on arbitrary input must never
//! panic, and every error must carry a known code and a bounded message.

#![no_main]

use courier::protocol::{BatchLimits, ClientFrame, ErrorCode, decode_client_frame, validate_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_client_frame(text) {
        Ok(ClientFrame::Send(batch)) => {
            let limits = BatchLimits { batch_max: 100, max_text_bytes: 4096 };
            if let Err(e) = validate_batch(&batch, 1, limits) {
                assert!(ErrorCode::ALL.contains(&e.code));
            }
        }
        Ok(_) => {}
        Err(e) => {
            assert!(ErrorCode::ALL.contains(&e.code));
            assert!(!e.message.is_empty() && e.message.len() < 2048);
        }
    }
});
