//! The connection's request handling: [`Session`] holds its state (identity,
//! rooms, timers, rate buckets, bad-frame count, sends waiting to be
//! published), turns frames into requests, and answers them with replies and
//! errors queued on the connection's [`ConnHandle`]. It never sees the
//! socket.
//!
//! Its two sides:
//! - for the socket layer ([`super::socket`]): `on_frame`, `on_timer` and
//!   `next_deadline`, `wants` (whether a queued delivery still goes out),
//!   the decided end (`take_end`, `ending`), `handle`, `node`, `settings`,
//!   `auth_deadline`, and the send pipeline of a read burst (`sends_due`,
//!   `flush_sends`, in the send family of [`super::ops`]);
//! - for the op handlers ([`super::ops`], each an `impl Session` block):
//!   `reply`, `error`, `rate_ok`, `joined`, and the `pub(super)` fields.
//!
//! `on_text` parses a request and hands it to `dispatch` in
//! [`super::ops`], the table of ops.

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{CloseCode, Frame, OpCode};
use protocol::encode::error_reply;
use protocol::{ErrorCode, close};
use tokio::time::Instant;

use super::end::End;
use super::ops::PendingSend;
use crate::Node;
use crate::auth::{AuthError, Identity};
use crate::config::Config;
use crate::hub::{ConnHandle, Out};
use crate::{metrics, ws};

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

    fn take(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
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
    last_rx: Instant,
    last_ping: Instant,
    /// A fragmented text message being reassembled.
    fragments: Option<Vec<u8>>,
    bad_frames: u32,
    bad_window: Instant,
    /// `send` and `typing`.
    send_bucket: Bucket,
    /// `join`, `leave`, `history`, `presence`.
    request_bucket: Bucket,
    limited_since: Option<Instant>,
    /// Sends of this burst not yet published (one pipeline for them all).
    pub(super) pending_sends: Vec<PendingSend>,
    /// Set by a handler; the socket layer carries it out.
    pub(super) end: Option<End>,
}

impl Session {
    /// A new connection's session, registered with the hub. `header_auth`
    /// is the result of an `Authorization` header, if there was one: a bad
    /// one is answered and ends the connection.
    pub(super) fn new(node: Arc<Node>, header_auth: Option<Result<Identity, AuthError>>) -> Session {
        let handle = node.hub.new_conn();
        let now = Instant::now();
        let mut s = Session {
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
            limited_since: None,
            pending_sends: Vec::new(),
            identity: None,
            rooms: Vec::new(),
            end: None,
            node,
            handle,
        };
        match header_auth {
            None => {}
            Some(Ok(identity)) => s.identity = Some(identity),
            Some(Err(e)) => {
                s.error(None, ErrorCode::Unauthorized, &e.to_string());
                s.end = Some(End::Close(close::UNAUTHORIZED, "unauthorized"));
            }
        }
        s
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

    /// When the connection must have authenticated; `None` once it has.
    pub(super) fn auth_deadline(&self) -> Option<Instant> {
        self.identity.is_none().then_some(self.auth_deadline)
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
        if self.identity.is_none() && now >= self.auth_deadline {
            return Some(End::Close(close::UNAUTHORIZED, "authentication timeout"));
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
        metrics::error_reply(code);
        self.reply(error_reply(id, code, message));
    }

    /// Counts a malformed or invalid frame; too many in a window closes 1008.
    fn bad_frame(&mut self) {
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
    /// bucket. A client that stays over a rate for the grace period is
    /// closed with 4029.
    pub(super) fn rate_ok(&mut self, send: bool) -> bool {
        let now = Instant::now();
        let bucket = if send {
            &mut self.send_bucket
        } else {
            &mut self.request_bucket
        };
        if bucket.take(now) {
            self.limited_since = None;
            return true;
        }
        let since = *self.limited_since.get_or_insert(now);
        if now.duration_since(since) >= self.settings().rate_limit_grace {
            self.end = Some(End::Close(close::RATE_LIMITED, "rate limited too long"));
        }
        false
    }

    /// Handles one frame read from the socket: control frames, reassembly
    /// of fragmented messages, and text messages as requests.
    pub(super) async fn on_frame(&mut self, frame: Frame<'_>) {
        metrics::get().frames_received.increment(1);
        self.last_rx = Instant::now();
        let max = self.settings().max_frame_bytes;
        match frame.opcode {
            OpCode::Text => {
                if self.fragments.is_some() {
                    self.end = Some(End::Close(
                        close::PROTOCOL_ERROR,
                        "new message before the last one ended",
                    ));
                } else if frame.fin {
                    let mut payload = frame.payload;
                    self.on_text(payload.to_mut()).await;
                } else {
                    self.fragments = Some(frame.payload.to_vec());
                }
            }
            OpCode::Binary => {
                self.end = Some(End::Close(close::UNSUPPORTED_DATA, "binary frames are not supported"));
            }
            OpCode::Continuation => {
                let Some(mut message) = self.fragments.take() else {
                    self.end = Some(End::Close(
                        close::PROTOCOL_ERROR,
                        "continuation frame without a message",
                    ));
                    return;
                };
                if message.len() + frame.payload.len() > max {
                    self.end = Some(End::Close(close::TOO_BIG, "message too big"));
                    return;
                }
                message.extend_from_slice(&frame.payload);
                if !frame.fin {
                    self.fragments = Some(message);
                } else if std::str::from_utf8(&message).is_err() {
                    self.end = Some(End::Close(close::INVALID_PAYLOAD, "invalid UTF-8"));
                } else {
                    self.on_text(&mut message).await;
                }
            }
            OpCode::Ping => self.handle.push_own(ws::pong_frame(&frame.payload)),
            OpCode::Pong => {}
            OpCode::Close => {
                let code = match frame.payload.get(..2) {
                    None if frame.payload.is_empty() => 1000,
                    None => close::PROTOCOL_ERROR,
                    Some(b) => {
                        let code = u16::from_be_bytes([b[0], b[1]]);
                        if CloseCode::from(code).is_allowed() {
                            code
                        } else {
                            close::PROTOCOL_ERROR
                        }
                    }
                };
                // Echo the client's code, as RFC 6455 asks.
                self.end = Some(End::Close(code, ""));
            }
        }
    }

    /// Parses one text message and hands the request to its handler; a
    /// malformed one is answered `bad_request` and counted.
    async fn on_text(&mut self, buf: &mut [u8]) {
        let (id, req) = match protocol::parse_request(buf) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.flush_sends().await;
                self.error(e.id, e.code, &e.message);
                self.bad_frame();
                return;
            }
        };
        metrics::request(req.op());
        self.dispatch(id, req).await;
    }
}
