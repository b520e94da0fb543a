//! The connection's state: [`Session`] holds its identity, rooms, timers,
//! rate buckets, bad-frame count and the sends waiting to be published,
//! and answers with replies and errors queued on the connection's
//! [`ConnHandle`]. It never sees the socket, and imports neither the frame
//! handling ([`super::frames`]) nor the ops ([`super::ops`]): both extend it
//! (`impl Session` blocks) and build on what it offers:
//! - to the socket layer ([`super::socket`]): `on_timer` and
//!   `next_deadline`, `wants` (whether a queued delivery still goes out),
//!   the decided end (`take_end`, `ending`), `handle`, `node`, `settings`,
//!   `auth_deadline`;
//! - to frames and ops: `reply`, `error`, `bad_frame`, `rate_ok`, `joined`,
//!   `admit_user` (the per-user cap, before an identity is taken), and the
//!   `pub(super)` fields.

use std::sync::Arc;
use std::time::Duration;

use dispatcher::NewMessage;
use dispatcher::feed::FeedEvent;
use protocol::encode::error_reply;
use protocol::{ErrorCode, close};
use tokio::time::Instant;

use super::end::End;
use crate::Node;
use crate::admission::UserSlot;
use crate::auth::Identity;
use crate::config::Config;
use crate::hub::{ConnHandle, Out};
use crate::{metrics, ws};

/// A pause in refusals this long ends a client's run over the rate.
const RATE_QUIET: Duration = Duration::from_secs(1);

/// After a refusal for rate, the connection's further requests wait this
/// long before they are read and handled (TCP pushes back meanwhile), so a
/// flood costs the node a few refusals a second, not one per frame sent.
/// Shorter than [`RATE_QUIET`]: a client that keeps flooding stays in its
/// run and is closed 4029 after the grace.
pub(super) const REFUSED_PAUSE: Duration = Duration::from_millis(250);

/// Window over which bad frames are counted.
const BAD_FRAME_WINDOW: Duration = Duration::from_secs(60);

/// A token bucket: `rate` per second, up to `burst`.
struct Bucket {
    tokens: f64,
    refilled: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: f64, burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            refilled: now,
            rate,
            burst: f64::from(burst),
        }
    }

    /// Takes a token if at least `floor` are there; a refused request
    /// costs one too, when there is one.
    fn take_above(&mut self, now: Instant, floor: f64) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate).min(self.burst);
        self.refilled = now;
        let ok = self.tokens >= floor.max(1.0);
        if ok || self.tokens >= 1.0 {
            self.tokens -= 1.0;
        }
        ok
    }
}

/// A `send` checked and waiting to be published with the others of its
/// read burst (see `ops::send`).
pub(super) struct PendingSend {
    pub(super) id: Option<i64>,
    pub(super) msg: NewMessage,
}

/// A room this connection is in.
pub(super) struct Joined {
    pub(super) room: Arc<str>,
    /// Stored messages at or below this id were already sent (replay).
    pub(super) floor: u64,
}

pub(super) struct Session {
    pub(super) node: Arc<Node>,
    pub(super) handle: Arc<ConnHandle>,
    pub(super) identity: Option<Identity>,
    pub(super) rooms: Vec<Joined>,
    auth_deadline: Instant,
    pub(super) last_rx: Instant,
    last_ping: Instant,
    /// A fragmented text message being reassembled.
    pub(super) fragments: Option<Vec<u8>>,
    bad_frames: u32,
    bad_window: Instant,
    /// `send` and `typing`.
    send_bucket: Bucket,
    /// `join`, `leave`, `history`, `presence`.
    request_bucket: Bucket,
    /// The first and the latest refusal of the current run of refusals.
    limited: Option<(Instant, Instant)>,
    /// Sends of this burst not yet published (one pipeline for them all).
    pub(super) pending_sends: Vec<PendingSend>,
    /// Set by a handler; the socket layer carries it out.
    pub(super) end: Option<End>,
    /// This connection's place in its user's count, once authenticated.
    user_slot: Option<UserSlot>,
    /// The op being handled (`metrics::op_index`): the `op` label of the
    /// error replies it causes.
    pub(super) op: u8,
}

impl Session {
    /// A new connection's session, registered with the hub.
    pub(super) fn new(node: Arc<Node>) -> Session {
        let handle = node.hub.new_conn();
        let now = Instant::now();
        Session {
            auth_deadline: now + node.settings.config.auth_timeout,
            last_rx: now,
            last_ping: now,
            fragments: None,
            bad_frames: 0,
            bad_window: now,
            send_bucket: Bucket::new(node.settings.config.send_rate, node.settings.config.send_burst, now),
            request_bucket: Bucket::new(
                node.settings.config.request_rate,
                node.settings.config.request_burst,
                now,
            ),
            limited: None,
            pending_sends: Vec::new(),
            identity: None,
            rooms: Vec::new(),
            end: None,
            user_slot: None,
            // A header token is checked before any request: its errors are auth's.
            op: metrics::op_index("auth"),
            node,
            handle,
        }
    }

    /// Takes a place in `identity`'s user count before the connection
    /// becomes that user's (a later token op for the same user keeps its
    /// place). Over the per-user cap: `rate_limited` (echoing `id`), close
    /// 4029 (back off), and `false`.
    pub(super) async fn admit_user(&mut self, id: Option<i64>, identity: &Identity) -> bool {
        if self.user_slot.as_ref().is_some_and(|s| s.is_for(&identity.user)) {
            return true;
        }
        match self.node.admission.admit_user(&identity.user).await {
            Ok(slot) => {
                self.user_slot = slot;
                true
            }
            Err(refusal) => {
                metrics::connection_refused(refusal.reason());
                self.error(id, ErrorCode::RateLimited, refusal.message());
                self.end = Some(End::Close(close::RATE_LIMITED, refusal.message()));
                false
            }
        }
    }

    pub(super) fn node(&self) -> &Node {
        &self.node
    }

    pub(super) fn settings(&self) -> &Config {
        &self.node.settings.config
    }

    /// The connection's outbound queue and wake-up signal.
    pub(super) fn handle(&self) -> &ConnHandle {
        &self.handle
    }

    /// The end a handler decided, if any; taken once.
    pub(super) fn take_end(&mut self) -> Option<End> {
        self.end.take()
    }

    pub(super) fn ending(&self) -> bool {
        self.end.is_some()
    }

    /// Until when requests wait after a refusal for rate (see
    /// [`REFUSED_PAUSE`]); `None` when not paused.
    pub(super) fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.limited
            .map(|(_, latest)| latest + REFUSED_PAUSE)
            .filter(|&until| until > now)
    }

    /// The connection becomes `identity`'s. A token's expiry (plus the
    /// grace) becomes the connection's deadline: the same field that held
    /// the authentication deadline, so no timer is added.
    pub(super) fn set_identity(&mut self, identity: Identity) {
        if let Some(secs) = identity.expires_in() {
            self.auth_deadline = Instant::now() + Duration::from_secs(secs) + self.settings().token_expiry_grace;
        }
        if self.identity.is_none() {
            // Operator actions find the connection by its user from now on.
            self.handle.queue.lock().user = Some(identity.user.clone());
            self.node.bus.feed(FeedEvent::Connect {
                user: identity.user.clone(),
                conn: self.handle.id,
            });
        }
        self.identity = Some(identity);
    }

    /// The connection ended (after leaving its rooms): operator actions
    /// no longer look for it, and the feed hears of it.
    pub(super) fn forget_identity(&self) {
        self.node.hub.end_conn(&self.handle);
        if let Some(identity) = &self.identity {
            self.node.bus.feed(FeedEvent::Disconnect {
                user: identity.user.clone(),
                conn: self.handle.id,
            });
        }
    }

    /// When the connection must have authenticated, or (authenticated with
    /// a token) refreshed it; `None` for a guest.
    pub(super) fn auth_deadline(&self) -> Option<Instant> {
        match &self.identity {
            None => Some(self.auth_deadline),
            Some(i) if i.expires_at != 0 => Some(self.auth_deadline),
            Some(_) => None,
        }
    }

    /// The next time [`Session::on_timer`] has something to do.
    pub(super) fn next_deadline(&self) -> Instant {
        let interval = self.settings().ping_interval;
        let mut deadline = (self.last_rx.max(self.last_ping) + interval).min(self.last_rx + interval * 2);
        if let Some(auth) = self.auth_deadline() {
            deadline = deadline.min(auth);
        }
        deadline
    }

    /// Pings a quiet client; ends a silent or unauthenticated one.
    pub(super) fn on_timer(&mut self) -> Option<End> {
        let now = Instant::now();
        let interval = self.settings().ping_interval;
        if self.auth_deadline().is_some_and(|d| now >= d) {
            if self.identity.is_none() {
                metrics::auth_failed("timeout");
                return Some(End::Close(close::UNAUTHORIZED, "authentication timeout"));
            }
            // The token's lifetime is over without a refresh.
            metrics::auth_failed("expired");
            self.error(None, ErrorCode::Unauthorized, "token expired");
            return Some(End::Close(close::UNAUTHORIZED, "token expired"));
        }
        if now >= self.last_rx + interval * 2 {
            return Some(End::Drop("silent for two ping intervals"));
        }
        if now >= self.last_rx.max(self.last_ping) + interval {
            self.last_ping = now;
            self.handle.push_own(ws::ping_frame());
        }
        None
    }

    /// Whether a queued item should still be written.
    pub(super) fn wants(&self, item: &Out) -> bool {
        match item {
            Out::Own(_) => true,
            // Messages at or below the floor were replayed (or, ephemeral,
            // would now arrive out of order); events always go.
            Out::Shared(o) => match self.joined(&o.room) {
                Some(j) => o.msg_id == 0 || o.msg_id > j.floor,
                None => false,
            },
        }
    }

    pub(super) fn joined(&self, room: &str) -> Option<&Joined> {
        self.rooms.iter().find(|j| &*j.room == room)
    }

    pub(super) fn reply(&self, json: Vec<u8>) {
        self.handle.push_own(ws::text_frame(&json));
    }

    pub(super) fn error(&self, id: Option<i64>, code: ErrorCode, message: &str) {
        metrics::error_reply(self.op, code);
        self.reply(error_reply(id, code, message));
    }

    /// Counts a malformed or invalid frame; too many in a window closes 1008.
    pub(super) fn bad_frame(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.bad_window) > BAD_FRAME_WINDOW {
            self.bad_window = now;
            self.bad_frames = 0;
        }
        self.bad_frames += 1;
        if self.bad_frames > self.settings().max_bad_frames {
            self.end = Some(End::Close(close::POLICY_VIOLATION, "too many bad frames"));
        }
    }

    /// Charges one request to `send` (`send`/`typing`) or the request
    /// bucket (and a `send` to its user's rate). A client that stays over a
    /// rate for the grace period is closed with 4029.
    pub(super) fn rate_ok(&mut self, send: bool) -> bool {
        let now = Instant::now();
        let bucket = if send {
            &mut self.send_bucket
        } else {
            &mut self.request_bucket
        };
        // A message is charged to its user's rate too (over all their
        // connections, when that limit is on).
        let user_ok = || !send || self.user_slot.as_ref().is_none_or(|s| s.send_ok());
        // Within a run of refusals a request passes only while half the
        // burst is there (and a refused one costs a token): a flood, whose
        // backlog is read after each pause, gets fewer through than its
        // rate, while a client that slowed down is served again as soon as
        // half its burst came back (and its run ends after a quiet second).
        let in_run = self
            .limited
            .is_some_and(|(_, latest)| now.duration_since(latest) < RATE_QUIET);
        let floor = if in_run { bucket.burst / 2.0 } else { 1.0 };
        let conn_ok = bucket.take_above(now, floor);
        if conn_ok && user_ok() {
            return true;
        }
        let m = metrics::get();
        match (conn_ok, send) {
            (true, _) => m.rate_limited_user.increment(1),
            (false, true) => m.rate_limited_send.increment(1),
            (false, false) => m.rate_limited_request.increment(1),
        }
        // A run of refusals lasts while they come less than a quiet second
        // apart: a flood stays over the rate however the tokens trickle in
        // (a request let through now and then does not end it), and a
        // client that slows down starts afresh.
        let since = match self.limited {
            Some((first, latest)) if now.duration_since(latest) < RATE_QUIET => first,
            _ => now,
        };
        self.limited = Some((since, now));
        if now.duration_since(since) >= self.settings().rate_limit_grace {
            self.end = Some(End::Close(close::RATE_LIMITED, "rate limited too long"));
        }
        false
    }
}
