//! `history`: readers ask for the same history page (`--history-room`,
//! `--history-limit`, `--history-before`) again and again for the
//! duration; each answer's round trip is recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{Ws, open};
use crate::shared::Shared;

/// Opens this process's share of the readers (one per `--senders`, at
/// least one), before the clock starts. They join no room.
pub(super) async fn open_readers(shared: &Shared) -> anyhow::Result<Vec<Ws>> {
    let args = &shared.args;
    let mut readers = Vec::new();
    for i in args.share(args.senders.max(1)) {
        let (ws, _) = open(shared, args.connections + i, &[])
            .await
            .context("opening a history reader")?;
        readers.push(ws);
    }
    Ok(readers)
}

/// Every reader pages until the duration is over.
pub(super) async fn run(shared: &Arc<Shared>, readers: Vec<Ws>) {
    let args = &shared.args;
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
