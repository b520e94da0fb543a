//! RFC conformance at the node's edge (issue 10, findings 6 and 8): frames
//! that break RFC 6455 and requests that break RFC 6455's handshake or RFC
//! 9112, written by hand over TCP because WebSocket and HTTP client
//! libraries refuse to send them. Every read is bounded by `WAIT`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame: `first` is the FIN/RSV/opcode byte; masked with `mask`
/// when given (as RFC 6455 requires of clients).
fn frame(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(bit | n as u8),
        n if n <= 0xffff => {
            v.push(bit | 126);
            v.extend((n as u16).to_be_bytes());
        }
        n => {
            v.push(bit | 127);
            v.extend((n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            v.extend(k);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    frame(first, Some(MASK), payload)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Reads until the end of an HTTP response head; returns the head and the
/// bytes read past it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("a response head in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A WebSocket connection driven by hand.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Upgrades and authenticates as a guest.
    async fn open(node: &TestNode) -> Raw {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-key: {WS_KEY}\r\nsec-websocket-version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, buf) = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut raw = Raw { s, buf };
        raw.send(&masked(FIN | TEXT, br#"{"op":"auth","id":1}"#)).await;
        let (op, reply) = raw.read_frame().await.expect("auth reply");
        assert_eq!(op, TEXT);
        assert!(
            reply.starts_with(br#"{"op":"ok""#),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next server frame as (opcode, payload); `None` once the
    /// connection has ended.
    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((op, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((op, payload));
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(WAIT, self.s.read(&mut chunk))
                .await
                .expect("a frame or the end of the connection in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads to the server's close frame; returns its code (`None`: the
    /// connection ended without one) and the frames before it, then checks
    /// the server also ends the TCP connection.
    async fn closed(&mut self) -> (Option<u16>, Vec<(u8, Vec<u8>)>) {
        let mut before = Vec::new();
        loop {
            match self.read_frame().await {
                None => return (None, before),
                Some((CLOSE, p)) => {
                    assert!(p.len() >= 2, "close frame without a code: {p:?}");
                    assert!(self.read_frame().await.is_none(), "frames after the close frame");
                    return (Some(u16::from_be_bytes([p[0], p[1]])), before);
                }
                Some(f) => before.push(f),
            }
        }
    }

    /// Sends one frame on a fresh connection and expects the server's close
    /// with `code`, with nothing before it.
    async fn expect_close_for(node: &TestNode, bytes: &[u8], code: u16, what: &str) {
        let mut raw = Raw::open(node).await;
        raw.send(bytes).await;
        let (got, before) = raw.closed().await;
        assert_eq!(got, Some(code), "{what}: close code");
        assert!(before.is_empty(), "{what}: frames before the close: {before:?}");
    }

    /// The connection still serves requests: a `ping` op gets its `pong`.
    async fn still_serves(&mut self, id: u32) {
        let req = format!(r#"{{"op":"ping","id":{id}}}"#);
        self.send(&masked(FIN | TEXT, req.as_bytes())).await;
        let want = format!(r#""id":{id}"#);
        loop {
            let (op, p) = self.read_frame().await.expect("connection still open");
            if op == TEXT && String::from_utf8_lossy(&p).contains(&want) {
                return;
            }
        }
    }
}

impl Raw {
    /// Nothing arrives for 200 ms (a half-sent header is not answered).
    async fn quiet_for_a_moment(&mut self) {
        let mut chunk = [0u8; 64];
        let quiet = tokio::time::timeout(Duration::from_millis(200), self.s.read(&mut chunk)).await;
        assert!(quiet.is_err(), "unexpected bytes or end: {quiet:?}");
    }
}

/// A whole server (unmasked) frame at the front of `buf`: opcode, payload,
/// bytes used.
fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    let (len, start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (buf.len() >= start + len).then(|| (buf[0] & 0x0f, buf[start..start + len].to_vec(), start + len))
}

// ---- Finding 6: frames ----

#[tokio::test]
async fn unmasked_client_frames_are_closed_with_1002() {
    let node = TestNode::start(&[]).await;
    let ping_op = frame(FIN | TEXT, None, br#"{"op":"ping","id":2}"#);
    Raw::expect_close_for(&node, &ping_op, 1002, "unmasked text").await;
    // Empty: no payload left to read once the header is in.
    Raw::expect_close_for(&node, &frame(FIN | PING, None, b""), 1002, "unmasked empty ping").await;
    Raw::expect_close_for(&node, &frame(FIN | PONG, None, b"x"), 1002, "unmasked pong").await;

    // A good frame in the same write before the bad one is still served.
    let mut raw = Raw::open(&node).await;
    let mut both = masked(FIN | TEXT, br#"{"op":"ping","id":3}"#);
    both.extend(ping_op);
    raw.send(&both).await;
    let (code, before) = raw.closed().await;
    assert_eq!(code, Some(1002));
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].1, br#"{"op":"pong","id":3}"#);

    // The bad header split over two writes.
    let mut raw = Raw::open(&node).await;
    let bad = frame(FIN | TEXT, None, br#"{"op":"ping","id":4}"#);
    raw.send(&bad[..1]).await;
    raw.quiet_for_a_moment().await;
    raw.send(&bad[1..]).await;
    assert_eq!(raw.closed().await, (Some(1002), vec![]));
}

#[tokio::test]
async fn control_frames_over_125_bytes_or_fragmented_are_closed_with_1002() {
    let node = TestNode::start(&[]).await;
    let big = [b'a'; 126];
    Raw::expect_close_for(&node, &masked(FIN | PONG, &big), 1002, "126-byte pong").await;
    Raw::expect_close_for(&node, &masked(FIN | PING, &big), 1002, "126-byte ping").await;
    let close = close_payload(1000, &[b'a'; 124]);
    Raw::expect_close_for(&node, &masked(FIN | CLOSE, &close), 1002, "126-byte close").await;
    Raw::expect_close_for(&node, &masked(PONG, b"x"), 1002, "fragmented pong").await;
    Raw::expect_close_for(&node, &masked(PING, b"x"), 1002, "fragmented ping").await;
}

#[tokio::test]
async fn control_frames_of_125_bytes_are_served() {
    let node = TestNode::start(&[]).await;
    let mut raw = Raw::open(&node).await;
    let full = [b'p'; 125];
    raw.send(&masked(FIN | PONG, &full)).await;
    raw.still_serves(2).await;
    raw.send(&masked(FIN | PING, &full)).await;
    assert_eq!(raw.read_frame().await, Some((PONG, full.to_vec())));
    let close = close_payload(1000, &[b'c'; 123]);
    raw.send(&masked(FIN | CLOSE, &close)).await;
    assert_eq!(raw.closed().await, (Some(1000), vec![]));
}

#[tokio::test]
async fn close_payloads_are_checked() {
    let node = TestNode::start(&[]).await;
    let cases: [(&[u8], u16, &str); 6] = [
        (b"", 1000, "empty close"),
        (&[0x03], 1002, "one-byte close payload"),
        (&[0x03, 0xe8, 0xff, 0xfe], 1007, "reason not UTF-8"),
        (&[0x03, 0xe8, 0xce], 1007, "reason cut inside a character"),
        (&[0x03, 0xed], 1002, "1005 is not sent on the wire"),
        (&[0x0f, 0xa0, b'o', b'k'], 4000, "application code echoed"),
    ];
    for (payload, code, what) in cases {
        Raw::expect_close_for(&node, &masked(FIN | CLOSE, payload), code, what).await;
    }
    let reason = close_payload(1000, "déjà vu".as_bytes());
    Raw::expect_close_for(&node, &masked(FIN | CLOSE, &reason), 1000, "UTF-8 reason").await;
}

// ---- Finding 6: the handshake and HTTP/1.1 ----

/// Writes `req` on a fresh connection; returns the status and the head.
async fn raw_http(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, _) = read_head(&mut s).await;
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head)
}

fn upgrade_request(version: &str, ws_version: &str, host: Option<&str>) -> String {
    let host = host.map(|h| format!("host: {h}\r\n")).unwrap_or_default();
    format!(
        "GET /ws HTTP/{version}\r\n{host}connection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-key: {WS_KEY}\r\nsec-websocket-version: {ws_version}\r\n\r\n"
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

#[tokio::test]
async fn wrong_websocket_version_gets_426_naming_13() {
    let node = TestNode::start(&[]).await;
    for version in ["8", "14", ""] {
        let (status, head) = raw_http(node.addr, &upgrade_request("1.1", version, Some("test"))).await;
        assert_eq!(status, 426, "version {version:?}: {head}");
        assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
    }
}

#[tokio::test]
async fn http_1_0_upgrade_is_refused() {
    let node = TestNode::start(&[]).await;
    let (status, head) = raw_http(node.addr, &upgrade_request("1.0", "13", Some("test"))).await;
    assert_eq!(status, 400, "{head}");
    // Other HTTP/1.0 requests are still served, Host or not.
    let (status, head) = raw_http(node.addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "{head}");
}

#[tokio::test]
async fn http_1_1_requests_without_one_valid_host_get_400() {
    let node = TestNode::start(&[]).await;
    let (status, head) = raw_http(node.addr, &upgrade_request("1.1", "13", None)).await;
    assert_eq!(status, 400, "upgrade without Host: {head}");
    for (req, what) in [
        ("GET /healthz HTTP/1.1\r\n\r\n", "no Host"),
        (
            "GET /healthz HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "two Host headers",
        ),
        ("GET /healthz HTTP/1.1\r\nhost: a b\r\n\r\n", "Host not an authority"),
        ("GET /healthz HTTP/1.1\r\nhost: user@a\r\n\r\n", "Host with userinfo"),
        (
            "GET /healthz HTTP/1.0\r\nhost: a\r\nhost: b\r\n\r\n",
            "HTTP/1.0, two Host headers",
        ),
    ] {
        let (status, head) = raw_http(node.addr, req).await;
        assert_eq!(status, 400, "{what}: {head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{what}: {head}");
    }
    for req in [
        "GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
    ] {
        let (status, head) = raw_http(node.addr, req).await;
        assert_eq!(status, 200, "{req:?}: {head}");
    }
}

// ---- Finding 8: slow requests ----

#[tokio::test]
async fn slow_api_body_gets_408_and_the_connection_closes() {
    let node = TestNode::start(&["--api-key", API_KEY, "--http-body-timeout", "1s"]).await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/slow/messages HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {API_KEY}\r\n\
         content-type: application/json\r\ncontent-length: 40\r\n\r\n{{\"body\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("connection closed after the 408")
        .unwrap();
    // A body sent at once is unaffected.
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = node
        .http(
            "POST",
            "/api/rooms/slow/messages",
            &[("authorization", &auth)],
            r#"{"body":{"text":"hi"}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn slow_request_head_is_cut_off() {
    // hyper's header_read_timeout (10 s) with its timer set.
    let node = TestNode::start(&[]).await;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n").await.unwrap();
    let mut out = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    assert!(end.is_ok(), "connection still open after 15 s of an unfinished head");
    assert!(!out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
}

#[test]
fn http_body_timeout_is_validated() {
    let load = |v: &str| gateway::Config::load(["gateway", "--http-body-timeout", v]).map(|c| c.validate());
    let err = load("0s").unwrap().unwrap_err().to_string();
    assert!(err.contains("http_body_timeout"), "{err}");
    assert!(load("5s").unwrap().is_ok());
    assert!(load("soon").is_err());
}
