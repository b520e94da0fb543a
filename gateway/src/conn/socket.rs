//! The socket layer: the connection task's wait, its reads, writes and
//! close. It knows WebSocket frames, not requests: each frame read goes to
//! [`Session::on_frame`], and what the session queued on its
//! [`ConnHandle`] is written from here.
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
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Role, WebSocket, WebSocketError};
use parking_lot::Mutex;
use protocol::close;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::end::End;
use super::session::Session;
use crate::hub::{ConnHandle, Out};
use crate::metrics;
use crate::ws::{self, CountingIo, FrameTracker};

/// Frames written in one vectored write.
const MAX_IOV: usize = 64;
/// Frames one read burst handles before it pauses at a frame boundary.
const MAX_BURST_FRAMES: u64 = 64;
/// Most unread client bytes drained after a close frame.
const CLOSE_DRAIN_BYTES: usize = 1 << 20;
/// Time allowed to write the last frames and the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// After the close frame, unread client data is drained until this long
/// passes without any.
const CLOSE_QUIET: Duration = Duration::from_millis(100);
/// Unwritten replies above which no more requests are handled (nor read:
/// TCP then pushes back on a client that sends but does not read), at most
/// a quarter of the connection's byte budget. Requests already read wait
/// too, so pipelined requests cannot pile up replies.
const OWN_HIGH_WATER: usize = 256 << 10;

fn high_water(s: &Session) -> usize {
    OWN_HIGH_WATER.min(s.handle().byte_budget() / 4)
}

/// The end of a slow consumer: its queue overflowed (deliveries or bytes),
/// or the socket took nothing for the write timeout.
fn slow_consumer(why: &'static str) -> End {
    metrics::get().slow_consumers.increment(1);
    End::Close(close::SLOW_CONSUMER, why)
}

const OVERFLOWED: &str = "slow consumer: outbound queue overflowed";
const NO_PROGRESS: &str = "slow consumer: no write progress";

/// Closes the socket as `end` says: the close frame (after the queued
/// replies, unless the client is a slow consumer) or a plain drop.
pub(super) async fn close(tcp: &mut TcpStream, s: &Session, end: End) {
    match end {
        End::Close(code, reason) => {
            metrics::connection_closed(close_label(code));
            // Replies queued before the close (the error that explains it)
            // go out first; a slow consumer's backlog is what it could not
            // take, so it is dropped.
            let flush_queue = code != close::SLOW_CONSUMER;
            // Boxed: its read buffer must not be part of every idle task.
            let closing = Box::pin(close_socket(tcp, s, code, reason, flush_queue));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        }
        End::Drop(why) => {
            metrics::connection_closed("dropped");
            tracing::debug!(conn = s.handle().id, why, "connection dropped");
        }
    }
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

/// Serves the socket until the connection ends: waits, reads, writes.
pub(super) async fn run(tcp: &mut TcpStream, prefix: &mut Bytes, s: &mut Session) -> End {
    let shutdown = s.node().shutdown.clone();
    // The wait below runs once per delivery: its shutdown waiter and timer
    // are registered once for the connection's life (the timer re-armed only
    // when its deadline moves), and socket readiness and the queue's signal
    // are single waker slots, so a wake costs no registrations.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(s.next_deadline());
    tokio::pin!(timer);
    loop {
        if let Some(end) = s.take_end() {
            return end;
        }
        if s.handle().overflowed() {
            return slow_consumer(OVERFLOWED);
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
        if !s.handle().queue.lock().items.is_empty() && flush(tcp, s).is_err() {
            return End::Drop("write failed");
        }
        let (wants_write, may_read, stalled) = {
            let q = s.handle().queue.lock();
            (!q.items.is_empty(), q.own_bytes < high_water(s), q.stalled_since)
        };
        let write_timeout = s.settings().write_timeout;
        let mut deadline = s.next_deadline();
        if let Some(since) = stalled {
            deadline = deadline.min(since + write_timeout);
        }
        if timer.deadline() != deadline || timer.is_elapsed() {
            timer.as_mut().reset(deadline);
        }
        let handle = s.handle();
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
                if write_stalled(s) {
                    return slow_consumer(NO_PROGRESS);
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
    ws.set_max_message_size(s.settings().max_frame_bytes + 1);
    let mut stall = s.settings().ping_interval * 2;
    if let Some(deadline) = s.auth_deadline() {
        // Before auth, nothing may hold the connection past the deadline.
        stall = stall.min(deadline.saturating_duration_since(Instant::now()));
    }
    let shutdown = s.node().shutdown.clone();
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
                let wants_write = !s.handle().queue.lock().items.is_empty();
                let handle = s.handle();
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
                        if s.handle().overflowed() {
                            return Err(slow_consumer(OVERFLOWED));
                        }
                    }
                }
            }
        };
        let frame = match read {
            Err(_) => return Err(End::Drop("stalled in the middle of a frame")),
            // A frame header the tracker refused (RFC 6455 5.1, 5.5) failed the read.
            Ok(Err(_)) if let Some(why) = tracker.lock().violation => {
                return Err(End::Close(close::PROTOCOL_ERROR, why));
            }
            Ok(Err(e)) => return Err(ws_error_end(e)),
            Ok(Ok(frame)) => frame,
        };
        returned += 1;
        s.on_frame(frame).await;
        if s.ending() {
            s.flush_sends().await;
            return Ok(());
        }
        // Sends are published together while more requests are already
        // here; once none are, or the batch is full, out they go.
        if s.sends_due(|| tracker.lock().completed > returned) {
            s.flush_sends().await;
        }
        let (has_output, own_bytes) = {
            let q = s.handle().queue.lock();
            (!q.items.is_empty(), q.own_bytes)
        };
        let buffered = {
            let t = tracker.lock();
            !(t.at_boundary() && t.completed == returned)
        };
        if own_bytes >= high_water(s) && buffered {
            // Requests already read wait until the replies are taken (sends
            // already checked go out first rather than wait with them).
            s.flush_sends().await;
            wait_for_replies_taken(out, s, &shutdown).await?;
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

/// Whether queued output has waited longer than the write timeout with
/// nothing taken by the socket.
fn write_stalled(s: &Session) -> bool {
    let since = s.handle().queue.lock().stalled_since;
    since.is_some_and(|t| t + s.settings().write_timeout <= Instant::now())
}

/// Inside a read burst whose replies reached the high-water mark: writes
/// until they drop below it before the next request already read is
/// handled. A client that takes nothing for the write timeout is closed.
async fn wait_for_replies_taken(out: &TcpStream, s: &Session, shutdown: &CancellationToken) -> Result<(), End> {
    loop {
        if flush(out, s).is_err() {
            return Err(End::Drop("write failed"));
        }
        let (own_bytes, stalled, overflowed) = {
            let q = s.handle().queue.lock();
            (q.own_bytes, q.stalled_since, q.overflowed)
        };
        if overflowed {
            return Err(slow_consumer(OVERFLOWED));
        }
        if own_bytes < high_water(s) {
            return Ok(());
        }
        let deadline = stalled.unwrap_or_else(Instant::now) + s.settings().write_timeout;
        let timer = tokio::time::sleep_until(deadline);
        let cancelled = shutdown.cancelled();
        tokio::pin!(timer, cancelled);
        let handle = s.handle();
        let timed_out = std::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() || out.poll_write_ready(cx).is_ready() {
                return Poll::Ready(false);
            }
            if handle.poll_signal(cx).is_ready() {
                return Poll::Ready(false);
            }
            timer.as_mut().poll(cx).map(|()| true)
        })
        .await;
        if shutdown.is_cancelled() {
            return Err(End::Close(close::GOING_AWAY, "node draining"));
        }
        if timed_out {
            return Err(slow_consumer(NO_PROGRESS));
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
    let handle: &ConnHandle = s.handle();
    loop {
        let mut batch: Vec<Out>;
        let mut offset;
        {
            let mut q = handle.queue.lock();
            // Sized to what is queued: usually one delivery.
            batch = Vec::with_capacity(q.items.len().min(MAX_IOV));
            offset = q.front_offset;
            while batch.len() < MAX_IOV {
                let Some(item) = q.items.pop_front() else { break };
                match &item {
                    Out::Shared(_) => q.deliveries -= 1,
                    Out::Own(b) => q.own_bytes -= b.len(),
                }
                q.bytes -= item.bytes().len();
                // A partly written frame must be finished whatever happened since.
                if (batch.is_empty() && offset > 0) || s.wants(&item) {
                    batch.push(item);
                }
            }
            if batch.is_empty() {
                q.front_offset = 0;
                q.stalled_since = None;
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
        let progressed = written > 0;
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
            let mut q = handle.queue.lock();
            q.front_offset = offset;
            for item in batch.drain(done..).rev() {
                match &item {
                    Out::Shared(_) => q.deliveries += 1,
                    Out::Own(b) => q.own_bytes += b.len(),
                }
                q.bytes += item.bytes().len();
                q.items.push_front(item);
            }
            // The write-progress clock: restarts whenever the socket takes
            // anything, starts when output first has to wait.
            if progressed || q.stalled_since.is_none() {
                q.stalled_since = Some(Instant::now());
            }
            return Ok(());
        }
        let mut q = handle.queue.lock();
        q.front_offset = 0;
    }
}

/// Writes the close frame (after the queue, when draining) and closes.
async fn close_socket(tcp: &mut TcpStream, s: &Session, code: u16, reason: &str, flush_queue: bool) -> io::Result<()> {
    if flush_queue {
        loop {
            flush(tcp, s)?;
            if s.handle().queue.lock().items.is_empty() {
                break;
            }
            tcp.writable().await?;
        }
    } else {
        // Finish a partly written frame only, so the close frame is whole.
        let rest = {
            let mut q = s.handle().queue.lock();
            let offset = q.front_offset;
            let rest = (offset > 0)
                .then(|| q.items.front().map(|f| f.bytes().slice(offset..)))
                .flatten();
            q.items.clear();
            q.deliveries = 0;
            q.own_bytes = 0;
            q.bytes = 0;
            q.stalled_since = None;
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
