//! Opening one client connection: a TCP socket from a chosen loopback
//! source address, the WebSocket handshake (with a minted token when
//! `--jwt-secret` is set), and the protocol's auth and joins, answered
//! before [`open`] returns. Every role (member, sender, history reader,
//! churned connection) starts here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::args::{Args, target_of};
use crate::proto;
use crate::shared::Shared;
use crate::stats::now_micros;

/// A client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One room to join, resuming after `since` when given.
pub(crate) struct Join {
    pub(crate) room: String,
    pub(crate) since: Option<u64>,
}

impl Join {
    pub(crate) fn new(room: String) -> Join {
        Join { room, since: None }
    }
}

/// One connection, authenticated and in its rooms. Returns the frames that
/// came before the last `ok` (a `since` replay comes first).
pub(crate) async fn open(shared: &Shared, index: usize, rooms: &[Join]) -> anyhow::Result<(Ws, Vec<String>)> {
    let args = &shared.args;
    let url = &args.urls[index % args.urls.len()];
    let target = target_of(url)?;
    let started = Instant::now();
    let stream = connect_from(args, index, target, url).await?;
    let request = request(args, index, url)?;
    // tungstenite zero-fills its whole read buffer before every read (128
    // KiB by default): profiled at 29% of the box's CPU in a fan-out run,
    // and 128 KiB of memory per member. Our frames are small.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config)).await?;
    let early = setup(shared, &mut ws, rooms).await?;
    shared.connect.record(started.elapsed());
    Ok((ws, early))
}

/// A TCP connection from source address 127.0.0.(1 + index % source_ips):
/// one address's ephemeral ports would cap the connections per target.
async fn connect_from(args: &Args, index: usize, target: SocketAddr, url: &str) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let src = Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(args.source_ips)) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = socket.connect(target).await.with_context(|| format!("connect {url}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The upgrade request, with a token for user `lt-<index>` when
/// `--jwt-secret` is given (else the client authenticates as a guest).
fn request(args: &Args, index: usize, url: &str) -> anyhow::Result<Request> {
    let mut request = url.into_client_request()?;
    if let Some(secret) = &args.jwt_secret {
        let claims = json!({"sub": format!("lt-{index}"), "exp": now_micros() / 1_000_000 + 86_400});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(request)
}

/// Sends the auth and join frames and waits for every one's `ok`; returns
/// the other frames that arrived meanwhile, for the caller to account.
async fn setup(shared: &Shared, ws: &mut Ws, rooms: &[Join]) -> anyhow::Result<Vec<String>> {
    let args = &shared.args;
    let proto = args.protocol;
    let joins: Vec<(String, Option<u64>)> = rooms.iter().map(|j| (j.room.clone(), j.since)).collect();
    let setup = proto.setup(args.jwt_secret.is_none(), &joins);
    let mut pending = setup.len();
    for frame in setup {
        ws.feed(Message::Text(frame.into())).await?;
    }
    ws.flush().await?;
    let mut early = Vec::new();
    while pending > 0 {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                for f in proto.split(t.as_bytes()) {
                    match proto.classify(f) {
                        proto::Frame::Ok(_) => {
                            pending = pending.saturating_sub(1);
                            if memchr::memmem::find(f, br#""recovered":false"#).is_some() {
                                shared.counters.not_recovered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        proto::Frame::Error(_, code) => bail!("setup refused: {code}: {}", String::from_utf8_lossy(f)),
                        proto::Frame::Ping(pong) => ws.send(Message::Text(pong.into())).await?,
                        _ => early.push(String::from_utf8_lossy(f).into_owned()),
                    }
                }
            }
            Some(Ok(Message::Close(f))) => bail!("closed during setup: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended during setup"),
        }
    }
    Ok(early)
}
