//! The connection's ops: one file per op family, each an `impl Session`
//! block with that family's handlers (and any state of its own), and here
//! the table that routes a parsed request to its handler.
//!
//! - `auth` and `refresh` in [`auth`].
//! - `join` (with the `since` replay) and `leave` in [`rooms`], with
//!   leaving every room when the connection ends.
//! - `send` (checked, then published in pipelined batches) and `typing` in
//!   [`send`].
//! - `history` in [`history`], `presence` in [`presence`].
//! - (1.1) `edit`, `delete`, `react`, `unreact`, `read` and `receipts` in
//!   [`events`].
//! - (1.1) Operator actions (kick, disconnect, revoke) in [`control`], with
//!   the revocation check of `auth` and `refresh`.
//!
//! A new op: its request in the `protocol` crate's parser, its arm in
//! [`Session::dispatch`] (and in the rate class there if it is costly), its
//! handler in the family's file (or a new file here), and its tests.

mod auth;
mod control;
mod events;
mod history;
mod presence;
mod rooms;
mod send;

use dispatcher::BusError;
use protocol::encode::Obj;
use protocol::{ErrorCode, Request};

use self::send::SendRequest;
use super::session::Session;

impl Session {
    /// A request the bus could not serve: `unavailable` with fixed text.
    /// The bus's own words (Redis commands, pipes, hosts) are only logged;
    /// the bus logs the outage itself at warn.
    fn unavailable(&self, id: Option<i64>, e: &BusError) {
        tracing::debug!(error = %e, "request failed on the bus");
        match e {
            BusError::Unsupported(what) => self.error(
                id,
                ErrorCode::Unavailable,
                &format!("{what}: not available on this gateway's configuration yet"),
            ),
            _ => self.error(id, ErrorCode::Unavailable, "service unavailable, retry"),
        }
    }
}

impl Session {
    /// Routes one parsed request (its op's `metrics::op_index` is `op`) to
    /// its handler: the authentication gate, the request rate, then the op.
    pub(super) async fn dispatch(&mut self, op: u8, id: Option<i64>, req: Request) {
        // Replies go out in request order: earlier sends are answered first.
        if !matches!(req, Request::Send { .. }) {
            self.flush_sends().await;
        }
        self.op = op;
        let Some(identity) = self.identity.clone() else {
            match req {
                Request::Auth { token } => self.on_auth(id, token.as_deref()).await,
                _ => self.error(id, ErrorCode::Unauthorized, "authenticate first with {\"op\":\"auth\"}"),
            }
            return;
        };
        // `send` and `typing` are charged to the send bucket by their
        // handlers, once the room is checked.
        let costly = matches!(
            req,
            Request::Join { .. }
                | Request::Leave { .. }
                | Request::History { .. }
                | Request::Presence { .. }
                | Request::Read { .. }
                | Request::Receipts { .. }
        );
        if costly && !self.rate_ok(false) {
            return self.error(id, ErrorCode::RateLimited, "too many requests; slow down");
        }
        match req {
            Request::Auth { .. } => self.error(id, ErrorCode::BadRequest, "already authenticated"),
            Request::Refresh { token } => self.on_refresh(id, &identity, &token).await,
            Request::Join { room, since } => self.on_join(id, &identity, room, since).await,
            Request::Leave { room } => self.on_leave(id, room).await,
            Request::Send {
                room,
                body,
                ephemeral,
                nonce,
                reply_to,
            } => {
                let req = SendRequest {
                    room,
                    body,
                    ephemeral,
                    nonce,
                    reply_to,
                };
                self.on_send(id, &identity, req).await
            }
            Request::History { room, page, limit } => self.on_history(id, &identity, room, page, limit).await,
            Request::Presence { room } => self.on_presence(id, &identity, room).await,
            Request::Typing { room } => self.on_typing(id, &identity, room).await,
            // Stateless: answered here.
            Request::Ping => self.reply(Obj::new("pong").id(id).finish()),
            Request::Change { room, change, body } => self.on_change(id, &identity, room, change, body).await,
            Request::Read { room, msg } => self.on_read(id, &identity, room, msg).await,
            Request::Receipts { room } => self.on_receipts(id, room).await,
        }
    }
}
