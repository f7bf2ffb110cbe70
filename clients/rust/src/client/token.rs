//! Where the client's token comes from: a fixed string, or a provider called again
//! when courier refuses the token (HTTP 401) or closes with 4001 (expired). And the
//! user id the token names, which becomes the `sender_id` of every message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// An error from a token provider.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type ProviderFn =
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>> + Send + Sync;

/// The source of the client's token.
#[derive(Clone)]
pub enum TokenSource {
    /// One token for the client's lifetime: a refusal with 401 is final.
    Fixed(String),
    /// Called for the first connection and again after a 401 or a 4001.
    Provider(Arc<ProviderFn>),
}

impl TokenSource {
    /// A provider from an async function returning a fresh token.
    pub fn provider<F, Fut, E>(provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::Provider(Arc::new(move || {
            let token = provider();
            Box::pin(async move { token.await.map_err(Into::into) })
        }))
    }

    /// A token: the fixed one, or a fresh one from the provider.
    pub async fn fetch(&self) -> Result<String, BoxError> {
        match self {
            Self::Fixed(token) => Ok(token.clone()),
            Self::Provider(provider) => provider().await,
        }
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(_) => f.write_str("TokenSource::Fixed(..)"),
            Self::Provider(_) => f.write_str("TokenSource::Provider(..)"),
        }
    }
}

/// Why a token names no user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token is not a JWT with an integer `id` claim: {0}")]
pub struct TokenError(String);

/// The `id` claim of a JWT, read without checking the signature (courier checks it;
/// the client only needs to know who it sends as).
pub fn user_id(token: &str) -> Result<u64, TokenError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| TokenError("not three dot-separated parts".into()))?;
    let json = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| TokenError(format!("payload is not base64url: {e}")))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| TokenError(format!("payload: {e}")))?;
    claims
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| TokenError("no non-negative integer `id`".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn the_user_id_is_the_id_claim() {
        assert_eq!(user_id(&jwt(r#"{"id":42,"username":"ann"}"#)), Ok(42));
        assert!(user_id(&jwt(r#"{"id":"42"}"#)).is_err());
        assert!(user_id(&jwt(r#"{"username":"ann"}"#)).is_err());
        assert!(user_id("not-a-jwt").is_err());
        assert!(user_id("a.%%%.c").is_err());
    }

    #[tokio::test]
    async fn a_provider_is_called_for_each_fetch() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let source = TokenSource::provider(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok::<_, std::io::Error>(format!("token{n}")) }
        });
        assert_eq!(source.fetch().await.expect("token"), "token0");
        assert_eq!(source.fetch().await.expect("token"), "token1");
        let fixed = TokenSource::Fixed("t".into());
        assert_eq!(fixed.fetch().await.expect("token"), "t");
    }
}
