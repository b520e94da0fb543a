//! WebSocket plumbing around fastwebsockets.
//!
//! Server frames are unmasked, so one encoded frame serves every
//! connection: [`text_frame`] builds header and payload into one `Bytes`.
//!
//! Reading: fastwebsockets' `WebSocket` keeps an 8 KiB read buffer for its
//! whole life, which idle connections cannot afford. So a connection builds
//! a `WebSocket` only for a burst of reads, over a [`CountingIo`] that
//! tracks frame boundaries in the bytes it hands over ([`FrameTracker`]).
//! When every byte handed over belongs to a frame the connection has
//! already received, the buffer is provably empty, and the `WebSocket`
//! (and its buffer) is dropped until the socket is readable again.
//!
//! The tracker also enforces the header rules of RFC 6455 that
//! fastwebsockets does not check in the server role: every client frame is
//! masked (5.1), and control frames carry at most 125 bytes and are not
//! fragmented (5.5). fastwebsockets never gets the whole header of a frame
//! breaking them: [`CountingIo`] hands over the bytes before it, then fails
//! the next read, and the connection closes with 1002
//! ([`FrameTracker::violation`]). This costs a few comparisons per header
//! and no allocation.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::ReadHalf;

fn frame_bytes(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut head = [0u8; 14];
    let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload));
    let n = frame.fmt_head(&mut head);
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
    out.freeze()
}

/// A complete unmasked text frame.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame_bytes(OpCode::Text, payload)
}

pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // Control frame payloads are at most 125 bytes.
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame_bytes(OpCode::Close, &payload)
}

pub fn ping_frame() -> Bytes {
    frame_bytes(OpCode::Ping, b"")
}

pub fn pong_frame(payload: &[u8]) -> Bytes {
    frame_bytes(OpCode::Pong, payload)
}

/// Follows frame boundaries in a byte stream of client frames, from their
/// headers alone.
#[derive(Default, Debug)]
pub struct FrameTracker {
    head: [u8; 14],
    head_len: usize,
    remaining: u64,
    /// Frames whose last byte has been seen.
    pub completed: u64,
    /// Read no further than the end of the current frame, so the burst can
    /// stop at a frame boundary.
    pub pausing: bool,
    /// The RFC 6455 rule a frame header broke (the connection closes with
    /// 1002); nothing from that header on is fed or handed over.
    pub violation: Option<&'static str>,
}

/// What a client frame header breaks, if anything: RFC 6455 5.1 (clients
/// mask every frame) and 5.5 (control frames).
fn header_violation(first: u8, second: u8, len: u64) -> Option<&'static str> {
    let control = first & 0x08 != 0;
    if second & 0x80 == 0 {
        Some("unmasked client frame")
    } else if control && len > 125 {
        Some("control frame over 125 bytes")
    } else if control && first & 0x80 == 0 {
        Some("fragmented control frame")
    } else {
        None
    }
}

impl FrameTracker {
    /// Follows `data`, the next bytes of the stream. Returns how many of
    /// them may be handed over: all, or those before the header of a frame
    /// that breaks the RFC (then [`Self::violation`] says which rule).
    pub fn feed(&mut self, data: &[u8]) -> usize {
        if self.violation.is_some() {
            return 0;
        }
        let mut pos = 0;
        // Where the header being read began in `data` (0: in an earlier feed).
        let mut head_start = 0;
        while pos < data.len() {
            if self.remaining > 0 {
                let n = self.remaining.min((data.len() - pos) as u64);
                self.remaining -= n;
                pos += n as usize;
                if self.remaining == 0 {
                    self.completed += 1;
                }
                continue;
            }
            if self.head_len == 0 {
                head_start = pos;
            }
            self.head[self.head_len] = data[pos];
            self.head_len += 1;
            pos += 1;
            if self.head_len < 2 {
                continue;
            }
            let code = self.head[1] & 0x7f;
            let ext = match code {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let size = 2 + ext + if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            if self.head_len < size {
                continue;
            }
            let len = match ext {
                0 => u64::from(code),
                2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                _ => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
            };
            if let Some(why) = header_violation(self.head[0], self.head[1], len) {
                self.violation = Some(why);
                return head_start;
            }
            self.head_len = 0;
            if len == 0 {
                self.completed += 1;
            } else {
                self.remaining = len;
            }
        }
        data.len()
    }

    /// No partial frame has been seen (never after a violation: the burst
    /// must go on to the failing read, not stop as if all were handled).
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.remaining == 0 && self.violation.is_none()
    }

    /// Most bytes that can be read without crossing into the next frame
    /// (0 at a boundary).
    pub fn to_boundary(&self) -> usize {
        if self.remaining > 0 {
            return usize::try_from(self.remaining).unwrap_or(usize::MAX);
        }
        if self.head_len == 0 {
            return 0;
        }
        if self.head_len < 2 {
            return 2 - self.head_len;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if self.head[1] & 0x80 != 0 { 4 } else { 0 } - self.head_len
    }
}

/// The read side handed to fastwebsockets for one burst: bytes hyper read
/// ahead of the upgrade first, then the socket; every byte is fed to the
/// tracker. Once the tracker sees a header that breaks the RFC, the bytes
/// before it are handed over and the next read fails (`InvalidData`); the
/// tracker's `violation` tells that failure from a lost connection. Writes
/// never go through here (auto pong and auto close are off).
pub struct CountingIo<'a> {
    /// The read half only: the connection keeps writing through the other
    /// while a frame is half read.
    pub tcp: ReadHalf<'a>,
    pub prefix: &'a mut Bytes,
    pub tracker: &'a Mutex<FrameTracker>,
}

impl CountingIo<'_> {
    /// After `fed` bytes were offered to the tracker and `kept` of them
    /// handed over: a read that hands over nothing because of a violation
    /// fails rather than look like EOF.
    fn checked(&self, fed: usize, kept: usize) -> Poll<io::Result<()>> {
        match self.tracker.lock().violation {
            Some(why) if kept == 0 && fed > 0 => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for CountingIo<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(why) = this.tracker.lock().violation {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            let kept = this.tracker.lock().feed(&this.prefix[..n]);
            buf.put_slice(&this.prefix[..kept]);
            // Past a violation the rest is never read: the connection closes.
            this.prefix.advance(n);
            return this.checked(n, kept);
        }
        let limit = {
            let t = this.tracker.lock();
            if t.pausing { t.to_boundary().max(1) } else { usize::MAX }
        };
        if limit < buf.remaining() {
            // Read into a narrower window so no byte of the next frame comes in.
            let mut narrow = buf.take(limit);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut narrow))?;
            let n = narrow.filled().len();
            let kept = this.tracker.lock().feed(narrow.filled());
            // SAFETY: `narrow` wrote and initialised these `n` bytes of `buf`.
            unsafe { buf.assume_init(n) };
            buf.advance(kept);
            return this.checked(n, kept);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        let kept = this.tracker.lock().feed(&buf.filled()[before..]);
        // Drop what follows a violating header from the filled part.
        buf.set_filled(before + kept);
        this.checked(n, kept)
    }
}

impl AsyncWrite for CountingIo<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::other("the read burst does not write")))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(len: usize, masked: bool) -> Vec<u8> {
        any_frame(true, OpCode::Text, len, masked)
    }

    fn any_frame(fin: bool, opcode: OpCode, len: usize, masked: bool) -> Vec<u8> {
        let mut head = [0u8; 14];
        let mut f = Frame::new(
            fin,
            opcode,
            masked.then_some([1, 2, 3, 4]),
            Payload::Owned(vec![b'x'; len]),
        );
        let n = f.fmt_head(&mut head);
        let mut v = head[..n].to_vec();
        v.extend(std::iter::repeat_n(b'x', len));
        v
    }

    #[test]
    fn tracks_boundaries_across_any_split() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (0, true),
            (5, true),
            (125, true),
            (126, true),
            (300, true),
            (70_000, true),
        ] {
            stream.extend(client_frame(len, masked));
        }
        for chunk in [1, 2, 3, 7, 13, 1000, stream.len()] {
            let mut t = FrameTracker::default();
            for piece in stream.chunks(chunk) {
                t.feed(piece);
            }
            assert_eq!(t.completed, 6, "chunk {chunk}");
            assert!(t.at_boundary(), "chunk {chunk}");
        }
        let mut t = FrameTracker::default();
        t.feed(&stream[..stream.len() - 1]);
        assert_eq!(t.completed, 5);
        assert!(!t.at_boundary());
        assert_eq!(t.to_boundary(), 1);
    }

    #[test]
    fn to_boundary_never_crosses_into_the_next_frame() {
        let frame = client_frame(300, true); // 2 + 2 + 4 header bytes
        let mut t = FrameTracker::default();
        assert_eq!(t.to_boundary(), 0);
        t.feed(&frame[..1]);
        assert_eq!(t.to_boundary(), 1);
        t.feed(&frame[1..2]);
        assert_eq!(t.to_boundary(), 6);
        t.feed(&frame[2..8]);
        assert_eq!(t.to_boundary(), 300);
        t.feed(&frame[8..100]);
        assert_eq!(t.to_boundary(), 208);
        t.feed(&frame[100..]);
        assert_eq!((t.to_boundary(), t.completed), (0, 1));
    }

    #[test]
    fn stops_before_a_header_that_breaks_the_rules() {
        let good = client_frame(5, true);
        for (bad, why) in [
            (client_frame(5, false), "unmasked client frame"),
            (client_frame(0, false), "unmasked client frame"),
            (any_frame(true, OpCode::Pong, 126, true), "control frame over 125 bytes"),
            (
                any_frame(true, OpCode::Close, 200, true),
                "control frame over 125 bytes",
            ),
            (any_frame(false, OpCode::Ping, 1, true), "fragmented control frame"),
        ] {
            let mut stream = good.clone();
            stream.extend(&bad);
            stream.extend(&good);
            // All at once: only the good frame before it may be handed over.
            let mut t = FrameTracker::default();
            assert_eq!(t.feed(&stream), good.len(), "{why}");
            assert_eq!((t.violation, t.completed, t.at_boundary()), (Some(why), 1, false));
            assert_eq!(t.feed(&good), 0, "nothing after a violation");
            // Byte by byte: the header's bytes are handed over until the
            // one that completes it.
            let mut t = FrameTracker::default();
            let kept: usize = stream.iter().map(|b| t.feed(std::slice::from_ref(b))).sum();
            let head = 2 + if bad[1] & 0x80 != 0 { 4 } else { 0 } + if bad[1] & 0x7f == 126 { 2 } else { 0 };
            assert_eq!(kept, good.len() + head - 1, "{why}");
            assert_eq!(t.violation, Some(why));
        }
        let mut t = FrameTracker::default();
        let ok = any_frame(true, OpCode::Pong, 125, true);
        assert_eq!(t.feed(&ok), ok.len());
        assert_eq!((t.violation, t.completed), (None, 1));
    }

    #[test]
    fn encodes_server_frames() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let big = text_frame(&[b'a'; 200]);
        assert_eq!(&big[..4], &[0x81, 126, 0, 200]);
        assert_eq!(&close_frame(1001, "bye")[..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        assert_eq!(close_frame(4008, &"é".repeat(100)).len(), 2 + 2 + 122);
    }
}
