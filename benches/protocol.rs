//! Micro-benchmarks of the pure hot path of `courier::protocol`: decoding a client
//! batch frame, validating it, and encoding a delivery batch, for 1, 10 and 100
//! messages of 64-byte texts (the load generator's default size).
//!
//! The XREADGROUP reply parser (`store::reply::parse_entries`) is not benchmarked: the
//! `reply` module is private, so no public API reaches it without a running Redis.
//!
//! Run: `cargo bench --bench protocol` (add `-- --quick` for a short run).

use std::hint::black_box;

use courier::protocol::{
    BatchLimits, ClientFrame, DeliveredMessage, ServerFrame, decode_client_frame, validate_batch,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 3] = [1, 10, 100];
const TEXT: &str = "t=1732400000000123456;s=42;q=1234;r=987654;xxxxxxxxxxxxxxxxxxxxxx";
const LIMITS: BatchLimits = BatchLimits {
    batch_max: 100,
    max_text_bytes: 4096,
};

fn client_frame(n: usize) -> String {
    let messages: Vec<String> = (0..n)
        .map(|_| format!(r#"{{"sender_id":7,"chat_id":1001,"content_text":"{TEXT}"}}"#))
        .collect();
    format!(
        r#"{{"type":"messages","time_key":1732400000000123,"messages":[{}]}}"#,
        messages.join(",")
    )
}

fn delivered(n: usize) -> Vec<DeliveredMessage> {
    (0..n as u64)
        .map(|i| DeliveredMessage {
            id: 1_000_000 + i,
            sender_id: 7,
            chat_id: 1001,
            content_text: TEXT.to_string(),
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_client_frame");
    for n in SIZES {
        let frame = client_frame(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &frame, |b, frame| {
            b.iter(|| decode_client_frame(black_box(frame)).expect("valid frame"))
        });
    }
    group.finish();
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_batch");
    for n in SIZES {
        let Ok(ClientFrame::Send(batch)) = decode_client_frame(&client_frame(n)) else {
            panic!("the benchmark frame decodes to a batch");
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &batch, |b, batch| {
            b.iter(|| validate_batch(black_box(batch), 7, LIMITS).expect("valid batch"))
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_messages");
    for n in SIZES {
        let messages = delivered(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &messages, |b, messages| {
            b.iter(|| {
                ServerFrame::Messages {
                    time_key: 1_732_400_000_000_123,
                    messages: black_box(messages),
                }
                .encode()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, validate, encode);
criterion_main!(benches);
