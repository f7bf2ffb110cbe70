//! HS256 tokens as courier accepts them (`{"id", "username", "exp"}`).

use serde_json::{Value, json};

/// The secret every test courier is started with.
pub const SECRET: &str = "test-secret";

/// A token for user `id` (username `user<id>`), valid for an hour, signed with
/// [`SECRET`].
pub fn token(id: u64) -> String {
    token_with(json!({ "id": id, "username": format!("user{id}"), "exp": expiry(3600) }))
}

/// An HS256 token with arbitrary claims, signed with [`SECRET`].
pub fn token_with(claims: Value) -> String {
    sign(SECRET, &claims)
}

/// An HS256 token for `claims`, signed with `secret`.
pub fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("an HS256 token of JSON claims always encodes")
}

/// The `exp` claim for a token valid `ttl_seconds` from now.
pub fn expiry(ttl_seconds: u64) -> u64 {
    jsonwebtoken::get_current_timestamp() + ttl_seconds
}
