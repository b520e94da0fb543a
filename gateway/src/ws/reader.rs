//! Reading client frames: a parser fed whatever bytes the socket had, in
//! pieces of any size, that hands back whole frames.
//!
//! Why our own: fastwebsockets reserves a frame's declared length before
//! its payload arrives (a stalled 64 KiB frame pinned about 59 KiB per
//! connection), keeps an 8 KiB buffer per socket, and its `read_frame` is
//! not cancel-safe. Here a frame's payload grows only with what arrived,
//! the parser holds no buffer between frames, and since it is fed by plain
//! non-blocking reads there is nothing to cancel.
//!
//! It enforces the framing rules of RFC 6455 as a server must: every client
//! frame masked (5.1), reserved bits clear and opcodes known (5.2),
//! control frames at most 125 bytes and unfragmented (5.5), and the
//! configured frame size limit before any payload is kept (1009).

/// Frame opcodes (RFC 6455 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One client frame, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct InFrame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

/// Why the client's bytes cannot be read on: the connection closes with
/// the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RFC 6455 framing broken: close 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A frame over the configured limit: close 1009.
    #[error("frame over {0} bytes")]
    TooBig(usize),
}

/// The frame whose header has been read and whose payload is arriving.
#[derive(Debug)]
struct Partial {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    len: usize,
    payload: Vec<u8>,
}

/// Parser state between reads: a partial header, or a frame whose payload
/// is arriving. Empty (`at_boundary`) between frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    head: [u8; 14],
    head_len: usize,
    current: Option<Partial>,
}

impl FrameReader {
    /// No part of a frame is held.
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.current.is_none()
    }

    /// Bytes of the unfinished frame held (its payload so far).
    pub fn held(&self) -> usize {
        self.current.as_ref().map_or(0, |p| p.payload.capacity())
    }

    /// Consumes all of `data`, pushing each completed frame to `out`.
    /// `max` is the largest payload accepted. After an error the reader
    /// must not be fed again.
    pub fn feed(&mut self, mut data: &[u8], max: usize, out: &mut impl Extend<InFrame>) -> Result<(), FrameError> {
        while !data.is_empty() {
            if let Some(p) = &mut self.current {
                let take = (p.len - p.payload.len()).min(data.len());
                let at = p.payload.len();
                // Grow with what arrived (doubling, so a frame trickling in
                // byte by byte is not copied over and over), never past
                // what the header announced.
                if p.payload.capacity() - at < take {
                    let cap = (at + take).max(at * 2).min(p.len);
                    p.payload.reserve_exact(cap - at);
                }
                p.payload
                    .extend(data[..take].iter().enumerate().map(|(i, b)| b ^ p.mask[(at + i) % 4]));
                data = &data[take..];
                if p.payload.len() == p.len {
                    let p = self.current.take().expect("checked above");
                    out.extend(Some(InFrame {
                        fin: p.fin,
                        opcode: p.opcode,
                        payload: p.payload,
                    }));
                }
                continue;
            }
            let want = head_size(&self.head[..self.head_len]);
            let take = (want - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
            self.head_len += take;
            data = &data[take..];
            // The size is known only once the first two bytes are in.
            if self.head_len < head_size(&self.head[..self.head_len]) {
                continue;
            }
            let p = parse_head(&self.head[..self.head_len], max)?;
            self.head_len = 0;
            if p.len == 0 {
                out.extend(Some(InFrame {
                    fin: p.fin,
                    opcode: p.opcode,
                    payload: Vec::new(),
                }));
            } else {
                self.current = Some(p);
            }
        }
        Ok(())
    }
}

/// How many header bytes the frame beginning with `head` has (2 until the
/// second byte says more).
fn head_size(head: &[u8]) -> usize {
    if head.len() < 2 {
        return 2;
    }
    let ext = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if head[1] & 0x80 != 0 { 4 } else { 0 }
}

fn parse_head(head: &[u8], max: usize) -> Result<Partial, FrameError> {
    let (first, second) = (head[0], head[1]);
    if second & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked client frame"));
    }
    if first & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set (compression is not supported)"));
    }
    let opcode = OpCode::from_bits(first & 0x0f).ok_or(FrameError::Protocol("unknown opcode"))?;
    let fin = first & 0x80 != 0;
    let (len, rest) = match second & 0x7f {
        126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), &head[4..]),
        127 => (
            u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
            &head[10..],
        ),
        n => (u64::from(n), &head[2..]),
    };
    if opcode.is_control() && len > 125 {
        return Err(FrameError::Protocol("control frame over 125 bytes"));
    }
    if opcode.is_control() && !fin {
        return Err(FrameError::Protocol("fragmented control frame"));
    }
    if len > max as u64 {
        return Err(FrameError::TooBig(max));
    }
    Ok(Partial {
        fin,
        opcode,
        mask: rest[..4].try_into().expect("masked: 4 bytes"),
        len: len as usize,
        payload: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser sends it.
    fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut v = vec![(u8::from(fin) << 7) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => v.push(m | n as u8),
            n if n < 65536 => {
                v.push(m | 126);
                v.extend((n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend((n as u64).to_be_bytes());
            }
        }
        if masked {
            v.extend(mask);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            v.extend(payload);
        }
        v
    }

    #[test]
    fn reads_frames_split_anywhere() {
        let payloads: Vec<Vec<u8>> = [0usize, 5, 125, 126, 300, 70_000]
            .iter()
            .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
            .collect();
        let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(true, 1, p, true)).collect();
        for chunk in [1, 2, 3, 7, 13, 1000, stream.len()] {
            let mut r = FrameReader::default();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                r.feed(piece, 1 << 20, &mut out).unwrap();
            }
            let got: Vec<Vec<u8>> = out.into_iter().map(|f| f.payload).collect();
            assert_eq!(got, payloads, "chunk {chunk}");
            assert!(r.at_boundary());
        }
    }

    #[test]
    fn holds_only_what_arrived_of_a_frame() {
        let payload = vec![7u8; 60_000];
        let f = frame(true, 1, &payload, true);
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        r.feed(&f[..1000], 1 << 20, &mut out).unwrap();
        assert!(out.is_empty() && !r.at_boundary());
        assert!(
            r.held() < 2000,
            "a 60 KB frame of which 1 KB arrived holds {} bytes",
            r.held()
        );
        r.feed(&f[1000..], 1 << 20, &mut out).unwrap();
        assert_eq!(out[0].payload, payload);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        for (bytes, err) in [
            (
                frame(true, 1, b"hi", false),
                FrameError::Protocol("unmasked client frame"),
            ),
            (
                frame(true, 0xA, &[0; 126], true),
                FrameError::Protocol("control frame over 125 bytes"),
            ),
            (
                frame(false, 0x9, b"", true),
                FrameError::Protocol("fragmented control frame"),
            ),
            (frame(true, 0x3, b"", true), FrameError::Protocol("unknown opcode")),
            (
                {
                    let mut f = frame(true, 1, b"x", true);
                    f[0] |= 0x40;
                    f
                },
                FrameError::Protocol("reserved bits set (compression is not supported)"),
            ),
            (frame(true, 1, &[0; 1025], true), FrameError::TooBig(1024)),
        ] {
            let mut r = FrameReader::default();
            let mut out = Vec::new();
            assert_eq!(r.feed(&bytes, 1024, &mut out), Err(err));
            assert!(out.is_empty());
        }
        // A frame announcing 2^63 bytes is refused from its header alone.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend(u64::MAX.to_be_bytes());
        huge.extend([0; 4]);
        let mut r = FrameReader::default();
        assert_eq!(r.feed(&huge, 1024, &mut Vec::new()), Err(FrameError::TooBig(1024)));
    }

    #[test]
    fn control_frames_of_125_bytes_and_empty_frames_are_fine() {
        let mut stream = frame(true, 0xA, &[1; 125], true);
        stream.extend(frame(true, 0x9, b"", true));
        stream.extend(frame(false, 1, b"", true));
        stream.extend(frame(true, 0, b"ab", true));
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        r.feed(&stream, 1024, &mut out).unwrap();
        let kinds: Vec<(bool, OpCode, usize)> = out.iter().map(|f| (f.fin, f.opcode, f.payload.len())).collect();
        assert_eq!(
            kinds,
            [
                (true, OpCode::Pong, 125),
                (true, OpCode::Ping, 0),
                (false, OpCode::Text, 0),
                (true, OpCode::Continuation, 2)
            ]
        );
    }
}
