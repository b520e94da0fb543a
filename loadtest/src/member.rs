//! The member role: one connection in one room that counts what it is
//! delivered (latency, duplicates), and in the `reconnect` scenario drops
//! its connection on the storm signal and resumes with `since`.
//!
//! [`member_frame`] is the per-delivery accounting, shared with the senders'
//! read halves (a sender is a member of the rooms it sends to). It runs for
//! every frame received: no allocation and no lock on a delivery.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{Join, Ws, open};
use crate::proto::{self, Protocol, msg_id, number_after};
use crate::shared::Shared;
use crate::stats::now_micros;

/// Why a member's read loop ended.
enum Next {
    /// The storm signal: drop this connection and resume on a new one.
    Resume,
    /// The connection ended, or the run is over.
    Stop,
}

/// A member: joins `room`, says on `joined` whether it got in, counts
/// what it is delivered, and on each storm signal drops its connection and
/// resumes with `since` = the last id it saw.
pub(crate) async fn member(
    shared: std::sync::Arc<Shared>,
    index: usize,
    room: usize,
    mut storm: watch::Receiver<u32>,
    joined: oneshot::Sender<bool>,
) {
    let mut last: Option<u64> = None;
    let mut joined = Some(joined);
    let mut attempt = 0;
    loop {
        // Each reconnect goes to the next URL: resuming on another node.
        let Some(ws) = connect(&shared, index + attempt, room, &mut joined, &mut last).await else {
            return;
        };
        match read(&shared, ws, &mut storm, &mut last).await {
            Next::Resume => attempt += 1,
            Next::Stop => return,
        }
    }
}

/// Opens the member's connection: the first time plainly, reporting the
/// outcome on `joined`; after that resuming after `last`, counted as a
/// reconnect. The frames that came with the joins are accounted here.
async fn connect(
    shared: &Shared,
    index: usize,
    room: usize,
    joined: &mut Option<oneshot::Sender<bool>>,
    last: &mut Option<u64>,
) -> Option<Ws> {
    let c = &shared.counters;
    let reconnect_started = Instant::now();
    let join = Join {
        room: shared.args.room(room),
        since: if joined.is_some() { None } else { *last },
    };
    let (ws, early) = match open(shared, index, &[join]).await {
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
            return None;
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
        member_frame(shared, frame.as_bytes(), last);
    }
    Some(ws)
}

/// Reads the member's frames until the connection ends or the storm
/// signal comes (the connection is then dropped, not closed).
async fn read(shared: &Shared, ws: Ws, storm: &mut watch::Receiver<u32>, last: &mut Option<u64>) -> Next {
    let (mut tx, mut rx) = ws.split();
    loop {
        tokio::select! {
            frame = rx.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    for f in shared.args.protocol.split(t.as_bytes()) {
                        if let Some(pong) = member_frame(shared, f, last) {
                            let _ = tx.send(Message::Text(pong.into())).await;
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code).to_string()).unwrap_or_else(|| "none".into());
                    *shared.closes.lock().entry(code).or_default() += 1;
                    return Next::Stop;
                }
                Some(Ok(_)) => {}
                _ => {
                    *shared.closes.lock().entry("dropped".into()).or_default() += 1;
                    return Next::Stop;
                }
            },
            changed = storm.changed() => {
                return if changed.is_err() { Next::Stop } else { Next::Resume };
            }
        }
    }
}

/// Accounts one received frame of a member; returns the reply an
/// application-level ping needs.
pub(crate) fn member_frame(shared: &Shared, b: &[u8], last: &mut Option<u64>) -> Option<&'static str> {
    let c = &shared.counters;
    let proto = shared.args.protocol;
    match proto.classify(b) {
        proto::Frame::Delivery => {
            c.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = number_after(b, proto.time_marker()) {
                let took_us = now_micros().saturating_sub(sent);
                shared.delivery.record(Duration::from_micros(took_us));
                shared.samples.record('d', sent, took_us);
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
