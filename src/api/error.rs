//! The API's failures and their HTTP answers, in one table: status, `error` code, and
//! a `message` for the caller (the operator sees causes in the log).

use hyper::header::{ALLOW, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use serde_json::json;
use tracing::{debug, warn};

use crate::http::{HttpResponse, json_response};
use crate::protocol::{ErrorCode, ProtocolError};
use crate::store::StoreError;

/// Why an API request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No path of the API matches (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The path exists with this other method (405 `method_not_allowed`).
    #[error("use {0}")]
    MethodNotAllowed(Method),
    /// No credential, or neither the API key nor a valid service token (401
    /// `unauthorized`).
    #[error("{0}")]
    Unauthorized(String),
    /// The body exceeds `COURIER_MAX_FRAME_BYTES` (413 `body_too_large`).
    #[error("the body is larger than {limit} bytes (COURIER_MAX_FRAME_BYTES)")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Refused as a WebSocket send would be: the protocol error code, with the status
    /// of `protocol_status`.
    #[error("{}", .0.message)]
    Refused(ProtocolError),
    /// Redis failed (503 `unavailable` or 500 `internal`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The HTTP status of a protocol error code.
fn protocol_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson
        | ErrorCode::InvalidFrame
        | ErrorCode::DeprecatedFormat
        | ErrorCode::UnknownTimeKey => StatusCode::BAD_REQUEST,
        ErrorCode::SenderMismatch | ErrorCode::NotAMember => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Refused(e) => protocol_status(e.code),
            Self::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(StoreError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Unauthorized(_) => "unauthorized",
            Self::TooLarge { .. } => "body_too_large",
            Self::Refused(e) => e.code.as_str(),
            Self::Store(StoreError::Unavailable(_)) => ErrorCode::Unavailable.as_str(),
            Self::Store(StoreError::Internal(_)) => ErrorCode::Internal.as_str(),
        }
    }

    /// The response: `{"error": code, "message": ...}`, plus the batch's `time_key`
    /// when the error concerns one, and `Allow` on a 405 and `WWW-Authenticate` on a
    /// 401. Redis causes are logged, not sent.
    pub fn response(&self) -> HttpResponse {
        let message = match self {
            Self::Store(e) => {
                warn!(error = %e, "api: redis failed");
                match e {
                    StoreError::Unavailable(_) => "storage unavailable, retry later",
                    StoreError::Internal(_) => "internal error",
                }
                .to_string()
            }
            other => {
                debug!(code = other.code(), message = %other, "api: request refused");
                other.to_string()
            }
        };
        let mut body = json!({ "error": self.code(), "message": message });
        if let Self::Refused(ProtocolError {
            time_key: Some(time_key),
            ..
        }) = self
        {
            body["time_key"] = json!(time_key);
        }
        let mut response = json_response(self.status(), &body);
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed(method) => {
                if let Ok(allow) = HeaderValue::from_str(method.as_str()) {
                    headers.insert(ALLOW, allow);
                }
            }
            Self::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_codes() {
        let refused = |code| ApiError::Refused(ProtocolError::new(code, "x"));
        assert_eq!(refused(ErrorCode::InvalidJson).status(), 400);
        assert_eq!(refused(ErrorCode::NotAMember).status(), 403);
        assert_eq!(refused(ErrorCode::NotAMember).code(), "not_a_member");
        assert_eq!(ApiError::TooLarge { limit: 1 }.status(), 413);
        assert_eq!(ApiError::Unauthorized("x".into()).status(), 401);
        assert_eq!(
            ApiError::Store(StoreError::Unavailable("down".into())).code(),
            "unavailable"
        );
    }

    #[test]
    fn responses_carry_the_headers_http_asks_for() {
        let unauthorized = ApiError::Unauthorized("x".into()).response();
        assert_eq!(unauthorized.headers()[WWW_AUTHENTICATE], "Bearer");
        let wrong_method = ApiError::MethodNotAllowed(Method::POST).response();
        assert_eq!(wrong_method.headers()[ALLOW], "POST");
    }
}
