//! HTTP beside the WebSocket: routing, the upgrade at `/ws`, health,
//! readiness, metrics, and the server API.
//!
//! What hyper leaves to us is checked here: a request's `Host` (RFC 9112
//! 3.2: one, valid, and required in HTTP/1.1; else 400 and the connection
//! closes), the handshake's HTTP version and `Sec-WebSocket-Version` (RFC
//! 6455 4.1, 4.2.2), and how long a request body may take to arrive
//! (`http_body_timeout`, else 408 and the connection closes). A request
//! head must arrive within [`HEADER_READ_TIMEOUT`] (hyper's timer).
//!
//! An upgrade is then put to [`crate::admission`] (origin, memory, caps);
//! a refusal is 403 or 503 with `Retry-After`, and closes the connection.
//! The internal listener ([`Listener::Internal`]) serves only `/metrics`,
//! `/healthz` and `/readyz`; while it exists, the client listener serves
//! no `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dispatcher::{NewMessage, Page};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use protocol::ErrorCode;
use protocol::encode::{Obj, history_reply};
use protocol::room::is_valid_room;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;

use crate::admission::{Refusal, Slot};
use crate::auth::{AuthError, Identity};
use crate::view::view;
use crate::{Node, auth, conn, metrics};

type Body = Full<Bytes>;

/// Time a connection has for each request head, counted from when it is
/// ready for one (accepted, or its last response written); hyper then
/// closes it. So it also bounds idle keep-alive connections.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Clients: `/ws`, the server API, health, and `/metrics` unless there
    /// is an internal listener.
    Client,
    /// `--internal-listen`: `/metrics`, `/healthz`, `/readyz` only.
    Internal,
}

/// Serves one accepted TCP connection from `peer`: HTTP/1.1 until it
/// upgrades to a WebSocket or closes.
pub async fn serve_connection(node: Arc<Node>, stream: TcpStream, peer: SocketAddr, listener: Listener) {
    let _ = stream.set_nodelay(true);
    let shutdown = node.shutdown.clone();
    let svc = service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, Infallible>(route(node, req, peer, listener).await) }
    });
    let draining = shutdown.is_cancelled();
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(!draining)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    if draining {
        // Accepted during the drain: answer its one request (probes get 503).
        let _ = conn.await;
        return;
    }
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn route(node: Arc<Node>, req: Request<Incoming>, peer: SocketAddr, listener: Listener) -> Response<Body> {
    metrics::get().http_requests.increment(1);
    if let Some(problem) = host_problem(&req) {
        return closing(text(StatusCode::BAD_REQUEST, problem));
    }
    let path = req.uri().path();
    let internal = listener == Listener::Internal;
    let metrics_here = internal || node.settings.config.internal_listen.is_none();
    match (req.method(), path) {
        (&Method::GET, "/ws") if !internal => upgrade(node, req, peer),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if node.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") if metrics_here => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics::render(&node))))
            .expect("static response parts"),
        _ if internal => text(StatusCode::NOT_FOUND, "not found\n"),
        _ if path.starts_with("/api/rooms/") => api(node, req).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// What is wrong with a request's `Host` (RFC 9112 3.2), which hyper does
/// not check: HTTP/1.1 requires one; more than one, or one that is not a
/// `host[:port]`, is refused in any version.
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() == Version::HTTP_10 => None,
        (None, _) => Some("missing Host header\n"),
        (Some(_), Some(_)) => Some("more than one Host header\n"),
        (Some(host), None) if !is_valid_host(host) => Some("invalid Host header\n"),
        (Some(_), None) => None,
    }
}

/// An empty value (allowed for targets without an authority) or an
/// authority without user info.
fn is_valid_host(host: &HeaderValue) -> bool {
    let bytes = host.as_bytes();
    bytes.is_empty() || (!bytes.contains(&b'@') && http::uri::Authority::try_from(bytes).is_ok())
}

/// `response` with `Connection: close`: hyper closes the connection after it.
fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts")
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

/// `{"code":..,"message":..}` with the matching HTTP status.
fn api_error(code: ErrorCode, message: &str) -> Response<Body> {
    let status = match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(
        status,
        Obj::new("error")
            .str("code", code.as_str())
            .str("message", message)
            .finish(),
    )
}

fn upgrade(node: Arc<Node>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if node.shutdown.is_cancelled() {
        return refused(Refusal::Draining);
    }
    // RFC 6455 4.1: the handshake is an HTTP/1.1 request (HTTP/1.0 has no
    // Upgrade).
    if req.version() != Version::HTTP_11 {
        return text(StatusCode::BAD_REQUEST, "a WebSocket upgrade needs HTTP/1.1\n");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return upgrade_required("expected a WebSocket upgrade\n");
    }
    // RFC 6455 4.2.2: another version gets 426 naming the one we speak.
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = upgrade_required("unsupported Sec-WebSocket-Version: use 13\n");
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return response;
    }
    // Counted from here until the connection task ends (or the handshake
    // fails and the task never starts).
    let slot = match node.admission.admit(req.headers(), peer.ip()) {
        Ok(slot) => slot,
        Err(refusal) => return refused(refusal),
    };
    let header_auth = auth::bearer(req.headers()).map(|token| node.auth.authenticate(Some(token)));
    // Take hyper's upgrade handle first: fastwebsockets' own future would
    // build a WebSocket with a read buffer we do not want to keep.
    let on_upgrade = hyper::upgrade::on(&mut req);
    let response = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((response, _unused)) => response,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(Full::new(Bytes::from(format!("bad WebSocket upgrade: {e}\n"))))
                .expect("static response parts");
        }
    };
    node.tracker
        .spawn(connection_task(node.clone(), on_upgrade, header_auth, slot));
    response.map(|_| Full::new(Bytes::new()))
}

/// The task of one WebSocket connection, for its whole life: waits for
/// hyper to hand over the socket, then serves it. Its size is memory every
/// idle connection holds (see the size test in `conn`).
pub(crate) async fn connection_task(
    node: Arc<Node>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    header_auth: Option<Result<Identity, AuthError>>,
    slot: Slot,
) {
    let _slot = slot;
    // Only the socket and the bytes hyper read ahead outlive this match:
    // whatever else is alive across `serve` stays in the task all its life.
    let (tcp, prefix) = match on_upgrade.await {
        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // `read_buf` is hyper's whole read buffer, frozen: keeping
                // it (even empty) would pin ~8 KiB per connection.
                let prefix = if parts.read_buf.is_empty() {
                    Bytes::new()
                } else {
                    Bytes::copy_from_slice(&parts.read_buf)
                };
                (parts.io.into_inner(), prefix)
            }
            Err(_) => return tracing::error!("upgraded connection is not a TCP stream"),
        },
        Err(e) => return tracing::debug!(error = %e, "upgrade did not complete"),
    };
    conn::serve(node, tcp, prefix, header_auth).await
}

/// Seconds a refused client is told to wait: 5, plus up to 4 at random so
/// that clients refused together do not all come back together.
fn retry_after_secs() -> u32 {
    5 + rand::random_range(0..5)
}

/// An upgrade refused by admission control: 403 for a foreign origin, else
/// 503 with `Retry-After`. Either closes the connection, so a refused
/// client holds no descriptor while it waits.
fn refused(refusal: Refusal) -> Response<Body> {
    metrics::connection_refused(refusal.reason());
    let mut response = match refusal {
        Refusal::Origin => text(StatusCode::FORBIDDEN, refusal.message()),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, refusal.message()),
    };
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        // A draining node's clients belong on another node at once.
        let secs = if refusal == Refusal::Draining {
            1
        } else {
            retry_after_secs()
        };
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    closing(response)
}

/// 426 with the `Upgrade` (and `Connection`) header RFC 9110 15.5.22 asks for.
fn upgrade_required(body: &'static str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::UPGRADE_REQUIRED)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts")
}

/// Reads a request body of at most `limit` bytes within the node's
/// `http_body_timeout`, so a client trickling its body cannot hold a
/// request open: too slow gets 408 and the connection closes (the rest of
/// the body is never read); too large 413.
async fn read_body(node: &Node, body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    let timeout = node.settings.config.http_body_timeout;
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(api_error(
            ErrorCode::TooLarge,
            &format!("request body is over {limit} bytes"),
        )),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "server API: reading the request body failed");
            Err(api_error(ErrorCode::BadRequest, "reading the request body failed"))
        }
        Err(_) => {
            let message = format!(
                "request body not received within {}",
                humantime::format_duration(timeout)
            );
            let mut response = api_error(ErrorCode::BadRequest, &message);
            *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
            Err(closing(response))
        }
    }
}

#[derive(Deserialize)]
struct ApiPublish<'a> {
    /// `Some` whenever the field is there, `null` included (a body may be
    /// any JSON value); serde's `Option` would read `null` as absent.
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    from: Option<String>,
    /// (1.1) The message this one replies to: a decimal string, as ids are
    /// sent, or a non-negative integer.
    reply_to: Option<serde_json::Value>,
}

/// A `reply_to` as the protocol takes it; `Err` when it is no message id.
fn reply_to(v: Option<&serde_json::Value>) -> Result<Option<u64>, ()> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s))
            if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().map(Some).map_err(|_| ())
        }
        Some(serde_json::Value::Number(n)) => n.as_u64().map(Some).ok_or(()),
        Some(_) => Err(()),
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// `POST|GET /api/rooms/{room}/messages`, behind the API key.
async fn api(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let Some(room) = req
        .uri()
        .path()
        .strip_prefix("/api/rooms/")
        .and_then(|r| r.strip_suffix("/messages"))
    else {
        return api_error(ErrorCode::NotFound, "no such API path");
    };
    let room = room.to_owned();
    if !is_valid_room(&room) {
        return api_error(
            ErrorCode::BadRequest,
            "invalid room: use 1 to 128 characters of [A-Za-z0-9_.:-]",
        );
    }
    match (&node.settings.config.api_key, auth::bearer(req.headers())) {
        (None, _) => return api_error(ErrorCode::Unauthorized, "the server API is off: set GATEWAY_API_KEY"),
        (Some(key), Some(given)) if constant_time_eq(key.as_bytes(), given.as_bytes()) => {}
        _ => return api_error(ErrorCode::Unauthorized, "missing or wrong API key"),
    }
    match *req.method() {
        Method::POST => api_publish(node, room, req).await,
        Method::GET => api_history(node, room, req.uri().query().unwrap_or("")).await,
        _ => api_error(ErrorCode::BadRequest, "use GET or POST"),
    }
}

async fn api_publish(node: Arc<Node>, room: String, req: Request<Incoming>) -> Response<Body> {
    let c = &node.settings.config;
    let bytes = match read_body(&node, req.into_body(), c.max_frame_bytes).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    // serde_json's words (offsets, type names) are logged, not sent.
    let parsed: ApiPublish = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "server API: refused request body");
            let message = match e.classify() {
                serde_json::error::Category::Data => "a request is {\"body\":<any JSON>,\"from\":<user id>?}",
                _ => "malformed JSON",
            };
            return api_error(ErrorCode::BadRequest, message);
        }
    };
    let Some(body) = parsed.body else {
        return api_error(ErrorCode::BadRequest, "missing \"body\"");
    };
    if body.get().len() > c.max_body_bytes {
        return api_error(ErrorCode::TooLarge, &format!("body is over {} bytes", c.max_body_bytes));
    }
    // The rules a WebSocket body meets: one depth limit, one grammar.
    if let Err(e) = protocol::body::validate(body.get()) {
        return api_error(ErrorCode::BadRequest, &e.to_string());
    }
    let from = parsed.from.unwrap_or_else(|| "system".into());
    if !protocol::user::is_valid_user_id(&from) {
        return api_error(
            ErrorCode::BadRequest,
            &format!(
                "\"from\" must be 1 to {} bytes without control, bidirectional or invisible format characters",
                protocol::user::MAX_USER_LEN
            ),
        );
    }
    let Ok(reply_to) = reply_to(parsed.reply_to.as_ref()) else {
        return api_error(
            ErrorCode::BadRequest,
            "\"reply_to\" must be a message id (a decimal string)",
        );
    };
    let msg = NewMessage {
        reply_to,
        ..NewMessage::new(room, from, body.get())
    };
    match node.bus.publish(msg).await {
        Ok(p) => json(
            StatusCode::OK,
            Obj::new("ok").msg_id("msg", p.id).num("ts", p.ts).finish(),
        ),
        Err(e) => api_unavailable(&e),
    }
}

async fn api_history(node: Arc<Node>, room: String, query: &str) -> Response<Body> {
    let (mut before, mut after, mut limit) = (None, None, protocol::HISTORY_DEFAULT_LIMIT);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if value.is_empty() {
            continue;
        }
        let Ok(n) = value.parse::<u64>() else {
            return api_error(ErrorCode::BadRequest, &format!("{key} must be a non-negative integer"));
        };
        match key {
            "before" => before = Some(n),
            "after" => after = Some(n),
            "limit" if (1..=protocol::HISTORY_MAX_LIMIT as u64).contains(&n) => limit = n as usize,
            "limit" => {
                return api_error(
                    ErrorCode::BadRequest,
                    &format!("limit must be from 1 to {}", protocol::HISTORY_MAX_LIMIT),
                );
            }
            _ => {}
        }
    }
    let page = match (before, after) {
        (Some(_), Some(_)) => return api_error(ErrorCode::BadRequest, "give before or after, not both"),
        (Some(b), None) => Page::Before(b),
        (None, Some(a)) => Page::After(a),
        (None, None) => Page::Newest,
    };
    match node.bus.history(&room, page, limit, None).await {
        Ok(messages) => json(StatusCode::OK, history_reply(None, &room, messages.iter().map(view))),
        Err(e) => api_unavailable(&e),
    }
}

/// The bus failed: fixed text out, the bus's own words (Redis commands,
/// hosts) to the log.
fn api_unavailable(e: &dispatcher::BusError) -> Response<Body> {
    tracing::debug!(error = %e, "server API: bus unavailable");
    api_error(ErrorCode::Unavailable, "service unavailable, retry")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
