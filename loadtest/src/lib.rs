//! `loadtest`: drives WebSocket chat gateways (protocol v1) and measures
//! them end to end.
//!
//! - [`Args`]: the command line. [`run`] runs one scenario and returns a
//!   [`Report`]; the binary prints it, writes it as JSON, and exits non-zero
//!   when a threshold (`--max-p99-ms`, `--max-loss`) is exceeded.
//! - Scenarios: `idle` (connections held, for memory), `fanout` (rooms x
//!   members, senders at a total rate; publish-to-deliver latency from a
//!   timestamp carried in each body, loss as delivered vs expected).
//! - [`stats`]: lock-free counters and per-thread HDR histograms.

mod link;
mod progress;
pub mod proto;
pub mod stats;
pub mod workers;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use proto::Protocol;
use proto::{msg_id, number_after, room_number};
use stats::{Counters, Latency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Connect, authenticate, join, and hold the connections.
    Idle,
    /// Members in rooms; senders publish at a total rate; measure delivery.
    Fanout,
    /// Each connection asks for a history page, waits, asks again.
    History,
    /// Fan-out, and halfway through every member drops its connection and
    /// resumes with `since`: nothing may be lost or duplicated.
    Reconnect,
    /// Members held; meanwhile connections open, join, and close at
    /// `--churn-rate` per second.
    Churn,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version, about = "Load generator for WebSocket chat gateways")]
pub struct Args {
    /// Gateway WebSocket URL (`ws://127.0.0.1:8080/ws`); repeat for several
    /// nodes: connections are spread round-robin.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// Member connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Rooms the members are spread over (members per room = connections / rooms).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Sender connections (each also a member of the rooms it sends to).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to send (fanout) or hold (idle).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Mint HS256 tokens with this secret (else anonymous guests).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Room names are `<prefix>-<n>`.
    #[arg(long, default_value = "lt")]
    pub room_prefix: String,
    /// Spread source addresses over 127.0.0.1 .. 127.0.0.N so one
    /// address's ports are not the limit (loopback targets only).
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Extra bytes of padding in each message body.
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// Time after the last send to wait for deliveries still in flight.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Write the report here as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Fail (exit 1) when delivery p99 is above this many milliseconds.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail (exit 1) when more than this fraction of expected deliveries is missing.
    #[arg(long)]
    pub max_loss: Option<f64>,
    /// No live progress.
    #[arg(long)]
    pub quiet: bool,
    /// history: the room to page (default: the first room).
    #[arg(long)]
    pub history_room: Option<String>,
    /// history: messages per page.
    #[arg(long, default_value_t = 50)]
    pub history_limit: usize,
    /// history: page before this message id (a deep page); default newest.
    #[arg(long)]
    pub history_before: Option<u64>,
    /// Wire protocol of the target: this gateway's, or Centrifugo's (for
    /// side-by-side runs: `--url ws://127.0.0.1:8000/connection/websocket`).
    #[arg(long, value_enum, default_value = "chat")]
    pub protocol: Protocol,
    /// Create this file once every member is connected and in its room
    /// (scripts measure the target's memory from then on).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// churn: connections opened and closed per second.
    #[arg(long, default_value_t = 100.0)]
    pub churn_rate: f64,
    /// Split the run over this many worker processes, each with its own
    /// open-file limit (one process holds at most `ulimit -Hn` sockets);
    /// connections, senders, rates and ramp are divided among them, sending
    /// starts when all are ready, and their counts and histograms are merged
    /// into one report.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Set by the parent on its worker processes: this one's number.
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
}

impl Args {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 || self.rooms == 0 || self.rooms > self.connections {
            bail!("--rooms must be from 1 to --connections");
        }
        if matches!(self.scenario, Scenario::Fanout | Scenario::Reconnect)
            && (self.senders == 0 || self.rate.is_nan() || self.rate <= 0.0)
        {
            bail!("fanout and reconnect need --senders >= 1 and --rate > 0");
        }
        if self.scenario == Scenario::Churn && (self.churn_rate.is_nan() || self.churn_rate <= 0.0) {
            bail!("churn needs --churn-rate > 0");
        }
        if self.protocol == Protocol::Centrifugo
            && (self.jwt_secret.is_some() || matches!(self.scenario, Scenario::History | Scenario::Reconnect))
        {
            bail!("with --protocol centrifugo: anonymous clients, scenarios idle, fanout and churn");
        }
        if self.source_ips == 0 {
            bail!("--source-ips must be at least 1");
        }
        if self.workers == 0 || self.workers > self.connections {
            bail!("--workers must be from 1 to --connections");
        }
        if self.worker_index.is_some_and(|w| w >= self.workers) {
            bail!("--worker-index must be below --workers");
        }
        for u in &self.urls {
            target_of(u)?;
        }
        Ok(())
    }

    fn room(&self, n: usize) -> String {
        format!("{}-{n}", self.room_prefix)
    }

    /// This process's share of `0..n` (connections, senders, readers):
    /// every `workers`-th index from its own.
    fn share(&self, n: usize) -> impl Iterator<Item = usize> + use<> {
        let (first, step) = self.slot();
        (first..n).step_by(step)
    }

    /// This process's place in the split: (its index, how many processes).
    fn slot(&self) -> (usize, usize) {
        match self.worker_index {
            Some(w) => (w, self.workers),
            None => (0, 1),
        }
    }

    /// The processes the run is split over: this process's share of a total
    /// rate is `1 / parts`.
    fn parts(&self) -> f64 {
        self.slot().1 as f64
    }
}

fn target_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url}: only ws:// URLs"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = host.parse().with_context(|| format!("{url}: give an IP:port"))?;
    if !addr.ip().is_loopback() {
        bail!("{url}: load is only sent to loopback addresses");
    }
    Ok(addr)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Shared {
    args: Args,
    counters: Counters,
    connect: Latency,
    ack: Latency,
    delivery: Latency,
    history: Latency,
    reconnect: Latency,
    churn: Latency,
    errors: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    /// Members of each room (senders included), fixed before sending starts.
    members: Vec<AtomicU64>,
    /// Acknowledged sends to each room: expected deliveries are these times
    /// the room's members (summed over workers first when split).
    acked_by_room: Vec<AtomicU64>,
}

/// One room to join, resuming after `since` when given.
struct Join {
    room: String,
    since: Option<u64>,
}

impl Join {
    fn new(room: String) -> Join {
        Join { room, since: None }
    }
}

/// One connection, authenticated and in its rooms. Returns the frames that
/// came before the last `ok` (a `since` replay comes first).
async fn open(shared: &Shared, index: usize, rooms: &[Join]) -> anyhow::Result<(Ws, Vec<String>)> {
    let args = &shared.args;
    let url = &args.urls[index % args.urls.len()];
    let target = target_of(url)?;
    let started = Instant::now();
    let socket = TcpSocket::new_v4()?;
    let src = Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(args.source_ips)) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = socket.connect(target).await.with_context(|| format!("connect {url}"))?;
    let _ = stream.set_nodelay(true);
    let mut request = url.as_str().into_client_request()?;
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
    // tungstenite zero-fills its whole read buffer before every read (128
    // KiB by default): profiled at 29% of the box's CPU in a fan-out run,
    // and 128 KiB of memory per member. Our frames are small.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config)).await?;
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
    shared.connect.record(started.elapsed());
    Ok((ws, early))
}

/// A member: joins its room, counts what it is delivered (duplicates and
/// order included), and on each storm signal drops its connection and
/// resumes with `since` = the last id it saw.
async fn member(
    shared: Arc<Shared>,
    index: usize,
    room: usize,
    mut storm: tokio::sync::watch::Receiver<u32>,
    joined: tokio::sync::oneshot::Sender<bool>,
) {
    let c = &shared.counters;
    let mut last: Option<u64> = None;
    let mut joined = Some(joined);
    let mut attempt = 0;
    loop {
        let reconnect_started = Instant::now();
        let join = Join {
            room: shared.args.room(room),
            since: if joined.is_some() { None } else { last },
        };
        // Each reconnect goes to the next URL: resuming on another node.
        let (ws, early) = match open(&shared, index + attempt, &[join]).await {
            Ok(x) => x,
            Err(e) => {
                match joined.take() {
                    Some(tx) => {
                        let _ = tx.send(false);
                        if c.failed_connects.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("connect failed: {e:#}");
                        }
                    }
                    None => {
                        c.reconnect_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return;
            }
        };
        match joined.take() {
            Some(tx) => {
                let _ = tx.send(true);
            }
            None => {
                c.reconnected.fetch_add(1, Ordering::Relaxed);
                shared.reconnect.record(reconnect_started.elapsed());
            }
        }
        for frame in &early {
            member_frame(&shared, frame.as_bytes(), &mut last);
        }
        let (mut tx, mut rx) = ws.split();
        loop {
            tokio::select! {
                frame = rx.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        for f in shared.args.protocol.split(t.as_bytes()) {
                            if let Some(pong) = member_frame(&shared, f, &mut last) {
                                let _ = tx.send(Message::Text(pong.into())).await;
                            }
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let code = f.map(|f| u16::from(f.code).to_string()).unwrap_or_else(|| "none".into());
                        *shared.closes.lock().entry(code).or_default() += 1;
                        return;
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        *shared.closes.lock().entry("dropped".into()).or_default() += 1;
                        return;
                    }
                },
                                changed = storm.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    attempt += 1;
                    break;
                }
            }
        }
    }
}

/// Accounts one received frame of a member; returns the reply an
/// application-level ping needs.
fn member_frame(shared: &Shared, b: &[u8], last: &mut Option<u64>) -> Option<&'static str> {
    let c = &shared.counters;
    let proto = shared.args.protocol;
    match proto.classify(b) {
        proto::Frame::Delivery => {
            c.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = number_after(b, proto.time_marker()) {
                shared
                    .delivery
                    .record(Duration::from_micros(now_micros().saturating_sub(sent)));
            }
            // Only our protocol numbers messages; duplicates are counted there.
            if let Some(id) = msg_id(b).filter(|_| proto == Protocol::Chat) {
                match *last {
                    Some(l) if id <= l => {
                        c.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => *last = Some(id),
                }
            }
            None
        }
        proto::Frame::Error(_, code) => {
            *shared.errors.lock().entry(code).or_default() += 1;
            None
        }
        proto::Frame::Ping(pong) => Some(pong),
        _ => None,
    }
}

/// Pending sends of one sender: request id -> (sent at, room number).
type Acks = Arc<Mutex<HashMap<u64, (Instant, usize)>>>;

/// Reads a sender's frames until it closes: acknowledgements, and the
/// deliveries it gets as a member of its rooms.
async fn read_loop(
    shared: Arc<Shared>,
    mut rx: SplitStream<Ws>,
    acks: Acks,
    pongs: tokio::sync::mpsc::UnboundedSender<&'static str>,
) {
    let c = &shared.counters;
    let proto = shared.args.protocol;
    // Ids ascend per room, not across rooms.
    let mut last: HashMap<usize, Option<u64>> = HashMap::new();
    while let Some(frame) = rx.next().await {
        match frame {
            Ok(Message::Text(t)) => {
                for f in proto.split(t.as_bytes()) {
                    match proto.classify(f) {
                        proto::Frame::Delivery => {
                            let room = room_number(f, proto.room_marker()).unwrap_or(usize::MAX);
                            member_frame(&shared, f, last.entry(room).or_default());
                        }
                        proto::Frame::Ok(Some(id)) => {
                            let sent = acks.lock().remove(&id);
                            if let Some((at, room)) = sent {
                                shared.ack.record(at.elapsed());
                                c.acked.fetch_add(1, Ordering::Relaxed);
                                shared.acked_by_room[room].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        proto::Frame::Error(id, code) => {
                            if let Some(id) = id {
                                acks.lock().remove(&id);
                            }
                            *shared.errors.lock().entry(code).or_default() += 1;
                        }
                        proto::Frame::Ping(pong) => {
                            let _ = pongs.send(pong);
                        }
                        _ => {}
                    }
                }
            }
            Ok(Message::Close(f)) => {
                let code = f
                    .map(|f| u16::from(f.code).to_string())
                    .unwrap_or_else(|| "none".into());
                *shared.closes.lock().entry(code).or_default() += 1;
                return;
            }
            Ok(_) => {}
            Err(_) => {
                *shared.closes.lock().entry("dropped".into()).or_default() += 1;
                return;
            }
        }
    }
}

/// Sends to `rooms` at `rate` per second until `until`; also writes the
/// ping replies the read half asks for.
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    shared: Arc<Shared>,
    mut tx: SplitSink<Ws, Message>,
    rooms: Vec<usize>,
    rate: f64,
    until: Instant,
    acks: Acks,
    mut pongs: tokio::sync::mpsc::UnboundedReceiver<&'static str>,
    sender: usize,
) {
    let c = &shared.counters;
    let proto = shared.args.protocol;
    let pad = "x".repeat(shared.args.body_bytes);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < until {
        tick.tick().await;
        while let Ok(pong) = pongs.try_recv() {
            let _ = tx.feed(Message::Text(pong.into())).await;
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let id = sent + 1;
            let room = rooms[sent as usize % rooms.len()];
            let body = format!(r#"{{"t":{},"s":{sender},"p":"{pad}"}}"#, now_micros());
            let frame = proto.send(id, &shared.args.room(room), &body);
            acks.lock().insert(id, (Instant::now(), room));
            if tx.feed(Message::Text(frame.into())).await.is_err() {
                c.send_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            sent += 1;
            c.sent.fetch_add(1, Ordering::Relaxed);
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
}

/// Asks for the same history page again and again until `until`.
async fn history_loop(shared: Arc<Shared>, mut ws: Ws, frame: String, until: Instant) {
    while Instant::now() < until {
        let started = Instant::now();
        if ws.send(Message::Text(frame.clone().into())).await.is_err() {
            return;
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"op":"history""#) => {
                    shared.history.record(started.elapsed());
                    shared.counters.acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"op":"error""#) => {
                    *shared.errors.lock().entry("history".into()).or_default() += 1;
                    break;
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
        shared.counters.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// The outcome of one run.
pub type Report = serde_json::Value;

/// Runs the scenario and returns its report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let tally = run_tally(args.clone()).await?;
    Ok(tally.report(&args))
}

/// Runs the scenario (this process's share of it, in a worker) and returns
/// what it counted.
pub async fn run_tally(args: Args) -> anyhow::Result<Tally> {
    args.validate()?;
    let shared = Arc::new(Shared {
        members: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        acked_by_room: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        args: args.clone(),
        counters: Counters::default(),
        connect: Latency::new(),
        ack: Latency::new(),
        delivery: Latency::new(),
        history: Latency::new(),
        reconnect: Latency::new(),
        churn: Latency::new(),
        errors: Mutex::default(),
        closes: Mutex::default(),
    });
    let progress = progress::Progress::start(shared.clone(), args.quiet);
    let (storm, storm_rx) = tokio::sync::watch::channel(0u32);

    // Members, ramped: each a task that owns its connection.
    let mut tasks = Vec::new();
    let ramp = args.ramp / args.parts();
    let ramp_started = Instant::now();
    let mut joining = FuturesUnordered::new();
    let mut mine = args.share(args.connections).enumerate().peekable();
    while mine.peek().is_some() || !joining.is_empty() {
        while joining.len() < 256
            && let Some(&(k, index)) = mine.peek()
        {
            let due = ramp_started + Duration::from_secs_f64(k as f64 / ramp);
            if Instant::now() < due {
                break;
            }
            mine.next();
            let room = index % args.rooms;
            let (tx, rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(member(shared.clone(), index, room, storm_rx.clone(), tx)));
            joining.push(async move { (room, rx.await.unwrap_or(false)) });
        }
        let wait = tokio::time::sleep(Duration::from_millis(5));
        tokio::select! {
            Some((room, ok)) = joining.next() => if ok {
                shared.counters.connected.fetch_add(1, Ordering::Relaxed);
                shared.members[room].fetch_add(1, Ordering::Relaxed);
            },
            _ = wait => {}
        }
    }
    let ramp_secs = ramp_started.elapsed().as_secs_f64();

    // Senders (fanout) and history readers connect before the clock starts.
    let mut opened = Vec::new();
    if matches!(args.scenario, Scenario::Fanout | Scenario::Reconnect) {
        for s in args.share(args.senders) {
            let rooms: Vec<usize> = (0..args.rooms)
                .filter(|r| r % args.senders == s % args.rooms.min(args.senders))
                .collect();
            let rooms = if rooms.is_empty() { vec![s % args.rooms] } else { rooms };
            let joins: Vec<Join> = rooms.iter().map(|&r| Join::new(args.room(r))).collect();
            let (ws, _) = open(&shared, args.connections + s, &joins)
                .await
                .context("opening a sender")?;
            for &r in &rooms {
                shared.members[r].fetch_add(1, Ordering::Relaxed);
            }
            opened.push((s, ws, rooms));
        }
    }
    let mut readers = Vec::new();
    if args.scenario == Scenario::History {
        for i in args.share(args.senders.max(1)) {
            let (ws, _) = open(&shared, args.connections + i, &[])
                .await
                .context("opening a history reader")?;
            readers.push(ws);
        }
    }
    if args.worker_index.is_some() {
        // Every worker's members are in their rooms before anyone sends.
        link::ready_then_wait(shared.counters.connected.load(Ordering::Relaxed)).await?;
    } else if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", shared.counters.connected.load(Ordering::Relaxed)))
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let send_started = Instant::now();
    let mut send_secs = 0.0;
    match args.scenario {
        Scenario::Fanout | Scenario::Reconnect => {
            let until = Instant::now() + args.duration;
            let per_sender = args.rate / args.senders as f64;
            let mut senders = Vec::new();
            for (s, ws, rooms) in opened {
                let (tx, rx) = ws.split();
                let acks: Acks = Arc::default();
                let (pong_tx, pong_rx) = tokio::sync::mpsc::unbounded_channel();
                tasks.push(tokio::spawn(read_loop(shared.clone(), rx, acks.clone(), pong_tx)));
                senders.push(tokio::spawn(send_loop(
                    shared.clone(),
                    tx,
                    rooms,
                    per_sender,
                    until,
                    acks,
                    pong_rx,
                    s,
                )));
            }
            if args.scenario == Scenario::Reconnect {
                // Halfway: every member drops and resumes with `since`.
                tokio::time::sleep(args.duration / 2).await;
                let _ = storm.send(1);
            }
            for s in senders {
                let _ = s.await;
            }
            // Rates count to the last delivery, not to the end of the drain.
            let last_delivery = shared.drain().await;
            send_secs = last_delivery.duration_since(send_started).as_secs_f64();
        }
        Scenario::History => {
            let until = Instant::now() + args.duration;
            let room = args.history_room.clone().unwrap_or_else(|| args.room(0));
            let mut frame = json!({"op":"history","room":room,"limit":args.history_limit});
            if let Some(b) = args.history_before {
                frame["before"] = json!(b.to_string());
            }
            let mut askers = Vec::new();
            for ws in readers {
                let (shared, frame) = (shared.clone(), frame.to_string());
                askers.push(tokio::spawn(
                    async move { history_loop(shared, ws, frame, until).await },
                ));
            }
            for a in askers {
                let _ = a.await;
            }
        }
        Scenario::Churn => {
            let until = Instant::now() + args.duration;
            let started = Instant::now();
            let rate = args.churn_rate / args.parts();
            let (first, step) = args.slot();
            let mut opened = 0u64;
            let mut churning = FuturesUnordered::new();
            while Instant::now() < until || !churning.is_empty() {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                while opened < due && Instant::now() < until && churning.len() < 512 {
                    let n = opened as usize * step + first;
                    let index = args.connections + (n % 50_000);
                    let room = Join::new(args.room(n % args.rooms));
                    let shared = shared.clone();
                    churning.push(async move {
                        let begun = Instant::now();
                        let ok = open(&shared, index, &[room]).await.is_ok();
                        (ok, begun.elapsed())
                    });
                    opened += 1;
                }
                let wait = tokio::time::sleep(Duration::from_millis(5));
                tokio::select! {
                    Some((ok, took)) = churning.next() => {
                        // Dropped at once: the connection closes.
                        if ok {
                            shared.counters.churned.fetch_add(1, Ordering::Relaxed);
                            shared.churn.record(took);
                        } else {
                            shared.counters.churn_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ = wait => {}
                }
            }
        }
        Scenario::Idle => tokio::time::sleep(args.duration).await,
    }
    if send_secs == 0.0 {
        send_secs = send_started.elapsed().as_secs_f64();
    }
    progress.stop();
    for t in tasks {
        t.abort();
    }
    Ok(shared.tally(ramp_secs, send_secs))
}

impl Shared {
    /// Progress so far, for the live line or the parent.
    fn snapshot(&self) -> stats::Snapshot {
        let c = &self.counters;
        stats::Snapshot {
            connected: c.connected.load(Ordering::Relaxed),
            failed: c.failed_connects.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            p99_ms: self.delivery.merged().value_at_quantile(0.99) as f64 / 1000.0,
        }
    }

    /// Deliveries this process's members should get for what was
    /// acknowledged here (only meaningful when the run is not split).
    fn expected(&self) -> u64 {
        self.members
            .iter()
            .zip(&self.acked_by_room)
            .map(|(m, a)| m.load(Ordering::Relaxed) * a.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits for deliveries still in flight after the last send: until all
    /// expected arrived, or (split over workers, where the expected count is
    /// known only to the parent) until a second passes with none, or
    /// `--drain` is over. Returns when the last delivery was seen (to
    /// within 100 ms).
    async fn drain(&self) -> Instant {
        let c = &self.counters;
        let started = Instant::now();
        let drain_until = started + self.args.drain;
        let split = self.args.worker_index.is_some();
        let (mut last, mut quiet, mut last_change) = (c.delivered.load(Ordering::Relaxed), 0, started);
        while Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = c.delivered.load(Ordering::Relaxed);
            if now == last {
                quiet += 1;
            } else {
                (quiet, last_change) = (0, Instant::now());
            }
            if (split && quiet >= 10) || (!split && quiet >= 1 && now >= self.expected()) {
                break;
            }
            last = now;
        }
        last_change
    }

    fn tally(&self, ramp_seconds: f64, duration_seconds: f64) -> Tally {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let latency = [
            ("connect", &self.connect),
            ("ack", &self.ack),
            ("delivery", &self.delivery),
            ("history", &self.history),
            ("reconnect", &self.reconnect),
            ("churn_connect", &self.churn),
        ]
        .into_iter()
        .map(|(name, l)| (name.to_string(), l.recorded()))
        .collect();
        Tally {
            connected: load(&c.connected),
            failed_connects: load(&c.failed_connects),
            sent: load(&c.sent),
            acked: load(&c.acked),
            send_errors: load(&c.send_errors),
            delivered: load(&c.delivered),
            duplicates: load(&c.duplicates),
            reconnected: load(&c.reconnected),
            reconnect_failures: load(&c.reconnect_failures),
            not_recovered: load(&c.not_recovered),
            churned: load(&c.churned),
            churn_failures: load(&c.churn_failures),
            members: self.members.iter().map(load).collect(),
            acked_by_room: self.acked_by_room.iter().map(load).collect(),
            errors: self.errors.lock().clone(),
            closes: self.closes.lock().clone(),
            latency,
            ramp_seconds,
            duration_seconds,
        }
    }
}

/// What one run (or one worker's share of it) counted: counters, room
/// membership and acknowledged sends per room, and latency distributions as
/// (microseconds, count) pairs. Worker processes send theirs to the parent,
/// which merges them; the report is made from the merged tally.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub connected: u64,
    pub failed_connects: u64,
    pub sent: u64,
    pub acked: u64,
    pub send_errors: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub reconnected: u64,
    pub reconnect_failures: u64,
    pub not_recovered: u64,
    pub churned: u64,
    pub churn_failures: u64,
    pub members: Vec<u64>,
    pub acked_by_room: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub latency: BTreeMap<String, Vec<(u64, u64)>>,
    pub ramp_seconds: f64,
    pub duration_seconds: f64,
}

impl Tally {
    /// Adds another worker's tally to this one.
    pub fn merge(&mut self, other: Tally) {
        for (a, b) in [
            (&mut self.connected, other.connected),
            (&mut self.failed_connects, other.failed_connects),
            (&mut self.sent, other.sent),
            (&mut self.acked, other.acked),
            (&mut self.send_errors, other.send_errors),
            (&mut self.delivered, other.delivered),
            (&mut self.duplicates, other.duplicates),
            (&mut self.reconnected, other.reconnected),
            (&mut self.reconnect_failures, other.reconnect_failures),
            (&mut self.not_recovered, other.not_recovered),
            (&mut self.churned, other.churned),
            (&mut self.churn_failures, other.churn_failures),
        ] {
            *a += b;
        }
        for (mine, theirs) in [
            (&mut self.members, other.members),
            (&mut self.acked_by_room, other.acked_by_room),
        ] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        for (mine, theirs) in [(&mut self.errors, other.errors), (&mut self.closes, other.closes)] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        for (name, pairs) in other.latency {
            self.latency.entry(name).or_default().extend(pairs);
        }
        self.ramp_seconds = self.ramp_seconds.max(other.ramp_seconds);
        self.duration_seconds = self.duration_seconds.max(other.duration_seconds);
    }

    /// Deliveries the acknowledged sends should have made: each room's
    /// acknowledged sends times its members.
    pub fn expected(&self) -> u64 {
        self.members.iter().zip(&self.acked_by_room).map(|(m, a)| m * a).sum()
    }

    pub fn report(&self, args: &Args) -> Report {
        let expected = self.expected();
        let delivered = self.delivered;
        let loss = if expected == 0 {
            0.0
        } else {
            expected.saturating_sub(delivered) as f64 / expected as f64
        };
        let secs = self.duration_seconds;
        let per_second = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let error_replies = self.errors.values().sum::<u64>();
        let latency: serde_json::Map<String, serde_json::Value> = self
            .latency
            .iter()
            .map(|(name, pairs)| (name.clone(), stats::summary(&stats::from_recorded(pairs))))
            .collect();
        json!({
            "scenario": format!("{:?}", args.scenario).to_lowercase(),
            "urls": args.urls,
            "workers": args.workers,
            "connections": args.connections,
            "connected": self.connected,
            "failed_connects": self.failed_connects,
            "rooms": args.rooms,
            "senders": args.senders,
            "rate_target": args.rate,
            "ramp_seconds": self.ramp_seconds,
            "duration_seconds": secs,
            "sent": self.sent,
            "acked": self.acked,
            "send_errors": self.send_errors,
            "error_replies": error_replies,
            "unacknowledged": self.sent.saturating_sub(self.acked + error_replies),
            "expected_deliveries": expected,
            "delivered": delivered,
            "loss": loss,
            "duplicates": self.duplicates,
            "reconnected": self.reconnected,
            "reconnect_failures": self.reconnect_failures,
            "not_recovered": self.not_recovered,
            "churned": self.churned,
            "churn_failures": self.churn_failures,
            "deliveries_per_second": per_second(delivered),
            "acks_per_second": per_second(self.acked),
            "latency_ms": latency,
            "errors": self.errors,
            "close_codes": self.closes,
        })
    }
}

/// The threshold a report fails, if any.
pub fn check(args: &Args, report: &Report) -> Option<String> {
    if let Some(max) = args.max_p99_ms {
        let p99 = report["latency_ms"]["delivery"]["p99"]
            .as_f64()
            .unwrap_or(f64::INFINITY);
        if p99 > max {
            return Some(format!("delivery p99 {p99:.2} ms is over --max-p99-ms {max}"));
        }
    }
    if let Some(max) = args.max_loss {
        let loss = report["loss"].as_f64().unwrap_or(1.0);
        if loss > max {
            return Some(format!("loss {loss:.6} is over --max-loss {max}"));
        }
    }
    if args.max_loss.is_some() {
        // Loss is measured against acknowledged sends: sends never answered
        // and connections that failed or were closed count as failures.
        for key in [
            "failed_connects",
            "unacknowledged",
            "send_errors",
            "duplicates",
            "reconnect_failures",
            "not_recovered",
            "churn_failures",
        ] {
            if report[key].as_u64().unwrap_or(0) > 0 {
                return Some(format!("{key}: {}", report[key]));
            }
        }
        if report["close_codes"].as_object().is_some_and(|m| !m.is_empty()) {
            return Some(format!("connections closed during the run: {}", report["close_codes"]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_loopback_targets() {
        assert!(target_of("ws://127.0.0.1:8080/ws").is_ok());
        assert!(target_of("ws://10.0.0.1:8080/ws").is_err());
        assert!(target_of("wss://127.0.0.1:8080/ws").is_err());
    }
}
