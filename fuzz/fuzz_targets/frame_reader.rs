//! The gateway's WebSocket read path on arbitrary bytes:
//! `gateway::ws::reader::FrameReader` fed a byte stream in reads of
//! fuzzed sizes, as the connection feeds it what each socket read returned.
//!
//! Checked:
//! - nothing panics;
//! - no frame it yields exceeds the configured max size, and it never
//!   holds more than the header announced (at most twice what arrived);
//! - it reads exactly what RFC 6455 says, as the frames are read here
//!   independently from the whole stream: the same frames (unmasked), and
//!   an error, of a kind the header breaks, at the first header that
//!   breaks a rule (mask, reserved bits, opcode, control frames, the max);
//! - how the stream is split into reads changes nothing.

#![no_main]

use arbitrary::Arbitrary;
use gateway::ws::reader::{FrameError, FrameReader, InFrame, OpCode};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// The largest payload accepted.
    max: u16,
    /// Sizes of successive reads (cycled, +1); empty: one read.
    reads: Vec<u8>,
    stream: Vec<u8>,
}

/// The stream as RFC 6455 reads it: its frames, then how it ends.
struct Expected {
    frames: Vec<InFrame>,
    end: End,
}

enum End {
    /// At a frame boundary.
    Boundary,
    /// In a header.
    Header,
    /// In a payload, of which this many bytes arrived.
    Payload(usize),
    /// At a header breaking the rules: the errors it may give.
    Broken(Vec<FrameError>),
}

fn expected(s: &[u8], max: usize) -> Expected {
    let mut frames = Vec::new();
    let mut pos = 0usize;
    let end = loop {
        if pos == s.len() {
            break End::Boundary;
        }
        if s.len() - pos < 2 {
            break End::Header;
        }
        let (b0, b1) = (s[pos], s[pos + 1]);
        let masked = b1 & 0x80 != 0;
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let head = 2 + ext + if masked { 4 } else { 0 };
        if s.len() - pos < head {
            break End::Header;
        }
        let len = match ext {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([s[pos + 2], s[pos + 3]])),
            _ => u64::from_be_bytes(s[pos + 2..pos + 10].try_into().unwrap()),
        };
        let fin = b0 & 0x80 != 0;
        let opcode = match b0 & 0x0f {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        };
        let control = matches!(opcode, Some(OpCode::Close | OpCode::Ping | OpCode::Pong));
        let mut broken = Vec::new();
        if !masked {
            broken.push(FrameError::Protocol("unmasked client frame"));
        }
        if b0 & 0x70 != 0 {
            broken.push(FrameError::Protocol("reserved bits set (compression is not supported)"));
        }
        if opcode.is_none() {
            broken.push(FrameError::Protocol("unknown opcode"));
        }
        if control && len > 125 {
            broken.push(FrameError::Protocol("control frame over 125 bytes"));
        }
        if control && !fin {
            broken.push(FrameError::Protocol("fragmented control frame"));
        }
        if len > max as u64 {
            broken.push(FrameError::TooBig(max));
        }
        if !broken.is_empty() {
            break End::Broken(broken);
        }
        let start = pos + head;
        let arrived = s.len() - start;
        if (arrived as u64) < len {
            break End::Payload(arrived);
        }
        let mask = &s[start - 4..start];
        let payload = s[start..start + len as usize]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        frames.push(InFrame {
            fin,
            opcode: opcode.expect("checked"),
            payload,
        });
        pos = start + len as usize;
    };
    Expected { frames, end }
}

/// Feeds the stream in reads of the given sizes (all at once without any);
/// stops at the first error, as the connection does.
fn read(stream: &[u8], reads: &[u8], max: usize) -> (FrameReader, Vec<InFrame>, Result<(), FrameError>) {
    let mut r = FrameReader::default();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut n = 0;
    while !rest.is_empty() {
        let size = match reads {
            [] => rest.len(),
            sizes => (usize::from(sizes[n % sizes.len()]) + 1).min(rest.len()),
        };
        n += 1;
        let (piece, after) = rest.split_at(size);
        rest = after;
        let before = frames.len();
        let fed = r.feed(piece, max, &mut frames);
        for f in &frames[before..] {
            assert!(f.payload.len() <= max, "{} byte frame, max {max}", f.payload.len());
        }
        if let Err(e) = fed {
            return (r, frames, Err(e));
        }
        assert!(r.held() <= max, "holds {} bytes, max {max}", r.held());
    }
    (r, frames, Ok(()))
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max);
    let want = expected(&input.stream, max);
    let (r, frames, result) = read(&input.stream, &input.reads, max);
    assert_eq!(frames, want.frames, "frames");
    match (&want.end, &result) {
        (End::Broken(errors), Err(e)) => assert!(errors.contains(e), "{e:?}, expected one of {errors:?}"),
        (End::Broken(errors), Ok(())) => panic!("no error, expected one of {errors:?}"),
        (_, Err(e)) => panic!("error {e:?} on a valid stream"),
        (End::Boundary, Ok(())) => assert!(r.at_boundary() && r.held() == 0),
        (End::Header, Ok(())) => assert!(!r.at_boundary() && r.held() == 0),
        (End::Payload(arrived), Ok(())) => {
            assert!(!r.at_boundary());
            assert!(
                r.held() >= *arrived && r.held() <= 2 * arrived,
                "holds {} of {arrived} arrived",
                r.held()
            );
        }
    }
    // Split differently (here: all at once), the same frames and outcome.
    if !input.reads.is_empty() {
        let (_, whole, whole_result) = read(&input.stream, &[], max);
        assert_eq!((whole, whole_result), (frames, result));
    }
});
