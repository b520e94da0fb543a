//! Admission control at the upgrade (issue 10): the node's connection cap,
//! the per-IP cap (with and without trusted proxies), the per-user cap
//! after authentication, the `Origin` allow-list, the memory budget, the
//! internal listener, and the refusal metrics, against real nodes.
//! Client sockets bound to 127.0.0.2, 127.0.0.3, ... are distinct IPs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::{GatewayProcess, Wait};
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, http};

/// How an upgrade was refused: status and `Retry-After`, if any.
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<String>,
}

/// A WebSocket upgrade to `addr` from a socket bound to `from` (default
/// 127.0.0.1), with extra request headers.
async fn upgrade(addr: SocketAddr, from: Option<&str>, headers: &[(&str, &str)]) -> Result<Client, Refused> {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
    }
    let stream = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let handshake = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream));
    match tokio::time::timeout(WAIT, handshake).await.expect("handshake in time") {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(WsError::Http(response)) => Err(Refused {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string()),
        }),
        Err(e) => panic!("upgrade failed otherwise: {e}"),
    }
}

/// An upgrade that must be admitted.
async fn admitted(addr: SocketAddr, from: Option<&str>, headers: &[(&str, &str)]) -> Client {
    match upgrade(addr, from, headers).await {
        Ok(c) => c,
        Err(r) => panic!("upgrade from {from:?} with {headers:?} refused: {r:?}"),
    }
}

/// An upgrade that must be refused with 503 and a `Retry-After` of whole
/// seconds.
async fn unavailable(addr: SocketAddr, from: Option<&str>, headers: &[(&str, &str)]) {
    match upgrade(addr, from, headers).await {
        Ok(_) => panic!("upgrade from {from:?} with {headers:?} admitted; expected 503"),
        Err(r) => {
            assert_eq!(r.status, 503, "{r:?}");
            let secs: u32 = r
                .retry_after
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("Retry-After in seconds: {r:?}"));
            assert!((1..=60).contains(&secs), "{r:?}");
        }
    }
}

/// Authenticates as a guest; panics unless `ok`.
async fn auth_guest(c: &mut Client) {
    let ok = c.request(json!({"op":"auth"})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
}

/// The value of `gateway_connections_refused_total{reason=...}` on `/metrics`.
async fn refused_total(node: &TestNode, reason: &str) -> f64 {
    let (status, text) = node.http("GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let series = format!("gateway_connections_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn node_cap_refuses_with_503_until_a_connection_ends() {
    let node = TestNode::start(&["--max-connections", "2"]).await;
    let mut a = admitted(node.addr, None, &[]).await;
    auth_guest(&mut a).await;
    let _b = admitted(node.addr, None, &[]).await;
    // Counted from the upgrade, not from authentication.
    unavailable(node.addr, None, &[]).await;
    unavailable(node.addr, Some("127.0.0.9"), &[]).await;
    assert!(refused_total(&node, "node_cap").await >= 2.0);
    assert_eq!(node.http("GET", "/healthz", &[], "").await.0, 200);

    a.ws.close(None).await.unwrap();
    let _ = a.until_closed().await;
    let mut c = Wait::new("a place freed by the closed connection", WAIT)
        .every(Duration::from_millis(50))
        .until_async(async || upgrade(node.addr, None, &[]).await.map_err(|r| format!("{r:?}")))
        .await;
    auth_guest(&mut c).await;
    unavailable(node.addr, None, &[]).await;
    node.stop().await;
}

#[tokio::test]
async fn ip_cap_counts_direct_clients_by_peer_address() {
    let node = TestNode::start(&["--max-connections-per-ip", "2"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(admitted(node.addr, Some("127.0.0.2"), &[]).await);
    }
    unavailable(node.addr, Some("127.0.0.2"), &[]).await;
    // Another address has its own count.
    let mut other = admitted(node.addr, Some("127.0.0.3"), &[]).await;
    auth_guest(&mut other).await;
    assert!(refused_total(&node, "ip_cap").await >= 1.0);

    let mut first = held.remove(0);
    first.ws.close(None).await.unwrap();
    let _ = first.until_closed().await;
    let _again = Wait::new("127.0.0.2's freed place", WAIT)
        .every(Duration::from_millis(50))
        .until_async(async || {
            upgrade(node.addr, Some("127.0.0.2"), &[])
                .await
                .map_err(|r| format!("{r:?}"))
        })
        .await;
    node.stop().await;
}

/// An upgrade whose TCP connection the node closes before answering.
async fn closed_at_the_door(addr: SocketAddr, from: &str) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let req = format!("ws://{addr}/ws").into_client_request().unwrap();
    let handshake = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream));
    match tokio::time::timeout(WAIT, handshake).await.expect("handshake in time") {
        Ok(_) => panic!("upgrade from {from} admitted; expected the connection closed"),
        Err(WsError::Http(r)) => panic!("upgrade from {from} answered {}; expected no answer", r.status()),
        Err(_) => {}
    }
}

#[tokio::test]
async fn connection_rate_per_ip_closes_a_storm_at_the_door() {
    let node = TestNode::start(&[
        "--connection-rate-per-ip",
        "0.01",
        "--connection-burst-per-ip",
        "3",
        "--trusted-proxies",
        "127.0.0.1",
        "--client-ip-header",
        "X-Forwarded-For",
    ])
    .await;
    // A direct client: its burst, then closed before a byte is read.
    for _ in 0..3 {
        admitted(node.addr, Some("127.0.0.5"), &[]).await;
    }
    closed_at_the_door(node.addr, "127.0.0.5").await;
    // Another address is not affected.
    admitted(node.addr, Some("127.0.0.6"), &[]).await;
    // Behind the trusted proxy, each forwarded client has its own rate,
    // refused with 503 (the proxy's own connection is not at fault).
    let xff = [("x-forwarded-for", "198.51.100.9")];
    for _ in 0..3 {
        admitted(node.addr, Some("127.0.0.1"), &xff).await;
    }
    unavailable(node.addr, Some("127.0.0.1"), &xff).await;
    admitted(node.addr, Some("127.0.0.1"), &[("x-forwarded-for", "198.51.100.10")]).await;
    assert!(refused_total(&node, "ip_rate").await >= 2.0);
    node.stop().await;
}

#[tokio::test]
async fn client_ip_header_is_honoured_only_from_trusted_proxies() {
    let node = TestNode::start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.1,10.0.0.0/8",
        "--client-ip-header",
        "X-Forwarded-For",
    ])
    .await;
    // An untrusted peer: its header is ignored, so both upgrades are
    // 127.0.0.4's, whatever they claim.
    let _a = admitted(node.addr, Some("127.0.0.4"), &[("x-forwarded-for", "203.0.113.1")]).await;
    unavailable(node.addr, Some("127.0.0.4"), &[("x-forwarded-for", "203.0.113.2")]).await;

    // The trusted proxy (127.0.0.1): each forwarded client has its own count.
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    let _b = admitted(node.addr, Some("127.0.0.1"), &xff("198.51.100.1")).await;
    let _c = admitted(node.addr, Some("127.0.0.1"), &xff("198.51.100.2, 10.0.0.7")).await;
    unavailable(node.addr, Some("127.0.0.1"), &xff("198.51.100.1")).await;
    unavailable(node.addr, Some("127.0.0.1"), &xff("198.51.100.2")).await;
    // A client writing someone else's address first is still itself: the
    // right-most untrusted entry counts.
    let _d = admitted(node.addr, Some("127.0.0.1"), &xff("198.51.100.1, 198.51.100.3")).await;
    // No header from the proxy: the proxy itself, once.
    let _e = admitted(node.addr, Some("127.0.0.1"), &[]).await;
    unavailable(node.addr, Some("127.0.0.1"), &[]).await;
    node.stop().await;
}

#[tokio::test]
async fn user_cap_refuses_the_next_connection_after_auth() {
    let node = TestNode::start(&["--jwt-secret", SECRET, "--max-connections-per-user", "2"]).await;
    let t1 = token(valid_claims("u1"));
    // One by header, one by the auth op: both count.
    let mut by_header = Client::connect(&node.url(), Some(&t1)).await;
    assert_eq!(by_header.request(json!({"op":"ping"})).await["op"], "pong");
    let mut by_op = node.client().await;
    assert_eq!(by_op.request(json!({"op":"auth","token":t1})).await["op"], "ok");

    let mut third = node.client().await;
    let reply = third.request(json!({"op":"auth","token":t1})).await;
    assert_eq!(reply["op"], "error", "{reply}");
    assert_eq!(reply["code"], "rate_limited", "{reply}");
    assert_eq!(reply["message"], "too many connections for this user", "{reply}");
    assert_eq!(third.until_closed().await.0, Ended::Close(4029));

    let mut fourth = Client::connect(&node.url(), Some(&t1)).await;
    let (end, frames) = fourth.until_closed().await;
    assert_eq!(end, Ended::Close(4029));
    assert_eq!(frames[0]["code"], "rate_limited", "{frames:?}");

    // Another user is not affected.
    let mut u2 = node.client().await;
    let t2 = token(valid_claims("u2"));
    assert_eq!(u2.request(json!({"op":"auth","token":t2})).await["op"], "ok");
    assert!(refused_total(&node, "user_cap").await >= 2.0);

    // A closed connection gives its user's place back.
    by_header.ws.close(None).await.unwrap();
    let _ = by_header.until_closed().await;
    Wait::new("u1's freed place", WAIT)
        .every(Duration::from_millis(50))
        .until_async(async || {
            let mut c = node.client().await;
            let r = c.request(json!({"op":"auth","token":t1})).await;
            if r["op"] == "ok" { Ok(c) } else { Err(r.to_string()) }
        })
        .await;
    node.stop().await;
}

#[tokio::test]
async fn guests_are_distinct_users() {
    let node = TestNode::start(&["--max-connections-per-user", "1"]).await;
    let mut guests = Vec::new();
    for _ in 0..3 {
        guests.push(node.guest().await);
    }
    node.stop().await;
}

#[tokio::test]
async fn anonymous_mode_admits_only_loopback_origins_by_default() {
    let node = TestNode::start(&[]).await;
    match upgrade(node.addr, None, &[("origin", "https://evil.example")]).await {
        Err(r) => assert_eq!((r.status, r.retry_after), (403, None)),
        Ok(_) => panic!("a foreign page opened a guest connection"),
    }
    assert!(upgrade(node.addr, None, &[("origin", "null")]).await.is_err());
    let mut local = admitted(node.addr, None, &[("origin", "http://localhost:5173")]).await;
    auth_guest(&mut local).await;
    admitted(node.addr, None, &[("origin", "http://127.0.0.1:8080")]).await;
    // No Origin: not a browser.
    admitted(node.addr, None, &[]).await;
    assert!(refused_total(&node, "origin").await >= 2.0);
    node.stop().await;
}

#[tokio::test]
async fn allowed_origins_is_an_exact_list() {
    let node = TestNode::start(&[
        "--allowed-origins",
        "https://chat.example.com,https://m.example.com:8443",
    ])
    .await;
    admitted(node.addr, None, &[("origin", "https://chat.example.com")]).await;
    admitted(node.addr, None, &[("origin", "https://m.example.com:8443")]).await;
    admitted(node.addr, None, &[]).await;
    for refused in [
        "https://evil.example",
        "http://chat.example.com",
        "http://localhost:5173",
    ] {
        let r = upgrade(node.addr, None, &[("origin", refused)]).await.err();
        assert_eq!(r.map(|r| r.status), Some(403), "{refused}");
    }
    node.stop().await;

    // JWT auth and no list: any page, since a connection needs a token.
    let node = TestNode::start(&["--jwt-secret", SECRET]).await;
    admitted(node.addr, None, &[("origin", "https://evil.example")]).await;
    node.stop().await;
}

#[tokio::test]
async fn memory_budget_refuses_upgrades_but_not_health() {
    // 1 MiB: less than any process's resident memory.
    let node = TestNode::start(&["--max-memory", "1048576"]).await;
    unavailable(node.addr, None, &[]).await;
    assert_eq!(node.http("GET", "/healthz", &[], "").await, (200, "ok\n".into()));
    assert!(refused_total(&node, "memory").await >= 1.0);
    node.stop().await;

    // The default budget (80% of the machine or cgroup) admits.
    let node = TestNode::start(&[]).await;
    admitted(node.addr, None, &[]).await;
    node.stop().await;
}

#[tokio::test]
async fn draining_refusals_are_counted() {
    let node = TestNode::start(&[]).await;
    let _held = node.guest().await;
    node.begin_shutdown();
    let r = upgrade(node.addr, None, &[]).await.err().expect("503 while draining");
    assert_eq!(r.status, 503);
    // Its clients belong on another node at once.
    assert_eq!(r.retry_after.as_deref(), Some("1"), "{r:?}");
    // Probes of the draining node get fresh connections.
    assert!(refused_total(&node, "draining").await >= 1.0);
    node.stop().await;
}

#[tokio::test]
async fn internal_listener_takes_metrics_off_the_client_listener() {
    let dir = tempfile::tempdir().unwrap();
    let p = GatewayProcess::start(
        env!("CARGO_BIN_EXE_gateway"),
        dir.path(),
        &["--internal-listen", "127.0.0.1:0"],
    );
    let internal = p.internal.expect("the internal listener's address is logged");
    assert_ne!(internal.port(), 0, "port 0 is bound to a real port");
    let get = async |addr, path| http_request(addr, "GET", path, &[], "").await;

    let (status, text) = get(internal, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("gateway_"), "{text}");
    assert_eq!(get(internal, "/healthz").await.0, 200);
    assert_eq!(get(internal, "/readyz").await.0, 200);
    assert_eq!(get(internal, "/ws").await.0, 404, "no clients on the internal listener");
    assert_eq!(get(internal, "/api/rooms/r/messages").await.0, 404);

    assert_eq!(get(p.addr, "/metrics").await.0, 404);
    assert_eq!(get(p.addr, "/healthz").await.0, 200);
    assert_eq!(get(p.addr, "/readyz").await.0, 200);
    let mut c = admitted(p.addr, None, &[]).await;
    auth_guest(&mut c).await;
}

#[test]
fn settings_are_validated_naming_the_setting() {
    let load = |args: &[&str]| {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        gateway::Config::load(all).and_then(|c| c.validate())
    };
    for (args, setting) in [
        (vec!["--trusted-proxies", "10.0.0.0/33"], "trusted_proxies"),
        (vec!["--trusted-proxies", "10.0.0.0/8"], "trusted_proxies"),
        (vec!["--client-ip-header", "X-Forwarded-For"], "client_ip_header"),
        (
            vec!["--trusted-proxies", "10.0.0.0/8", "--client-ip-header", "bad header"],
            "client_ip_header",
        ),
        (vec!["--allowed-origins", "chat.example.com"], "allowed_origins"),
        (vec!["--allowed-origins", "*,https://a.test"], "allowed_origins"),
        (vec!["--max-memory", "1000"], "max_memory"),
        (vec!["--internal-listen", "127.0.0.1:8080"], "internal_listen"),
    ] {
        let err = load(&args).unwrap_err().to_string();
        assert!(err.starts_with(setting), "{args:?}: {err}");
    }

    // Every setting is also a key of the config file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "max_connections = 10\nmax_connections_per_ip = 3\nmax_connections_per_user = 4\n\
         trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nclient_ip_header = \"X-Forwarded-For\"\n\
         allowed_origins = [\"https://a.test\"]\ninternal_listen = \"127.0.0.1:9090\"\nmax_memory = 1073741824\n",
    )
    .unwrap();
    let s = load(&["--config", path.to_str().unwrap()]).unwrap();
    let c = &s.config;
    assert_eq!(
        (c.max_connections, c.max_connections_per_ip, c.max_connections_per_user),
        (10, 3, 4)
    );
    assert_eq!(c.trusted_proxies, vec!["10.0.0.0/8", "::1"]);
    assert_eq!(c.internal_listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(c.max_memory, 1 << 30);
    assert_eq!(
        s.admission.origins,
        gateway::admission::Origins::List(vec!["https://a.test".into()])
    );
    let defaults = load(&[]).unwrap();
    assert_eq!(defaults.config.max_connections_per_user, 100);
    assert_eq!(defaults.config.max_connections_per_ip, 0);
}
