//! The sender role (`fanout`, `reconnect`): one connection that is a
//! member of its rooms and sends to them at its share of `--rate`.
//!
//! Its write half runs [`send_loop`] (paced sends, each remembered in
//! [`Acks`] until answered); its read half runs [`read_loop`]
//! (acknowledgements, and its own deliveries via [`member_frame`]). The two
//! share only the pending-acks map and a channel for ping replies.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::args::Scenario;
use crate::chat::{self, Op};
use crate::conn::{Join, Ws, open};
use crate::member::member_frame;
use crate::proto::{self, msg_id, room_number};
use crate::shared::Shared;
use crate::stats::now_micros;

/// A sender, connected and in its rooms, not sending yet.
pub(crate) struct Sender {
    index: usize,
    ws: Ws,
    rooms: Vec<usize>,
}

impl Sender {
    /// Opens sender `s` in its rooms (every `senders`-th room from its own,
    /// or one room when there are more senders than rooms) and counts it
    /// as a member of each: it is delivered its own messages.
    pub(crate) async fn open(shared: &Shared, s: usize) -> anyhow::Result<Sender> {
        let args = &shared.args;
        let rooms: Vec<usize> = (0..args.rooms)
            .filter(|r| r % args.senders == s % args.rooms.min(args.senders))
            .collect();
        let rooms = if rooms.is_empty() { vec![s % args.rooms] } else { rooms };
        let joins: Vec<Join> = rooms.iter().map(|&r| Join::new(args.room(r))).collect();
        let (ws, _) = open(shared, args.connections + s, &joins)
            .await
            .context("opening a sender")?;
        for &r in &rooms {
            shared.members[r].fetch_add(1, Ordering::Relaxed);
        }
        Ok(Sender { index: s, ws, rooms })
    }

    /// Starts its read half and its sends (`rate` a second until `until`);
    /// returns the reader's task and the sending task.
    pub(crate) fn start(self, shared: &Arc<Shared>, rate: f64, until: Instant) -> (JoinHandle<()>, JoinHandle<()>) {
        let (tx, rx) = self.ws.split();
        let acks: Acks = Arc::default();
        let targets: Targets = Arc::default();
        let (pong_tx, pong_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(shared.clone(), rx, acks.clone(), targets.clone(), pong_tx));
        let schedule = Schedule {
            sender: self.index,
            rooms: self.rooms,
            rate,
            until,
        };
        let sending = tokio::spawn(send_loop(shared.clone(), tx, schedule, acks, targets, pong_rx));
        (reader, sending)
    }
}

/// Pending requests of one sender: request id -> (sent at, room number,
/// what it was).
type Acks = Arc<Mutex<HashMap<u64, (Instant, usize, Op)>>>;

/// chat: the sender's last acknowledged message in each room (what its
/// edits, reactions and read markers are on).
type Targets = Arc<Mutex<HashMap<usize, u64>>>;

/// Reads a sender's frames until it closes: acknowledgements, and the
/// deliveries it gets as a member of its rooms.
async fn read_loop(
    shared: Arc<Shared>,
    mut rx: SplitStream<Ws>,
    acks: Acks,
    targets: Targets,
    pongs: mpsc::UnboundedSender<&'static str>,
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
                            if let Some((at, room, op)) = sent {
                                let took = at.elapsed();
                                let took_us = took.as_micros() as u64;
                                match op.index() {
                                    None => {
                                        shared.ack.record(took);
                                        shared
                                            .samples
                                            .record('a', now_micros().saturating_sub(took_us), took_us);
                                    }
                                    Some(i) => shared.op_acks[i].record(took),
                                }
                                // A stored entry every member gets: every
                                // send; another op when answered with an
                                // id (not when it changed nothing, nor a
                                // read marker).
                                let entry = msg_id(f);
                                if let (Op::Send, Some(entry)) = (op, entry) {
                                    targets.lock().insert(room, entry);
                                }
                                if op == Op::Send || entry.is_some() {
                                    c.acked.fetch_add(1, Ordering::Relaxed);
                                    shared.acked_by_room[room].fetch_add(1, Ordering::Relaxed);
                                } else {
                                    c.unstored.fetch_add(1, Ordering::Relaxed);
                                }
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

/// What one sender sends: to `rooms` in turn, `rate` messages a second,
/// until `until`; `sender` goes into each body.
struct Schedule {
    sender: usize,
    rooms: Vec<usize>,
    rate: f64,
    until: Instant,
}

/// Sends on `schedule`; also writes the ping replies the read half asks
/// for (the write half is this task's alone).
async fn send_loop(
    shared: Arc<Shared>,
    mut tx: SplitSink<Ws, Message>,
    schedule: Schedule,
    acks: Acks,
    targets: Targets,
    mut pongs: mpsc::UnboundedReceiver<&'static str>,
) {
    let Schedule {
        sender,
        rooms,
        rate,
        until,
    } = schedule;
    let c = &shared.counters;
    let proto = shared.args.protocol;
    let pad = "x".repeat(shared.args.body_bytes);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut reactions = 0u64;
    let chat = shared.args.scenario == Scenario::Chat;
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
            // chat: an edit, reaction or read marker on the sender's last
            // message in the room, once it has one.
            let op = if chat { chat::pick(&shared.args, sent) } else { Op::Send };
            let target = targets.lock().get(&room).copied();
            let (op, frame) = match (op, target) {
                (Op::Send, _) | (_, None) => (Op::Send, proto.send(id, &shared.args.room(room), &body)),
                (op, Some(target)) => {
                    if op == Op::React {
                        reactions += 1;
                    }
                    let f = chat::frame(op, id, &shared.args.room(room), target, reactions, &body);
                    (op, f)
                }
            };
            acks.lock().insert(id, (Instant::now(), room, op));
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
