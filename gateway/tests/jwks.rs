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
            // Exported at 0 from the start: wait for a count.
            let failed = text
                .lines()
                .filter_map(|l| l.strip_prefix("gateway_auth_jwks_reloads_total{result=\"failed\"} "))
                .any(|v| v.trim().parse::<f64>().is_ok_and(|n| n >= 1.0));
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

/// A JWK set served over HTTP by the test: what it answers now, and the
/// `If-None-Match` of each request it got.
#[derive(Default)]
struct Served {
    status: u16,
    body: String,
    etag: String,
    conditional: Vec<String>,
}

/// Serves `GET` on a free loopback port from `served`, one request per
/// connection, until the test ends.
async fn serve_jwks(served: std::sync::Arc<std::sync::Mutex<Served>>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let inm = head
                    .lines()
                    .find_map(|l| l.strip_prefix("if-none-match:"))
                    .map(|v| v.trim().to_string());
                let response = {
                    let mut sv = served.lock().unwrap();
                    if let Some(tag) = &inm {
                        sv.conditional.push(tag.clone());
                    }
                    if sv.status == 200 && inm.as_deref() == Some(sv.etag.as_str()) {
                        "HTTP/1.1 304 Not Modified\r\nconnection: close\r\n\r\n".to_string()
                    } else {
                        format!(
                            "HTTP/1.1 {} X\r\ncontent-length: {}\r\netag: {}\r\nconnection: close\r\n\r\n{}",
                            sv.status,
                            sv.body.len(),
                            sv.etag,
                            sv.body
                        )
                    }
                };
                let _ = s.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_jwks_url_is_fetched_followed_and_gates_readiness() {
    let served = std::sync::Arc::new(std::sync::Mutex::new(Served {
        status: 503,
        ..Default::default()
    }));
    let addr = serve_jwks(served.clone()).await;
    let url = format!("http://{addr}/jwks.json");
    let node = TestNode::start(&["--jwt-jwks", &url, "--jwt-jwks-refresh", "200ms"]).await;
    let k1 = signed(Some("k1"), Algorithm::HS256, ONE, "u1");
    let k2 = signed(Some("k2"), Algorithm::HS256, TWO, "u2");
    // No set yet: not ready, tokens refused.
    assert_eq!(node.http("GET", "/readyz", &[], "").await.0, 503);
    assert!(!accepted(&node, &k1).await);

    *served.lock().unwrap() = Served {
        status: 200,
        body: jwks(&[("k1", ONE_K)]),
        etag: "\"v1\"".into(),
        ..Default::default()
    };
    Wait::new("the set fetched and the node ready", WAIT)
        .every(Duration::from_millis(100))
        .until_async(async || match node.http("GET", "/readyz", &[], "").await.0 {
            200 => Ok(()),
            s => Err(format!("/readyz {s}")),
        })
        .await;
    assert!(accepted(&node, &k1).await);
    // Unchanged, it is asked for conditionally (and answered 304).
    Wait::new("a conditional fetch", WAIT)
        .until_async(async || {
            let sv = served.lock().unwrap();
            if sv.conditional.iter().any(|t| t == "\"v1\"") {
                Ok(())
            } else {
                Err(format!("{:?}", sv.conditional))
            }
        })
        .await;
    assert!(accepted(&node, &k1).await, "a 304 keeps the keys");

    // Rotation at the provider: k2 replaces k1.
    {
        let mut sv = served.lock().unwrap();
        sv.body = jwks(&[("k2", TWO_K)]);
        sv.etag = "\"v2\"".into();
    }
    Wait::new("the rotated set taken up", WAIT)
        .every(Duration::from_millis(100))
        .until_async(async || {
            if accepted(&node, &k2).await {
                Ok(())
            } else {
                Err("k2 refused")
            }
        })
        .await;
    assert!(!accepted(&node, &k1).await, "k1 retired");

    // The provider failing keeps the keys the node has.
    served.lock().unwrap().status = 500;
    Wait::new("a failed fetch counted", WAIT)
        .every(Duration::from_millis(100))
        .until_async(async || {
            let (_, text) = node.http("GET", "/metrics", &[], "").await;
            let failed = text.contains("gateway_auth_jwks_reloads_total{result=\"failed\"}");
            if failed { Ok(()) } else { Err("no failed fetch yet") }
        })
        .await;
    assert!(accepted(&node, &k2).await);
    assert_eq!(node.http("GET", "/readyz", &[], "").await.0, 200);
    node.stop().await;
}
