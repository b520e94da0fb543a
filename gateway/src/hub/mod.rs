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
//!
//! The connection's side (its handle and queue) is in `queue`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dispatcher::{Control, Delivery, EventKind, Sink};
use parking_lot::Mutex;
use protocol::encode::{Obj, msg_event, room_user_event};
use tokio::sync::{mpsc, oneshot};

use crate::view::view;
use crate::ws;

mod queue;
pub use queue::*;

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
    /// Answered once everything sent to the shard before it is handled.
    Barrier(oneshot::Sender<()>),
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

    /// Returns once every delivery handed to the hub before the call is in
    /// its connections' queues (the drain closes connections after this,
    /// so a message acknowledged before it reaches the node's members).
    pub async fn flush(&self) {
        let waits: Vec<oneshot::Receiver<()>> = self
            .shards
            .iter()
            .filter_map(|shard| {
                let (done, wait) = oneshot::channel();
                shard.send(ShardCmd::Barrier(done)).ok().map(|_| wait)
            })
            .collect();
        for wait in waits {
            let _ = wait.await;
        }
    }

    pub fn new_conn(&self) -> Arc<ConnHandle> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.conns
            .add(|slot| ConnHandle::detached(id, self.limits).in_slot(slot))
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
            ShardCmd::Barrier(done) => {
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
