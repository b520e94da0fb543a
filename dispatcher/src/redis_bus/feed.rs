//! (1.1) Writing the event feed (see [`crate::feed`]).
//!
//! With the feed on, the shard streams are the feed streams: stored room
//! events are in the feed as they are appended, written once. Connection
//! events go through [`FeedWriter`]: a channel and one task that writes
//! whatever has queued since its last write in one pipeline per stream,
//! so a connection storm costs a few round trips, not one per event. If
//! Redis is away the events wait (up to [`MAX_QUEUED`], the oldest dropped
//! beyond, counted) and are written when it returns.
//!
//! A node killed without draining writes no disconnect for its
//! connections. So each node keeps, beside the feed, the connections it
//! has open and their rooms (a hash per node incarnation, updated after
//! each round), and registers in the set of feed writers; every node looks
//! every [`REAP_EVERY`] for registered nodes whose heartbeat key is gone,
//! and one of them (a lock) writes their connections' leaves and
//! disconnects, marked `lost`. A node killed between a round's feed
//! entries and its record may leave one round's connections unreaped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{Conn, Target, redis_error};
use super::streams::StreamLayout;
use crate::BusError;
use crate::backoff::Backoff;
use crate::feed::FeedEvent;

/// Connection events held while Redis is away, at most.
const MAX_QUEUED: usize = 100_000;

/// Connection events written in one round (per feed stream pipelines).
const MAX_ROUND: usize = 2_000;

pub(crate) struct FeedWriter {
    tx: mpsc::UnboundedSender<(FeedEvent, u64)>,
}

impl FeedWriter {
    /// Starts the writer task; `node` is this node's incarnation.
    pub(crate) fn start(
        target: Target,
        layout: StreamLayout,
        node: String,
        maxlen: Option<usize>,
        closed: CancellationToken,
        tasks: &TaskTracker,
    ) -> FeedWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.spawn(write_loop(
            Writer {
                target,
                layout,
                node,
                maxlen,
            },
            rx,
            closed,
        ));
        FeedWriter { tx }
    }

    /// Queues an event; never waits.
    pub(crate) fn send(&self, event: FeedEvent) {
        let _ = self.tx.send((event, protocol::id::now_ms()));
    }
}

struct Writer {
    target: Target,
    layout: StreamLayout,
    node: String,
    /// Trim as it appends, as the publisher does (`None`: with a store,
    /// only the trimmer trims, never past what is not stored).
    maxlen: Option<usize>,
}

/// A connection as the feed knows it: its user and the rooms it is in.
type Known = HashMap<u64, (Arc<str>, Vec<Arc<str>>)>;

impl Writer {
    fn key(&self, event: &FeedEvent) -> String {
        let stream = match event.room() {
            Some(room) => self.layout.stream_of(room),
            None => self.layout.feed_of_user(event.user()),
        };
        // With the feed on, the shard stream is the feed stream.
        self.layout.key(stream)
    }

    /// Appends entries (feed key, fields) in one pipeline per feed stream,
    /// all at once.
    async fn append(
        &self,
        conn: &mut Conn,
        entries: Vec<(String, Vec<(&'static str, String)>)>,
    ) -> Result<(), BusError> {
        let mut groups: Vec<(String, redis::Pipeline)> = Vec::new();
        for (key, fields) in entries {
            let pipe = match groups.iter().position(|(k, _)| *k == key) {
                Some(i) => &mut groups[i].1,
                None => {
                    groups.push((key.clone(), redis::pipe()));
                    &mut groups.last_mut().expect("just pushed").1
                }
            };
            let cmd = pipe.cmd("XADD").arg(&key);
            if let Some(maxlen) = self.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(maxlen);
            }
            cmd.arg("*");
            for (k, v) in fields {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
        }
        let runs = groups.iter().map(|(_, pipe)| {
            let mut c = conn.clone();
            async move { pipe.query_async::<()>(&mut c).await }
        });
        for r in futures_util::future::join_all(runs).await {
            r.map_err(|e| redis_error("XADD feed", e))?;
        }
        Ok(())
    }

    /// Writes a round of this node's events, then the record of its open
    /// connections they changed (what a reaper needs if this node dies).
    async fn write(&self, conn: &mut Conn, events: &[(FeedEvent, u64)], known: &mut Known) -> Result<(), BusError> {
        let entries = events
            .iter()
            .map(|(e, ts)| (self.key(e), e.fields(&self.node, *ts)))
            .collect();
        self.append(conn, entries).await?;
        let mut changed: Vec<u64> = Vec::new();
        for (e, _) in events {
            let c = e.conn();
            match e {
                FeedEvent::Connect { user, .. } => {
                    known.insert(c, (user.clone(), Vec::new()));
                }
                FeedEvent::Join { room, .. } => {
                    if let Some((_, rooms)) = known.get_mut(&c) {
                        rooms.push(room.clone());
                    }
                }
                FeedEvent::Leave { room, .. } => {
                    if let Some((_, rooms)) = known.get_mut(&c) {
                        rooms.retain(|r| r != room);
                    }
                }
                FeedEvent::Disconnect { .. } => {
                    known.remove(&c);
                }
            }
            changed.push(c);
        }
        changed.sort_unstable();
        changed.dedup();
        let key = self.layout.feed_conns_key(&self.node);
        let mut pipe = redis::pipe();
        for c in changed {
            match known.get(&c) {
                Some((user, rooms)) => {
                    let mut v = user.to_string();
                    for r in rooms {
                        v.push('\n');
                        v.push_str(r);
                    }
                    pipe.cmd("HSET").arg(&key).arg(c).arg(v).ignore();
                }
                None => {
                    pipe.cmd("HDEL").arg(&key).arg(c).ignore();
                }
            }
        }
        pipe.query_async::<()>(conn)
            .await
            .map_err(|e| redis_error("HSET feed connections", e))
    }

    /// Registers this node among the feed's writers.
    async fn register(&self, conn: &mut Conn) -> Result<(), BusError> {
        redis::cmd("SADD")
            .arg(self.layout.feed_nodes_key())
            .arg(&self.node)
            .query_async::<()>(conn)
            .await
            .map_err(|e| redis_error("SADD feed nodes", e))
    }

    /// Writes the leaves and disconnects of the connections of dead
    /// nodes (their heartbeat key gone, or another process's now): one
    /// reaper per dead node (a lock), each entry marked `lost`.
    async fn reap(&self, conn: &mut Conn) -> Result<(), BusError> {
        let nodes_key = self.layout.feed_nodes_key();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&nodes_key)
            .query_async(conn)
            .await
            .map_err(|e| redis_error("SMEMBERS feed nodes", e))?;
        for node in nodes.into_iter().filter(|n| *n != self.node) {
            let Some((id, token)) = node.split_once('|') else {
                continue;
            };
            let holder: Option<String> = redis::cmd("GET")
                .arg(self.layout.node_key(id))
                .query_async(conn)
                .await
                .map_err(|e| redis_error("GET node", e))?;
            if holder.as_deref() == Some(token) {
                continue;
            }
            let claimed: Option<String> = redis::cmd("SET")
                .arg(self.layout.feed_reap_key(&node))
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(REAP_LOCK.as_millis() as u64)
                .query_async(conn)
                .await
                .map_err(|e| redis_error("SET reap lock", e))?;
            if claimed.is_none() {
                continue;
            }
            let conns_key = self.layout.feed_conns_key(&node);
            let conns: HashMap<u64, String> = redis::cmd("HGETALL")
                .arg(&conns_key)
                .query_async(conn)
                .await
                .map_err(|e| redis_error("HGETALL feed connections", e))?;
            let ts = protocol::id::now_ms();
            let mut entries = Vec::new();
            for (c, v) in &conns {
                let mut parts = v.split('\n');
                let user: Arc<str> = parts.next().unwrap_or_default().into();
                for room in parts {
                    let leave = FeedEvent::Leave {
                        room: room.into(),
                        user: user.clone(),
                        conn: *c,
                    };
                    entries.push((self.key(&leave), lost(leave.fields(&node, ts))));
                }
                let gone = FeedEvent::Disconnect { user, conn: *c };
                entries.push((self.key(&gone), lost(gone.fields(&node, ts))));
            }
            let n = entries.len();
            self.append(conn, entries).await?;
            redis::pipe()
                .cmd("DEL")
                .arg(&conns_key)
                .ignore()
                .cmd("SREM")
                .arg(&nodes_key)
                .arg(&node)
                .ignore()
                .query_async::<()>(conn)
                .await
                .map_err(|e| redis_error("DEL feed connections", e))?;
            crate::metrics::get().feed_reaped.increment(conns.len() as u64);
            tracing::info!(node = %node, connections = conns.len(), entries = n, "feed: a dead node's connections reaped");
        }
        Ok(())
    }
}

/// Marks a reaped event: the node did not see it end, a survivor wrote it.
fn lost(mut fields: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    fields.push(("lost", "1".into()));
    fields
}

/// How long one node reaps a dead one before another may try again.
const REAP_LOCK: Duration = Duration::from_secs(30);

/// How often a node looks for dead nodes to reap.
const REAP_EVERY: Duration = Duration::from_secs(2);

async fn write_loop(w: Writer, mut rx: mpsc::UnboundedReceiver<(FeedEvent, u64)>, closed: CancellationToken) {
    let mut queued: VecDeque<(FeedEvent, u64)> = VecDeque::new();
    let mut known: Known = HashMap::new();
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut closing = false;
    let mut reap = tokio::time::interval(REAP_EVERY);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut reap_now = false;
        if queued.is_empty() {
            if closing {
                break;
            }
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => queued.push_back(e),
                    None => closing = true,
                },
                _ = reap.tick() => reap_now = true,
                _ = closed.cancelled() => closing = true,
            }
        }
        while let Ok(e) = rx.try_recv() {
            queued.push_back(e);
        }
        if queued.len() > MAX_QUEUED {
            let dropped = queued.len() - MAX_QUEUED;
            queued.drain(..dropped);
            crate::metrics::get().feed_dropped.increment(dropped as u64);
            tracing::warn!(dropped, "feed: connection events dropped while Redis was away");
        }
        if queued.is_empty() && !reap_now {
            continue;
        }
        let round: Vec<(FeedEvent, u64)> = queued.iter().take(MAX_ROUND).cloned().collect();
        let result = async {
            let c = match &mut conn {
                Some(c) => c,
                None => {
                    let mut c = w.target.connect(Duration::from_secs(5)).await?;
                    w.register(&mut c).await?;
                    conn.insert(c)
                }
            };
            if reap_now {
                w.reap(c).await?;
            }
            if !round.is_empty() {
                w.write(c, &round, &mut known).await?;
            }
            Ok::<_, BusError>(())
        }
        .await;
        match result {
            Ok(()) => {
                queued.drain(..round.len());
                crate::metrics::get().feed_written.increment(round.len() as u64);
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(error = %e, queued = queued.len(), "feed: connection events wait for Redis");
                conn = None;
                if closing {
                    // Draining: one more try at most, then they are lost.
                    break;
                }
                if !backoff.wait(&closed).await {
                    closing = true;
                }
            }
        }
    }
    if !queued.is_empty() {
        crate::metrics::get().feed_dropped.increment(queued.len() as u64);
    }
}
