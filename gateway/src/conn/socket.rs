//! One client connection: a single task, small while idle.
//!
//! The task waits on readiness only (socket readable or writable, its
//! queue's signal, one timer, node shutdown), each a single registration
//! kept for the connection's life. When the socket has data it runs a *read
//! burst* in a boxed future: a fastwebsockets `WebSocket` is built over
//! [`ws::CountingIo`] (the socket's read half), frames are read and handled
//! until the read buffer is provably empty, then the `WebSocket`, its buffer
//! and the burst's state are freed. `read_frame` is not cancel-safe, so it is
//! dropped only with the connection (a stalled half-frame timing out, node
//! shutdown); while it waits for the rest of a frame, the queue is still
//! written through the write half.
//!
//! Outbound frames are already encoded (`hub::Out`); the task writes them
//! straight from its queue with vectored, non-blocking writes, so no write
//! buffer exists per connection either.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use dispatcher::{EventKind, NewMessage, Page};
use fastwebsockets::{CloseCode, Frame, OpCode, Role, WebSocket, WebSocketError};
use parking_lot::Mutex;
use protocol::encode::{Obj, error_reply, history_reply, msg_event};
use protocol::request::HistoryPage;
use protocol::{ErrorCode, Request, close};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::Node;
use crate::auth::{AuthError, Identity};
use crate::hub::{ConnHandle, Out};
use crate::metrics;
use crate::view::view;
use crate::ws::{self, CountingIo, FrameTracker};

/// Frames written in one vectored write.
const MAX_IOV: usize = 64;
/// Sends published in one batch at most.
const MAX_SEND_BATCH: usize = 64;
/// Frames one read burst handles before it pauses at a frame boundary.
const MAX_BURST_FRAMES: u64 = 64;
/// Most unread client bytes drained after a close frame.
const CLOSE_DRAIN_BYTES: usize = 1 << 20;
/// Time allowed to write the last frames and the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After the close frame, unread client data is drained until this long
/// passes without any.
const CLOSE_QUIET: Duration = Duration::from_millis(100);
/// Window over which bad frames are counted.
const BAD_FRAME_WINDOW: Duration = Duration::from_secs(60);
/// Unwritten replies above which no more requests are read (TCP then
/// pushes back on a client that sends but does not read).
const OWN_HIGH_WATER: usize = 256 << 10;
/// Unwritten replies above which the client is closed as a slow consumer
/// (one read burst can hold many requests).
const OWN_HARD_CAP: usize = 64 << 20;

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

/// How a connection ends.
enum End {
    /// Send this close frame, then close the socket.
    Close(u16, &'static str),
    /// Drop the socket: it is gone, broken, or silent.
    Drop(&'static str),
}

/// A `send` checked and waiting to be published with the others of its
/// read burst.
struct PendingSend {
    id: Option<i64>,
    msg: NewMessage,
}

struct Joined {
    room: Arc<str>,
    /// Stored messages at or below this id were already sent (replay).
    floor: u64,
}

struct Session {
    node: Arc<Node>,
    handle: Arc<ConnHandle>,
    identity: Option<Identity>,
    rooms: Vec<Joined>,
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
    pending_sends: Vec<PendingSend>,
    end: Option<End>,
}

/// Serves one upgraded connection until it ends. `prefix` holds bytes
/// hyper read past the upgrade request; `header_auth` is the result of an
/// `Authorization` header, if there was one.
pub async fn serve(node: Arc<Node>, tcp: TcpStream, prefix: Bytes, header_auth: Option<Result<Identity, AuthError>>) {
    let m = metrics::get();
    m.connections_active.increment(1.0);
    m.connections_opened.increment(1);
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
    let mut tcp = tcp;
    let mut prefix = prefix;
    let end = run(&mut tcp, &mut prefix, &mut s).await;
    match end {
        End::Close(code, reason) => {
            metrics::connection_closed(close_label(code));
            // Replies queued before the close (the error that explains it)
            // go out first; a slow consumer's backlog is what it could not
            // take, so it is dropped.
            let flush_queue = code != close::SLOW_CONSUMER;
            // Boxed: its read buffer must not be part of every idle task.
            let closing = Box::pin(close_socket(&mut tcp, &s, code, reason, flush_queue));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        }
        End::Drop(why) => {
            metrics::connection_closed("dropped");
            tracing::debug!(conn = s.handle.id, why, "connection dropped");
        }
    }
    s.leave_all().await;
    s.handle.close();
    m.connections_active.decrement(1.0);
}

fn close_label(code: u16) -> &'static str {
    match code {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1003 => "1003",
        1007 => "1007",
        1008 => "1008",
        1009 => "1009",
        4001 => "4001",
        4008 => "4008",
        4029 => "4029",
        _ => "other",
    }
}

/// What woke the connection's wait.
enum Wake {
    Shutdown,
    Readable(io::Result<()>),
    Writable(io::Result<()>),
    Signalled,
    Timer,
}

async fn run(tcp: &mut TcpStream, prefix: &mut Bytes, s: &mut Session) -> End {
    let shutdown = s.node.shutdown.clone();
    // The wait below runs once per delivery: its shutdown waiter and timer
    // are registered once for the connection's life (the timer re-armed only
    // when its deadline moves), and socket readiness and the queue's signal
    // are single waker slots, so a wake costs no registrations.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(s.next_deadline());
    tokio::pin!(timer);
    loop {
        if let Some(end) = s.end.take() {
            return end;
        }
        if s.handle.overflowed() {
            metrics::get().slow_consumers.increment(1);
            return End::Close(close::SLOW_CONSUMER, "slow consumer: outbound queue overflowed");
        }
        if !prefix.is_empty() {
            if let Err(end) = Box::pin(read_burst(tcp, prefix, s)).await {
                return end;
            }
            continue;
        }
        // Write what is queued straight away: the socket is usually
        // writable, and when it is not the attempt costs no syscall (or
        // one WouldBlock that clears the readiness the wait then needs).
        if !s.handle.queue.lock().items.is_empty() && flush(tcp, s).is_err() {
            return End::Drop("write failed");
        }
        let (wants_write, may_read) = {
            let q = s.handle.queue.lock();
            (!q.items.is_empty(), q.own_bytes < OWN_HIGH_WATER)
        };
        let deadline = s.next_deadline();
        if timer.deadline() != deadline || timer.is_elapsed() {
            timer.as_mut().reset(deadline);
        }
        let handle = &s.handle;
        let stream = &*tcp;
        let wake = std::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            if may_read && let Poll::Ready(r) = stream.poll_read_ready(cx) {
                return Poll::Ready(Wake::Readable(r));
            }
            if wants_write && let Poll::Ready(r) = stream.poll_write_ready(cx) {
                return Poll::Ready(Wake::Writable(r));
            }
            // Always armed: it also signals an overflow while we wait to write.
            if handle.poll_signal(cx).is_ready() {
                return Poll::Ready(Wake::Signalled);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Shutdown => return End::Close(close::GOING_AWAY, "node draining"),
            Wake::Readable(ready) => {
                if ready.is_err() {
                    return End::Drop("socket error");
                }
                match has_data(tcp) {
                    Ok(true) => {
                        if let Err(end) = Box::pin(read_burst(tcp, prefix, s)).await {
                            return end;
                        }
                    }
                    Ok(false) => {}
                    Err(_) => return End::Drop("socket error"),
                }
            }
            // The loop's top writes.
            Wake::Writable(ready) => {
                if ready.is_err() {
                    return End::Drop("write failed");
                }
            }
            Wake::Signalled => {}
            Wake::Timer => {
                if let Some(end) = s.on_timer() {
                    return end;
                }
            }
        }
    }
}

/// Whether the socket really has bytes (or EOF) to read. Readiness can be
/// stale after a burst that stopped at a frame boundary; starting a burst
/// then would wait inside `read_frame`. A `WouldBlock` here clears tokio's
/// readiness, so the next `readable()` waits for new data.
fn has_data(tcp: &TcpStream) -> io::Result<bool> {
    let fd = tcp.as_raw_fd();
    let peeked = tcp.try_io(Interest::READABLE, || {
        let mut byte = 0u8;
        // SAFETY: one valid byte of buffer; MSG_PEEK leaves the data queued.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n) }
    });
    match peeked {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads and handles frames until every byte read belongs to a handled
/// frame. Errors end the connection.
async fn read_burst(tcp: &mut TcpStream, prefix: &mut Bytes, s: &mut Session) -> Result<(), End> {
    let tracker = Mutex::new(FrameTracker::default());
    let (read_half, write_half) = tcp.split();
    let out: &TcpStream = write_half.as_ref();
    let mut io = CountingIo {
        tcp: read_half,
        prefix,
        tracker: &tracker,
    };
    let mut ws = WebSocket::after_handshake(&mut io, Role::Server);
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    // fastwebsockets refuses a frame whose length is >= this.
    ws.set_max_message_size(s.node.settings.config.max_frame_bytes + 1);
    let mut stall = s.node.settings.config.ping_interval * 2;
    if s.identity.is_none() {
        // Before auth, nothing may hold the connection past the deadline.
        stall = stall.min(s.auth_deadline.saturating_duration_since(Instant::now()));
    }
    let shutdown = s.node.shutdown.clone();
    let mut returned = 0u64;
    loop {
        // While a frame is half read (a slow upload), what is queued for
        // the client is still written: the read stays pending (never
        // dropped mid-frame, except when the connection ends) while the
        // queue's signal and the socket's writability are served.
        let read = {
            let frame = tokio::time::timeout(stall, ws.read_frame());
            let cancelled = shutdown.cancelled();
            tokio::pin!(frame, cancelled);
            loop {
                let wants_write = !s.handle.queue.lock().items.is_empty();
                let handle = &s.handle;
                let wake = std::future::poll_fn(|cx| {
                    if let Poll::Ready(read) = frame.as_mut().poll(cx) {
                        return Poll::Ready(Some(Ok(read)));
                    }
                    if cancelled.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(())));
                    }
                    if wants_write && out.poll_write_ready(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    if handle.poll_signal(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await;
                match wake {
                    Some(Ok(read)) => break read,
                    Some(Err(())) => {
                        s.flush_sends().await;
                        return Err(End::Close(close::GOING_AWAY, "node draining"));
                    }
                    None => {
                        if flush(out, s).is_err() {
                            return Err(End::Drop("write failed"));
                        }
                        if s.handle.overflowed() {
                            metrics::get().slow_consumers.increment(1);
                            return Err(End::Close(
                                close::SLOW_CONSUMER,
                                "slow consumer: outbound queue overflowed",
                            ));
                        }
                    }
                }
            }
        };
        let frame = match read {
            Err(_) => return Err(End::Drop("stalled in the middle of a frame")),
            Ok(Err(e)) => return Err(ws_error_end(e)),
            Ok(Ok(frame)) => frame,
        };
        returned += 1;
        s.on_frame(frame).await;
        if s.end.is_some() {
            s.flush_sends().await;
            return Ok(());
        }
        // Sends are published together while more requests are already
        // here; once none are, or the batch is full, out they go.
        if !s.pending_sends.is_empty() {
            let buffered = tracker.lock().completed > returned;
            if !buffered || s.pending_sends.len() >= MAX_SEND_BATCH {
                s.flush_sends().await;
            }
        }
        let (has_output, own_bytes) = {
            let q = s.handle.queue.lock();
            (!q.items.is_empty(), q.own_bytes)
        };
        if own_bytes > OWN_HARD_CAP {
            return Err(End::Close(close::SLOW_CONSUMER, "slow consumer: replies not read"));
        }
        let mut t = tracker.lock();
        // With output waiting (or after a long run of frames), stop at the
        // next frame boundary so the main loop writes, and applies its
        // read backpressure, before reading more.
        if has_output || returned >= MAX_BURST_FRAMES {
            t.pausing = true;
        }
        if t.at_boundary() && t.completed == returned {
            return Ok(());
        }
    }
}

fn ws_error_end(e: WebSocketError) -> End {
    match e {
        WebSocketError::FrameTooLarge => End::Close(close::TOO_BIG, "frame too big"),
        WebSocketError::InvalidUTF8 => End::Close(close::INVALID_PAYLOAD, "invalid UTF-8"),
        WebSocketError::ReservedBitsNotZero => End::Close(
            close::PROTOCOL_ERROR,
            "reserved bits set (compression is not supported)",
        ),
        WebSocketError::ControlFrameFragmented
        | WebSocketError::PingFrameTooLarge
        | WebSocketError::InvalidFragment
        | WebSocketError::InvalidContinuationFrame
        | WebSocketError::InvalidValue
        | WebSocketError::InvalidCloseFrame
        | WebSocketError::InvalidCloseCode => End::Close(close::PROTOCOL_ERROR, "protocol error"),
        _ => End::Drop("connection lost"),
    }
}

/// Writes queued frames until the queue is empty or the socket is full.
fn flush(tcp: &TcpStream, s: &Session) -> io::Result<()> {
    let m = metrics::get();
    loop {
        let mut batch: Vec<Out>;
        let mut offset;
        {
            let mut q = s.handle.queue.lock();
            // Sized to what is queued: usually one delivery.
            batch = Vec::with_capacity(q.items.len().min(MAX_IOV));
            offset = q.front_offset;
            while batch.len() < MAX_IOV {
                let Some(item) = q.items.pop_front() else { break };
                match &item {
                    Out::Shared(_) => q.deliveries -= 1,
                    Out::Own(b) => q.own_bytes -= b.len(),
                }
                // A partly written frame must be finished whatever happened since.
                if (batch.is_empty() && offset > 0) || s.wants(&item) {
                    batch.push(item);
                }
            }
            if batch.is_empty() {
                q.front_offset = 0;
                // Idle connections keep no queue buffer.
                if q.items.capacity() > 16 {
                    q.items = VecDeque::new();
                }
                return Ok(());
            }
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        for (i, item) in batch.iter().enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &item.bytes()[offset..] } else { item.bytes() });
        }
        let result = tcp.try_write_vectored(&slices[..batch.len()]);
        let mut written = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        m.bytes_sent.increment(written as u64);
        let mut done = 0;
        for item in &batch {
            let left = item.bytes().len() - offset;
            if written >= left {
                written -= left;
                offset = 0;
                done += 1;
            } else {
                offset += written;
                break;
            }
        }
        m.frames_sent.increment(done as u64);
        if done < batch.len() {
            let mut q = s.handle.queue.lock();
            q.front_offset = offset;
            for item in batch.drain(done..).rev() {
                match &item {
                    Out::Shared(_) => q.deliveries += 1,
                    Out::Own(b) => q.own_bytes += b.len(),
                }
                q.items.push_front(item);
            }
            return Ok(());
        }
        let mut q = s.handle.queue.lock();
        q.front_offset = 0;
    }
}

/// Writes the close frame (after the queue, when draining) and closes.
async fn close_socket(tcp: &mut TcpStream, s: &Session, code: u16, reason: &str, flush_queue: bool) -> io::Result<()> {
    if flush_queue {
        loop {
            flush(tcp, s)?;
            if s.handle.queue.lock().items.is_empty() {
                break;
            }
            tcp.writable().await?;
        }
    } else {
        // Finish a partly written frame only, so the close frame is whole.
        let rest = {
            let mut q = s.handle.queue.lock();
            let offset = q.front_offset;
            let rest = (offset > 0)
                .then(|| q.items.front().map(|f| f.bytes().slice(offset..)))
                .flatten();
            q.items.clear();
            q.deliveries = 0;
            q.own_bytes = 0;
            q.front_offset = 0;
            rest
        };
        if let Some(rest) = rest {
            tcp.write_all(&rest).await?;
        }
    }
    tcp.write_all(&ws::close_frame(code, reason)).await?;
    tcp.shutdown().await?;
    // Read what the client still has in flight: closing a socket with
    // unread data makes the kernel reset it, and the close frame would be
    // lost. Stop at EOF or once the client goes quiet.
    let mut sink = [0u8; 2048];
    let mut drained = 0;
    while let Ok(Ok(n)) = tokio::time::timeout(CLOSE_QUIET, tcp.read(&mut sink)).await {
        drained += n;
        if n == 0 || drained > CLOSE_DRAIN_BYTES {
            break;
        }
    }
    Ok(())
}

impl Session {
    fn settings(&self) -> &crate::config::Config {
        &self.node.settings.config
    }

    fn next_deadline(&self) -> Instant {
        let interval = self.settings().ping_interval;
        let mut deadline = (self.last_rx.max(self.last_ping) + interval).min(self.last_rx + interval * 2);
        if self.identity.is_none() {
            deadline = deadline.min(self.auth_deadline);
        }
        deadline
    }

    fn on_timer(&mut self) -> Option<End> {
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
    fn wants(&self, item: &Out) -> bool {
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

    fn joined(&self, room: &str) -> Option<&Joined> {
        self.rooms.iter().find(|j| &*j.room == room)
    }

    fn reply(&self, json: Vec<u8>) {
        self.handle.push_own(ws::text_frame(&json));
    }

    fn error(&self, id: Option<i64>, code: ErrorCode, message: &str) {
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
    fn rate_ok(&mut self, send: bool) -> bool {
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

    async fn on_frame(&mut self, frame: Frame<'_>) {
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
        // Replies go out in request order: earlier sends are answered first.
        if !matches!(req, Request::Send { .. }) {
            self.flush_sends().await;
        }
        let Some(identity) = self.identity.clone() else {
            match req {
                Request::Auth { token } => self.on_auth(id, token.as_deref()),
                _ => self.error(id, ErrorCode::Unauthorized, "authenticate first with {\"op\":\"auth\"}"),
            }
            return;
        };
        let costly = matches!(
            req,
            Request::Join { .. } | Request::Leave { .. } | Request::History { .. } | Request::Presence { .. }
        );
        if costly && !self.rate_ok(false) {
            return self.error(id, ErrorCode::RateLimited, "too many requests; slow down");
        }
        match req {
            Request::Auth { .. } => self.error(id, ErrorCode::BadRequest, "already authenticated"),
            Request::Join { room, since } => self.on_join(id, &identity, room, since).await,
            Request::Leave { room } => {
                if self.joined(&room).is_none() {
                    self.error(id, ErrorCode::NotFound, &format!("not in room {room}"));
                } else {
                    self.leave(&room).await;
                    self.reply(Obj::new("ok").id(id).str("room", &room).finish());
                }
            }
            Request::Send { room, body, ephemeral } => self.on_send(id, &identity, room, body, ephemeral).await,
            Request::History { room, page, limit } => {
                if !identity.may_join(&room) {
                    return self.error(id, ErrorCode::Forbidden, &format!("not allowed to read room {room}"));
                }
                let page = match page {
                    HistoryPage::Newest => Page::Newest,
                    HistoryPage::Before(b) => Page::Before(b),
                    HistoryPage::After(a) => Page::After(a),
                };
                match self.node.bus.history(&room, page, limit).await {
                    Ok(messages) => self.reply(history_reply(id, &room, messages.iter().map(view))),
                    Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
                }
            }
            Request::Presence { room } => {
                if !identity.may_join(&room) {
                    return self.error(id, ErrorCode::Forbidden, &format!("not allowed to see room {room}"));
                }
                let users: Vec<Arc<str>> = match self.node.bus.presence(&room).await {
                    Ok(Some(users)) => users.into_iter().map(Arc::from).collect(),
                    Ok(None) => self.node.hub.presence(&room),
                    Err(e) => return self.error(id, ErrorCode::Unavailable, &e.to_string()),
                };
                self.reply(
                    Obj::new("presence")
                        .id(id)
                        .str("room", &room)
                        .str_array("users", users.iter().map(|u| &**u))
                        .finish(),
                );
            }
            Request::Typing { room } => {
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
                    self.error(id, ErrorCode::Unavailable, &e.to_string());
                }
            }
            Request::Ping => self.reply(Obj::new("pong").id(id).finish()),
        }
    }

    fn on_auth(&mut self, id: Option<i64>, token: Option<&str>) {
        match self.node.auth.authenticate(token) {
            Ok(identity) => {
                self.reply(
                    Obj::new("ok")
                        .id(id)
                        .str("user", &identity.user)
                        .str("node", &self.node.node_id)
                        .finish(),
                );
                self.identity = Some(identity);
            }
            Err(e) => {
                self.error(id, ErrorCode::Unauthorized, &e.to_string());
                self.end = Some(End::Close(close::UNAUTHORIZED, "unauthorized"));
            }
        }
    }

    async fn on_join(&mut self, id: Option<i64>, identity: &Identity, room: String, since: Option<u64>) {
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
            return self.error(id, ErrorCode::Unavailable, &e.to_string());
        }
        self.rooms.push(Joined {
            room: room.clone(),
            floor: 0,
        });
        let (floor, recovered, mut frames) = match since {
            None => (0, true, Vec::new()),
            Some(since) => match self.node.bus.replay(&room, since, self.settings().recovery_limit).await {
                Ok(replay) if replay.complete => {
                    let floor = replay.messages.last().map_or(since, |m| m.id.max(since));
                    let frames = replay
                        .messages
                        .iter()
                        .map(|m| ws::text_frame(&msg_event(view(m))))
                        .collect();
                    (floor, true, frames)
                }
                Ok(_) => (since, false, Vec::new()),
                Err(e) => {
                    self.leave(&room).await;
                    return self.error(id, ErrorCode::Unavailable, &e.to_string());
                }
            },
        };
        if let Some(j) = self.rooms.iter_mut().find(|j| j.room == room) {
            j.floor = floor;
        }
        frames.push(ws::text_frame(
            &Obj::new("ok")
                .id(id)
                .str("room", &room)
                .bool("recovered", recovered)
                .finish(),
        ));
        self.handle.splice_replay(&room, floor, frames);
        if edges.user_edge {
            if let Err(e) = self.node.bus.presence_changed(&room, &identity.user, true).await {
                tracing::warn!(error = %e, "presence not recorded");
            }
            let _ = self
                .node
                .bus
                .publish_event(room, EventKind::Joined, identity.user.clone(), None)
                .await;
        }
    }

    /// Checks a send and queues it for the burst's batch.
    async fn on_send(&mut self, id: Option<i64>, identity: &Identity, room: String, body: String, ephemeral: bool) {
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

    /// Publishes the queued sends in one batch and answers each, in order.
    async fn flush_sends(&mut self) {
        if self.pending_sends.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending_sends);
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
                    self.reply(
                        Obj::new("ok")
                            .id(id)
                            .str("room", &room)
                            .msg_id("msg", p.id)
                            .num("ts", p.ts)
                            .finish(),
                    );
                }
                Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
            }
        }
    }

    /// Leaves one room: membership, interest, and a `left` event when this
    /// was the user's last connection in it.
    async fn leave(&mut self, room: &str) {
        let Some(pos) = self.rooms.iter().position(|j| &*j.room == room) else {
            return;
        };
        let joined = self.rooms.swap_remove(pos);
        let Some(identity) = &self.identity else { return };
        let edges = self.node.hub.leave(&joined.room, &identity.user, self.handle.id);
        self.node.bus.unwatch(&joined.room);
        if edges.user_edge {
            if let Err(e) = self
                .node
                .bus
                .presence_changed(&joined.room, &identity.user, false)
                .await
            {
                tracing::warn!(error = %e, "presence end not recorded");
            }
            let _ = self
                .node
                .bus
                .publish_event(joined.room, EventKind::Left, identity.user.clone(), None)
                .await;
        }
    }

    async fn leave_all(&mut self) {
        while let Some(j) = self.rooms.last() {
            let room = j.room.clone();
            self.leave(&room).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_future_stays_small() {
        // The whole connection task future is allocated for the
        // connection's life; the read burst is boxed so it is not part of it.
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let (tx, _) = tokio::sync::oneshot::channel::<()>();
        drop(tx);
        let settings = crate::Config::load(["gateway"]).unwrap().validate().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("conn-size-{}", std::process::id()));
            let store: std::sync::Arc<dyn storage::HistoryStore> =
                std::sync::Arc::new(storage::EmbeddedStore::open(&dir).unwrap());
            let hub = crate::hub::Hub::new(1, 16);
            let bus = std::sync::Arc::new(dispatcher::inprocess::InProcessBus::new(
                store,
                std::sync::Arc::new(crate::hub::Router { hub: hub.clone() }),
            ));
            let node = std::sync::Arc::new(crate::Node {
                node_id: "gw-0".into(),
                auth: crate::auth::Authenticator::new(&settings),
                settings,
                hub,
                bus,
                shutdown: Default::default(),
                tracker: Default::default(),
                prometheus: crate::metrics::install(),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let fut = super::serve(node, tcp, bytes::Bytes::new(), None);
            let n = size(&fut);
            eprintln!("connection future: {n} bytes");
            assert!(n < 2048, "connection future is {n} bytes");
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
