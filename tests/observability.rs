//! Observability: one trace per message across sender and recipients (decoded from
//! real OTLP/HTTP protobuf exports), and Prometheus counters that move by the
//! right amounts.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use support::*;

/// A span as received, reduced to what the assertions need.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// A minimal OTLP/HTTP trace receiver on a free loopback port.
struct OtlpReceiver {
    port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let body = request.into_body().collect().await.map(|b| b.to_bytes());
                            if let Ok(body) = body {
                                let export =
                                    ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                                sink.lock().expect("lock").extend(flatten(export));
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self { port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    name: span.name,
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .into_iter()
                        .filter_map(|kv| Some((kv.key, text(kv.value?.value.as_ref()?))))
                        .collect(),
                });
            }
        }
    }
    out
}

fn text(value: &AnyValue) -> String {
    match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn one_message_is_one_trace_from_the_senders_batch_to_every_recipients_ack() {
    let receiver = OtlpReceiver::start().await;
    let redis = RedisServer::start();
    let endpoint = receiver.endpoint();
    let tracing_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    // Sender and recipients on different instances: the trace crosses them.
    let east = Courier::start(&redis.url(), &tracing_env);
    let west = Courier::start(&redis.url(), &tracing_env);
    redis.create_chat(10, &[1, 2, 3]);
    let mut alice = east.connect(1).await;
    let mut bob = west.connect(2).await;
    let mut carol = east.connect(3).await;

    alice.send_acked(77, 1, &[(10, "traced")]).await;
    let message_id = bob.recv_and_ack(1).await[0]["id"].as_u64().expect("id");
    carol.recv_and_ack(1).await;

    let traceparent: String = redis::cmd("XRANGE")
        .arg("inbox:{user:2}")
        .arg("-")
        .arg("+")
        .query::<Vec<(String, HashMap<String, String>)>>(&mut redis.conn())
        .expect("XRANGE")[0]
        .1
        .get("traceparent")
        .cloned()
        .expect("the stream entry carries a traceparent");
    let trace_id = traceparent.split('-').nth(1).expect("trace id").to_string();

    let wanted = |spans: &[ReceivedSpan]| {
        let count = |name: &str| {
            spans
                .iter()
                .filter(|s| s.trace_id == trace_id && s.name == name)
                .count()
        };
        count("client_batch") == 1
            && count("message") == 1
            && count("redis.send") == 1
            && count("deliver") == 2
            && count("ack") == 2
    };
    wait_for("the message's spans to be exported", async || {
        wanted(&receiver.spans())
    })
    .await;

    let spans: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .collect();
    let by_name = |name: &'static str| spans.iter().filter(move |s| s.name == name);
    let batch = by_name("client_batch").next().expect("batch span");
    let message = by_name("message").next().expect("message span");
    assert_eq!(batch.parent_span_id, "", "the batch starts the trace");
    assert_eq!(
        batch.attributes.get("time_key").map(String::as_str),
        Some("77")
    );
    assert_eq!(message.parent_span_id, batch.span_id);
    assert_eq!(
        message.attributes.get("message.id"),
        Some(&message_id.to_string())
    );
    assert_eq!(
        by_name("redis.send").next().map(|s| &s.parent_span_id),
        Some(&batch.span_id)
    );
    for name in ["deliver", "ack"] {
        let mut users: Vec<String> = by_name(name)
            .map(|s| {
                assert_eq!(
                    s.parent_span_id, message.span_id,
                    "{name} is a child of the message"
                );
                assert_eq!(
                    s.attributes.get("message.id"),
                    Some(&message_id.to_string())
                );
                s.attributes.get("user").cloned().unwrap_or_default()
            })
            .collect();
        users.sort();
        assert_eq!(users, ["2", "3"], "one {name} span per recipient");
    }
    assert!(
        spans.iter().all(|s| s.service == "courier"),
        "default service name"
    );

    println!("trace {trace_id}:");
    print_tree(&spans, "", 0);
}

fn print_tree(spans: &[ReceivedSpan], parent: &str, depth: usize) {
    for span in spans.iter().filter(|s| s.parent_span_id == parent) {
        let mut attributes: Vec<_> = span.attributes.iter().collect();
        attributes.sort();
        println!("{}{} {:?}", "  ".repeat(depth), span.name, attributes);
        print_tree(spans, &span.span_id, depth + 1);
    }
}

/// The value of an unlabelled sample, or of one with exactly this label set.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_frames_messages_acks_and_errors() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    redis.create_chat(10, &[1, 2, 3]);
    let mut alice = courier.connect(1).await;
    let mut bob = courier.connect(2).await;
    let mut carol = courier.connect(3).await;

    alice.send_acked(1, 1, &[(10, "a"), (10, "b")]).await;
    bob.recv_and_ack(2).await;
    carol.recv_and_ack(2).await;
    alice.send_batch(2, 1, &[(99, "not a member")]).await;
    alice.expect_error("not_a_member").await;
    alice.send_text("nonsense").await;
    alice.expect_error("invalid_json").await;
    wait_for_pending(&redis, 3, "default", 0).await;

    let (status, text) = http_get(courier.addr, "/metrics").await;
    assert_eq!(status, 200);
    let expect = [
        ("courier_connections", 3.0),
        ("courier_messages_accepted_total", 2.0),
        ("courier_messages_delivered_total", 4.0),
        ("courier_messages_redelivered_total", 0.0),
        ("courier_acks_total", 2.0),
        ("courier_frames_in_total{frame=\"messages\"}", 2.0),
        ("courier_frames_in_total{frame=\"ack\"}", 2.0),
        ("courier_frames_in_total{frame=\"invalid\"}", 1.0),
        ("courier_frames_out_total{frame=\"ack\"}", 1.0),
        ("courier_frames_out_total{frame=\"messages\"}", 2.0),
        ("courier_frames_out_total{frame=\"error\"}", 2.0),
        ("courier_errors_total{code=\"not_a_member\"}", 1.0),
        ("courier_errors_total{code=\"invalid_json\"}", 1.0),
        ("courier_batch_size_count{direction=\"in\"}", 2.0),
        ("courier_batch_size_sum{direction=\"out\"}", 4.0),
        ("courier_send_to_deliver_seconds_count", 4.0),
        ("courier_deliver_to_ack_seconds_count", 2.0),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&text, name), value, "{name} in\n{text}");
    }
    assert!(
        sample(
            &text,
            "courier_redis_command_seconds_count{command=\"send\"}"
        ) >= 1.0
    );
}
