//! Room membership: `join` (with the `since` replay), `leave`, and
//! `leave_all` when the connection ends. A user's first connection in a
//! room and its last one record presence and publish `joined`/`left`.

use std::sync::Arc;

use bytes::Bytes;
use dispatcher::feed::FeedEvent;
use dispatcher::{BusError, EventKind};
use protocol::ErrorCode;
use protocol::encode::{Obj, msg_event};

use crate::Node;
use crate::auth::Identity;
use crate::conn::session::{Joined, Session};
use crate::view::view;
use crate::ws;

impl Session {
    pub(super) async fn on_join(&mut self, id: Option<i64>, identity: &Identity, room: String, since: Option<u64>) {
        if !identity.may_join(&room) {
            return self.error(id, ErrorCode::Forbidden, &format!("not allowed to join room {room}"));
        }
        // Ids are time-based: one from the future was never sent, and as a
        // floor it would hide every live message.
        if since.is_some_and(|s| protocol::id::millis(s) > protocol::id::now_ms() + 60_000) {
            return self.error(id, ErrorCode::BadRequest, "\"since\" is not an id this server sent");
        }
        if self.joined(&room).is_some() {
            return self.reply(
                Obj::new("ok")
                    .id(id)
                    .str("room", &room)
                    .bool("recovered", true)
                    .finish(),
            );
        }
        // (1.1) A ban holds on every node, and across their restarts.
        match self.node.bus.ban(&room, &identity.user).await {
            Ok(Some(until)) => {
                return self.error(
                    id,
                    ErrorCode::Forbidden,
                    &format!("banned from room {room} until {until} (Unix ms)"),
                );
            }
            Ok(None) => {}
            Err(e) => return self.unavailable(id, &e),
        }
        let max = self.settings().max_rooms_per_connection;
        if self.rooms.len() >= max {
            return self.error(
                id,
                ErrorCode::Forbidden,
                &format!("already in {max} rooms, the most one connection may join"),
            );
        }
        let room: Arc<str> = room.into();
        // Membership and bus interest first, then the replay read: whatever
        // the read misses is delivered live (see hub::Hub::join, Bus::watch).
        let edges = self.node.hub.join(&room, &identity.user, &self.handle).await;
        if let Err(e) = self.node.bus.watch(&room).await {
            self.node.hub.leave(&room, &identity.user, self.handle.id);
            return self.unavailable(id, &e);
        }
        self.rooms.push(Joined {
            room: room.clone(),
            floor: 0,
        });
        let (floor, recovered, mut frames) = match since {
            None => (0, true, Vec::new()),
            Some(since) => {
                let (limit, cap) = (self.settings().recovery_limit, self.handle.byte_budget() / 2);
                let m = crate::metrics::get();
                match replay_frames(&self.node, &room, since, limit, cap).await {
                    Ok(Some((floor, frames))) => {
                        m.replays_recovered.increment(1);
                        m.replayed_messages.increment(frames.len() as u64);
                        (floor, true, frames)
                    }
                    // Too many, too large, or a gap the bus cannot close:
                    // one to page with `history`.
                    Ok(None) => {
                        m.replays_unrecovered.increment(1);
                        (since, false, Vec::new())
                    }
                    Err(e) => {
                        self.leave(&room).await;
                        return self.unavailable(id, &e);
                    }
                }
            }
        };
        if let Some(j) = self.rooms.iter_mut().find(|j| j.room == room) {
            j.floor = floor;
        }
        let mut ok = Obj::new("ok").id(id).str("room", &room).bool("recovered", recovered);
        // (1.1) The user's read marker; a join does not fail for it.
        match self.node.bus.read_marker(&room, &identity.user).await {
            Ok(Some(read)) => ok = ok.msg_id("read", read),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "read marker not read"),
        }
        frames.push(ws::text_frame(&ok.finish()));
        self.handle.splice_replay(&room, floor, frames);
        self.node.bus.feed(FeedEvent::Join {
            room: room.clone(),
            user: identity.user.clone(),
            conn: self.handle.id,
        });
        // Every join counts (room info counts connections); the first of
        // the user's also tells the room.
        if let Err(e) = self
            .node
            .bus
            .presence_changed(&room, &identity.user, edges.user_connections)
            .await
        {
            tracing::warn!(error = %e, "presence not recorded");
        }
        if edges.user_edge {
            let _ = self
                .node
                .bus
                .publish_event(room, EventKind::Joined, identity.user.clone(), None)
                .await;
        }
    }

    pub(super) async fn on_leave(&mut self, id: Option<i64>, room: String) {
        if self.joined(&room).is_none() {
            self.error(id, ErrorCode::NotFound, &format!("not in room {room}"));
        } else {
            self.leave(&room).await;
            self.reply(Obj::new("ok").id(id).str("room", &room).finish());
        }
    }

    /// Leaves one room: membership, interest, and a `left` event when this
    /// was the user's last connection in it.
    pub(super) async fn leave(&mut self, room: &str) {
        let Some(pos) = self.rooms.iter().position(|j| &*j.room == room) else {
            return;
        };
        let joined = self.rooms.swap_remove(pos);
        let Some(identity) = &self.identity else { return };
        let edges = self.node.hub.leave(&joined.room, &identity.user, self.handle.id);
        self.node.bus.unwatch(&joined.room);
        self.node.bus.feed(FeedEvent::Leave {
            room: joined.room.clone(),
            user: identity.user.clone(),
            conn: self.handle.id,
        });
        if let Err(e) = self
            .node
            .bus
            .presence_changed(&joined.room, &identity.user, edges.user_connections)
            .await
        {
            tracing::warn!(error = %e, "presence end not recorded");
        }
        if edges.user_edge {
            let _ = self
                .node
                .bus
                .publish_event(joined.room, EventKind::Left, identity.user.clone(), None)
                .await;
        }
    }

    /// Leaves every room; the connection has ended.
    pub(in crate::conn) async fn leave_all(&mut self) {
        while let Some(j) = self.rooms.last() {
            let room = j.room.clone();
            self.leave(&room).await;
        }
    }
}

/// Messages a replay reads from the bus at a time: a replay refused for
/// its size never sits in memory whole.
const REPLAY_CHUNK: usize = 64;

/// The messages of `room` after `since` as `msg` frames, read in chunks,
/// with the id of the last one (or `since`); `None` when there are more
/// than `limit`, they are over `cap` bytes, or the bus cannot close the gap.
async fn replay_frames(
    node: &Node,
    room: &str,
    since: u64,
    limit: usize,
    cap: usize,
) -> Result<Option<(u64, Vec<Bytes>)>, BusError> {
    let (mut frames, mut bytes, mut cursor) = (Vec::new(), 0, since);
    loop {
        let replay = {
            let _turn = node.heavy_reads.acquire().await;
            node.bus.replay(room, cursor, REPLAY_CHUNK).await?
        };
        if !replay.complete && replay.messages.is_empty() {
            return Ok(None);
        }
        for m in &replay.messages {
            let frame = ws::text_frame(&msg_event(view(m)));
            bytes += frame.len();
            frames.push(frame);
            cursor = cursor.max(m.id);
        }
        if frames.len() > limit || bytes > cap {
            return Ok(None);
        }
        if replay.complete {
            return Ok(Some((cursor, frames)));
        }
    }
}
