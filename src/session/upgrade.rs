//! `GET /ws`: the checks of DESIGN §1 before the upgrade, in order — a WebSocket
//! upgrade request, an allowed `Origin`, a valid token, a valid `device`, a free
//! connection slot for the user — then the upgrade itself, and the session task.
//!
//! Refusals are HTTP errors with a JSON body (`crate::http`). The consumer is joined
//! before the 101 is sent, so a Redis failure is still a 503. A client that goes away
//! before taking the 101 leaves nothing behind: its consumer and its wake-up
//! subscription are released at once, rather than left for a later connection of the
//! device to clean up.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ORIGIN};
use hyper::{Request, StatusCode};
use hyper_tungstenite::HyperWebsocket;
use hyper_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::auth::{AuthError, Claims, query_param};
use crate::http::{HttpResponse, error};
use crate::node::{ConnectionSlot, Node};
use crate::store::StoreError;

/// Answers an upgrade request on `/ws`: a refusal, or the 101 that hands the
/// connection to a session task on the node's session tracker.
pub async fn upgrade(node: Arc<Node>, mut request: Request<Incoming>) -> HttpResponse {
    if !hyper_tungstenite::is_upgrade_request(&request) {
        return error(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "GET /ws must be a WebSocket upgrade request",
        );
    }
    let settings = &node.session;
    if !origin_allowed(&settings.allowed_origins, request.headers().get(ORIGIN)) {
        return error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this Origin is not in COURIER_ALLOWED_ORIGINS",
        );
    }
    let query = request.uri().query();
    let claims = match node.auth.authenticate(request.headers(), query) {
        Ok(claims) => claims,
        Err(e @ (AuthError::Missing | AuthError::Invalid(_))) => {
            return error(StatusCode::UNAUTHORIZED, "invalid_token", &e.to_string());
        }
    };
    let device = query_param(query, "device").unwrap_or_else(|| "default".into());
    if !valid_device(&device) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_device",
            "device must match [A-Za-z0-9_-]{1,64}",
        );
    }
    let Some(slot) = node.connections.try_acquire(claims.id) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            &format!(
                "user {} already has {} connections here",
                claims.id,
                node.connections.max()
            ),
        );
    };
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The read buffer is allocated (and zero-filled) per connection up front; 1 KiB
    // holds a typical client frame (an ack, a small batch) in one read, larger frames
    // take a few reads. Writes go straight to the socket.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(settings.max_frame_bytes))
        .max_frame_size(Some(settings.max_frame_bytes));
    // Checked before the consumer is prepared: a malformed handshake costs no Redis
    // work. Until the 101 is returned, nothing is upgraded.
    let (response, websocket) = match hyper_tungstenite::upgrade(&mut request, Some(ws_config)) {
        Ok(upgrade) => upgrade,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_upgrade", &e.to_string()),
    };
    // The consumer is prepared by the session task, not by this handler: hyper drops
    // the handler of a client that goes away, and a consumer it was joining would be
    // left behind. The handler only waits for the answer: 101, or 503.
    let (answer, prepared) = oneshot::channel();
    let pending = Box::new(Pending {
        slot,
        claims,
        device,
        traceparent,
        websocket,
        answer,
    });
    node.sessions.spawn(session(node.clone(), pending));
    match prepared.await {
        Ok(Ok(())) => response,
        Ok(Err(e)) => {
            warn!(error = %e, "cannot prepare session");
            unavailable()
        }
        Err(_) => unavailable(),
    }
}

/// What the session task starts from: the checked request, the upgrade to come, and
/// where to say whether the consumer is ready.
struct Pending {
    slot: ConnectionSlot,
    claims: Claims,
    device: String,
    traceparent: Option<String>,
    websocket: HyperWebsocket,
    /// Told whether the consumer is ready; dropped (the send fails) when the client
    /// went away before the 101.
    answer: oneshot::Sender<Result<(), StoreError>>,
}

/// The session task: prepares the consumer, then, once upgraded, hands the connection
/// to a task of its own that serves it, and ends. A connection that is never served
/// (the client went away before the 101, or the upgrade failed) releases its consumer
/// and subscription at once.
///
/// The serving task is spawned rather than awaited here: this future's state is sized
/// by the join and the upgrade too (an awaited future is laid out beside what the
/// function held before it), and would be kept for the connection's whole life.
/// Ending this task frees it; an idle connection holds only the serving task.
async fn session(node: Arc<Node>, pending: Box<Pending>) {
    let Pending {
        slot,
        claims,
        device,
        traceparent,
        websocket,
        answer,
    } = *pending;
    let prepared = super::prepare(&node, slot, claims, device, traceparent.as_deref());
    let prepared = match Box::pin(prepared).await {
        Ok(prepared) => Box::new(prepared),
        Err(e) => {
            let _ = answer.send(Err(e));
            return;
        }
    };
    if answer.send(Ok(())).is_err() {
        debug!(parent: prepared.span(), "client went away before the upgrade");
        Box::pin(prepared.release(&node)).await;
        return;
    }
    match websocket.await {
        Ok(ws) => {
            node.sessions.spawn(super::run(node.clone(), *prepared, ws));
        }
        Err(e) => {
            warn!(parent: prepared.span(), error = %e, "upgrade failed");
            Box::pin(prepared.release(&node)).await;
        }
    }
}

fn unavailable() -> HttpResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "storage unavailable, retry later",
    )
}

fn valid_device(device: &str) -> bool {
    (1..=64).contains(&device.len())
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Browsers always send `Origin` on a WebSocket upgrade, so the allowlist (against
/// cross-site WebSocket hijacking) applies to requests that carry one; native and
/// mobile clients send none and are let through to authentication.
fn origin_allowed(allowed: &[String], origin: Option<&HeaderValue>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    allowed.is_empty()
        || origin
            .to_str()
            .is_ok_and(|o| allowed.iter().any(|a| a.trim().eq_ignore_ascii_case(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_design() {
        assert!(valid_device("default"));
        assert!(valid_device("phone_2-a"));
        assert!(!valid_device(""));
        assert!(!valid_device("a b"));
        assert!(!valid_device(&"x".repeat(65)));
    }

    #[test]
    fn origin_allowlist() {
        let allowed = vec!["https://a.example".to_string()];
        assert!(origin_allowed(&[], None));
        assert!(origin_allowed(
            &allowed,
            Some(&HeaderValue::from_static("https://a.example"))
        ));
        assert!(!origin_allowed(
            &allowed,
            Some(&HeaderValue::from_static("https://b.example"))
        ));
        assert!(
            origin_allowed(&allowed, None),
            "non-browser clients send no Origin"
        );
    }
}
