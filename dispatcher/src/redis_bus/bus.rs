//! [`RedisBus`]: the [`Bus`] of a cluster, composed of the parts in the
//! sibling modules, plus the heartbeat that keeps the node's lease, says
//! whether Redis is reachable (`/readyz`), and runs the trimmer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use storage::HistoryStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::changes::Changes;
use super::cluster_keys::{agree_stream_keys, load_hash_key};
use super::conn::{Pool, Target, redis_error};
use super::control::{ControlChannel, read_control};
use super::feed::FeedWriter;
use super::lease::NodeLease;
use super::presence::Presence;
use super::publish::{Append, Publisher};
use super::readers::{ReaderContext, Readers};
use super::reads::Reads;
use super::streams::{StreamLayout, event_fields, message_fields, origin};
use super::trim::Trimmer;
use super::users::UserCounts;
use super::window::Window;
use crate::feed::FeedEvent;
use crate::{Bus, BusError, Control, EventKind, NewMessage, Page, Published, Replay, Sink, StoredMessage};

/// How often the heartbeat runs.
const HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    pub target: Target,
    /// Key prefix, stream count, and (1.1) whether the event feed is on
    /// (its connection events are written, and the shard streams are the
    /// feed streams); every node of a cluster must agree.
    pub streams: StreamLayout,
    /// Approximate entries kept per shard stream (with the feed on, at
    /// least its `GATEWAY_FEED_MAXLEN`).
    pub maxlen: usize,
    /// Entries older than this are trimmed (0: by count only).
    pub max_age: Duration,
    /// Approximate bytes kept per shard stream (0: no byte bound).
    pub max_bytes: u64,
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
    /// How long a send's nonce is remembered.
    pub dedupe_window: Duration,
}

pub struct RedisBus {
    shared: Arc<Shared>,
    readers: Arc<Readers>,
    window: Window,
    changes: Changes,
    reads: Reads,
    presence: Presence,
    control: ControlChannel,
    /// (1.1) Connection events for the feed, when it is on.
    feed: Option<FeedWriter>,
    users: Arc<UserCounts>,
}

/// What the bus and its heartbeat task share.
struct Shared {
    layout: StreamLayout,
    pool: Pool,
    lease: NodeLease,
    publisher: Publisher,
    trimmer: Trimmer,
    trim_every: Duration,
    ready: AtomicBool,
    closed: CancellationToken,
    tasks: TaskTracker,
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
        // A few shared multiplexed connections: commands pipeline on them.
        let pool = cfg.target.pool(4)?;
        let mut conn = pool.get().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| redis_error("PING", e))?;
        let lease = NodeLease::acquire(&mut conn, &cfg.streams, cfg.node_id.as_deref(), cfg.node_ttl).await?;
        let key = load_hash_key(&mut conn, &cfg.streams).await?;
        agree_stream_keys(&mut conn, &cfg.streams).await?;
        drop(conn);
        let name = cfg.streams.hash_key_name();
        let mut cfg = cfg;
        cfg.streams = cfg
            .streams
            .with_hash_key(&key)
            .ok_or_else(|| BusError::Unavailable(format!("redis: {name} is not 32 hex digits")))?;
        // With a store, the trimmer cuts streams only below what the
        // persister has stored; without one, appends trim by count.
        let append_maxlen = store.is_none().then_some(cfg.maxlen);
        let publisher = Publisher::connect(cfg.target.clone(), append_maxlen, cfg.dedupe_window).await?;
        let closed = CancellationToken::new();
        let tasks = TaskTracker::new();
        let node_id = lease.node_id.clone();
        let shared = Arc::new(Shared {
            layout: cfg.streams.clone(),
            pool: pool.clone(),
            lease,
            publisher,
            trimmer: Trimmer {
                layout: cfg.streams.clone(),
                maxlen: cfg.maxlen,
                max_age: cfg.max_age,
                max_bytes: cfg.max_bytes,
                with_store: store.is_some(),
            },
            trim_every: cfg.trim_every,
            ready: AtomicBool::new(true),
            closed: closed.clone(),
            tasks: tasks.clone(),
        });
        tasks.spawn(heartbeat(shared.clone()));
        let users = UserCounts::start(
            pool.clone(),
            cfg.streams.clone(),
            shared.lease.incarnation(),
            closed.clone(),
            &tasks,
        );
        // Positioned before `connect` returns: every action issued from now
        // on reaches this node.
        let control = ControlChannel {
            pool: pool.clone(),
            layout: cfg.streams.clone(),
        };
        tasks.spawn(read_control(
            cfg.target.clone(),
            cfg.streams.control_key(),
            control.position().await?,
            cfg.block,
            sink.clone(),
            closed.clone(),
        ));
        let feed = cfg.streams.feed().then(|| {
            FeedWriter::start(
                cfg.target.clone(),
                cfg.streams.clone(),
                shared.lease.incarnation(),
                append_maxlen,
                closed.clone(),
                &tasks,
            )
        });
        let m = crate::metrics::get();
        m.ready.set(1.0);
        m.stream_window.set(cfg.maxlen as f64 * f64::from(cfg.streams.count()));
        Ok(RedisBus {
            users,
            readers: Readers::new(ReaderContext {
                target: cfg.target,
                layout: cfg.streams.clone(),
                node_id: node_id.clone(),
                sink,
                read_count: cfg.read_count,
                block: cfg.block,
                closed,
                tasks,
            }),
            reads: Reads {
                pool: pool.clone(),
                layout: cfg.streams.clone(),
            },
            changes: Changes {
                pool: pool.clone(),
                layout: cfg.streams.clone(),
                store: store.clone(),
                maxlen: append_maxlen,
            },
            window: Window {
                pool: pool.clone(),
                layout: cfg.streams.clone(),
                store,
            },
            control,
            feed,
            presence: Presence {
                pool,
                layout: cfg.streams,
                node_id,
            },
            shared,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.shared.lease.node_id
    }

    /// The cluster's per-user counts, for per-user limits across nodes.
    pub fn user_counts(&self) -> Arc<UserCounts> {
        self.users.clone()
    }
}

/// Every second: refresh the node's lease (which also tells whether Redis
/// answers, for readiness), and trim every `trim_every`.
async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        tick += 1;
        let ok = async {
            let mut conn = shared.pool.get().await?;
            if !shared.lease.refresh(&mut conn).await? {
                tracing::error!(node = %shared.lease.node_id, "another process holds this node's id");
            }
            if tick.is_multiple_of(shared.trim_every.as_secs().max(1)) {
                shared.trimmer.run(&mut conn).await?;
            }
            Ok::<_, BusError>(())
        }
        .await;
        let was = shared.ready.swap(ok.is_ok(), Ordering::Relaxed);
        crate::metrics::get().ready.set(if ok.is_ok() { 1.0 } else { 0.0 });
        match ok {
            Ok(()) if !was => tracing::info!("redis reachable again"),
            Err(e) if was => tracing::warn!(error = %e, "redis unreachable"),
            _ => {}
        }
    }
}

fn published(id: u64, duplicate: bool) -> Published {
    Published {
        id,
        ts: protocol::id::millis(id),
        duplicate,
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, msg: NewMessage) -> Result<Published, BusError> {
        if msg.change.is_some() {
            let started = Instant::now();
            let r = self.changes.publish(&self.shared.publisher, &msg).await;
            crate::metrics::get()
                .publish_seconds
                .record(started.elapsed().as_secs_f64());
            return r;
        }
        self.publish_batch(vec![msg])
            .await
            .pop()
            .unwrap_or_else(|| Err(BusError::Unavailable("not published".into())))
    }

    async fn publish_batch(&self, msgs: Vec<NewMessage>) -> Vec<Result<Published, BusError>> {
        if msgs.iter().any(|m| m.change.is_some()) {
            // Changes are judged one by one (`publish`); senders batch
            // messages only.
            let mut out = Vec::with_capacity(msgs.len());
            for m in msgs {
                out.push(self.publish(m).await);
            }
            return out;
        }
        // One pipeline per shard stream (a cluster routes a pipeline by its
        // first key), all at once; order within a stream is kept.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let key = self.shared.layout.room_key(&m.room);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let msgs = &msgs;
        let runs = groups.iter().map(|(key, idx)| {
            let nonce_keys: Vec<Option<String>> = idx
                .iter()
                .map(|&i| {
                    let m = &msgs[i];
                    let nonce = m.nonce.as_deref().filter(|_| !m.ephemeral)?;
                    Some(self.shared.layout.nonce_key(&m.room, &m.from, nonce))
                })
                .collect();
            async move {
                let replies: Vec<Option<String>> =
                    idx.iter().map(|&i| msgs[i].reply_to.map(|r| r.to_string())).collect();
                let fields: Vec<_> = idx
                    .iter()
                    .zip(&replies)
                    .map(|(&i, r)| message_fields(&msgs[i], r.as_deref()))
                    .collect();
                let entries: Vec<Append<'_>> = fields
                    .iter()
                    .zip(nonce_keys)
                    .map(|(f, nonce_key)| Append {
                        fields: &f[..],
                        nonce_key,
                    })
                    .collect();
                self.shared.publisher.add_all(key, &entries).await
            }
        });
        let results = futures_util::future::join_all(runs).await;
        let m = crate::metrics::get();
        let mut out: Vec<Option<Result<Published, BusError>>> = msgs.iter().map(|_| None).collect();
        for ((_, idx), result) in groups.iter().zip(results) {
            match result {
                Ok(ids) => {
                    m.published
                        .increment(ids.iter().filter(|(_, repeat)| !repeat).count() as u64);
                    for (&i, (id, repeat)) in idx.iter().zip(ids) {
                        out[i] = Some(Ok(published(id, repeat)));
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
        origin_conn: Option<u64>,
    ) -> Result<(), BusError> {
        let origin = origin_conn.map(|c| origin(self.node_id(), c));
        let msg = match kind {
            EventKind::Read { msg } => msg.to_string(),
            _ => String::new(),
        };
        let fields = event_fields(&room, kind, &user, origin.as_deref(), &msg);
        let key = self.shared.layout.room_key(&room);
        self.shared.publisher.add(&key, &fields).await.map(|_| ())
    }

    async fn replay(&self, room: &str, since: u64, limit: usize) -> Result<Replay, BusError> {
        let started = Instant::now();
        let r = match self.window.replay(room, since, limit).await {
            // Messages as they are now (a deleted one's body is not sent
            // again); their reactions come with the replayed react events.
            Ok(mut replay) => self
                .changes
                .overlay(room, &mut replay.messages, None, false)
                .await
                .map(|()| replay),
            Err(e) => Err(e),
        };
        crate::metrics::get().replay.record(started, &r);
        r
    }

    async fn history(
        &self,
        room: &str,
        page: Page,
        limit: usize,
        viewer: Option<&str>,
    ) -> Result<Vec<StoredMessage>, BusError> {
        let started = Instant::now();
        let r = match self.window.history(room, page, limit).await {
            Ok(mut page) => self.changes.overlay(room, &mut page, viewer, true).await.map(|()| page),
            Err(e) => Err(e),
        };
        crate::metrics::get().history.record(started, &r);
        r
    }

    // (1.1) Read markers live in the store when there is one (durable,
    // beside the history), else in Redis.
    async fn mark_read(&self, room: &str, user: &str, msg: u64) -> Result<bool, BusError> {
        let now = protocol::id::now_ms();
        match &self.window.store {
            Some(store) => Ok(store.mark_read(room, user, msg, now).await?),
            None => self.reads.mark(room, user, msg, now).await,
        }
    }

    async fn read_marker(&self, room: &str, user: &str) -> Result<Option<u64>, BusError> {
        match &self.window.store {
            Some(store) => Ok(store.read_marker(room, user).await?),
            None => self.reads.marker(room, user).await,
        }
    }

    async fn read_markers(&self, room: &str, limit: usize) -> Result<Vec<(String, u64)>, BusError> {
        match &self.window.store {
            Some(store) => Ok(store.read_markers(room, limit).await?),
            None => self.reads.markers(room, limit).await,
        }
    }

    async fn watch(&self, room: &str) -> Result<(), BusError> {
        self.readers.watch(room).await
    }

    fn unwatch(&self, room: &str) {
        self.readers.unwatch(room)
    }

    async fn presence_changed(&self, room: &str, user: &str, connections: u32) -> Result<(), BusError> {
        self.presence.set(room, user, connections).await
    }

    async fn presence(&self, room: &str) -> Result<Option<Vec<String>>, BusError> {
        let members = self.presence.members(room).await?;
        Ok(Some(members.into_iter().map(|(user, _)| user).collect()))
    }

    async fn room_members(&self, room: &str) -> Result<Option<Vec<(String, u32)>>, BusError> {
        self.presence.members(room).await.map(Some)
    }

    async fn control(&self, action: Control) -> Result<(), BusError> {
        self.control.issue(&action).await
    }

    async fn ban(&self, room: &str, user: &str) -> Result<Option<u64>, BusError> {
        self.control.ban(room, user).await
    }

    async fn revoked(&self, user: &str) -> Result<Option<u64>, BusError> {
        self.control.revoked(user).await
    }

    fn feed(&self, event: FeedEvent) {
        if let Some(f) = &self.feed {
            f.send(event);
        }
    }

    fn node_id(&self) -> Option<&str> {
        Some(RedisBus::node_id(self))
    }

    fn is_ready(&self) -> bool {
        !self.shared.closed.is_cancelled() && self.shared.ready.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.shared.closed.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        if let Ok(mut conn) = self.shared.pool.get().await {
            self.shared.lease.release(&mut conn).await;
        }
    }
}
