//! WebSocket frames: encoding what the server sends, and ([`reader`])
//! parsing what clients send.
//!
//! Server frames are unmasked, so one encoded frame serves every
//! connection: [`text_frame`] builds header and payload into one `Bytes`.
//!
//! Reading keeps nothing while a connection is idle: the connection feeds
//! the bytes each non-blocking read returned to a [`reader::FrameReader`],
//! which holds only an unfinished frame (and only the part of it that
//! arrived). fastwebsockets serves the upgrade handshake and the header
//! encoding; its reader is not used (see [`reader`] for why).

pub mod reader;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_server_frames() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let big = text_frame(&[b'a'; 200]);
        assert_eq!(&big[..4], &[0x81, 126, 0, 200]);
        assert_eq!(&close_frame(1001, "bye")[..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        assert_eq!(close_frame(4008, &"é".repeat(100)).len(), 2 + 2 + 122);
    }
}
