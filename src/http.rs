//! The HTTP replies every route shares: the response type, plain text, JSON, and the
//! JSON error body `{"error": code, "message": ...}` of DESIGN §1.
//!
//! Kept apart from the routing (`server.rs`) so that the WebSocket upgrade and the
//! HTTP API answer the same way without importing the server.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::json;

/// What every handler answers: the whole body at once.
pub type HttpResponse = Response<Full<Bytes>>;

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The JSON error body `{"error": code, "message": ...}` with its status.
pub fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    json_response(status, &json!({ "error": code, "message": message }))
}

/// A JSON response. Serialising courier's reply types cannot fail (no maps with
/// non-string keys); if it ever did, the answer is a 500 with a fixed body.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> HttpResponse {
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
