//! The server API (1.1) on one node with the embedded store: named keys,
//! JSON errors with protocol codes and statuses, bodies refused before they
//! are read, moderation (kick and ban, disconnect, revoke) with the ban and
//! the revocation surviving a restart, room info, presence, broadcast and
//! delete. The cluster versions are in `moderation_cluster.rs`.

mod common;

use common::*;
use serde_json::{Value, json};

fn args() -> Vec<&'static str> {
    vec![
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--api-keys",
        "backend=0123456789abcdef0123,ops=fedcba9876543210fedc",
    ]
}

#[tokio::test]
async fn keys_routes_and_errors() {
    let node = TestNode::start(&args()).await;
    let call = |key: &'static str, method: &'static str, path: &'static str, body: &'static str| {
        let addr = node.addr;
        async move {
            let auth = format!("Bearer {key}");
            let (status, text) = http_request(addr, method, path, &[("authorization", &auth)], body).await;
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
        }
    };
    // Every configured key works; others are 401 with the protocol's code.
    for key in [API_KEY, "0123456789abcdef0123", "fedcba9876543210fedc"] {
        let (status, v) = call(key, "GET", "/api/rooms/r", "").await;
        assert_eq!(status, 200, "{key}: {v}");
        assert_eq!(v["members"], 0, "{v}");
    }
    let (status, v) = call("0123456789abcdef0124", "GET", "/api/rooms/r", "").await;
    assert_eq!((status, v["code"].as_str()), (401, Some("unauthorized")), "{v}");

    // Unknown path 404, wrong method 405 (bad_request), bad room 400.
    let (status, v) = call(API_KEY, "GET", "/api/nothing/here", "").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")), "{v}");
    let (status, v) = call(API_KEY, "PUT", "/api/rooms/r/kick", "").await;
    assert_eq!((status, v["code"].as_str()), (405, Some("bad_request")), "{v}");
    let (status, v) = call(API_KEY, "GET", "/api/rooms/bad%20room", "").await;
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")), "{v}");
    let (status, v) = call(API_KEY, "POST", "/api/rooms/r/kick", "{\"user\":").await;
    assert_eq!((status, v["message"].as_str()), (400, Some("malformed JSON")), "{v}");
    let (status, v) = call(API_KEY, "POST", "/api/rooms/r/kick", "{}").await;
    assert_eq!((status, v["message"].as_str()), (400, Some("missing \"user\"")), "{v}");
    let (status, v) = call(API_KEY, "DELETE", "/api/rooms/r/messages/12x", "").await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = call(API_KEY, "DELETE", "/api/rooms/r/messages/12", "").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")), "{v}");

    // A body declared over the limit is refused before it is sent.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/r/kick HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {API_KEY}\r\ncontent-length: 100000000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("too_large"), "{text}");

    // Calls are counted by key name, never the key. (The tests of this
    // file share one process's metrics: at least these calls.)
    let (_, metrics) = node.http("GET", "/metrics", &[], "").await;
    for (series, at_least) in [
        (
            "gateway_api_requests_total{key=\"ops\",action=\"room\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "gateway_api_requests_total{key=\"backend\",action=\"room\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "gateway_api_requests_total{key=\"none\",action=\"unknown\",outcome=\"unauthorized\"}",
            1.0,
        ),
        (
            "gateway_api_requests_total{key=\"default\",action=\"delete\",outcome=\"not_found\"}",
            1.0,
        ),
        (
            "gateway_api_requests_total{key=\"default\",action=\"unknown\",outcome=\"bad_request\"}",
            1.0,
        ),
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(value >= at_least, "{series} is {value} in\n{metrics}");
    }
    assert!(!metrics.contains("0123456789abcdef0123"));
    node.stop().await;
}

#[tokio::test]
async fn kick_ban_disconnect_revoke_on_one_node_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_in(dir.path(), &args()).await;
    let alice = token(claims_issued("alice", -10));
    let mut a1 = authed(&node.url(), &alice).await;
    let mut a2 = authed(&node.url(), &alice).await;
    let mut bob = authed(&node.url(), &token(claims_issued("bob", -10))).await;
    for c in [&mut a1, &mut a2, &mut bob] {
        c.join("hall").await;
    }
    let (status, v) = api(node.addr, "GET", "/api/rooms/hall", Value::Null).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["members"].as_u64(), v["users"].as_u64()), (Some(3), Some(2)), "{v}");
    let (_, v) = api(node.addr, "GET", "/api/rooms/hall/presence", Value::Null).await;
    assert_eq!(v["users"], json!(["alice", "bob"]), "{v}");

    // A kick without a ban: both of alice's connections removed; she may rejoin.
    let (status, v) = api(node.addr, "POST", "/api/rooms/hall/kick", json!({"user":"alice"})).await;
    assert_eq!(status, 200, "{v}");
    for c in [&mut a1, &mut a2] {
        let r = c.recv_matching(|v| v["op"] == "removed").await;
        assert_eq!(
            (r["room"].as_str(), r["reason"].as_str()),
            (Some("hall"), Some("kicked")),
            "{r}"
        );
    }
    a1.join("hall").await;

    // A ban: removed as banned, and a rejoin forbidden, also after a restart.
    let (status, v) = api(
        node.addr,
        "POST",
        "/api/rooms/hall/kick",
        json!({"user":"alice","ban_seconds":3600}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["banned_until"].as_u64().unwrap() > 0, "{v}");
    let r = a1.recv_matching(|v| v["op"] == "removed").await;
    assert_eq!(r["reason"], "banned", "{r}");
    let r = a2.request(json!({"op":"join","room":"hall"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    // Bob was never touched.
    let (_, v) = api(node.addr, "GET", "/api/rooms/hall", Value::Null).await;
    assert_eq!((v["members"].as_u64(), v["users"].as_u64()), (Some(1), Some(1)), "{v}");

    // Revoke alice's tokens: her connections close 4003; the old token is
    // refused, a newer one accepted.
    let (status, v) = api(node.addr, "POST", "/api/users/alice/revoke", Value::Null).await;
    assert_eq!(status, 200, "{v}");
    for c in [&mut a1, &mut a2] {
        assert_eq!(c.until_closed().await.0, Ended::Close(4003));
    }
    let mut old = Client::connect(&node.url(), None).await;
    let r = old.request(json!({"op":"auth","token":alice})).await;
    assert_eq!(
        (r["code"].as_str(), r["message"].as_str()),
        (Some("unauthorized"), Some("token revoked")),
        "{r}"
    );
    assert_eq!(old.until_closed().await.0, Ended::Close(4003));
    let newer = token(claims_issued("alice", 1));

    // Disconnect bob: closed 4003; he may come back with the same token.
    let (status, _) = api(node.addr, "POST", "/api/users/bob/disconnect", json!({"reason":"spam"})).await;
    assert_eq!(status, 200);
    assert_eq!(bob.until_closed().await.0, Ended::Close(4003));

    // Restart on the same data: the ban and the revocation hold.
    node.stop().await;
    let node = TestNode::start_in(dir.path(), &args()).await;
    let mut old = Client::connect(&node.url(), None).await;
    let r = old.request(json!({"op":"auth","token":alice})).await;
    assert_eq!(r["message"], "token revoked", "{r}");
    let mut a3 = authed(&node.url(), &newer).await;
    let r = a3.request(json!({"op":"join","room":"hall"})).await;
    assert_eq!(r["code"], "forbidden", "still banned after a restart: {r}");
    a3.join("elsewhere").await;
    node.stop().await;
}

#[tokio::test]
async fn broadcast_delete_and_last_message() {
    let node = TestNode::start(&args()).await;
    let mut c = authed(&node.url(), &token(claims_issued("carol", 0))).await;
    c.join("b1").await;
    c.join("b2").await;
    let (status, v) = api(
        node.addr,
        "POST",
        "/api/broadcast",
        json!({"rooms":["b1","b2","b3","b1"],"body":{"text":"maintenance at 5"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let messages = v["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "one message per distinct room: {v}");
    for room in ["b1", "b2"] {
        let m = c.next_msg(room).await;
        assert_eq!(m["body"]["text"], "maintenance at 5", "{m}");
        assert_eq!(m["from"], "system", "{m}");
    }
    let b1 = messages.iter().find(|m| m["room"] == "b1").unwrap();
    let id = b1["msg"].as_str().unwrap().to_string();
    let (_, v) = api(node.addr, "GET", "/api/rooms/b1", Value::Null).await;
    assert_eq!(v["last_msg"].as_str(), Some(id.as_str()), "{v}");

    let path = format!("/api/rooms/b1/messages/{id}");
    let (status, v) = api(node.addr, "DELETE", &path, Value::Null).await;
    assert_eq!(status, 200, "{v}");
    let d = c.recv_matching(|v| v["op"] == "delete").await;
    assert_eq!(d["target"].as_str(), Some(id.as_str()), "{d}");
    let (status, v) = api(node.addr, "DELETE", &path, Value::Null).await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")), "{v}");

    let (status, v) = api(node.addr, "POST", "/api/broadcast", json!({"rooms":[],"body":1})).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = api(
        node.addr,
        "POST",
        "/api/broadcast",
        json!({"rooms":["ok","not ok"],"body":1}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    node.stop().await;
}
