//! The HTTP server of one instance: the accept loop, the routes, and graceful
//! shutdown. A leaf: nothing imports it but `main`.
//!
//! Routes: `GET /ws` (the WebSocket upgrade, `session::upgrade`), `/api/v1/...` (the
//! HTTP API, `api`), `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! Shutdown, when the signal given to [`run`] completes: stop accepting; tell every
//! HTTP connection to finish its request in flight and close (hyper's
//! `graceful_shutdown`); cancel the node's shutdown token, so every WebSocket session
//! closes with 1001; then wait, at most `COURIER_DRAIN_TIMEOUT_MS` in all, for the
//! connections and then for the sessions (a request in flight may still be an
//! upgrade that starts one).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::ConfigError;
use crate::http::{HttpResponse, error, text};
use crate::node::Node;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the kernel may hold completed but not yet accepted (capped by
/// `net.core.somaxconn`). The default of 128 overflows when thousands of clients
/// reconnect at once (an instance restart behind a load balancer): the kernel then
/// drops handshakes and the clients retry only after a second or more.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket (`COURIER_LISTEN`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ConfigError> {
    let error =
        |e: std::io::Error| ConfigError(format!("COURIER_LISTEN: cannot listen on {addr}: {e}"));
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    socket.listen(LISTEN_BACKLOG).map_err(error)
}

/// Serves `listener` until `shutdown` completes, then drains (see the module docs)
/// and returns.
pub async fn run(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    info!(addr = ?listener.local_addr().ok(), instance = %node.instance_id, "courier listening");
    // The connection tasks, so shutdown can wait for them; `closing` tells each one
    // to finish its request in flight and close.
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                connections.spawn(serve_connection(stream, node.clone(), closing.clone()));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    closing.cancel();
    node.shutdown.cancel();
    connections.close();
    node.sessions.close();
    let drained = tokio::time::timeout(node.drain_timeout, async {
        connections.wait().await;
        node.sessions.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            sessions = node.sessions.len(),
            "connections did not close within the drain timeout"
        );
    }
    node.close();
    info!("courier stopped");
}

/// Serves one HTTP connection (its requests, and the upgrade of a WebSocket) until it
/// ends; once `closing` is cancelled, finishes the request in flight and closes.
async fn serve_connection(stream: TcpStream, node: Arc<Node>, closing: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| handle(node.clone(), request));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = closing.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
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

async fn handle(node: Arc<Node>, request: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/ws") => crate::session::upgrade(node, request).await,
        (&Method::GET, "/metrics") => metrics(&node),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => match node.store.ping().await {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &e.to_string(),
            ),
        },
        (_, path) if path.starts_with("/api/") => crate::api::handle(&node, request).await,
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

/// `GET /metrics`: the registry in OpenMetrics text.
fn metrics(node: &Node) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(node.metrics.encode())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
