//! The socket layer: the connection task's wait, its reads, writes and
//! close. It knows WebSocket frames, not requests: each frame read goes to
//! [`Session::on_frame`], and what the session queued on its
//! [`ConnHandle`] is written from here.
//!
//! The task waits on readiness only (socket readable or writable, its
//! queue's signal, one timer, the node closing), each a single registration
//! kept for the connection's life. When the socket has data it reads it
//! with non-blocking reads into a buffer on the stack of a plain function
//! and feeds it to a [`FrameReader`]; the frames it completes are handled
//! in order (in a boxed future: the handlers' state is not part of every
//! idle task). What was read and not handled yet lives in a box that exists
//! only while it is not empty. Nothing here is cancelled mid-read, so the
//! queue is written and the wait goes on while a frame is half received
//! (a client silent for two ping intervals, half a frame included, is
//! dropped). While replies above the high-water mark wait, frames already
//! read wait too and nothing more is read, so pipelined requests cannot
//! pile up replies; TCP pushes back on the client. After a refusal for
//! rate the same holds for a short pause (`Session::paused_until`): a
//! flooding client is read a few times a second, not as fast as it writes.
//!
//! Outbound frames are already encoded (`hub::Out`); the task writes them
//! straight from its queue with vectored, non-blocking writes, so no write
//! buffer exists per connection either.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use protocol::close;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::end::End;
use super::session::Session;
use crate::hub::{ConnHandle, Out};
use crate::metrics;
use crate::ws;
use crate::ws::reader::{FrameError, FrameReader, InFrame};

/// Frames written in one vectored write.
const MAX_IOV: usize = 64;
/// Frames handled in a row before the task writes and waits again.
const MAX_BURST_FRAMES: usize = 64;
/// Bytes read per `read` call (on the stack of the reading call).
const READ_BUF: usize = 8 << 10;
/// Bytes read per wake before the task handles, writes and waits again.
const MAX_READ_PER_WAKE: usize = 256 << 10;
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
    let reason = if why == OVERFLOWED {
        "queue_overflow"
    } else {
        "write_timeout"
    };
    metrics::get().slow_consumers.increment(reason);
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
        4003 => "4003",
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

/// What a connection read and has not handled yet: the reader's unfinished
/// frame, complete frames waiting their turn, and how reading ended. Boxed
/// and held only while any of it exists, so an idle connection keeps none.
#[derive(Default)]
struct Inbound {
    reader: FrameReader,
    frames: VecDeque<InFrame>,
    /// Reading is over (EOF, or bytes that break the framing); frames that
    /// came before it are still handled, then the connection ends so.
    ended: Option<End>,
}

impl Inbound {
    fn idle(&self) -> bool {
        self.reader.at_boundary() && self.frames.is_empty() && self.ended.is_none()
    }

    /// Parses `data`; a framing error ends reading (after the frames before).
    fn feed(&mut self, data: &[u8], max: usize) {
        if self.ended.is_some() {
            return;
        }
        if let Err(e) = self.reader.feed(data, max, &mut self.frames) {
            self.ended = Some(match e {
                FrameError::Protocol(why) => End::Close(close::PROTOCOL_ERROR, why),
                FrameError::TooBig(_) => End::Close(close::TOO_BIG, "frame too big"),
            });
        }
    }
}

/// Serves the socket until the connection ends: waits, reads, handles,
/// writes.
pub(super) async fn run(tcp: &mut TcpStream, prefix: &mut Bytes, s: &mut Session) -> End {
    let shutdown = s.node().closing.clone();
    // The wait below runs once per delivery: its shutdown waiter and timer
    // are registered once for the connection's life (the timer re-armed only
    // when its deadline moves), and socket readiness and the queue's signal
    // are single waker slots, so a wake costs no registrations.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let timer = tokio::time::sleep_until(s.next_deadline());
    tokio::pin!(timer);
    let mut inbound: Option<Box<Inbound>> = None;
    if !prefix.is_empty() {
        // Bytes hyper read past the upgrade request are the first read.
        let i = inbound.get_or_insert_default();
        i.feed(prefix, s.settings().max_frame_bytes);
        *prefix = Bytes::new();
    }
    loop {
        if let Some(end) = s.take_end() {
            return end;
        }
        if s.handle().overflowed() {
            return slow_consumer(OVERFLOWED);
        }
        if let Some(actions) = s.handle().take_commands() {
            // Boxed: a kick's leave is not part of every idle task.
            Box::pin(s.on_commands(*actions)).await;
            continue;
        }
        // Frames already read are handled while replies are below the
        // high-water mark; above it they wait, and nothing more is read.
        // A bool, not the instant: what lives across the awaits below is
        // part of every idle task.
        let paused = s.paused_until(Instant::now()).is_some();
        if let Some(i) = &mut inbound {
            let replies_low = s.handle().queue.lock().own_bytes < high_water(s);
            if !i.frames.is_empty() && replies_low && !paused {
                Box::pin(handle_frames(tcp, i, s)).await;
                continue;
            }
            if i.frames.is_empty()
                && let Some(end) = i.ended.take()
            {
                // Boxed: the send pipeline's state is not part of every idle task.
                Box::pin(s.flush_sends()).await;
                return end;
            }
            if i.idle() {
                inbound = None;
            }
        }
        // Write what is queued straight away: the socket is usually
        // writable, and when it is not the attempt costs no syscall (or
        // one WouldBlock that clears the readiness the wait then needs).
        if !s.handle().queue.lock().items.is_empty() && flush(tcp, s).is_err() {
            return End::Drop("write failed");
        }
        let (wants_write, replies_low, stalled) = {
            let q = s.handle().queue.lock();
            (!q.items.is_empty(), q.own_bytes < high_water(s), q.stalled_since)
        };
        let may_read = replies_low && !paused && inbound.as_ref().is_none_or(|i| i.frames.is_empty());
        let write_timeout = s.settings().write_timeout;
        let mut deadline = s.next_deadline();
        if let Some(since) = stalled {
            deadline = deadline.min(since + write_timeout);
        }
        if let Some(until) = s.paused_until(Instant::now()) {
            deadline = deadline.min(until);
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
                read_available(tcp, &mut inbound, s.settings().max_frame_bytes);
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

/// Reads what the socket has into the frame reader, until it would block
/// (or a burst's worth came in). Not async: the read buffer lives on this
/// call's stack, never in the connection's future.
fn read_available(tcp: &TcpStream, inbound: &mut Option<Box<Inbound>>, max_frame: usize) {
    let total = read_burst(tcp, inbound, max_frame);
    metrics::get().bytes_received.increment(total as u64);
}

/// [`read_available`]'s reads; the bytes read.
fn read_burst(tcp: &TcpStream, inbound: &mut Option<Box<Inbound>>, max_frame: usize) -> usize {
    let mut buf = [0u8; READ_BUF];
    let mut total = 0;
    loop {
        let read = tcp.try_read(&mut buf);
        let i = inbound.get_or_insert_default();
        match read {
            Ok(0) => {
                i.ended.get_or_insert(End::Drop("connection lost"));
                return total;
            }
            Ok(n) => {
                i.feed(&buf[..n], max_frame);
                total += n;
                if i.ended.is_some() || total >= MAX_READ_PER_WAKE || i.frames.len() >= MAX_BURST_FRAMES {
                    return total;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(_) => {
                i.ended.get_or_insert(End::Drop("socket error"));
                return total;
            }
        }
    }
}

/// Handles frames already read, in order, until none are left, replies
/// reach the high-water mark, a request is refused for rate (the rest wait
/// out the pause), a handler ends the connection, or a burst's
/// worth was handled (the main loop then writes and waits before more).
/// Replies are written as they come.
async fn handle_frames(tcp: &TcpStream, i: &mut Inbound, s: &mut Session) {
    let mut handled = 0;
    while let Some(frame) = i.frames.pop_front() {
        s.on_frame(frame).await;
        handled += 1;
        if s.ending() {
            s.flush_sends().await;
            return;
        }
        // Sends are published together while more requests are already
        // here; once none are, or the batch is full, out they go.
        if s.sends_due(|| !i.frames.is_empty()) {
            s.flush_sends().await;
        }
        let _ = flush(tcp, s);
        let replies_low = s.handle().queue.lock().own_bytes < high_water(s);
        if !replies_low || handled >= MAX_BURST_FRAMES || s.paused_until(Instant::now()).is_some() {
            break;
        }
    }
    // Requests left waiting: sends already checked go out now rather than
    // wait with them.
    s.flush_sends().await;
}

/// Whether queued output has waited longer than the write timeout with
/// nothing taken by the socket.
fn write_stalled(s: &Session) -> bool {
    let since = s.handle().queue.lock().stalled_since;
    since.is_some_and(|t| t + s.settings().write_timeout <= Instant::now())
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
        // The coarse clock, read once per write and only for deliveries.
        let mut now_ms = None;
        for item in &batch {
            let left = item.bytes().len() - offset;
            if written >= left {
                written -= left;
                offset = 0;
                done += 1;
                if let Out::Shared(o) = item
                    && o.msg_id != 0
                {
                    let now = *now_ms.get_or_insert_with(metrics::delivery::clock_ms);
                    metrics::delivery::LATENCY.observe(o.msg_id, now);
                }
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
