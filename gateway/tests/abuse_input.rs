//! Abuse resistance at the input (issue 10): `aud`/`iss` required when
//! configured, user ids without control or bidirectional characters,
//! bodies delivered byte for byte under one depth limit on WebSocket and
//! the server API, and error replies without library or internal text.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Refused in an `auth` frame and in the upgrade's header: `unauthorized`
/// with a short message, then 4001. Returns the messages.
async fn assert_refused(node: &TestNode, token: &str, why: &str) -> Vec<String> {
    let mut c = node.client().await;
    let r = c.request(json!({"op":"auth","token":token})).await;
    assert_eq!(r["code"], "unauthorized", "{why}: {r}");
    assert_eq!(c.until_closed().await.0, Ended::Close(4001), "{why}");
    let mut h = Client::connect(&node.url(), Some(token)).await;
    let (end, frames) = h.until_closed().await;
    assert_eq!(end, Ended::Close(4001), "{why} (header)");
    assert_eq!(frames[0]["code"], "unauthorized", "{why} (header): {frames:?}");
    vec![message(&r), message(&frames[0])]
}

fn message(v: &Value) -> String {
    v["message"].as_str().unwrap_or_default().to_string()
}

/// Words of library or internal error text that must never reach a client.
const LEAKS: &[&str] = &[
    "line",
    "column",
    "variant",
    "Base64",
    "base64",
    "redis",
    "Redis",
    "JSON error",
    "missing field",
    "invalid type",
    "expected",
    "Utf8",
    " at character",
];

fn assert_no_leak(text: &str, what: &str) {
    for word in LEAKS {
        assert!(!text.contains(word), "{what}: {text:?} contains {word:?}");
    }
}

#[tokio::test]
async fn aud_and_iss_are_required_when_configured() {
    let node = TestNode::start(&[
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        "chat",
        "--jwt-issuer",
        "auth.example",
    ])
    .await;
    let exp = now_secs() + 600;
    let good = json!({"sub":"u","exp":exp,"aud":"chat","iss":"auth.example"});
    let mut c = node.client().await;
    assert_eq!(c.request(json!({"op":"auth","token":token(good)})).await["op"], "ok");
    for (claims, why) in [
        (json!({"sub":"u","exp":exp}), "neither aud nor iss"),
        (json!({"sub":"u","exp":exp,"aud":"chat"}), "no iss"),
        (json!({"sub":"u","exp":exp,"iss":"auth.example"}), "no aud"),
        (json!({"sub":"u","exp":exp,"aud":[],"iss":"auth.example"}), "empty aud"),
        (json!({"sub":"u","aud":"chat","iss":"auth.example"}), "no exp"),
        (
            json!({"sub":"u","exp":"soon","aud":"chat","iss":"auth.example"}),
            "exp not a number",
        ),
    ] {
        assert_refused(&node, &token(claims), why).await;
    }
    // Not configured: not required (nor checked).
    let open = TestNode::start(&["--jwt-secret", SECRET]).await;
    let mut c = open.client().await;
    let r = c.request(json!({"op":"auth","token":token(valid_claims("u"))})).await;
    assert_eq!(r["op"], "ok", "{r}");
}

#[tokio::test]
async fn user_ids_with_control_or_bidi_characters_are_refused() {
    let node = TestNode::start(&["--jwt-secret", SECRET]).await;
    let long = "x".repeat(257);
    for sub in [
        "",
        "a\nb",
        "bell\u{7}",
        "\u{1b}[2Jwiped",
        "a\u{85}b",
        "admin\u{202E}gnp.exe",
        "\u{202A}left",
        "\u{2066}iso\u{2069}",
        "mark\u{200F}",
        "mark\u{200E}",
        "zero\u{200B}width",
        long.as_str(),
    ] {
        let messages = assert_refused(&node, &token(valid_claims(sub)), &format!("sub {sub:?}")).await;
        for m in messages {
            assert_no_leak(&m, "bad sub");
        }
    }
    let mut c = node.client().await;
    let r = c
        .request(json!({"op":"auth","token":token(valid_claims("Zoë 用户"))}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["user"].as_str()),
        (Some("ok"), Some("Zoë 用户")),
        "{r}"
    );
}

/// The next text frame starting with one of `prefixes`, as sent (not
/// re-encoded).
async fn raw_frame(c: &mut Client, prefixes: &[&str]) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .unwrap();
        if let Message::Text(t) = msg
            && prefixes.iter().any(|p| t.starts_with(p))
        {
            return t.to_string();
        }
    }
}

const OK: &str = "{\"op\":\"ok\"";
const ERROR: &str = "{\"op\":\"error\"";
const MSG: &str = "{\"op\":\"msg\"";

/// Bodies a re-serialising server would change.
fn tricky_bodies() -> Vec<String> {
    let mut keys: Vec<String> = (0..100).rev().map(|i| format!("\"k{i}\":{i}")).collect();
    keys.insert(50, r#""a":"middle""#.into());
    let mut bodies: Vec<String> = [
        "123456789012345678901234567890123",
        "-123456789012345678901234567890123",
        "-0",
        "1E2",
        "1e-7",
        "0.10000000000000000555",
        "-1.5E+300",
        r#""\u00e9\/\"\\ \ud83d\ude00""#,
        r#""plain""#,
        r#"{ "a" : [ 1 , 2 ] ,
	"b":{}, "c" :"]}" }"#,
        "[]",
        "{}",
        "null",
        "true",
        r#"{"dup":1,"dup":2}"#,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    bodies.push(format!("{{{}}}", keys.join(",")));
    bodies.push(format!("{}0{}", "[".repeat(64), "]".repeat(64)));
    bodies
}

#[tokio::test]
async fn websocket_bodies_are_delivered_byte_for_byte() {
    let node = TestNode::start(&[]).await;
    let mut sender = node.guest().await;
    let mut member = node.guest().await;
    sender.join("e2e").await;
    member.join("e2e").await;
    let bodies = tricky_bodies();
    for (i, body) in bodies.iter().enumerate() {
        let frame = format!("{{ \"op\":\"send\", \"id\":{i}, \"room\":\"e2e\", \"body\" :  {body}  }}");
        sender.send_raw(Message::Text(frame.clone().into())).await;
        let ack = raw_frame(&mut sender, &[OK, ERROR]).await;
        assert!(ack.starts_with(OK), "{frame}: {ack}");
        let event = raw_frame(&mut member, &[MSG]).await;
        assert!(
            event.ends_with(&format!(",\"body\":{body}}}")),
            "sent {body}\ngot {event}"
        );
    }
    // History gives the same bytes back.
    sender
        .send_raw(Message::Text(r#"{"op":"history","room":"e2e","limit":500}"#.into()))
        .await;
    let page = raw_frame(&mut sender, &["{\"op\":\"history\""]).await;
    for body in &bodies {
        assert!(page.contains(&format!(",\"body\":{body}}}")), "history lacks {body}");
    }
}

#[tokio::test]
async fn api_bodies_are_delivered_byte_for_byte() {
    let node = TestNode::start(&["--api-key", API_KEY]).await;
    let auth = format!("Bearer {API_KEY}");
    let mut member = node.guest().await;
    member.join("feed").await;
    for body in tricky_bodies() {
        let (status, text) = node
            .http(
                "POST",
                "/api/rooms/feed/messages",
                &[("authorization", &auth)],
                &format!("{{\"body\":  {body} , \"from\":\"bot\"}}"),
            )
            .await;
        assert_eq!(status, 200, "{body}: {text}");
        let event = raw_frame(&mut member, &[MSG]).await;
        assert!(
            event.ends_with(&format!(",\"body\":{body}}}")),
            "sent {body}\ngot {event}"
        );
    }
}

#[tokio::test]
async fn one_depth_limit_on_websocket_and_api() {
    let node = TestNode::start(&["--api-key", API_KEY]).await;
    let auth = format!("Bearer {API_KEY}");
    let mut c = node.guest().await;
    c.join("deep").await;
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    for (body, ok) in [
        (nested(64), true),
        (objects(64), true),
        (nested(65), false),
        (objects(65), false),
        (nested(1000), false),
        (nested(5000), false),
    ] {
        let depth = body.matches(['[', '{']).count();
        let frame = format!(r#"{{"op":"send","id":1,"room":"deep","body":{body}}}"#);
        c.send_raw(Message::Text(frame.into())).await;
        let r = c.recv_matching(|v| v["op"] == "ok" || v["op"] == "error").await;
        let (status, text) = node
            .http(
                "POST",
                "/api/rooms/deep/messages",
                &[("authorization", &auth)],
                &format!(r#"{{"body":{body}}}"#),
            )
            .await;
        if ok {
            assert_eq!(r["op"], "ok", "ws, depth {depth}: {r}");
            assert_eq!(status, 200, "api, depth {depth}: {text}");
        } else {
            assert_eq!(r["code"], "bad_request", "ws, depth {depth}: {r}");
            assert!(message(&r).contains("deeper than 64"), "ws, depth {depth}: {r}");
            assert_eq!(status, 400, "api, depth {depth}: {text}");
            let e: Value = serde_json::from_str(&text).unwrap();
            assert!(message(&e).contains("deeper than 64"), "api, depth {depth}: {text}");
        }
    }
    // Drain the deliveries of the accepted ones, then the connection still serves.
    assert_eq!(c.request(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test]
async fn error_messages_carry_no_library_text() {
    let node = TestNode::start(&["--jwt-secret", SECRET, "--api-key", API_KEY]).await;
    use jsonwebtoken::{Algorithm, EncodingKey};
    let good = valid_claims("u");
    let forged = token_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret-at-all"),
        good.clone(),
    );
    let other_alg = token_with(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        good.clone(),
    );
    let no_sub = token(json!({"exp": now_secs() + 600}));
    let sub_number = token(json!({"sub": 5, "exp": now_secs() + 600}));
    let mut header_none = String::from("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0."); // {"alg":"none","typ":"JWT"}
    header_none.push_str(forged.split('.').nth(1).unwrap());
    header_none.push('.');
    for (t, why) in [
        (forged.as_str(), "forged"),
        (other_alg.as_str(), "algorithm not configured"),
        (no_sub.as_str(), "missing sub"),
        (sub_number.as_str(), "sub not a string"),
        (header_none.as_str(), "alg none"),
        ("not.a.jwt", "garbage"),
        ("a.b!.c", "bad base64"),
    ] {
        for m in assert_refused(&node, t, why).await {
            assert_no_leak(&m, why);
        }
    }

    let mut c = Client::connect(&node.url(), Some(&token(good))).await;
    for frame in [
        "{not json",
        r#"{"op":"send","room":"r","body":[1,2}"#,
        r#"{"op":"send","room":"r","body":"\x"}"#,
        r#"{"op":"ping","id":1,}"#,
        "[1,2",
        "",
    ] {
        c.send_raw(Message::Text(frame.into())).await;
        let e = c.recv().await;
        assert_eq!(e["code"], "bad_request", "{frame}: {e}");
        assert_no_leak(&message(&e), frame);
    }

    let auth = format!("Bearer {API_KEY}");
    for body in [
        "{oops",
        r#"{"body":1,"from":5}"#,
        r#"{"body":1,"body":2}"#,
        r#"{"body":[1,}"#,
        r#"{"from":"x"}"#,
        "[]",
    ] {
        let (status, text) = node
            .http("POST", "/api/rooms/r/messages", &[("authorization", &auth)], body)
            .await;
        assert_eq!(status, 400, "{body}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["code"], "bad_request", "{body}: {text}");
        assert_no_leak(&message(&e), body);
    }
}

#[tokio::test]
async fn api_from_follows_the_user_id_rules() {
    let node = TestNode::start(&["--api-key", API_KEY]).await;
    let auth = format!("Bearer {API_KEY}");
    for from in ["", "a\nb", "sys\u{202E}tem", "x\u{2066}"] {
        let body = json!({"body": 1, "from": from}).to_string();
        let (status, text) = node
            .http("POST", "/api/rooms/r/messages", &[("authorization", &auth)], &body)
            .await;
        assert_eq!(status, 400, "{from:?}: {text}");
    }
    let body = json!({"body": 1, "from": "Zoë"}).to_string();
    let (status, text) = node
        .http("POST", "/api/rooms/r/messages", &[("authorization", &auth)], &body)
        .await;
    assert_eq!(status, 200, "{text}");
}
