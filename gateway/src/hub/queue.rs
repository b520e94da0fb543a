//! A connection as the rest of the node holds it ([`ConnHandle`]): its
//! bounded outbound queue of ready-to-write WebSocket frames, shared
//! deliveries ([`Outgoing`]) beside the connection's own replies, and the
//! limits that end a connection that does not read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use dispatcher::Control;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

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

    /// The same handle at `slot` of the node's connections.
    pub(super) fn in_slot(self, slot: u32) -> ConnHandle {
        ConnHandle { slot, ..self }
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
    pub(super) fn push_delivery(&self, out: &Arc<Outgoing>) -> bool {
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
