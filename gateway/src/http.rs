//! HTTP beside the WebSocket: routing, the upgrade at `/ws`, health,
//! readiness, metrics; `/api/...` goes to [`crate::api`], `/` and
//! `/demo/...` to [`crate::demo`].
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
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::admission::{Refusal, Slot};
use crate::auth::{AuthError, Identity};
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
        _ if path.starts_with("/api/") => crate::api::serve(node, req).await,
        (&Method::GET | &Method::HEAD, _) if node.settings.config.demo => match crate::demo::serve(&req) {
            Some(response) => response,
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
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
pub(crate) fn closing(mut response: Response<Body>) -> Response<Body> {
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
    // Boxed: the task keeps its arguments all its life.
    let header_auth = auth::bearer(req.headers()).map(|token| Box::new(node.auth.authenticate(Some(token))));
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
    header_auth: Option<Box<Result<Identity, AuthError>>>,
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
