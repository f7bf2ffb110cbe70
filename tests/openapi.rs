//! docs/openapi.yaml against a running courier: every documented path and method
//! exists, and every documented response status is what courier answers to a
//! representative request (Redis-down answers last, after Redis is killed).

mod support;

use serde_json::{Value, json};
use serde_norway::Value as Yaml;
use support::*;

const API_KEY: &str = "openapi-test-key";
const ORIGIN: &str = "https://app.example";

/// One documented operation: method (upper case), path template, and its responses
/// as (status, whether the body is documented as JSON).
struct Operation {
    method: String,
    path: String,
    responses: Vec<(u16, bool)>,
}

fn documented_operations() -> Vec<Operation> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let doc: Yaml = serde_norway::from_str(&text).expect("openapi.yaml is YAML");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let paths = doc["paths"].as_mapping().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path is a string");
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(responses) = item.get(method).map(|op| &op["responses"]) else {
                continue;
            };
            let responses = responses
                .as_mapping()
                .unwrap_or_else(|| panic!("{method} {path} has responses"))
                .iter()
                .map(|(status, response)| {
                    let status =
                        status
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or_else(|| {
                                panic!("{method} {path}: status {status:?} is a quoted code")
                            });
                    let json = response["content"].get("application/json").is_some();
                    (status, json)
                })
                .collect();
            operations.push(Operation {
                method: method.to_uppercase(),
                path: path.to_string(),
                responses,
            });
        }
    }
    assert!(operations.len() >= 6, "the document lists the surface");
    operations
}

/// Sends the representative request for (method, path, status); `None` when there
/// is none (a documented status nobody checks fails the test).
async fn probe(courier: &Courier, method: &str, path: &str, status: u16) -> Option<(u16, String)> {
    let bearer = format!("Bearer {API_KEY}");
    let concrete = &path.replace("{id}", "2");
    let send = |with_key: bool, body: String| {
        let key = [("Authorization", bearer.as_str())];
        async move {
            let headers: &[(&str, &str)] = if with_key { &key } else { &[] };
            http_request(courier.addr, method, concrete, headers, &body).await
        }
    };
    let publish = |sender: u64, text: String| {
        json!({"messages": [{"sender_id": sender, "chat_id": 10, "content_text": text}]})
            .to_string()
    };
    let reply = match (method, path, status) {
        ("GET", "/healthz" | "/readyz" | "/metrics", _) => send(false, String::new()).await,
        ("GET", "/ws", _) => return Some(upgrade(courier, status).await),
        ("POST", "/api/v1/messages", 202 | 503) => send(true, publish(1, "hi".into())).await,
        ("POST", "/api/v1/messages", 400) => send(true, "{".into()).await,
        ("POST", "/api/v1/messages", 401) => send(false, publish(1, "hi".into())).await,
        ("POST", "/api/v1/messages", 403) => send(true, publish(3, "hi".into())).await,
        ("POST", "/api/v1/messages", 413) => send(true, publish(1, "x".repeat(2048))).await,
        (_, "/api/v1/users/{id}/pending" | "/api/v1/users/{id}/dead-letters/replay", 401) => {
            send(false, String::new()).await
        }
        (_, "/api/v1/users/{id}/pending" | "/api/v1/users/{id}/dead-letters/replay", _) => {
            send(true, String::new()).await
        }
        _ => return None,
    };
    Some(reply)
}

/// The `/ws` representative requests: the upgrade itself (101) or its refusals.
async fn upgrade(courier: &Courier, status: u16) -> (u16, String) {
    let url =
        |token: &str, device: &str| format!("{}?token={token}&device={device}", courier.ws_url());
    let attempt = match status {
        400 => return http_get(courier.addr, "/ws").await,
        401 => WsClient::connect_with_header(&url("", "default"), "Origin", ORIGIN).await,
        403 => {
            WsClient::connect_with_header(
                &url(&token(1), "default"),
                "Origin",
                "https://evil.example",
            )
            .await
        }
        _ => WsClient::connect_with_header(&url(&token(1), "default"), "Origin", ORIGIN).await,
    };
    match attempt {
        Ok(client) => {
            client.close().await;
            (101, String::new())
        }
        Err(refusal) => (refusal.status, refusal.body.to_string()),
    }
}

#[tokio::test]
async fn every_documented_operation_and_status_matches_the_server() {
    let mut redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_API_KEY", API_KEY),
            ("COURIER_MAX_FRAME_BYTES", "1024"),
            ("COURIER_ALLOWED_ORIGINS", ORIGIN),
        ],
    );
    redis.create_chat(10, &[1, 2]);
    let operations = documented_operations();

    for op in &operations {
        let path = op.path.replace("{id}", "2");
        let (status, body) = http_request(courier.addr, &op.method, &path, &[], "").await;
        assert!(
            status != 404 && status != 405,
            "{} {} is documented but answers {status}: {body}",
            op.method,
            op.path
        );
    }

    let mut unprobed = Vec::new();
    for redis_down in [false, true] {
        if redis_down {
            redis.kill();
        }
        for op in &operations {
            for &(status, json) in &op.responses {
                if (status == 503) != redis_down {
                    continue;
                }
                let Some((actual, body)) = probe(&courier, &op.method, &op.path, status).await
                else {
                    unprobed.push(format!("{} {} {status}", op.method, op.path));
                    continue;
                };
                assert_eq!(
                    actual, status,
                    "{} {}: documented {status}, got {actual}: {body}",
                    op.method, op.path
                );
                if json {
                    let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
                        panic!(
                            "{} {} {status}: documented as JSON ({e}): {body}",
                            op.method, op.path
                        )
                    });
                    if status >= 400 {
                        assert!(
                            body["error"].is_string(),
                            "{} {} {status}: {body}",
                            op.method,
                            op.path
                        );
                    }
                }
            }
        }
    }
    assert!(
        unprobed.is_empty(),
        "documented without a representative request: {unprobed:?}"
    );
}
