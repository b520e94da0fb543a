//! (1.1) Events on earlier messages and read markers: `edit`, `delete`,
//! `react`, `unreact` ([`Session::on_change`]), `read` and `receipts`.
//!
//! An event is published like a message (the bus judges it against its
//! target, see `dispatcher::changes`, gives it an id in the room's order and
//! delivers it as its own event); it is charged to the send bucket. `read`
//! moves the user's marker in the store; `receipts` lists the room's.

use dispatcher::{BusError, Change, ChangeKind, EventKind, NewMessage, Refusal};
use protocol::ErrorCode;
use protocol::encode::{Obj, id_map};

use crate::auth::Identity;
use crate::conn::session::Session;

/// Most read markers `receipts` returns.
const MAX_RECEIPTS: usize = 1000;

impl Session {
    pub(super) async fn on_change(
        &mut self,
        id: Option<i64>,
        identity: &Identity,
        room: String,
        change: Change,
        body: Option<String>,
    ) {
        let op = change.kind.op();
        let Some(joined) = self.joined(&room) else {
            return self.error(id, ErrorCode::Forbidden, &format!("join {room} before you {op} in it"));
        };
        let room = joined.room.clone();
        let body = body.unwrap_or_default();
        let max = self.settings().max_body_bytes;
        if body.len() > max {
            return self.error(
                id,
                ErrorCode::TooLarge,
                &format!("body is {} bytes; the limit is {max}", body.len()),
            );
        }
        if !self.rate_ok(true) {
            return self.error(id, ErrorCode::RateLimited, "too many messages; slow down");
        }
        let moderator = change.kind == ChangeKind::Delete && identity.moderates(&room);
        let msg = NewMessage {
            body,
            change: Some(change),
            moderator,
            ..NewMessage::new(room.clone(), identity.user.clone(), String::new())
        };
        match self.node.bus.publish(msg).await {
            Ok(p) => self.reply(
                Obj::new("ok")
                    .id(id)
                    .str("room", &room)
                    .msg_id("msg", p.id)
                    .num("ts", p.ts)
                    .finish(),
            ),
            // Nothing new (a reaction held already): `ok` without an id.
            Err(BusError::Refused(Refusal::Unchanged)) => self.reply(Obj::new("ok").id(id).str("room", &room).finish()),
            Err(BusError::Refused(Refusal::NotFound)) => self.error(
                id,
                ErrorCode::NotFound,
                "no such message in this room (or it was deleted)",
            ),
            Err(BusError::Refused(Refusal::NotAllowed)) => self.error(
                id,
                ErrorCode::Forbidden,
                if op == "delete" {
                    "only the author or a moderator of the room may delete a message"
                } else {
                    "only the author may edit a message"
                },
            ),
            Err(BusError::Refused(Refusal::TooManyKeys)) => self.error(
                id,
                ErrorCode::Forbidden,
                &format!(
                    "a message has at most {} distinct reaction keys",
                    protocol::event::MAX_REACTION_KEYS
                ),
            ),
            Err(e) => self.unavailable(id, &e),
        }
    }

    pub(super) async fn on_read(&mut self, id: Option<i64>, identity: &Identity, room: String, msg: u64) {
        let Some(joined) = self.joined(&room) else {
            return self.error(id, ErrorCode::Forbidden, &format!("join {room} before marking it read"));
        };
        let room = joined.room.clone();
        // A marker from the future was never sent: it would hide every
        // message to come.
        if protocol::id::millis(msg) > protocol::id::now_ms() + 60_000 {
            return self.error(id, ErrorCode::BadRequest, "\"msg\" is not an id this server sent");
        }
        match self.node.bus.mark_read(&room, &identity.user, msg).await {
            Ok(moved) => {
                self.reply(Obj::new("ok").id(id).str("room", &room).finish());
                let now = tokio::time::Instant::now();
                if moved && let Some(msg) = self.node.read_events.offer(&room, &identity.user, msg, now) {
                    let read = EventKind::Read { msg };
                    if let Err(e) = self
                        .node
                        .bus
                        .publish_event(room, read, identity.user.clone(), None)
                        .await
                    {
                        tracing::debug!(error = %e, "read event not published");
                    }
                }
            }
            Err(e) => self.unavailable(id, &e),
        }
    }

    pub(super) async fn on_receipts(&mut self, id: Option<i64>, room: String) {
        if self.joined(&room).is_none() {
            return self.error(
                id,
                ErrorCode::Forbidden,
                &format!("join {room} before asking for its receipts"),
            );
        }
        let markers = match self.node.bus.read_markers(&room, MAX_RECEIPTS).await {
            Ok(m) => m,
            Err(e) => return self.unavailable(id, &e),
        };
        let read = id_map(markers.iter().map(|(user, msg)| (user.as_str(), *msg)));
        self.reply(
            Obj::new("receipts")
                .id(id)
                .str("room", &room)
                .raw("read", &read)
                .finish(),
        );
    }
}
