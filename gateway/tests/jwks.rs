//! Keys from a JWKS file, chosen by `kid`, each with its own algorithm;
//! the file reloaded when it changes, so keys rotate without a restart.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use testkit::Wait;

/// Two HMAC secrets and their JWK encodings (base64url).
const ONE: &str = "jwks-test-secret-number-one-0123";
const ONE_K: &str = "andrcy10ZXN0LXNlY3JldC1udW1iZXItb25lLTAxMjM";
const TWO: &str = "jwks-test-secret-number-two-4567";
const TWO_K: &str = "andrcy10ZXN0LXNlY3JldC1udW1iZXItdHdvLTQ1Njc";

fn jwks(keys: &[(&str, &str)]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(kid, k)| json!({"kty":"oct","kid":kid,"alg":"HS256","k":k}))
        .collect();
    json!({ "keys": keys }).to_string()
}

fn signed(kid: Option<&str>, alg: Algorithm, secret: &str, sub: &str) -> String {
    gateway::auth::install_crypto_provider();
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(
        &header,
        &valid_claims(sub),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Whether the node takes `token` in an `auth` frame.
async fn accepted(node: &TestNode, token: &str) -> bool {
    let mut c = node.client().await;
    let r = c.request(json!({"op":"auth","token":token})).await;
    r["op"] == "ok"
}

#[tokio::test]
async fn tokens_are_checked_with_the_key_their_kid_names_and_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[("k1", ONE_K)])).unwrap();
    let node = TestNode::start(&["--jwt-jwks", path.to_str().unwrap(), "--jwt-jwks-refresh", "100ms"]).await;
    assert!(accepted(&node, &signed(Some("k1"), Algorithm::HS256, ONE, "u1")).await);
    // The set's only key also serves tokens without a kid.
    assert!(accepted(&node, &signed(None, Algorithm::HS256, ONE, "u1")).await);
    assert!(
        !accepted(&node, &signed(Some("k2"), Algorithm::HS256, TWO, "u1")).await,
        "unknown kid"
    );
    assert!(
        !accepted(&node, &signed(Some("k1"), Algorithm::HS256, TWO, "u1")).await,
        "wrong secret"
    );
    assert!(
        !accepted(&node, &signed(Some("k1"), Algorithm::HS512, ONE, "u1")).await,
        "another algorithm than the key's"
    );

    // Rotation: k2 is added, then k1 retired, with no restart.
    std::fs::write(&path, jwks(&[("k1", ONE_K), ("k2", TWO_K)])).unwrap();
    let k2 = signed(Some("k2"), Algorithm::HS256, TWO, "u2");
    Wait::new("the new key taken up", WAIT)
        .every(Duration::from_millis(100))
        .until_async(async || {
            if accepted(&node, &k2).await {
                Ok(())
            } else {
                Err("k2 refused")
            }
        })
        .await;
    assert!(accepted(&node, &signed(Some("k1"), Algorithm::HS256, ONE, "u1")).await);
    std::fs::write(&path, jwks(&[("k2", TWO_K)])).unwrap();
    let k1 = signed(Some("k1"), Algorithm::HS256, ONE, "u1");
    Wait::new("the old key retired", WAIT)
        .every(Duration::from_millis(100))
        .until_async(async || {
            if accepted(&node, &k1).await {
                Err("k1 accepted")
            } else {
                Ok(())
            }
        })
        .await;
    assert!(accepted(&node, &k2).await);

    // A broken file keeps the keys the node has.
    std::fs::write(&path, "{ not json").unwrap();
    Wait::new("the broken file's reload refused", WAIT)
        .every(Duration::from_millis(100))
        .until_async(async || {
            let (_, text) = node.http("GET", "/metrics", &[], "").await;
            let failed = text.contains("gateway_auth_jwks_reloads_total{result=\"failed\"}");
            if failed { Ok(()) } else { Err("no failed reload yet") }
        })
        .await;
    assert!(accepted(&node, &k2).await, "a broken file does not drop the keys");
}

#[test]
fn a_bad_jwks_file_or_a_second_key_source_is_a_bad_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, "{\"keys\":[]}").unwrap();
    let p = path.to_str().unwrap();
    for (args, setting) in [
        (vec!["--jwt-jwks", p], "jwt_jwks"),
        (vec!["--jwt-jwks", "/nonexistent/jwks.json"], "jwt_jwks"),
        (vec!["--jwt-jwks", p, "--jwt-secret", SECRET], "jwt_secret"),
        (vec!["--jwt-jwks", p, "--jwt-algorithm", "HS256"], "jwt_algorithm"),
    ] {
        let mut all = vec!["gateway"];
        all.extend(args.iter().copied());
        let err = gateway::Config::load(all).unwrap().validate().unwrap_err().to_string();
        assert!(err.starts_with(setting), "{args:?}: {err}");
    }
}
