//! The HTTP side: listener, routing (`/ws`, `/healthz`, `/readyz`, and `/api/` to
//! [`crate::api`]), the checks made before a WebSocket upgrade, and shutdown.
//!
//! Everything a client can get wrong before the upgrade is answered with an HTTP
//! status and a JSON body `{"error": ..., "message": ...}`; after the upgrade the
//! session answers with error frames and close codes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, ORIGIN};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_tungstenite::tungstenite::protocol::WebSocketConfig;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::{AuthError, Authenticator, query_param};
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::protocol::BatchLimits;
use crate::session::{self, SessionSettings, UserConnections};
use crate::store::notify::Notifier;
use crate::store::send::SendPolicy;
use crate::store::{Store, StoreOptions};

/// Everything the connections of one instance share.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// This instance's name, the prefix of its consumer names.
    pub instance_id: String,
    /// Token validation.
    pub auth: Authenticator,
    /// Redis commands.
    pub store: Store,
    /// Redis wake-ups.
    pub notifier: Notifier,
    /// Prometheus metrics, served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Per-connection settings.
    pub session: SessionSettings,
    /// Cancelled when the server shuts down; every session watches it and closes with
    /// 1001.
    pub shutdown: CancellationToken,
    /// Connections per user on this instance.
    pub user_connections: Arc<UserConnections>,
    /// Tracks session tasks, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

/// A bound, ready server.
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    notifier_task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds the listener and sets up Redis handles (connected lazily).
    pub async fn bind(config: Config, shutdown: CancellationToken) -> Result<Self, ConfigError> {
        let auth = Authenticator::from_config(&config)?;
        let ca_cert = match &config.redis_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError(format!(
                    "COURIER_REDIS_CA_FILE: cannot read {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let options = StoreOptions {
            url: config.redis_url.clone(),
            response_timeout: Duration::from_millis(config.redis_timeout_ms),
            ca_cert,
        };
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(&options, metrics.clone())
            .map_err(|e| ConfigError(format!("COURIER_REDIS_URL: {e}")))?;
        let (notifier, notifier_task) =
            Notifier::start(&options, metrics.clone(), shutdown.clone())
                .map_err(|e| ConfigError(format!("COURIER_REDIS_URL: {e}")))?;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            ConfigError(format!(
                "COURIER_LISTEN: cannot listen on {}: {e}",
                config.listen
            ))
        })?;
        let instance_id = config
            .instance_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
        let session = SessionSettings {
            batch_max: config.batch_max as usize,
            max_inflight_batches: config.max_inflight_batches as usize,
            outbound_queue: config.outbound_queue as usize,
            limits: BatchLimits {
                batch_max: config.batch_max as usize,
                max_text_bytes: config.max_text_bytes as usize,
            },
            send_policy: SendPolicy {
                deliver_to_sender: config.deliver_to_sender,
                stream_maxlen: config.stream_maxlen,
                dedup_window_s: config.dedup_window_s,
            },
            poll_interval: config.poll_interval(),
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            dead_letter_maxlen: config.stream_maxlen,
            ack_timeout: config.ack_timeout(),
            max_deliveries: config.max_deliveries,
            stale_consumer_after: config.poll_interval() * 3,
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            rate_limit_fps: config.rate_limit_fps,
            rate_limit_burst: config.rate_limit_burst,
            max_client_errors: config.max_client_errors,
        };
        let state = Arc::new(AppState {
            config,
            instance_id,
            auth,
            store,
            notifier,
            metrics,
            session,
            shutdown,
            user_connections: Arc::default(),
            sessions: TaskTracker::new(),
        });
        Ok(Self {
            listener,
            state,
            notifier_task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until shutdown, then waits (bounded) for sessions to close.
    pub async fn run(self) {
        let Self {
            listener,
            state,
            notifier_task,
        } = self;
        info!(addr = ?listener.local_addr().ok(), instance = %state.instance_id, "courier listening");
        loop {
            let accepted = tokio::select! {
                _ = state.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, _) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(state.clone(), request));
                let connection = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let _ = connection.await;
            });
        }
        drop(listener);
        state.sessions.close();
        let drain_timeout = Duration::from_millis(state.config.drain_timeout_ms);
        if tokio::time::timeout(drain_timeout, state.sessions.wait())
            .await
            .is_err()
        {
            warn!("sessions did not close within the drain timeout");
        }
        notifier_task.abort();
        info!("courier stopped");
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}

/// What every handler answers.
pub(crate) type HttpResponse = Response<Full<Bytes>>;

async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/ws") => upgrade(state, request).await,
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => match state.store.ping().await {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &e.to_string(),
            ),
        },
        (_, path) if path.starts_with("/api/") => crate::api::handle(state, request).await,
        (_, "/ws" | "/healthz" | "/readyz" | "/metrics") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        ),
        (_, path) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route {path}"),
        ),
    };
    Ok(response)
}

/// The checks of DESIGN §1, in order, then the upgrade.
async fn upgrade(state: Arc<AppState>, mut request: Request<Incoming>) -> HttpResponse {
    if !hyper_tungstenite::is_upgrade_request(&request) {
        return error(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            "GET /ws must be a WebSocket upgrade request",
        );
    }
    if !origin_allowed(&state.config.allowed_origins, request.headers().get(ORIGIN)) {
        return error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this Origin is not in COURIER_ALLOWED_ORIGINS",
        );
    }
    let query = request.uri().query();
    let claims = match state.auth.authenticate(request.headers(), query) {
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
    let max = state.config.max_connections_per_user;
    let Some(slot) = state.user_connections.try_acquire(claims.id, max) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            &format!("user {} already has {max} connections here", claims.id),
        );
    };
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let prepared =
        match session::prepare(&state, slot, claims, device, traceparent.as_deref()).await {
            Ok(prepared) => prepared,
            Err(e) => {
                warn!(error = %e, "cannot prepare session");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "storage unavailable, retry later",
                );
            }
        };
    // The read buffer is allocated (and zero-filled) per connection up front; 1 KiB
    // holds a typical client frame (an ack, a small batch) in one read, larger frames
    // take a few reads. Writes go straight to the socket.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(state.config.max_frame_bytes as usize))
        .max_frame_size(Some(state.config.max_frame_bytes as usize));
    let (response, websocket) = match hyper_tungstenite::upgrade(&mut request, Some(ws_config)) {
        Ok(upgrade) => upgrade,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_upgrade", &e.to_string()),
    };
    let sessions = state.sessions.clone();
    // Boxed: what an async block captures stays in its state for the connection's
    // whole life.
    let prepared = Box::new(prepared);
    sessions.spawn(async move {
        match websocket.await {
            Ok(ws) => session::run(state, *prepared, ws).await,
            Err(e) => warn!(error = %e, "upgrade failed"),
        }
    });
    response
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

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The JSON error body `{"error": code, "message": ...}` with its status.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    json_response(status, &json!({ "error": code, "message": message }))
}

/// A JSON response. Serialising courier's reply types cannot fail (no maps with
/// non-string keys); if it ever did, the answer is a 500 with a fixed body.
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    let (status, body) = match serde_json::to_vec(body) {
        Ok(body) => (status, Bytes::from(body)),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(br#"{"error":"internal","message":"encoding failed"}"#),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
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
