//! Who is connecting: the token's place in the request (DESIGN §1) and its validation.
//!
//! A token is looked for in the `token` header, then `Authorization: Bearer`, then the
//! `?token=` query parameter; the first place that has one wins, even if its token is
//! bad. Validation accepts only the algorithms of the configured keys (HS256 for the
//! secret, RS256 or ES256 for the PEM key), so `none` and algorithm confusion (an HS256
//! token "signed" with the public key) are refused.
//!
//! The same keys sign service tokens for the HTTP API: those carry a `service` claim
//! instead of a user ([`Authenticator::verify_service`]).

use std::collections::HashSet;

use hyper::header::{AUTHORIZATION, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::{Config, ConfigError};

/// The claims courier uses. Other claims are ignored; `exp`, `nbf`, `aud` and `iss`
/// are checked by the validation when present.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// The user's id: the `sender_id` it may send as and the inbox it reads.
    pub id: u64,
    /// Display name; carried for logs and traces only.
    pub username: String,
    /// Expiry (seconds since the epoch); the connection is closed with 4001 then.
    pub exp: Option<u64>,
    /// Issue time (seconds since the epoch); a token issued in the future is refused.
    pub iat: Option<u64>,
}

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_S: u64 = 5;

/// The claims of a service token (HTTP API). Other claims are ignored; `exp`, `nbf`,
/// `iat`, `aud` and `iss` are checked as for user tokens.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceClaims {
    /// The calling service's name, for logs; a token without it is not a service token.
    pub service: String,
    /// Issue time (seconds since the epoch); a token issued in the future is refused.
    pub iat: Option<u64>,
}

/// Claims that carry an optional `iat`, which jsonwebtoken does not check.
trait IssuedAt {
    fn iat(&self) -> Option<u64>;
}

impl IssuedAt for Claims {
    fn iat(&self) -> Option<u64> {
        self.iat
    }
}

impl IssuedAt for ServiceClaims {
    fn iat(&self) -> Option<u64> {
        self.iat
    }
}

/// Why a token was refused. Its `Display` is the `message` of the 401 body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token in any of the three places.
    #[error("no token: send it in the `token` header, `Authorization: Bearer`, or `?token=`")]
    Missing,
    /// Anything else: malformed, badly signed, expired, wrong claims.
    #[error("{0}")]
    Invalid(String),
}

/// Validates tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<(Algorithm, DecodingKey)>,
    validation: Validation,
}

impl Authenticator {
    /// Builds the validator from the JWT settings; a key file that cannot be read or
    /// parsed is a configuration error.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = config.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
        }
        if let Some(path) = &config.jwt_public_key_file {
            let setting = "COURIER_JWT_PUBLIC_KEY_FILE";
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError(format!("{setting}: cannot read {}: {e}", path.display()))
            })?;
            let key = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, key)
            } else {
                return Err(ConfigError(format!(
                    "{setting}: {} is not an RSA or EC public key in PEM format",
                    path.display()
                )));
            };
            keys.push(key);
        }
        Ok(Self::new(
            keys,
            config.jwt_audience.as_deref(),
            config.jwt_issuer.as_deref(),
        ))
    }

    fn new(
        keys: Vec<(Algorithm, DecodingKey)>,
        audience: Option<&str>,
        issuer: Option<&str>,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = keys.iter().map(|(alg, _)| *alg).collect();
        validation.required_spec_claims = HashSet::new();
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Self { keys, validation }
    }

    /// Finds the token in the request (header, bearer, query, in that order) and
    /// validates it.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Claims, AuthError> {
        let token = find_token(headers, query).ok_or(AuthError::Missing)?;
        self.verify(&token)
    }

    /// Validates one user token: signature with the key of its `alg`, then the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode(token)
    }

    /// Validates one service token, like [`Authenticator::verify`] but requiring a
    /// string `service` claim instead of `id` and `username`.
    pub fn verify_service(&self, token: &str) -> Result<ServiceClaims, AuthError> {
        self.decode(token)
    }

    fn decode<T: DeserializeOwned + IssuedAt>(&self, token: &str) -> Result<T, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(e) => AuthError::Invalid(format!("malformed token header: {e}")),
            kind => describe(kind),
        })?;
        let Some((_, key)) = self.keys.iter().find(|(alg, _)| *alg == header.alg) else {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted (accepted: {:?})",
                header.alg, self.validation.algorithms
            )));
        };
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let claims = jsonwebtoken::decode::<T>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| describe(e.kind()))?;
        let now = jsonwebtoken::get_current_timestamp();
        if claims.iat().is_some_and(|iat| iat > now + LEEWAY_S) {
            return Err(AuthError::Invalid(
                "token issued in the future (iat)".into(),
            ));
        }
        Ok(claims)
    }
}

/// The token of a request, from the first place (DESIGN §1 order) that has one.
fn find_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get("token") {
        return Some(value.to_str().unwrap_or_default().trim().to_string());
    }
    if let Some(token) = bearer_token(headers) {
        return Some(token);
    }
    query_param(query, "token")
}

/// The credential of an `Authorization` header: what follows `Bearer ` (empty when the
/// scheme is another one), or `None` when there is no such header.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(AUTHORIZATION)?
        .to_str()
        .unwrap_or_default()
        .trim();
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    Some(token.to_string())
}

/// The first value of a query parameter, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn describe(kind: &ErrorKind) -> AuthError {
    let message = match kind {
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            "malformed token: expected a JWT (header.payload.signature)".to_string()
        }
        ErrorKind::Json(e) => format!("malformed token claims: {e}"),
        ErrorKind::InvalidSignature => "bad signature".to_string(),
        ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithm => "algorithm not accepted".to_string(),
        ErrorKind::ExpiredSignature => "token expired".to_string(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".to_string(),
        ErrorKind::InvalidAudience => "wrong audience (aud)".to_string(),
        ErrorKind::InvalidIssuer => "wrong issuer (iss)".to_string(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        ErrorKind::InvalidClaimFormat(claim) => format!("ill-typed claim {claim}"),
        other => format!("invalid token: {other:?}"),
    };
    AuthError::Invalid(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn hs(secret: &str) -> Authenticator {
        Authenticator::new(
            vec![(
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            )],
            None,
            None,
        )
    }

    fn token(claims: serde_json::Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s")).expect("encode")
    }

    #[test]
    fn valid_token_yields_claims() {
        let claims = hs("s")
            .verify(&token(json!({"id": 7, "username": "ann"})))
            .expect("valid");
        assert_eq!((claims.id, claims.username.as_str()), (7, "ann"));
    }

    #[test]
    fn service_tokens_need_a_service_claim() {
        let service = hs("s")
            .verify_service(&token(json!({"service": "billing"})))
            .expect("service token");
        assert_eq!(service.service, "billing");
        assert!(
            hs("s")
                .verify_service(&token(json!({"id": 1, "username": "a"})))
                .is_err(),
            "a user token is not a service token"
        );
        assert!(
            hs("other")
                .verify_service(&token(json!({"service": "billing"})))
                .is_err(),
            "signed with the wrong key"
        );
    }

    #[test]
    fn negative_or_string_id_is_refused() {
        assert!(
            hs("s")
                .verify(&token(json!({"id": -1, "username": "a"})))
                .is_err()
        );
        assert!(
            hs("s")
                .verify(&token(json!({"id": "1", "username": "a"})))
                .is_err()
        );
    }

    #[test]
    fn expired_and_premature_tokens_are_refused() {
        let now = jsonwebtoken::get_current_timestamp();
        let expired = hs("s").verify(&token(json!({"id": 1, "username": "a", "exp": now - 10})));
        assert_eq!(
            expired.unwrap_err(),
            AuthError::Invalid("token expired".into())
        );
        let early = hs("s").verify(&token(json!({"id": 1, "username": "a", "nbf": now + 60})));
        assert_eq!(
            early.unwrap_err(),
            AuthError::Invalid("token not valid yet (nbf)".into())
        );
    }

    #[test]
    fn iat_must_be_an_integer_in_the_past() {
        let now = jsonwebtoken::get_current_timestamp();
        let verify = |iat: serde_json::Value| {
            hs("s").verify(&token(json!({"id": 1, "username": "a", "iat": iat})))
        };
        assert!(verify(json!(now)).is_ok());
        assert_eq!(
            verify(json!(now + 3600)).unwrap_err(),
            AuthError::Invalid("token issued in the future (iat)".into())
        );
        assert!(verify(json!("abc")).is_err());
    }

    #[test]
    fn none_algorithm_is_refused() {
        let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpZCI6MSwidXNlcm5hbWUiOiJhIn0.";
        assert!(hs("s").verify(unsigned).is_err());
    }

    #[test]
    fn token_header_wins_over_bearer_and_query() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer second".parse().expect("header"));
        assert_eq!(
            find_token(&headers, Some("token=third")).as_deref(),
            Some("second")
        );
        headers.insert("token", "first".parse().expect("header"));
        assert_eq!(
            find_token(&headers, Some("token=third")).as_deref(),
            Some("first")
        );
        assert_eq!(
            find_token(&HeaderMap::new(), Some("a=1&token=third")).as_deref(),
            Some("third")
        );
    }
}
