//! Connections, shards and rooms inside one node.
//!
//! - [`ConnHandle`]: what the rest of the node holds of a connection: its
//!   bounded outbound queue of ready-to-write WebSocket frames.
//! - Shards: each a task owning the room index (room -> member connections)
//!   of the connections assigned to it. Deliveries, joins and leaves reach
//!   a shard as commands, so the index needs no lock.
//! - The registry: node-wide per room, which shards hold members and which
//!   users are present; it routes a delivery to only the shards that need
//!   it and answers `presence`.
//! - [`Router`]: the bus [`Sink`]: it encodes each delivery into one
//!   WebSocket frame, once per node, and hands the shared frame to the
//!   shards, which push it to their members' queues.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use dispatcher::{Control, Delivery, EventKind, Sink};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use protocol::encode::{Obj, msg_event, room_user_event};
use tokio::sync::{mpsc, oneshot};

use crate::view::view;
use crate::ws;

/// One encoded delivery shared by every member connection of the node.
pub struct Outgoing {
    pub room: Arc<str>,
    /// The id of a `msg` event (stored or ephemeral), else 0 (presence
    /// and typing events), for ordering against a replay.
    pub msg_id: u64,
    /// A connection that must not get it (its own `typing`), else 0.
    pub skip_conn: u64,
    /// The whole WebSocket frame, header included.
    pub frame: Bytes,
}

/// An item of a connection's outbound queue.
pub enum Out {
    Shared(Arc<Outgoing>),
    Own(Bytes),
}

impl Out {
    pub fn is_delivery(&self) -> bool {
        matches!(self, Out::Shared(_))
    }

    pub fn bytes(&self) -> &Bytes {
        match self {
            Out::Shared(o) => &o.frame,
            Out::Own(b) => b,
        }
    }
}

/// How much one connection's outbound queue may hold; past either bound
/// the connection is a slow consumer and closes with 4008.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Deliveries (room messages and events) queued.
    pub deliveries: usize,
    /// Bytes of everything queued (replies, replays, deliveries): the
    /// memory one connection may pin. A delivery's frame is shared by the
    /// node's members, but a connection that does not read keeps it alive,
    /// so it counts whole here.
    pub bytes: usize,
}

#[derive(Default)]
pub struct Queue {
    pub items: VecDeque<Out>,
    /// Bytes of the front item already written to the socket.
    pub front_offset: usize,
    /// `Out::Shared` items in `items`: what the slow-consumer bound counts.
    pub deliveries: usize,
    /// Bytes of every item in `items` (whole, written part included).
    pub bytes: usize,
    /// Since when queued output has waited without any of it being
    /// written; `None` while the queue is empty or the socket takes it.
    pub stalled_since: Option<tokio::time::Instant>,
    /// Bytes of `Out::Own` items (replies, replays, control frames): the
    /// connection stops reading requests while these pile up unread.
    pub own_bytes: usize,
    /// Set when a delivery found the queue full: the connection is a slow
    /// consumer and must close with 4008.
    pub overflowed: bool,
    /// The connection is gone; pushes are dropped.
    pub closed: bool,
    /// (1.1) Operator actions for the connection's task to carry out
    /// (boxed: almost every connection never gets one).
    pub commands: Option<Box<Vec<Control>>>,
    /// (1.1) Its user, once it authenticated: what operator actions match.
    pub user: Option<Arc<str>>,
}

pub struct ConnHandle {
    pub id: u64,
    /// (1.1) Its place in the node's connections (`moderation`); `u32`
    /// beside `signalled`, so the handle keeps its allocator size class.
    pub slot: u32,
    pub queue: Mutex<Queue>,
    /// Wakes the connection's task: something was queued on an empty queue,
    /// the queue overflowed, or it was closed. A flag and one waker slot
    /// rather than a `Notify`: the task re-arms it on every delivery, and
    /// registering in a waiter list (and leaving it) per wake showed in
    /// profiles.
    waker: AtomicWaker,
    signalled: AtomicBool,
    limits: QueueLimits,
}

impl ConnHandle {
    /// A handle outside any hub (benchmarks, tests).
    pub fn detached(id: u64, limits: QueueLimits) -> ConnHandle {
        ConnHandle {
            id,
            slot: u32::MAX,
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            signalled: AtomicBool::new(false),
            limits,
        }
    }

    /// Whether `len` more bytes fit in the queue's byte budget now (a
    /// handler asks before building a large reply it could refuse instead).
    pub fn has_room_for(&self, len: usize) -> bool {
        self.queue.lock().bytes.saturating_add(len) <= self.limits.bytes
    }

    /// The byte budget of this connection's queue.
    pub fn byte_budget(&self) -> usize {
        self.limits.bytes
    }

    /// Marks the connection a slow consumer (closed 4008 by its task).
    fn overflow(&self, mut q: parking_lot::MutexGuard<'_, Queue>) {
        q.overflowed = true;
        drop(q);
        self.signal();
    }

    /// Wakes the connection's task (or makes its next wait return at once).
    fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The connection task's wait: ready once `signal` was called since the
    /// last time this returned ready.
    pub fn poll_signal(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Register first, then check: a signal between the two is not lost.
        self.waker.register(cx.waker());
        if self.signalled.swap(false, Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Empties the queue as a connection that wrote everything would.
    pub fn drain(&self) -> usize {
        let mut q = self.queue.lock();
        q.deliveries = 0;
        q.own_bytes = 0;
        q.bytes = 0;
        q.stalled_since = None;
        std::mem::take(&mut q.items).len()
    }

    /// Queues a delivery. Past the bound the connection is marked a slow
    /// consumer instead (nothing more is queued for it).
    fn push_delivery(&self, out: &Arc<Outgoing>) -> bool {
        let mut q = self.queue.lock();
        if q.closed || q.overflowed {
            return false;
        }
        if q.deliveries >= self.limits.deliveries || q.bytes + out.frame.len() > self.limits.bytes {
            self.overflow(q);
            return false;
        }
        let was_empty = q.items.is_empty();
        q.items.push_back(Out::Shared(out.clone()));
        q.deliveries += 1;
        q.bytes += out.frame.len();
        drop(q);
        if was_empty {
            self.signal();
        }
        true
    }

    /// Queues a reply or control frame of this connection's own. Past the
    /// byte budget the connection is a slow consumer instead.
    pub fn push_own(&self, frame: Bytes) {
        let mut q = self.queue.lock();
        if q.closed || q.overflowed {
            return;
        }
        if q.bytes + frame.len() > self.limits.bytes {
            self.overflow(q);
            return;
        }
        let was_empty = q.items.is_empty();
        q.own_bytes += frame.len();
        q.bytes += frame.len();
        q.items.push_back(Out::Own(frame));
        drop(q);
        if was_empty {
            self.signal();
        }
    }

    /// After a replay: queue `frames` (the replayed messages and the `ok`)
    /// ahead of the room's live messages already queued above `floor`, and
    /// drop the queued ones at or below it (stored ones are in the replay; an
    /// ephemeral one there would arrive out of order), so the client sees
    /// the room in ascending order with no duplicate. A partly written front frame stays first.
    pub fn splice_replay(&self, room: &str, floor: u64, frames: Vec<Bytes>) {
        let mut q = self.queue.lock();
        let was_empty = q.items.is_empty();
        let skip = usize::from(q.front_offset > 0);
        let mut live = Vec::new();
        let mut kept = VecDeque::with_capacity(q.items.len() + frames.len());
        let mut dropped = 0;
        for (i, item) in q.items.drain(..).enumerate() {
            match &item {
                Out::Shared(o) if i >= skip && o.msg_id != 0 && &*o.room == room => {
                    if o.msg_id > floor {
                        live.push(item);
                    } else {
                        dropped += o.frame.len();
                    }
                }
                _ => kept.push_back(item),
            }
        }
        let replayed = frames.iter().map(Bytes::len).sum::<usize>();
        q.own_bytes += replayed;
        kept.extend(frames.into_iter().map(Out::Own));
        kept.extend(live);
        q.deliveries = kept.iter().filter(|o| o.is_delivery()).count();
        q.items = kept;
        q.bytes = q.bytes - dropped + replayed;
        if q.bytes > self.limits.bytes {
            return self.overflow(q);
        }
        drop(q);
        if was_empty {
            self.signal();
        }
    }

    pub fn overflowed(&self) -> bool {
        self.queue.lock().overflowed
    }

    /// (1.1) Queues an operator action for the connection's task.
    pub fn command(&self, action: Control) {
        let mut q = self.queue.lock();
        if q.closed {
            return;
        }
        q.commands.get_or_insert_default().push(action);
        drop(q);
        self.signal();
    }

    /// (1.1) The operator actions queued since the last call.
    pub fn take_commands(&self) -> Option<Box<Vec<Control>>> {
        self.queue.lock().commands.take()
    }

    /// Marks the connection gone and frees its queue.
    pub fn close(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        q.items = VecDeque::new();
        q.deliveries = 0;
        q.own_bytes = 0;
        q.bytes = 0;
        q.stalled_since = None;
        q.commands = None;
    }
}

enum ShardCmd {
    Deliver(Vec<Arc<Outgoing>>),
    Join {
        room: Arc<str>,
        conn: Arc<ConnHandle>,
        done: oneshot::Sender<()>,
    },
    Leave {
        room: Arc<str>,
        conn_id: u64,
    },
}

/// Per room, node-wide.
#[derive(Default)]
struct RoomState {
    /// Member connections per shard.
    per_shard: Vec<u32>,
    /// Connections per user, for presence.
    users: HashMap<Arc<str>, u32>,
}

/// What a join or leave changed node-wide.
pub struct Membership {
    /// First local member of the room joined, or the last left.
    pub room_edge: bool,
    /// The user's first connection in the room joined, or its last left.
    pub user_edge: bool,
    /// The user's connections in the room on this node now.
    pub user_connections: u32,
}

const REGISTRY_STRIPES: usize = 16;

pub struct Hub {
    /// (1.1) Every connection, for operator actions.
    pub conns: crate::moderation::Connections,
    shards: Vec<mpsc::UnboundedSender<ShardCmd>>,
    registry: Vec<Mutex<HashMap<Arc<str>, RoomState>>>,
    hasher: std::collections::hash_map::RandomState,
    next_conn: AtomicU64,
    limits: QueueLimits,
}

impl Hub {
    pub fn new(shards: usize, limits: QueueLimits) -> Arc<Hub> {
        let senders = (0..shards)
            .map(|i| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(shard_loop(i, rx));
                tx
            })
            .collect();
        Arc::new(Hub {
            conns: Default::default(),
            shards: senders,
            registry: (0..REGISTRY_STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            next_conn: AtomicU64::new(1),
            limits,
        })
    }

    pub fn new_conn(&self) -> Arc<ConnHandle> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.conns.add(|slot| ConnHandle {
            slot,
            ..ConnHandle::detached(id, self.limits)
        })
    }

    /// The connection ended: it leaves the node's connections.
    pub fn end_conn(&self, conn: &ConnHandle) {
        self.conns.remove(conn);
    }

    fn shard_of(&self, conn_id: u64) -> usize {
        (conn_id % self.shards.len() as u64) as usize
    }

    fn stripe(&self, room: &str) -> &Mutex<HashMap<Arc<str>, RoomState>> {
        &self.registry[(self.hasher.hash_one(room) % REGISTRY_STRIPES as u64) as usize]
    }

    /// Adds the connection to the room. When this returns, every delivery
    /// the shard handles from now on reaches the connection, so a store
    /// read started afterwards misses nothing that is not delivered live.
    pub async fn join(&self, room: &Arc<str>, user: &Arc<str>, conn: &Arc<ConnHandle>) -> Membership {
        let shard = self.shard_of(conn.id);
        let edges = {
            let mut reg = self.stripe(room).lock();
            let state = reg.entry(room.clone()).or_default();
            let room_edge = state.per_shard.iter().all(|&n| n == 0);
            if state.per_shard.is_empty() {
                state.per_shard = vec![0; self.shards.len()];
            }
            state.per_shard[shard] += 1;
            let count = state.users.entry(user.clone()).or_insert(0);
            *count += 1;
            Membership {
                room_edge,
                user_edge: *count == 1,
                user_connections: *count,
            }
        };
        let (done, wait) = oneshot::channel();
        if self.shards[shard]
            .send(ShardCmd::Join {
                room: room.clone(),
                conn: conn.clone(),
                done,
            })
            .is_ok()
        {
            let _ = wait.await;
        }
        edges
    }

    pub fn leave(&self, room: &Arc<str>, user: &Arc<str>, conn_id: u64) -> Membership {
        let shard = self.shard_of(conn_id);
        let _ = self.shards[shard].send(ShardCmd::Leave {
            room: room.clone(),
            conn_id,
        });
        let mut reg = self.stripe(room).lock();
        let Some(state) = reg.get_mut(room) else {
            return Membership {
                room_edge: false,
                user_edge: false,
                user_connections: 0,
            };
        };
        state.per_shard[shard] = state.per_shard[shard].saturating_sub(1);
        let (user_edge, user_connections) = match state.users.get_mut(user) {
            Some(n) if *n <= 1 => {
                state.users.remove(user);
                (true, 0)
            }
            Some(n) => {
                *n -= 1;
                (false, *n)
            }
            None => (false, 0),
        };
        let room_edge = state.per_shard.iter().all(|&n| n == 0);
        if room_edge {
            reg.remove(room);
        }
        Membership {
            room_edge,
            user_edge,
            user_connections,
        }
    }

    /// (1.1) Each user in the room on this node with their connections in
    /// it, sorted.
    pub fn members(&self, room: &str) -> Vec<(Arc<str>, u32)> {
        let reg = self.stripe(room).lock();
        let mut users: Vec<(Arc<str>, u32)> = reg
            .get(room)
            .map(|s| s.users.iter().map(|(u, n)| (u.clone(), *n)).collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    /// Users with a connection in the room on this node, sorted.
    pub fn presence(&self, room: &str) -> Vec<Arc<str>> {
        let reg = self.stripe(room).lock();
        let mut users: Vec<Arc<str>> = reg
            .get(room)
            .map(|s| s.users.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    fn shards_of(&self, room: &str) -> u64 {
        let reg = self.stripe(room).lock();
        reg.get(room)
            .map(|s| {
                s.per_shard
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .fold(0u64, |m, (i, _)| m | 1 << i)
            })
            .unwrap_or(0)
    }
}

/// Queues one encoded delivery for every member (but its origin): the
/// shard's inner loop. Returns how many queues took it.
pub fn fan_out(out: &Arc<Outgoing>, members: &[Arc<ConnHandle>]) -> u64 {
    let mut delivered = 0;
    for conn in members {
        if conn.id != out.skip_conn && conn.push_delivery(out) {
            delivered += 1;
        }
    }
    delivered
}

async fn shard_loop(_index: usize, mut rx: mpsc::UnboundedReceiver<ShardCmd>) {
    let m = crate::metrics::get();
    let mut rooms: HashMap<Arc<str>, Vec<Arc<ConnHandle>>> = HashMap::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            ShardCmd::Deliver(batch) => {
                // The clock deliveries are measured against: read once
                // per batch, never per message (see metrics::delivery).
                crate::metrics::delivery::tick();
                let mut delivered = 0u64;
                for out in &batch {
                    if let Some(members) = rooms.get(&out.room) {
                        delivered += fan_out(out, members);
                    }
                }
                m.deliveries.increment(delivered);
            }
            ShardCmd::Join { room, conn, done } => {
                rooms.entry(room).or_default().push(conn);
                let _ = done.send(());
            }
            ShardCmd::Leave { room, conn_id } => {
                if let Some(members) = rooms.get_mut(&room) {
                    if let Some(pos) = members.iter().position(|c| c.id == conn_id) {
                        members.swap_remove(pos);
                    }
                    if members.is_empty() {
                        rooms.remove(&room);
                    }
                }
            }
        }
    }
}

/// The bus sink of a node: encode once, route to the shards with members.
pub struct Router {
    pub hub: Arc<Hub>,
}

impl Sink for Router {
    fn deliver(&self, batch: Vec<Delivery>) {
        let hub = &self.hub;
        let mut per_shard: Vec<Vec<Arc<Outgoing>>> = (0..hub.shards.len()).map(|_| Vec::new()).collect();
        for d in batch {
            let mask = hub.shards_of(d.room());
            if mask == 0 {
                continue;
            }
            let out = Arc::new(match &d {
                Delivery::Message { msg, .. } => Outgoing {
                    room: Arc::from(msg.room.as_str()),
                    msg_id: msg.id,
                    skip_conn: 0,
                    frame: ws::text_frame(&msg_event(view(msg))),
                },
                Delivery::Event {
                    room,
                    kind,
                    user,
                    origin,
                } => Outgoing {
                    room: room.clone(),
                    msg_id: 0,
                    skip_conn: origin.unwrap_or(0),
                    frame: ws::text_frame(&match kind {
                        // (1.1) `{"op":"read","room":..,"user":..,"msg":"<id>"}`
                        EventKind::Read { msg } => Obj::new("read")
                            .str("room", room)
                            .str("user", user)
                            .msg_id("msg", *msg)
                            .finish(),
                        _ => room_user_event(kind.op(), room, user),
                    }),
                },
            });
            for (i, shard) in per_shard.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    shard.push(out.clone());
                }
            }
        }
        for (i, batch) in per_shard.into_iter().enumerate() {
            if !batch.is_empty() {
                let _ = hub.shards[i].send(ShardCmd::Deliver(batch));
            }
        }
    }

    fn control(&self, action: &Control) {
        self.hub.conns.apply(action);
    }
}
