//! The Redis Streams bus: any number of gateway nodes behave as one.
//!
//! Rooms map to a fixed number of shard streams by a stable hash. Each
//! shard stream key carries its own hash tag (`gw:{s7}`), so every command
//! touches one slot and the shards spread over a Redis Cluster's masters.
//!
//! - Publish: `XADD` with approximate `MAXLEN` trimming on one shared
//!   multiplexed connection, which pipelines concurrent publishes. The id
//!   Redis gives the entry (`ms-seq`, strictly increasing per stream) is the
//!   message id, packed into 64 bits, so every node sees one order.
//! - Read: a node reads a shard only while it has local members of a room in
//!   it: one task per shard with a dedicated connection (`XREAD BLOCK`),
//!   started at the stream's last id before the first join's replay, and
//!   resuming from the last id it read after any Redis outage.
//! - Presence: per-room sets of `node|user`, filtered by node heartbeat
//!   keys that expire, so a dead node's users disappear within
//!   `node_ttl`. Node ids not given by configuration are leased there.
//! - History and replay come from the stream window (until the CQL store
//!   exists, that window is all a cluster keeps).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{Script, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::redis_conn::{Conn, Pool, Target};
use crate::{Bus, BusError, Delivery, EventKind, NewMessage, Page, Published, Replay, Sink, StoredMessage};
use storage::HistoryStore;

const HEARTBEAT: Duration = Duration::from_secs(1);
/// A shard nobody local reads any more is kept this long, in case a member
/// comes back (joins and leaves flap).
const LINGER: Duration = Duration::from_secs(30);
/// Entries scanned per range command.
const SCAN_PAGE: usize = 1000;
/// How long a join waits for its shard reader to be positioned.
const POSITION_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    pub target: Target,
    /// Key prefix, so several deployments can share one Redis.
    pub prefix: String,
    /// Shard streams; every node of a cluster must agree.
    pub shards: u32,
    /// Approximate entries kept per shard stream.
    pub maxlen: usize,
    /// Entries older than this are trimmed (0: by count only).
    pub max_age: Duration,
    /// This node's id; leased in Redis when `None`.
    pub node_id: Option<String>,
    /// Entries per `XREAD`.
    pub read_count: usize,
    /// `XREAD BLOCK` time.
    pub block: Duration,
    /// How often streams are trimmed.
    pub trim_every: Duration,
    /// A node's heartbeat key (its lease and its presence) lives this long
    /// without a refresh; refreshed every second.
    pub node_ttl: Duration,
}

pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RedisBusConfig,
    node_id: String,
    /// Value of this node's heartbeat key, so it only refreshes its own.
    token: String,
    sink: Arc<dyn Sink>,
    store: Option<Arc<dyn HistoryStore>>,
    pool: Pool,
    publisher: tokio::sync::Mutex<Option<Conn>>,
    shards: Vec<Mutex<ShardInterest>>,
    ready: AtomicBool,
    closed: CancellationToken,
    tasks: TaskTracker,
}

#[derive(Default)]
struct ShardInterest {
    /// Local joins of rooms in this shard.
    count: usize,
    /// Bumped on every change to zero, so a stale linger does not stop a
    /// reader that found members again.
    generation: u64,
    reader: Option<ReaderHandle>,
}

struct ReaderHandle {
    cancel: CancellationToken,
    positioned: watch::Receiver<bool>,
}

/// The parts of `XINFO STREAM` the bus uses.
struct StreamInfo {
    last_id: String,
    length: u64,
    /// The newest entry still in the stream.
    last: u64,
    /// Highest id removed by `XDEL` (Redis 7 does not count trimming here).
    max_deleted: u64,
    /// The oldest entry still in the stream.
    first: u64,
    /// Entries were trimmed or deleted at some point.
    removed_any: bool,
}

impl StreamInfo {
    /// Whether every entry after `since` is still in the stream. Trimming
    /// removes from the head, so every trimmed id is below `first`; a
    /// client that saw `first` or later misses nothing.
    fn covers(&self, since: u64) -> bool {
        self.max_deleted <= since && (!self.removed_any || since >= self.first)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// FNV-1a: stable across processes and versions, unlike `RandomState`.
pub fn shard_of(room: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards)) as u32
}

fn parse_entry_id(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq) = (ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?);
    (seq <= protocol::id::SEQ_MAX).then(|| protocol::id::pack(ms, seq))
}

fn entry_id(id: u64) -> String {
    format!("{}-{}", protocol::id::millis(id), protocol::id::seq(id))
}

/// The key of a shard stream; its hash tag gives each shard its own slot.
pub fn stream_key(prefix: &str, shard: u32) -> String {
    format!("{prefix}:{{s{shard}}}")
}

/// A stored (`m`) entry as a message; `None` for ephemeral entries.
pub fn entry_to_message(entry: &StreamId) -> Option<StoredMessage> {
    if field(&entry.map, "k").as_deref() != Some("m") {
        return None;
    }
    let id = parse_entry_id(&entry.id)?;
    Some(StoredMessage {
        room: field(&entry.map, "r")?,
        id,
        from: field(&entry.map, "f")?,
        ts: protocol::id::millis(id),
        body: field(&entry.map, "b")?,
    })
}

/// A message's stream entry fields: room, from, kind, body.
fn message_fields(msg: &NewMessage) -> [(&'static str, &str); 4] {
    let kind = if msg.ephemeral { "e" } else { "m" };
    [
        ("r", &*msg.room),
        ("f", &*msg.from),
        ("k", kind),
        ("b", msg.body.as_str()),
    ]
}

/// A RESP2 flat array or RESP3 map as key/value pairs.
fn flat_map(v: Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [Value::BulkString(k), v] => Some((String::from_utf8_lossy(k).into_owned(), v.clone())),
                [Value::SimpleString(k), v] => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .into_iter()
            .filter_map(|(k, v)| redis::from_redis_value::<String>(k).ok().map(|k| (k, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Ascending, without duplicate ids; `newest` keeps the last `limit`.
fn merge(mut a: Vec<StoredMessage>, b: Vec<StoredMessage>, limit: usize, newest: bool) -> Vec<StoredMessage> {
    a.extend(b);
    a.sort_by_key(|m| m.id);
    a.dedup_by_key(|m| m.id);
    if newest && a.len() > limit {
        a.drain(..a.len() - limit);
    }
    a.truncate(limit);
    a
}

fn field(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("redis {what}: {e}"))
}

impl RedisBus {
    /// Connects, leases a node id if none is configured, and starts the
    /// heartbeat. Fails when Redis cannot be reached now.
    /// `store`: the history store a persister fills; without one, history
    /// and recovery reach back only as far as the stream window.
    pub async fn connect(
        cfg: RedisBusConfig,
        sink: Arc<dyn Sink>,
        store: Option<Arc<dyn HistoryStore>>,
    ) -> Result<RedisBus, BusError> {
        let pool = cfg.target.pool(32)?;
        let ttl_ms = cfg.node_ttl.as_millis() as u64;
        let mut conn = pool.get().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| err("PING", e))?;
        let token = format!("{:016x}", rand::random::<u64>());
        let node_id = match &cfg.node_id {
            Some(id) => {
                let key = format!("{}:node:{id}", cfg.prefix);
                let taken: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| err("GET", e))?;
                if taken.is_some() {
                    tracing::warn!(node = %id, "another live node heartbeats with this node id; ids must be unique");
                }
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| err("SET", e))?;
                id.clone()
            }
            None => lease_node_id(&mut conn, &cfg.prefix, &token, ttl_ms).await?,
        };
        drop(conn);
        let publisher = cfg.target.connect(Duration::from_secs(5)).await?;
        let inner = Arc::new(Inner {
            shards: (0..cfg.shards).map(|_| Mutex::new(ShardInterest::default())).collect(),
            cfg,
            node_id,
            token,
            sink,
            store,
            pool,
            publisher: tokio::sync::Mutex::new(Some(publisher)),
            ready: AtomicBool::new(true),
            closed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner.tasks.spawn(heartbeat(inner.clone()));
        Ok(RedisBus { inner })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Shards this node reads now (tests and metrics).
    pub fn reading_shards(&self) -> Vec<u32> {
        (0..self.inner.cfg.shards)
            .filter(|&s| self.inner.shards[s as usize].lock().reader.is_some())
            .collect()
    }
}

async fn lease_node_id(
    conn: &mut impl ConnectionLike,
    prefix: &str,
    token: &str,
    ttl_ms: u64,
) -> Result<String, BusError> {
    for n in 0..4096 {
        let id = format!("gw-{n}");
        let ok: Option<String> = redis::cmd("SET")
            .arg(format!("{prefix}:node:{id}"))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(conn)
            .await
            .map_err(|e| err("SET NX", e))?;
        if ok.is_some() {
            tracing::info!(node = %id, "leased node id");
            return Ok(id);
        }
    }
    Err(BusError::Unavailable("no free node id among gw-0..gw-4095".into()))
}

/// Readiness ping every second, node key refresh, and age trimming.
async fn heartbeat(inner: Arc<Inner>) {
    let refresh = Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
         elseif redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 else return 0 end",
    );
    let key = format!("{}:node:{}", inner.cfg.prefix, inner.node_id);
    let ttl_ms = inner.cfg.node_ttl.as_millis() as u64;
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = inner.closed.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        tick += 1;
        let ok = async {
            let mut conn = inner.pool.get().await?;
            let r: i64 = refresh
                .key(&key)
                .arg(&inner.token)
                .arg(ttl_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| err("heartbeat", e))?;
            if r == 0 {
                tracing::error!(node = %inner.node_id, "another process holds this node's id");
            }
            if tick.is_multiple_of(inner.cfg.trim_every.as_secs().max(1)) {
                inner.trim(&mut conn).await?;
            }
            Ok::<_, BusError>(())
        }
        .await;
        let was = inner.ready.swap(ok.is_ok(), Ordering::Relaxed);
        crate::metrics::get().ready.set(if ok.is_ok() { 1.0 } else { 0.0 });
        match ok {
            Ok(()) if !was => tracing::info!("redis reachable again"),
            Err(e) if was => tracing::warn!(error = %e, "redis unreachable"),
            _ => {}
        }
    }
}

impl Inner {
    fn key(&self, shard: u32) -> String {
        stream_key(&self.cfg.prefix, shard)
    }

    fn room_key(&self, room: &str) -> String {
        self.key(shard_of(room, self.cfg.shards))
    }

    fn presence_key(&self, room: &str) -> String {
        format!("{}:presence:{{{room}}}", self.cfg.prefix)
    }

    async fn publisher(&self) -> Result<Conn, BusError> {
        let mut slot = self.publisher.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.cfg.target.connect(Duration::from_secs(5)).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn xadd_cmd(&self, key: &str, fields: &[(&str, &str)]) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key);
        // With a store, the trim task cuts streams only below what the
        // persister has stored; without one, the window is all there is.
        if self.store.is_none() {
            cmd.arg("MAXLEN").arg("~").arg(self.cfg.maxlen);
        }
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd
    }

    /// After a failed command: reconnect on the next publish when the
    /// multiplexed connection may be dead.
    async fn publisher_failed(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            *self.publisher.lock().await = None;
        }
    }

    /// XADDs to one stream in one pipeline, in order.
    async fn xadd_pipeline(&self, key: &str, msgs: &[&NewMessage]) -> Result<Vec<u64>, BusError> {
        let mut pipe = redis::pipe();
        for m in msgs {
            pipe.add_command(self.xadd_cmd(key, &message_fields(m)));
        }
        let mut conn = self.publisher().await?;
        match pipe.query_async::<Vec<String>>(&mut conn).await {
            Ok(ids) => ids
                .iter()
                .map(|id| parse_entry_id(id).ok_or_else(|| err("XADD", format!("unexpected entry id {id:?}"))))
                .collect(),
            Err(e) => {
                self.publisher_failed(&e).await;
                Err(err("XADD pipeline", e))
            }
        }
    }

    async fn xadd(&self, room: &str, fields: &[(&str, &str)]) -> Result<u64, BusError> {
        let cmd = self.xadd_cmd(&self.room_key(room), fields);
        let mut conn = self.publisher().await?;
        match cmd.query_async::<String>(&mut conn).await {
            Ok(id) => parse_entry_id(&id).ok_or_else(|| err("XADD", format!("unexpected entry id {id:?}"))),
            Err(e) => {
                self.publisher_failed(&e).await;
                Err(err("XADD", e))
            }
        }
    }

    fn to_delivery(&self, entry: &StreamId) -> Option<Delivery> {
        let id = parse_entry_id(&entry.id)?;
        let room: Arc<str> = field(&entry.map, "r")?.into();
        let from = field(&entry.map, "f")?;
        let kind = field(&entry.map, "k")?;
        Some(match kind.as_str() {
            "m" | "e" => Delivery::Message {
                msg: Arc::new(StoredMessage {
                    room: room.to_string(),
                    id,
                    from,
                    ts: protocol::id::millis(id),
                    body: field(&entry.map, "b")?,
                }),
                ephemeral: kind == "e",
            },
            "j" | "l" | "t" => {
                let origin = field(&entry.map, "o").and_then(|o| {
                    let (node, conn) = o.rsplit_once('/')?;
                    (node == self.node_id).then(|| conn.parse().ok()).flatten()
                });
                let kind = match kind.as_str() {
                    "j" => EventKind::Joined,
                    "l" => EventKind::Left,
                    _ => EventKind::Typing,
                };
                Delivery::Event {
                    room,
                    kind,
                    user: from.into(),
                    origin,
                }
            }
            _ => return None,
        })
    }

    /// Stored (`m`) entries of `room` in one range page.
    fn room_messages(&self, room: &str, entries: &[StreamId], out: &mut Vec<StoredMessage>) {
        for e in entries {
            if field(&e.map, "r").as_deref() != Some(room) || field(&e.map, "k").as_deref() != Some("m") {
                continue;
            }
            if let Some(Delivery::Message { msg, .. }) = self.to_delivery(e) {
                out.push(Arc::unwrap_or_clone(msg));
            }
        }
    }

    /// What `XINFO STREAM` says of a stream (`None` when it does not exist).
    /// (`last` is the last generated id: entries are never deleted one by one.)
    async fn stream_info(&self, conn: &mut impl ConnectionLike, key: &str) -> Result<Option<StreamInfo>, BusError> {
        let reply: Result<Value, _> = redis::cmd("XINFO").arg("STREAM").arg(key).query_async(conn).await;
        let value = match reply {
            Ok(v) => v,
            Err(e) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(err("XINFO", e)),
        };
        if !matches!(value, Value::Array(_) | Value::Map(_)) {
            return Err(err("XINFO", format!("unexpected reply {value:?}")));
        }
        let pairs = flat_map(value);
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
        };
        let num = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| redis::from_redis_value::<u64>(v.clone()).ok())
        };
        let id = |name: &str| get(name).and_then(|id| parse_entry_id(&id)).unwrap_or(0);
        Ok(Some(StreamInfo {
            last_id: get("last-generated-id").unwrap_or_else(|| "0-0".into()),
            length: num("length").unwrap_or(0),
            last: id("last-generated-id"),
            max_deleted: id("max-deleted-entry-id"),
            first: id("recorded-first-entry-id"),
            removed_any: num("entries-added").unwrap_or(0) > num("length").unwrap_or(0),
        }))
    }

    async fn range(
        &self,
        conn: &mut impl ConnectionLike,
        rev: bool,
        key: &str,
        start: &str,
        end: &str,
    ) -> Result<Vec<StreamId>, BusError> {
        let cmd_name = if rev { "XREVRANGE" } else { "XRANGE" };
        let reply: StreamRangeReply = redis::cmd(cmd_name)
            .arg(key)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(SCAN_PAGE)
            .query_async(conn)
            .await
            .map_err(|e| err(cmd_name, e))?;
        Ok(reply.ids)
    }

    /// Up to `limit` stored messages of `room` after `after` (exclusive),
    /// ascending; `limit + 1` found means there are more.
    async fn scan_forward(&self, room: &str, after: u64, limit: usize) -> Result<Vec<StoredMessage>, BusError> {
        let key = self.room_key(room);
        let mut conn = self.pool.get().await?;
        let mut out = Vec::new();
        let mut cursor = format!("({}", entry_id(after));
        loop {
            let page = self.range(&mut conn, false, &key, &cursor, "+").await?;
            let Some(last) = page.last() else { break };
            cursor = format!("({}", last.id);
            self.room_messages(room, &page, &mut out);
            if out.len() > limit || page.len() < SCAN_PAGE {
                break;
            }
        }
        out.truncate(limit + 1);
        Ok(out)
    }

    /// Up to `limit` stored messages of `room` before `before` (exclusive,
    /// `None`: the newest), ascending.
    async fn scan_backward(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, BusError> {
        let key = self.room_key(room);
        let mut conn = self.pool.get().await?;
        let mut out = Vec::new();
        let mut cursor = match before {
            Some(0) => return Ok(out),
            Some(b) => format!("({}", entry_id(b)),
            None => "+".to_string(),
        };
        loop {
            let page = self.range(&mut conn, true, &key, &cursor, "-").await?;
            let Some(last) = page.last() else { break };
            cursor = format!("({}", last.id);
            self.room_messages(room, &page, &mut out);
            if out.len() >= limit || page.len() < SCAN_PAGE {
                break;
            }
        }
        out.truncate(limit);
        out.reverse();
        Ok(out)
    }

    /// Trims every shard stream to the window (`max_age`, about `maxlen`
    /// entries), and, with a store, never past the oldest entry the
    /// persister has not stored.
    async fn trim(&self, conn: &mut impl ConnectionLike) -> Result<(), BusError> {
        let age_cut = if self.cfg.max_age.is_zero() {
            0
        } else {
            protocol::id::pack(now_ms().saturating_sub(self.cfg.max_age.as_millis() as u64), 0)
        };
        let mut lag = 0;
        for shard in 0..self.cfg.shards {
            let key = self.key(shard);
            let Some(info) = self.stream_info(conn, &key).await? else {
                continue;
            };
            let mut cut = age_cut;
            if self.store.is_some() {
                // About `maxlen` newest entries: ids are timestamps, so the
                // cut between first and last is proportional to the excess.
                if info.length > self.cfg.maxlen as u64 {
                    let (first, last) = (protocol::id::millis(info.first), protocol::id::millis(info.last));
                    let excess = info.length - self.cfg.maxlen as u64;
                    let ms = first + (last.saturating_sub(first) as u128 * excess as u128 / info.length as u128) as u64;
                    cut = cut.max(protocol::id::pack(ms, 0));
                }
                match self.persisted_below(conn, &key).await? {
                    Some((safe, behind)) => {
                        cut = cut.min(safe);
                        lag += behind;
                    }
                    // No persister has read this stream yet: keep it all.
                    None => continue,
                }
            }
            if cut > info.first {
                redis::cmd("XTRIM")
                    .arg(&key)
                    .arg("MINID")
                    .arg("~")
                    .arg(entry_id(cut))
                    .query_async::<i64>(conn)
                    .await
                    .map_err(|e| err("XTRIM", e))?;
            }
        }
        if self.store.is_some() {
            crate::metrics::get().persister_lag.set(lag as f64);
        }
        crate::metrics::get().trim_runs.increment(1);
        Ok(())
    }

    /// The lowest id the persister still needs (everything below is
    /// stored), and how many entries it has not read yet.
    async fn persisted_below(&self, conn: &mut impl ConnectionLike, key: &str) -> Result<Option<(u64, u64)>, BusError> {
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(conn)
            .await
            .map_err(|e| err("XINFO GROUPS", e))?;
        let Value::Array(groups) = groups else { return Ok(None) };
        for g in groups {
            let fields = flat_map(g);
            let text = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
            };
            if text("name").as_deref() != Some(crate::persister::GROUP) {
                continue;
            }
            let delivered = text("last-delivered-id")
                .and_then(|id| parse_entry_id(&id))
                .unwrap_or(0);
            let pending: u64 = text("pending").and_then(|p| p.parse().ok()).unwrap_or(0);
            let behind: u64 = text("lag").and_then(|p| p.parse().ok()).unwrap_or(0);
            if pending == 0 {
                return Ok(Some((delivered + 1, behind)));
            }
            let summary: Value = redis::cmd("XPENDING")
                .arg(key)
                .arg(crate::persister::GROUP)
                .query_async(conn)
                .await
                .map_err(|e| err("XPENDING", e))?;
            let oldest = match summary {
                Value::Array(parts) => parts
                    .get(1)
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()),
                _ => None,
            };
            let oldest = oldest.and_then(|id| parse_entry_id(&id)).unwrap_or(0);
            return Ok(Some((oldest.min(delivered + 1), behind)));
        }
        Ok(None)
    }

    fn start_reader(self: &Arc<Self>, shard: u32) -> ReaderHandle {
        let cancel = self.closed.child_token();
        let (tx, rx) = watch::channel(false);
        self.tasks.spawn(read_shard(self.clone(), shard, cancel.clone(), tx));
        ReaderHandle { cancel, positioned: rx }
    }
}

/// Reads one shard stream until cancelled, resuming from the last entry it
/// read after every error.
async fn read_shard(inner: Arc<Inner>, shard: u32, cancel: CancellationToken, positioned: watch::Sender<bool>) {
    let m = crate::metrics::get();
    m.readers_active.increment(1.0);
    let key = inner.key(shard);
    let mut last: Option<String> = None;
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(50);
    while !cancel.is_cancelled() {
        let step = async {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(
                    inner
                        .cfg
                        .target
                        .connect(inner.cfg.block + Duration::from_secs(5))
                        .await?,
                ),
            };
            let from = match &last {
                Some(id) => id.clone(),
                None => {
                    let id = inner
                        .stream_info(c, &key)
                        .await?
                        .map(|i| i.last_id)
                        .unwrap_or_else(|| "0-0".into());
                    last = Some(id.clone());
                    let _ = positioned.send(true);
                    id
                }
            };
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(inner.cfg.read_count)
                .arg("BLOCK")
                .arg(inner.cfg.block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(&from)
                .query_async(c)
                .await
                .map_err(|e| err("XREAD", e))?;
            let entries: Vec<StreamId> = reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default();
            if let Some(e) = entries.last() {
                last = Some(e.id.clone());
            }
            m.entries_read.increment(entries.len() as u64);
            let batch: Vec<Delivery> = entries.iter().filter_map(|e| inner.to_delivery(e)).collect();
            if !batch.is_empty() {
                inner.sink.deliver(batch);
            }
            Ok::<_, BusError>(())
        };
        let result = tokio::select! {
            r = step => r,
            _ = cancel.cancelled() => break,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                m.reader_errors.increment(1);
                tracing::warn!(shard, error = %e, "shard reader: will resume from its last entry");
                conn = None;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    m.readers_active.decrement(1.0);
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, msg: NewMessage) -> Result<Published, BusError> {
        let m = crate::metrics::get();
        match self.inner.xadd(&msg.room, &message_fields(&msg)).await {
            Ok(id) => {
                m.published.increment(1);
                Ok(Published {
                    id,
                    ts: protocol::id::millis(id),
                })
            }
            Err(e) => {
                m.publish_failures.increment(1);
                Err(e)
            }
        }
    }

    async fn publish_batch(&self, msgs: Vec<NewMessage>) -> Vec<Result<Published, BusError>> {
        // One pipeline per shard stream (a cluster routes a pipeline by its
        // first key), all at once; order within a stream is kept.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let key = self.inner.room_key(&m.room);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let runs = groups.iter().map(|(key, idx)| {
            let batch: Vec<&NewMessage> = idx.iter().map(|&i| &msgs[i]).collect();
            async move { self.inner.xadd_pipeline(key, &batch).await }
        });
        let results = futures_util::future::join_all(runs).await;
        let m = crate::metrics::get();
        let mut out: Vec<Option<Result<Published, BusError>>> = msgs.iter().map(|_| None).collect();
        for ((_, idx), result) in groups.iter().zip(results) {
            match result {
                Ok(ids) => {
                    m.published.increment(ids.len() as u64);
                    for (&i, id) in idx.iter().zip(ids) {
                        out[i] = Some(Ok(Published {
                            id,
                            ts: protocol::id::millis(id),
                        }));
                    }
                }
                Err(e) => {
                    m.publish_failures.increment(idx.len() as u64);
                    for &i in idx {
                        out[i] = Some(Err(BusError::Unavailable(e.to_string())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BusError::Unavailable("not published".into()))))
            .collect()
    }

    async fn publish_event(
        &self,
        room: Arc<str>,
        kind: EventKind,
        user: Arc<str>,
        origin: Option<u64>,
    ) -> Result<(), BusError> {
        let k = match kind {
            EventKind::Joined => "j",
            EventKind::Left => "l",
            EventKind::Typing => "t",
        };
        let origin = origin
            .map(|o| format!("{}/{o}", self.inner.node_id))
            .unwrap_or_default();
        let mut fields = vec![("r", &*room), ("f", &*user), ("k", k)];
        if !origin.is_empty() {
            fields.push(("o", origin.as_str()));
        }
        self.inner.xadd(&room, &fields).await.map(|_| ())
    }

    async fn replay(&self, room: &str, since: u64, limit: usize) -> Result<Replay, BusError> {
        let mut conn = self.inner.pool.get().await?;
        let info = self.inner.stream_info(&mut conn, &self.inner.room_key(room)).await?;
        drop(conn);
        let covered = info.is_none_or(|i| i.covers(since));
        let mut messages = match (&self.inner.store, covered) {
            (_, true) => self.inner.scan_forward(room, since, limit).await?,
            // Entries after `since` were trimmed and there is no store: the
            // window cannot close the gap.
            (None, false) => {
                return Ok(Replay {
                    messages: Vec::new(),
                    complete: false,
                });
            }
            // Trimmed entries were stored first; unstored ones are still in
            // the window: together they close the gap.
            (Some(store), false) => {
                let stored = store.page(room, Page::After(since), limit + 1).await?;
                let window = self.inner.scan_forward(room, since, limit).await?;
                merge(stored, window, limit + 1, false)
            }
        };
        let complete = messages.len() <= limit;
        messages.truncate(limit);
        Ok(Replay { messages, complete })
    }

    async fn history(&self, room: &str, page: Page, limit: usize) -> Result<Vec<StoredMessage>, BusError> {
        if let Some(store) = &self.inner.store {
            // The store has what was trimmed, the window what is not stored yet.
            let stored = store.page(room, page, limit).await?;
            let window = match page {
                Page::Newest => self.inner.scan_backward(room, None, limit).await?,
                Page::Before(b) => self.inner.scan_backward(room, Some(b), limit).await?,
                Page::After(a) => self.inner.scan_forward(room, a, limit).await?,
            };
            return Ok(merge(stored, window, limit, !matches!(page, Page::After(_))));
        }
        match page {
            Page::Newest => self.inner.scan_backward(room, None, limit).await,
            Page::Before(b) => self.inner.scan_backward(room, Some(b), limit).await,
            Page::After(a) => {
                let mut out = self.inner.scan_forward(room, a, limit).await?;
                out.truncate(limit);
                Ok(out)
            }
        }
    }

    async fn watch(&self, room: &str) -> Result<(), BusError> {
        let shard = shard_of(room, self.inner.cfg.shards);
        let mut positioned = {
            let mut s = self.inner.shards[shard as usize].lock();
            s.count += 1;
            if s.reader.is_none() {
                s.reader = Some(self.inner.start_reader(shard));
            }
            s.reader.as_ref().expect("just set").positioned.clone()
        };
        match tokio::time::timeout(POSITION_WAIT, positioned.wait_for(|p| *p)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.unwatch(room);
                Err(BusError::Unavailable(
                    "redis: the room's stream cannot be read now".into(),
                ))
            }
        }
    }

    fn unwatch(&self, room: &str) {
        let shard = shard_of(room, self.inner.cfg.shards);
        let generation = {
            let mut s = self.inner.shards[shard as usize].lock();
            s.count = s.count.saturating_sub(1);
            if s.count > 0 {
                return;
            }
            s.generation += 1;
            s.generation
        };
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = inner.closed.cancelled() => return,
            }
            let mut s = inner.shards[shard as usize].lock();
            if s.count == 0
                && s.generation == generation
                && let Some(r) = s.reader.take()
            {
                r.cancel.cancel();
            }
        });
    }

    async fn presence_changed(&self, room: &str, user: &str, present: bool) -> Result<(), BusError> {
        let mut conn = self.inner.pool.get().await?;
        let member = format!("{}|{user}", self.inner.node_id);
        let cmd = if present { "SADD" } else { "SREM" };
        redis::cmd(cmd)
            .arg(self.inner.presence_key(room))
            .arg(member)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| err(cmd, e))?;
        Ok(())
    }

    async fn presence(&self, room: &str) -> Result<Option<Vec<String>>, BusError> {
        let key = self.inner.presence_key(room);
        let mut conn = self.inner.pool.get().await?;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| err("SMEMBERS", e))?;
        let mut alive: HashMap<&str, bool> = HashMap::new();
        let mut users = Vec::new();
        let mut dead = Vec::new();
        for m in &members {
            let Some((node, user)) = m.split_once('|') else {
                continue;
            };
            let live = match alive.get(node) {
                Some(&l) => l,
                None => {
                    let l: bool = redis::cmd("EXISTS")
                        .arg(format!("{}:node:{node}", self.inner.cfg.prefix))
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| err("EXISTS", e))?;
                    alive.insert(node, l);
                    l
                }
            };
            if live {
                users.push(user.to_string());
            } else {
                dead.push(m.clone());
            }
        }
        if !dead.is_empty() {
            // A dead node's entries: drop them for everyone.
            let _: Result<i64, _> = redis::cmd("SREM").arg(&key).arg(&dead).query_async(&mut conn).await;
        }
        users.sort();
        users.dedup();
        Ok(Some(users))
    }

    fn node_id(&self) -> Option<&str> {
        Some(&self.inner.node_id)
    }

    fn is_ready(&self) -> bool {
        !self.inner.closed.is_cancelled() && self.inner.ready.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.inner.closed.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Leave presence at once instead of waiting for the key to expire.
        if let Ok(mut conn) = self.inner.pool.get().await {
            let key = format!("{}:node:{}", self.inner.cfg.prefix, self.inner.node_id);
            let _: Result<i64, _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_coverage() {
        let info = |first, removed_any, max_deleted| StreamInfo {
            last_id: String::new(),
            length: 0,
            last: 0,
            max_deleted,
            first,
            removed_any,
        };
        assert!(info(100, false, 0).covers(5), "nothing ever removed");
        assert!(!info(100, true, 0).covers(5), "trimmed past since");
        assert!(info(100, true, 0).covers(100));
        assert!(info(100, true, 0).covers(150));
        assert!(!info(100, false, 120).covers(110), "an entry after since was deleted");
    }

    #[test]
    fn merge_keeps_one_of_each_in_order() {
        let m = |id| StoredMessage {
            room: "r".into(),
            id,
            from: "u".into(),
            ts: 0,
            body: "1".into(),
        };
        let ids = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(
            ids(merge(vec![m(1), m(3), m(5)], vec![m(3), m(4), m(6)], 10, false)),
            vec![1, 3, 4, 5, 6]
        );
        assert_eq!(
            ids(merge(vec![m(1), m(3), m(5)], vec![m(4), m(6)], 3, false)),
            vec![1, 3, 4]
        );
        assert_eq!(
            ids(merge(vec![m(1), m(3), m(5)], vec![m(4), m(6)], 3, true)),
            vec![4, 5, 6]
        );
    }

    #[test]
    fn shard_hash_and_ids_are_stable() {
        // Every node and every version must map a room to the same stream.
        assert_eq!(shard_of("", 16), (0xcbf2_9ce4_8422_2325u64 % 16) as u32);
        assert_eq!(entry_id(parse_entry_id("1700000000000-7").unwrap()), "1700000000000-7");
        assert_eq!(parse_entry_id("12-99999999"), None, "sequence beyond 22 bits");
    }
}
