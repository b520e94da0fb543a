//! JWT authentication (HS256, RS256, ES256; header and auth frame; every
//! way a token can be bad) and the HTTP endpoints beside /ws.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

async fn auth_frame(node: &TestNode, token: &str) -> (serde_json::Value, Client) {
    let mut c = node.client().await;
    let r = c.request(json!({"op":"auth","token":token})).await;
    (r, c)
}

async fn assert_refused(node: &TestNode, token: &str, why: &str) {
    let (r, mut c) = auth_frame(node, token).await;
    assert_eq!(r["code"], "unauthorized", "{why}: {r}");
    assert_eq!(c.until_closed().await.0, Ended::Close(4001), "{why}");
    // The same token in the header: an error frame, then 4001.
    let mut c = Client::connect(&node.url(), Some(token)).await;
    let (end, frames) = c.until_closed().await;
    assert_eq!(end, Ended::Close(4001), "{why} (header)");
    assert_eq!(frames[0]["code"], "unauthorized", "{why} (header)");
}

#[tokio::test]
async fn hs256_tokens_in_header_or_frame() {
    let node = TestNode::start(&["--jwt-secret", SECRET]).await;
    let (r, _) = auth_frame(&node, &token(valid_claims("u1"))).await;
    assert_eq!(r["op"], "ok", "{r}");
    assert_eq!(r["user"], "u1");

    let mut c = Client::connect(&node.url(), Some(&token(valid_claims("u2")))).await;
    let joined = c.join("r").await;
    assert_eq!(joined["op"], "ok");
    let id = c.send_msg("r", json!("x")).await;
    assert_eq!(msg_id(&c.next_msg("r").await), id);

    // Anonymous is off once a key is configured.
    let mut g = node.client().await;
    let r = g.request(json!({"op":"auth"})).await;
    assert_eq!(r["code"], "unauthorized");
    assert_eq!(g.until_closed().await.0, Ended::Close(4001));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_4001() {
    let node = TestNode::start(&[
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        "chat",
        "--jwt-issuer",
        "auth.example",
    ])
    .await;
    let good = json!({"sub":"u","exp":now_secs()+600,"aud":"chat","iss":"auth.example"});
    let (r, _) = auth_frame(&node, &token(good.clone())).await;
    assert_eq!(r["op"], "ok", "{r}");

    let mut expired = good.clone();
    expired["exp"] = json!(now_secs() - 3600);
    assert_refused(&node, &token(expired), "expired").await;

    let mut early = good.clone();
    early["nbf"] = json!(now_secs() + 3600);
    assert_refused(&node, &token(early), "not yet valid").await;

    let forged = token_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-entirely"),
        good.clone(),
    );
    assert_refused(&node, &forged, "forged signature").await;

    let other_alg = token_with(
        Algorithm::HS384,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        good.clone(),
    );
    assert_refused(&node, &other_alg, "algorithm not configured").await;

    // alg: none, unsigned.
    use base64_like::b64;
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good.to_string().as_bytes())
    );
    assert_refused(&node, &none, "alg none").await;

    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_refused(&node, &token(no_sub), "no sub").await;
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_refused(&node, &token(no_exp), "no exp").await;
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("other");
    assert_refused(&node, &token(wrong_aud), "wrong aud").await;
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("evil");
    assert_refused(&node, &token(wrong_iss), "wrong iss").await;
    assert_refused(&node, "not.a.jwt", "garbage").await;
}

/// Minimal unpadded base64url, to hand-craft an `alg: none` token.
mod base64_like {
    pub fn b64(data: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test]
async fn rooms_claim_limits_joins_history_and_presence() {
    let node = TestNode::start(&["--jwt-secret", SECRET, "--default-rooms", "lobby"]).await;
    let scoped = token(json!({"sub":"u","exp":now_secs()+600,"rooms":["team-42:*","general"]}));
    let (_, mut c) = auth_frame(&node, &scoped).await;
    assert_eq!(c.join("team-42:dev").await["op"], "ok");
    assert_eq!(c.join("general").await["op"], "ok");
    for (op, room) in [
        ("join", "team-43:dev"),
        ("join", "lobby"),
        ("history", "secret"),
        ("presence", "secret"),
    ] {
        let r = c.request(json!({"op":op,"room":room})).await;
        assert_eq!(r["code"], "forbidden", "{op} {room}: {r}");
    }
    // Without the claim, the default policy applies.
    let (_, mut d) = auth_frame(&node, &token(valid_claims("v"))).await;
    assert_eq!(d.join("lobby").await["op"], "ok");
    assert_eq!(
        d.request(json!({"op":"join","room":"general"})).await["code"],
        "forbidden"
    );
}

#[tokio::test]
async fn rs256_and_es256_public_keys() {
    for (alg, private, public) in [
        (Algorithm::RS256, "rsa_private.pem", "rsa_public.pem"),
        (Algorithm::ES256, "ec_private.pem", "ec_public.pem"),
    ] {
        let pem = std::fs::read(key_path(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let node = TestNode::start(&["--jwt-public-key", &key_path(public)]).await;
        let (r, _) = auth_frame(&node, &token_with(alg, &key, valid_claims("k"))).await;
        assert_eq!(r["op"], "ok", "{alg:?}: {r}");
        // An HS256 token signed with the public key text (key confusion) fails.
        let confused = token_with(
            Algorithm::HS256,
            &EncodingKey::from_secret(&std::fs::read(key_path(public)).unwrap()),
            valid_claims("k"),
        );
        assert_refused(&node, &confused, "HS256 with the public key").await;
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let node = TestNode::start(&[]).await;
    assert_eq!(node.http("GET", "/healthz", &[], "").await.0, 200);
    assert_eq!(node.http("GET", "/readyz", &[], "").await.0, 200);
    let mut c = node.guest().await;
    c.join("m").await;
    c.send_msg("m", json!(1)).await;
    let (status, body) = node.http("GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for name in [
        "gateway_connections_active",
        "gateway_bus_messages_published_total",
        "gateway_storage_commit_duration_seconds_bucket",
        "gateway_send_ack_duration_seconds_bucket",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    assert!(!body.contains("room=\"m\""), "no room label");
    assert_eq!(node.http("GET", "/nope", &[], "").await.0, 404);
}

#[tokio::test]
async fn server_api_publishes_and_reads_history() {
    let node = TestNode::start(&["--api-key", API_KEY]).await;
    let auth = format!("Bearer {API_KEY}");
    let mut member = node.guest().await;
    member.join("news").await;

    let (status, body) = node
        .http(
            "POST",
            "/api/rooms/news/messages",
            &[("authorization", &auth)],
            r#"{"body":{"headline":"hi"}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = msg_id(&reply);
    let m = member.next_msg("news").await;
    assert_eq!(
        (msg_id(&m), m["from"].as_str(), &m["body"]),
        (id, Some("system"), &json!({"headline":"hi"}))
    );

    let (status, body) = node
        .http(
            "GET",
            "/api/rooms/news/messages?limit=10",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["op"], "history");
    assert_eq!(msg_id(&h["messages"][0]), id);
    let (_, body) = node
        .http(
            "GET",
            &format!("/api/rooms/news/messages?before={id}"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["messages"],
        json!([])
    );

    for (method, path, headers, body, status) in [
        ("POST", "/api/rooms/news/messages", vec![], r#"{"body":1}"#, 401),
        (
            "POST",
            "/api/rooms/news/messages",
            vec![("authorization", "Bearer wrong")],
            r#"{"body":1}"#,
            401,
        ),
        (
            "POST",
            "/api/rooms/bad%20room/messages",
            vec![("authorization", auth.as_str())],
            r#"{"body":1}"#,
            400,
        ),
        (
            "POST",
            "/api/rooms/news/messages",
            vec![("authorization", auth.as_str())],
            r#"{"nobody":1}"#,
            400,
        ),
        (
            "POST",
            "/api/rooms/news/messages",
            vec![("authorization", auth.as_str())],
            "{oops",
            400,
        ),
        (
            "GET",
            "/api/rooms/news/messages?limit=0",
            vec![("authorization", auth.as_str())],
            "",
            400,
        ),
        (
            "GET",
            "/api/rooms/news/other",
            vec![("authorization", auth.as_str())],
            "",
            404,
        ),
    ] {
        let (got, text) = node.http(method, path, &headers, body).await;
        assert_eq!(got, status, "{method} {path} {body}: {text}");
        let e: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(e["code"].is_string(), "{text}");
    }
}

#[tokio::test]
async fn the_demo_page_is_served_at_the_root_unless_turned_off() {
    let node = TestNode::start(&[]).await;
    let (status, page) = node.http("GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("/demo/app.js"), "{page}");
    let (status, script) = node.http("GET", "/demo/app.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(script.len() > 1000, "the bundled client and page");
    assert_eq!(node.http("GET", "/demo/missing.js", &[], "").await.0, 404);
    assert_eq!(node.http("POST", "/", &[], "").await.0, 404);

    let off = TestNode::start(&["--demo", "false"]).await;
    assert_eq!(off.http("GET", "/", &[], "").await.0, 404);
    assert_eq!(off.http("GET", "/demo/app.js", &[], "").await.0, 404);
    assert_eq!(off.http("GET", "/healthz", &[], "").await.0, 200);
}
