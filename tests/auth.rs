//! Connecting (DESIGN §1): where the token is read, what is refused with 401 before
//! the upgrade, the device parameter, health and readiness.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use support::*;

async fn refusal(courier: &Courier, header: &str, value: &str, query: &str) -> Refusal {
    match WsClient::connect_with_header(&format!("{}{query}", courier.ws_url()), header, value)
        .await
    {
        Ok(_) => panic!("connection with {header}={value:?} {query} was accepted"),
        Err(refusal) => refusal,
    }
}

fn assert_invalid_token(refusal: &Refusal, mentions: &str) {
    assert_eq!(refusal.status, 401, "{refusal:?}");
    assert_eq!(refusal.body["error"], "invalid_token", "{refusal:?}");
    let message = refusal.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

fn signed(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(alg), &claims, key).expect("encode")
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    let now = get_current_timestamp();

    assert_invalid_token(&refusal(&courier, "", "", "").await, "no token");
    assert_invalid_token(
        &refusal(&courier, "token", "not-a-jwt", "").await,
        "malformed",
    );
    let wrong_key = signed(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"other"),
        json!({"id": 1, "username": "a"}),
    );
    assert_invalid_token(
        &refusal(&courier, "token", &wrong_key, "").await,
        "signature",
    );
    let expired = token_with(json!({"id": 1, "username": "a", "exp": now - 10}));
    assert_invalid_token(&refusal(&courier, "token", &expired, "").await, "expired");
    let early = token_with(json!({"id": 1, "username": "a", "nbf": now + 600}));
    assert_invalid_token(&refusal(&courier, "token", &early, "").await, "nbf");
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpZCI6MSwidXNlcm5hbWUiOiJhIn0.";
    assert_invalid_token(&refusal(&courier, "token", unsigned, "").await, "");
    let no_id = token_with(json!({"username": "a"}));
    assert_invalid_token(&refusal(&courier, "token", &no_id, "").await, "id");
    let negative = token_with(json!({"id": -4, "username": "a"}));
    assert_invalid_token(&refusal(&courier, "token", &negative, "").await, "");
    let string_id = token_with(json!({"id": "1", "username": "a"}));
    assert_invalid_token(&refusal(&courier, "token", &string_id, "").await, "");
    assert_eq!(redis.cmd::<u64>(&["DBSIZE"]), 0, "nothing touched Redis");
}

#[tokio::test]
async fn token_is_read_from_header_then_bearer_then_query() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    let good = token(1);

    WsClient::connect_with_header(&courier.ws_url(), "token", &good)
        .await
        .expect("token header");
    WsClient::connect_with_header(
        &courier.ws_url(),
        "authorization",
        &format!("Bearer {good}"),
    )
    .await
    .expect("bearer");
    WsClient::connect_with_header(&format!("{}?token={good}", courier.ws_url()), "", "")
        .await
        .expect("query");

    // The first place that has a token wins, even when a later place has a good one.
    let r = refusal(&courier, "token", "garbage", &format!("?token={good}")).await;
    assert_invalid_token(&r, "malformed");
    let r = refusal(
        &courier,
        "authorization",
        "Bearer garbage",
        &format!("?token={good}"),
    )
    .await;
    assert_invalid_token(&r, "malformed");
}

#[tokio::test]
async fn rs256_and_es256_keys_are_accepted_and_algorithm_confusion_is_refused() {
    let redis = RedisServer::start();
    let public_pem = std::fs::read(fixture("rsa_public.pem")).expect("fixture");
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_JWT_SECRET", ""),
            ("COURIER_JWT_PUBLIC_KEY_FILE", &fixture("rsa_public.pem")),
        ],
    );
    let claims = json!({"id": 1, "username": "a"});
    let private =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).expect("fixture"))
            .expect("key");
    let rs256 = signed(Algorithm::RS256, &private, claims.clone());
    WsClient::connect_with_header(&courier.ws_url(), "token", &rs256)
        .await
        .expect("RS256 token");

    let confused = signed(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        claims.clone(),
    );
    assert_invalid_token(
        &refusal(&courier, "token", &confused, "").await,
        "algorithm",
    );

    let ec_courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_JWT_SECRET", ""),
            ("COURIER_JWT_PUBLIC_KEY_FILE", &fixture("ec_public.pem")),
        ],
    );
    let ec_private =
        EncodingKey::from_ec_pem(&std::fs::read(fixture("ec_private.pem")).expect("fixture"))
            .expect("key");
    let es256 = signed(Algorithm::ES256, &ec_private, claims);
    WsClient::connect_with_header(&ec_courier.ws_url(), "token", &es256)
        .await
        .expect("ES256 token");
}

#[tokio::test]
async fn configured_audience_and_issuer_are_required() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[
            ("COURIER_JWT_AUDIENCE", "chat"),
            ("COURIER_JWT_ISSUER", "auth"),
        ],
    );
    let with = |claims: Value| token_with(claims);
    let ok = with(json!({"id": 1, "username": "a", "aud": "chat", "iss": "auth"}));
    WsClient::connect_with_header(&courier.ws_url(), "token", &ok)
        .await
        .expect("right aud and iss");
    let missing = with(json!({"id": 1, "username": "a"}));
    assert_invalid_token(&refusal(&courier, "token", &missing, "").await, "missing");
    let wrong_aud = with(json!({"id": 1, "username": "a", "aud": "other", "iss": "auth"}));
    assert_invalid_token(&refusal(&courier, "token", &wrong_aud, "").await, "aud");
    let wrong_iss = with(json!({"id": 1, "username": "a", "aud": "chat", "iss": "other"}));
    assert_invalid_token(&refusal(&courier, "token", &wrong_iss, "").await, "iss");
}

#[tokio::test]
async fn a_token_that_expires_while_connected_closes_with_4001() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    let soon = token_with(json!({"id": 1, "username": "a", "exp": get_current_timestamp() + 2}));
    let mut client = WsClient::connect_with_header(&courier.ws_url(), "token", &soon)
        .await
        .expect("connect");
    assert_eq!(client.expect_close().await, Some(4001));
}

#[tokio::test]
async fn device_parameter_is_validated() {
    let redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[]);
    for bad in ["", "a%20b", "a.b", &"x".repeat(65)] {
        let r = refusal(&courier, "token", &token(1), &format!("?device={bad}")).await;
        assert_eq!(r.status, 400, "device {bad:?}: {r:?}");
        assert_eq!(r.body["error"], "invalid_device");
    }
    courier.connect_device(1, &"x".repeat(64)).await;
    courier.connect_device(1, "Phone_2-b").await;
}

#[tokio::test]
async fn origin_allowlist_refuses_other_origins_with_403() {
    let redis = RedisServer::start();
    let courier = Courier::start(
        &redis.url(),
        &[(
            "COURIER_ALLOWED_ORIGINS",
            "https://ok.example,https://also.example",
        )],
    );
    let url = format!("{}?token={}", courier.ws_url(), token(1));
    let r = WsClient::connect_with_header(&url, "origin", "https://evil.example")
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 403);
    WsClient::connect_with_header(&url, "origin", "https://also.example")
        .await
        .expect("allowed origin");
    WsClient::connect_with_header(&url, "", "")
        .await
        .expect("no Origin: not a browser, left to authentication");
}

#[tokio::test]
async fn healthz_and_readyz_report_process_and_redis() {
    let mut redis = RedisServer::start();
    let courier = Courier::start(&redis.url(), &[("COURIER_REDIS_TIMEOUT_MS", "300")]);
    assert_eq!(http_get(courier.addr, "/healthz").await.0, 200);
    assert_eq!(http_get(courier.addr, "/readyz").await.0, 200);
    redis.kill();
    assert_eq!(
        http_get(courier.addr, "/healthz").await.0,
        200,
        "the process is still up"
    );
    let (status, body) = http_get(courier.addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    redis.restart();
    Wait::new("readyz to recover")
        .every(std::time::Duration::from_millis(50))
        .until(async || http_get(courier.addr, "/readyz").await.0 == 200)
        .await;
    assert_eq!(http_get(courier.addr, "/nope").await.0, 404);
}
