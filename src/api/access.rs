//! Who may call the API: a backend presenting `COURIER_API_KEY`, or a service token —
//! a JWT signed by one of the keys that sign user tokens, with a `service` claim — as
//! `Authorization: Bearer <credential>`. User tokens are refused: a user may only send
//! as themselves, over `/ws`.

use std::fmt;

use hyper::header::HeaderMap;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::auth::bearer_token;
use crate::node::Node;

/// An authorised caller, named in the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Presented `COURIER_API_KEY`.
    ApiKey,
    /// Presented a service token; its `service` claim.
    Service(String),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiKey => f.write_str("api-key"),
            Self::Service(name) => write!(f, "service:{name}"),
        }
    }
}

/// Checks the request's bearer credential: the API key first (compared in constant
/// time), then a service token.
pub fn authorize(node: &Node, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let credential = bearer_token(headers)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "send `Authorization: Bearer <COURIER_API_KEY or service token>`".into(),
            )
        })?;
    if node
        .api
        .api_key
        .as_deref()
        .is_some_and(|key| is_key(key, &credential))
    {
        return Ok(Caller::ApiKey);
    }
    match node.auth.verify_service(&credential) {
        Ok(claims) if !claims.service.is_empty() => Ok(Caller::Service(claims.service)),
        Ok(_) => Err(ApiError::Unauthorized(
            "the service token's `service` claim is empty".into(),
        )),
        Err(e) => Err(ApiError::Unauthorized(format!(
            "the credential is neither COURIER_API_KEY nor a valid service token ({e})"
        ))),
    }
}

/// Whether `credential` is the configured key. An empty key matches nothing. The
/// comparison takes the same time wherever the first difference is (only a length
/// difference answers early, and lengths are not secret).
fn is_key(key: &str, credential: &str) -> bool {
    !key.is_empty() && bool::from(key.as_bytes().ct_eq(credential.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_comparison() {
        assert!(is_key("s3cret-key", "s3cret-key"));
        assert!(!is_key("s3cret-key", "s3cret-kez"));
        assert!(!is_key("s3cret-key", "s3cret"));
        assert!(!is_key("", ""));
    }
}
