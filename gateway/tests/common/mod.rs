//! Test fixtures: a gateway node on a port-0 listener (a `Drop` guard), a
//! WebSocket client, and token minting. Every wait is bounded.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-0123456789";
pub const API_KEY: &str = "test-api-key";
/// Longest any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestNode {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestNode {
    /// A node with the embedded defaults plus `args`, on a fresh data dir.
    pub async fn start(args: &[&str]) -> TestNode {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut node = Self::start_in(&dir, args).await;
        node._tmp = Some(tmp);
        node
    }

    /// A node on an existing data dir (restart tests).
    pub async fn start_in(dir: &Path, args: &[&str]) -> TestNode {
        let mut all = vec![
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let settings = gateway::Config::load(all).unwrap().validate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { gateway::run(listener, settings, token).await.unwrap() });
        TestNode {
            addr,
            dir: dir.to_path_buf(),
            _tmp: None,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drains the node and waits until `run` returned.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("node drained in time")
                .unwrap();
        }
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url(), None).await
    }

    /// A connected, authenticated (anonymous) client.
    pub async fn guest(&self) -> Client {
        let mut c = self.client().await;
        let ok = c.request(json!({"op":"auth"})).await;
        assert_eq!(ok["op"], "ok", "{ok}");
        c
    }

    pub async fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        http_request(self.addr, method, path, headers, body).await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The headers of a WebSocket upgrade request, with `key` if given and
/// this `version`.
pub fn ws_upgrade_headers(key: Option<&'static str>, version: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![("connection", "upgrade"), ("upgrade", "websocket")];
    if let Some(key) = key {
        h.push(("sec-websocket-key", key));
    }
    h.push(("sec-websocket-version", version));
    h
}

/// A valid `Sec-WebSocket-Key` (RFC 6455's example).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One HTTP/1.1 request over a fresh connection; returns status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, dechunk(&body))
}

fn dechunk(body: &str) -> String {
    // hyper sends fixed-length bodies for Full; keep this tolerant anyway.
    body.to_string()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    next_id: i64,
    /// Frames read while looking for something else, oldest first.
    pub backlog: std::collections::VecDeque<Value>,
}

/// How a read ended when it was not a JSON text frame.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Close(u16),
    /// TCP closed or reset with no close frame.
    Gone,
}

impl Client {
    pub async fn connect(url: &str, bearer: Option<&str>) -> Client {
        use tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = bearer {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .unwrap();
        Client {
            ws,
            next_id: 1,
            backlog: Default::default(),
        }
    }

    pub fn from_stream(ws: Ws) -> Client {
        Client {
            ws,
            next_id: 1,
            backlog: Default::default(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next JSON frame, skipping pings; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        match self.next_frame().await {
            Ok(v) => v,
            Err(e) => panic!("expected a frame, connection ended: {e:?}"),
        }
    }

    async fn next_frame(&mut self) -> Result<Value, Ended> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Close(
                        frame.map(|f: CloseFrame| u16::from(f.code)).unwrap_or(1005),
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Gone),
            }
        }
    }

    /// Reads until the connection ends; returns how, with the frames before.
    pub async fn until_closed(&mut self) -> (Ended, Vec<Value>) {
        let mut frames: Vec<Value> = self.backlog.drain(..).collect();
        loop {
            match self.next_frame().await {
                Ok(v) => frames.push(v),
                Err(e) => return (e, frames),
            }
        }
    }

    /// The next frame matching `pred`; others are kept for later `recv`s.
    pub async fn recv_matching(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(pos).unwrap();
        }
        loop {
            let v = match self.next_frame().await {
                Ok(v) => v,
                Err(e) => panic!("connection ended while waiting: {e:?}; backlog {:?}", self.backlog),
            };
            if pred(&v) {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    /// Sends a request with a fresh id and returns its reply (`ok`, `error`,
    /// `pong`, `history`, `presence`); events in between are kept.
    pub async fn request(&mut self, mut v: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        v["id"] = json!(id);
        self.send(v).await;
        self.recv_matching(move |r| r["id"] == json!(id)).await
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let r = self.request(json!({"op":"join","room":room})).await;
        assert_eq!(r["op"], "ok", "{r}");
        r
    }

    /// Sends and returns the acknowledged id.
    pub async fn send_msg(&mut self, room: &str, body: Value) -> u64 {
        let r = self.request(json!({"op":"send","room":room,"body":body})).await;
        assert_eq!(r["op"], "ok", "{r}");
        r["msg"].as_str().unwrap().parse().unwrap()
    }

    /// The next `msg` event of `room`.
    pub async fn next_msg(&mut self, room: &str) -> Value {
        let room = room.to_string();
        self.recv_matching(move |v| v["op"] == "msg" && v["room"] == room.as_str())
            .await
    }
}

pub fn msg_id(v: &Value) -> u64 {
    v["msg"].as_str().unwrap().parse().unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs claims with HS256 and `SECRET` unless told otherwise.
pub fn token(claims: Value) -> String {
    token_with(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

pub fn token_with(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, claims: Value) -> String {
    gateway::auth::install_crypto_provider();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap()
}

pub fn valid_claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now_secs() + 3600})
}

pub fn key_path(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A connected guest on any node's URL.
pub async fn guest(url: &str) -> Client {
    let mut c = Client::connect(url, None).await;
    assert_eq!(c.request(json!({"op":"auth"})).await["op"], "ok");
    c
}

/// Every message of a room, oldest first, paging backwards through history.
pub async fn all_history(c: &mut Client, room: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut req = json!({"op":"history","room":room,"limit":500});
        if let Some(b) = before {
            req["before"] = json!(b.to_string());
        }
        let page = c.request(req).await;
        let page: Vec<u64> = page["messages"].as_array().unwrap().iter().map(msg_id).collect();
        if page.is_empty() {
            return ids;
        }
        before = Some(page[0]);
        ids.splice(0..0, page);
    }
}

/// Writes 200 sends over two rooms and a ping in one flush, and checks the
/// replies come back in request order, ids ascending per room, the pong
/// after every ack, and every message delivered in id order.
pub async fn pipelined_sends_keep_order(c: &mut Client) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    c.join("pipe-a").await;
    c.join("pipe-b").await;
    for i in 0..200 {
        let room = if i % 3 == 0 { "pipe-b" } else { "pipe-a" };
        let frame = json!({"op":"send","id": 1000 + i,"room": room,"body": i});
        c.ws.feed(Message::Text(frame.to_string().into())).await.unwrap();
    }
    c.ws.feed(Message::Text(json!({"op":"ping","id":5000}).to_string().into()))
        .await
        .unwrap();
    c.ws.flush().await.unwrap();
    let mut replies = Vec::new();
    let mut events: std::collections::HashMap<String, Vec<u64>> = Default::default();
    while replies.len() < 201 {
        let v = c.recv().await;
        match v["op"].as_str() {
            Some("msg") => events
                .entry(v["room"].as_str().unwrap().to_string())
                .or_default()
                .push(msg_id(&v)),
            Some("ok") | Some("pong") | Some("error") => replies.push(v),
            _ => {}
        }
    }
    let ids: Vec<i64> = replies.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let mut expected: Vec<i64> = (1000..1200).collect();
    expected.push(5000);
    assert_eq!(ids, expected, "replies in request order");
    assert!(
        replies[..200].iter().all(|r| r["op"] == "ok"),
        "{:?}",
        replies.iter().find(|r| r["op"] != "ok")
    );
    for room in ["pipe-a", "pipe-b"] {
        let acked: Vec<u64> = replies[..200]
            .iter()
            .filter(|r| r["room"] == room)
            .map(msg_id)
            .collect();
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "{room}: acks ascend in send order"
        );
        while events.get(room).map_or(0, Vec::len) < acked.len() {
            let v = c.next_msg(room).await;
            events.entry(room.to_string()).or_default().push(msg_id(&v));
        }
        assert_eq!(events[room], acked, "{room}: delivered in id order");
    }
}

/// Real gateway processes on one bus, with their data dirs (removed when
/// this is dropped, after the processes are killed).
pub struct Processes {
    pub nodes: Vec<testkit::GatewayProcess>,
    _dirs: Vec<tempfile::TempDir>,
}

/// `n` gateway processes on one bus (`bus` are the Redis flags) with
/// `extra` flags, each on a fresh data dir.
pub fn processes(n: usize, bus: &[String], extra: &[&str]) -> Processes {
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<&str> = bus.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        nodes.push(testkit::GatewayProcess::start(
            env!("CARGO_BIN_EXE_gateway"),
            dir.path(),
            &args,
        ));
        dirs.push(dir);
    }
    Processes { nodes, _dirs: dirs }
}

/// A server API call with [`API_KEY`]; the status and the JSON reply
/// (`Null` if the reply is not JSON). `body` `Null` sends none.
pub async fn api(addr: SocketAddr, method: &str, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = http_request(addr, method, path, &[("authorization", &auth)], &body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Claims of `sub` issued `iat_offset` seconds from now, valid an hour.
pub fn claims_issued(sub: &str, iat_offset: i64) -> Value {
    let now = now_secs() as i64;
    json!({"sub": sub, "iat": now + iat_offset, "exp": now + 3600})
}

/// A client authenticated with `token` (by an `auth` frame).
pub async fn authed(url: &str, token: &str) -> Client {
    let mut c = Client::connect(url, None).await;
    let ok = c.request(json!({"op":"auth","token":token})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    c
}
