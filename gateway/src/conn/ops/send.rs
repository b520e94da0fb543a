//! `send` and `typing`. A `send` with a `nonce` (1.1) that repeats one of
//! the dedupe window is answered by the bus with the first message's id
//! and `"duplicate":true` (see `dispatcher::dedupe`).
//!
//! A checked `send` waits in the session's pipeline
//! while more requests of the same read burst are already here; the socket
//! layer asks [`Session::sends_due`] after each frame and publishes them in
//! one batch (`flush_sends`), answered in request order.

use dispatcher::{EventKind, NewMessage};
use protocol::ErrorCode;
use protocol::encode::Obj;
use tokio::time::Instant;

use crate::auth::Identity;
use crate::conn::session::{PendingSend, Session};
use crate::metrics;

/// Sends published in one batch at most.
const MAX_SEND_BATCH: usize = 64;

/// A `send` request's fields.
pub(super) struct SendRequest {
    pub(super) room: String,
    pub(super) body: String,
    pub(super) ephemeral: bool,
    pub(super) nonce: Option<String>,
    pub(super) reply_to: Option<u64>,
}

impl Session {
    /// Checks a send and queues it for the burst's batch.
    pub(super) async fn on_send(&mut self, id: Option<i64>, identity: &Identity, req: SendRequest) {
        let SendRequest {
            room,
            body,
            ephemeral,
            nonce,
            reply_to,
        } = req;
        let joined = self.joined(&room).map(|j| j.room.clone());
        let refusal = match joined {
            None => Some((ErrorCode::Forbidden, format!("join {room} before sending to it"))),
            Some(_) if body.len() > self.settings().max_body_bytes => Some((
                ErrorCode::TooLarge,
                format!(
                    "body is {} bytes; the limit is {}",
                    body.len(),
                    self.settings().max_body_bytes
                ),
            )),
            Some(_) if !self.rate_ok(true) => Some((ErrorCode::RateLimited, "too many messages; slow down".into())),
            Some(room) => {
                let msg = NewMessage {
                    room,
                    from: identity.user.clone(),
                    body,
                    ephemeral,
                    nonce: nonce.map(Into::into),
                    reply_to,
                    change: None,
                    moderator: false,
                };
                self.pending_sends.push(PendingSend { id, msg });
                None
            }
        };
        if let Some((code, message)) = refusal {
            self.flush_sends().await;
            self.error(id, code, &message);
        }
    }

    pub(super) async fn on_typing(&mut self, id: Option<i64>, identity: &Identity, room: String) {
        let Some(joined) = self.joined(&room) else {
            return self.error(id, ErrorCode::Forbidden, &format!("join {room} before typing in it"));
        };
        let room = joined.room.clone();
        if !self.rate_ok(true) {
            return self.error(id, ErrorCode::RateLimited, "too many messages; slow down");
        }
        let origin = Some(self.handle.id);
        if let Err(e) = self
            .node
            .bus
            .publish_event(room, EventKind::Typing, identity.user.clone(), origin)
            .await
        {
            self.unavailable(id, &e);
        }
    }

    /// Whether the sends waiting should be published now, after a frame:
    /// yes once no more requests are already read (`more_read`) or the
    /// batch is full.
    pub(in crate::conn) fn sends_due(&self, more_read: impl FnOnce() -> bool) -> bool {
        !self.pending_sends.is_empty() && (!more_read() || self.pending_sends.len() >= MAX_SEND_BATCH)
    }

    /// Publishes the queued sends in one batch and answers each, in order.
    pub(in crate::conn) async fn flush_sends(&mut self) {
        if self.pending_sends.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending_sends);
        // Its errors are the sends', whatever request is being handled.
        let op = std::mem::replace(&mut self.op, metrics::op_index("send"));
        let started = Instant::now();
        let mut answers = Vec::with_capacity(batch.len());
        let mut msgs = Vec::with_capacity(batch.len());
        for p in batch {
            answers.push((p.id, p.msg.room.clone()));
            msgs.push(p.msg);
        }
        let results = self.node.bus.publish_batch(msgs).await;
        let took = started.elapsed().as_secs_f64();
        for ((id, room), result) in answers.into_iter().zip(results) {
            match result {
                Ok(p) => {
                    metrics::get().send_seconds.record(took);
                    let mut ok = Obj::new("ok")
                        .id(id)
                        .str("room", &room)
                        .msg_id("msg", p.id)
                        .num("ts", p.ts);
                    if p.duplicate {
                        ok = ok.bool("duplicate", true);
                    }
                    self.reply(ok.finish());
                }
                Err(e) => self.unavailable(id, &e),
            }
        }
        self.op = op;
    }
}
