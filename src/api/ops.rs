//! The ops endpoints: a user's pending summary, and the replay of their dead letters.
//! Both are thin: the figures and the move are [`crate::store::ops`]'s, each the
//! answer of a plain Redis command that `redis-cli` shows too.

use hyper::StatusCode;
use serde::Serialize;
use tracing::info;

use super::ApiError;
use super::access::Caller;
use crate::http::{HttpResponse, json_response};
use crate::node::Node;

/// `GET /api/v1/users/{id}/pending`: 200 with the
/// [`PendingSummary`](crate::store::ops::PendingSummary).
pub async fn pending(node: &Node, user: u64) -> Result<HttpResponse, ApiError> {
    let summary = node.store.pending_summary(user).await?;
    Ok(json_response(StatusCode::OK, &summary))
}

/// `POST /api/v1/users/{id}/dead-letters/replay`: moves the user's dead letters back
/// into the inbox and wakes their connections; 200 with how many moved.
pub async fn replay(node: &Node, caller: &Caller, user: u64) -> Result<HttpResponse, ApiError> {
    let replayed = node.store.replay_dead_letters(user).await?;
    info!(%caller, user, replayed, "dead letters replayed");
    Ok(json_response(
        StatusCode::OK,
        &Replayed {
            user_id: user,
            replayed,
        },
    ))
}

/// The answer of a replay.
#[derive(Debug, Serialize)]
struct Replayed {
    /// The inbox owner.
    user_id: u64,
    /// Dead letters moved back into the inbox.
    replayed: u64,
}
