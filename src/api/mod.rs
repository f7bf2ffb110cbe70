//! The HTTP API for other services and operators, under `/api/v1/`
//! (docs/openapi.yaml is its reference):
//!
//! - `POST /api/v1/messages` (`publish`): a backend sends a batch as any user, through
//!   the same validation, fan-out and dedup as a WebSocket send.
//! - `GET /api/v1/users/{id}/pending` and `POST /api/v1/users/{id}/dead-letters/replay`
//!   (`ops`): a user's pending summary, and the replay of their dead letters.
//!
//! Every route needs a service credential (`access`). A request is routed first (so
//! an unknown path is a 404 whoever asks), then authorised, then handled; every
//! failure is an [`ApiError`], turned into a status and a JSON body in one place.

mod access;
mod error;
mod ops;
mod publish;
pub mod settings;

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::http::HttpResponse;
use crate::node::Node;
pub use error::ApiError;

/// Answers one request whose path starts with `/api/`.
pub async fn handle(node: &Node, request: Request<Incoming>) -> HttpResponse {
    dispatch(node, request)
        .await
        .unwrap_or_else(|e| e.response())
}

async fn dispatch(node: &Node, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let route = Route::parse(request.method(), request.uri().path())?;
    let caller = access::authorize(node, request.headers())?;
    match route {
        Route::Publish => publish::publish(node, &caller, request.into_body()).await,
        Route::Pending(user) => ops::pending(node, user).await,
        Route::ReplayDeadLetters(user) => ops::replay(node, &caller, user).await,
    }
}

/// The API's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `POST /api/v1/messages`.
    Publish,
    /// `GET /api/v1/users/{id}/pending`.
    Pending(u64),
    /// `POST /api/v1/users/{id}/dead-letters/replay`.
    ReplayDeadLetters(u64),
}

impl Route {
    /// The route of a method and path: 404 for an unknown path (or a user id that is
    /// not an integer), 405 for a known path with another method.
    fn parse(method: &Method, path: &str) -> Result<Self, ApiError> {
        let not_found = || ApiError::NotFound(format!("no route {path}"));
        let segments: Vec<&str> = path
            .strip_prefix("/api/v1/")
            .ok_or_else(not_found)?
            .split('/')
            .collect();
        let user = |id: &str| {
            id.parse::<u64>()
                .map_err(|_| ApiError::NotFound(format!("no route {path}: user ids are integers")))
        };
        let (route, allowed) = match segments.as_slice() {
            ["messages"] => (Self::Publish, Method::POST),
            ["users", id, "pending"] => (Self::Pending(user(id)?), Method::GET),
            ["users", id, "dead-letters", "replay"] => {
                (Self::ReplayDeadLetters(user(id)?), Method::POST)
            }
            _ => return Err(not_found()),
        };
        if *method != allowed {
            return Err(ApiError::MethodNotAllowed(allowed));
        }
        Ok(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(method: Method, path: &str) -> Result<Route, u16> {
        Route::parse(&method, path).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn routes_and_their_methods() {
        assert_eq!(status(Method::POST, "/api/v1/messages"), Ok(Route::Publish));
        assert_eq!(
            status(Method::GET, "/api/v1/users/7/pending"),
            Ok(Route::Pending(7))
        );
        assert_eq!(
            status(Method::POST, "/api/v1/users/7/dead-letters/replay"),
            Ok(Route::ReplayDeadLetters(7))
        );
        assert_eq!(status(Method::GET, "/api/v1/messages"), Err(405));
        assert_eq!(status(Method::POST, "/api/v1/users/7/pending"), Err(405));
    }

    #[test]
    fn unknown_paths_and_ids_are_not_found() {
        assert_eq!(status(Method::GET, "/api/v2/messages"), Err(404));
        assert_eq!(status(Method::POST, "/api/v1/messages/"), Err(404));
        assert_eq!(status(Method::GET, "/api/v1/users/x/pending"), Err(404));
        assert_eq!(status(Method::GET, "/api/v1/users/-1/pending"), Err(404));
    }
}
