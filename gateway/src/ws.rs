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
}

impl FrameTracker {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() as u64);
                self.remaining -= n;
                data = &data[n as usize..];
                if self.remaining == 0 {
                    self.completed += 1;
                }
                continue;
            }
            self.head[self.head_len] = data[0];
            self.head_len += 1;
            data = &data[1..];
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
            self.head_len = 0;
            if len == 0 {
                self.completed += 1;
            } else {
                self.remaining = len;
            }
        }
    }

    /// No partial frame has been seen.
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.remaining == 0
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
/// tracker. Writes never go through here (auto pong and auto close are off).
pub struct CountingIo<'a> {
    /// The read half only: the connection keeps writing through the other
    /// while a frame is half read.
    pub tcp: ReadHalf<'a>,
    pub prefix: &'a mut Bytes,
    pub tracker: &'a Mutex<FrameTracker>,
}

impl AsyncRead for CountingIo<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.tracker.lock().feed(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
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
            this.tracker.lock().feed(narrow.filled());
            // SAFETY: `narrow` wrote and initialised these `n` bytes of `buf`.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        this.tracker.lock().feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
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
        let mut head = [0u8; 14];
        let mut f = Frame::new(
            true,
            OpCode::Text,
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
            (126, false),
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
    fn encodes_server_frames() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let big = text_frame(&[b'a'; 200]);
        assert_eq!(&big[..4], &[0x81, 126, 0, 200]);
        assert_eq!(&close_frame(1001, "bye")[..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        assert_eq!(close_frame(4008, &"é".repeat(100)).len(), 2 + 2 + 122);
    }
}
