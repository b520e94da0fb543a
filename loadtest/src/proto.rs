//! The wire protocols `loadtest` speaks: ours (protocol v1) and, for
//! side-by-side runs, Centrifugo's JSON client protocol (v2). Frames of
//! known shapes are written and read by hand, without a JSON parse per
//! message, so the load generator stays cheap.

use clap::ValueEnum;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// This gateway's protocol v1 (`op` frames, `/ws`).
    Chat,
    /// Centrifugo's JSON protocol (`/connection/websocket`): connect,
    /// subscribe, publish; publications arrive as `push` frames.
    Centrifugo,
}

/// What a received frame is.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A message delivered to a member.
    Delivery,
    /// A successful reply to request `id`.
    Ok(Option<u64>),
    /// An error reply to request `id` (if known), with its code.
    Error(Option<u64>, String),
    /// An application-level ping that must be answered with this frame.
    Ping(&'static str),
    Other,
}

impl Protocol {
    /// Frames that authenticate (anonymously, or with `token` in the
    /// header for `Chat`) and join `rooms` (with `since` where given).
    /// Replies to them come back with ids 0..n.
    pub fn setup(self, anonymous_auth: bool, rooms: &[(String, Option<u64>)]) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Protocol::Chat => {
                if anonymous_auth {
                    out.push(r#"{"op":"auth","id":0}"#.to_string());
                }
                for (i, (room, since)) in rooms.iter().enumerate() {
                    let mut f = json!({"op":"join","id": i + 1,"room": room});
                    if let Some(s) = since {
                        f["since"] = json!(s.to_string());
                    }
                    out.push(f.to_string());
                }
            }
            Protocol::Centrifugo => {
                out.push(r#"{"id":1000000,"connect":{}}"#.to_string());
                for (i, (room, _)) in rooms.iter().enumerate() {
                    out.push(json!({"id": i + 1, "subscribe": {"channel": room}}).to_string());
                }
            }
        }
        out
    }

    /// A message to `room` with `body` (JSON text) as request `id`.
    pub fn send(self, id: u64, room: &str, body: &str) -> String {
        match self {
            Protocol::Chat => format!(r#"{{"op":"send","id":{id},"room":"{room}","body":{body}}}"#),
            Protocol::Centrifugo => format!(r#"{{"id":{id},"publish":{{"channel":"{room}","data":{body}}}}}"#),
        }
    }

    /// The pattern right before the room name in a delivery.
    pub fn room_marker(self) -> &'static [u8] {
        match self {
            Protocol::Chat => br#""room":""#,
            Protocol::Centrifugo => br#""channel":""#,
        }
    }

    /// The pattern right before the send timestamp in a delivery.
    pub fn time_marker(self) -> &'static [u8] {
        match self {
            Protocol::Chat => br#""body":{"t":"#,
            Protocol::Centrifugo => br#""data":{"t":"#,
        }
    }

    pub fn classify(self, f: &[u8]) -> Frame {
        match self {
            Protocol::Chat => {
                // (1.1) Edits, deletions and reactions are room events
                // with ids in the room's order, delivered like messages.
                if f.starts_with(br#"{"op":"msg""#)
                    || f.starts_with(br#"{"op":"edit""#)
                    || f.starts_with(br#"{"op":"react""#)
                    || f.starts_with(br#"{"op":"unreact""#)
                    || f.starts_with(br#"{"op":"delete""#)
                {
                    Frame::Delivery
                } else if f.starts_with(br#"{"op":"ok""#) {
                    Frame::Ok(number_after(f, br#""id":"#))
                } else if f.starts_with(br#"{"op":"error""#) {
                    Frame::Error(number_after(f, br#""id":"#), code_of(f, br#""code":""#))
                } else {
                    Frame::Other
                }
            }
            Protocol::Centrifugo => {
                if f == b"{}" {
                    Frame::Ping("{}")
                } else if f.starts_with(br#"{"push":"#) {
                    if find(f, br#""pub":"#).is_some() {
                        Frame::Delivery
                    } else {
                        Frame::Other
                    }
                } else if f.starts_with(br#"{"id":"#) {
                    let id = number_after(f, br#""id":"#);
                    if find(f, br#""error":"#).is_some() {
                        Frame::Error(id, code_of(f, br#""message":""#))
                    } else {
                        Frame::Ok(id)
                    }
                } else {
                    Frame::Other
                }
            }
        }
    }

    /// Frames in one WebSocket message: Centrifugo may batch several,
    /// one JSON object per line.
    pub fn split(self, message: &[u8]) -> impl Iterator<Item = &[u8]> {
        message.split(|&b| b == b'\n').filter(|f| !f.is_empty())
    }
}

fn code_of(f: &[u8], marker: &[u8]) -> String {
    find(f, marker)
        .and_then(|at| {
            let rest = &f[at + marker.len()..];
            let end = memchr::memchr(b'"', rest)?;
            std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
        })
        .unwrap_or_else(|| "unparsed".into())
}

/// The decimal number right after the first `pattern` in a frame: fields of
/// fixed, known frames, read without parsing the JSON.
pub(crate) fn number_after(frame: &[u8], pattern: &[u8]) -> Option<u64> {
    let at = find(frame, pattern)? + pattern.len();
    let digits = frame[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&frame[at..at + digits]).ok()?.parse().ok()
}

/// The room number in a frame (`<marker><prefix>-<n>"`).
pub(crate) fn room_number(frame: &[u8], marker: &[u8]) -> Option<usize> {
    let at = find(frame, marker)? + marker.len();
    let end = at + memchr::memchr(b'"', &frame[at..])?;
    let room = std::str::from_utf8(&frame[at..end]).ok()?;
    room.rsplit('-').next()?.parse().ok()
}

/// The id of a `msg` event (`"msg":"<id>"`); only our protocol numbers
/// messages.
pub(crate) fn msg_id(frame: &[u8]) -> Option<u64> {
    number_after(frame, br#""msg":""#)
}

/// Where `needle` first occurs in a small frame. `memmem::find` builds a
/// searcher on every call, which profiled as a visible cost per delivery;
/// frames are short, so candidates by first byte are cheaper.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    memchr::memchr_iter(first, hay).find(|&at| hay[at..].starts_with(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_protocols() {
        let c = Protocol::Centrifugo;
        assert_eq!(c.classify(b"{}"), Frame::Ping("{}"));
        assert_eq!(c.classify(br#"{"id":7,"publish":{}}"#), Frame::Ok(Some(7)));
        assert_eq!(
            c.classify(br#"{"push":{"channel":"lt-1","pub":{"data":{"t":5}}}}"#),
            Frame::Delivery
        );
        assert_eq!(
            c.classify(br#"{"id":3,"error":{"code":103,"message":"permission denied"}}"#),
            Frame::Error(Some(3), "permission denied".into())
        );
        assert_eq!(c.split(b"{}\n{\"id\":1}\n").count(), 2);
        let p = Protocol::Chat;
        assert_eq!(p.classify(br#"{"op":"ok","id":42,"room":"r"}"#), Frame::Ok(Some(42)));
        assert_eq!(
            p.classify(br#"{"op":"error","id":4,"code":"forbidden","message":"x"}"#),
            Frame::Error(Some(4), "forbidden".into())
        );
        assert_eq!(p.classify(br#"{"op":"msg","room":"r"}"#), Frame::Delivery);
        assert_eq!(p.send(1, "r", "{}"), r#"{"op":"send","id":1,"room":"r","body":{}}"#);
        assert_eq!(c.send(1, "r", "{}"), r#"{"id":1,"publish":{"channel":"r","data":{}}}"#);
    }

    #[test]
    fn extracts_fields_without_parsing_json() {
        let f = br#"{"op":"msg","room":"lt-3","msg":"9","from":"u","ts":1,"body":{"t":1700000000123456,"s":0,"p":""}}"#;
        assert_eq!(
            number_after(f, Protocol::Chat.time_marker()),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(msg_id(f), Some(9));
        assert_eq!(room_number(f, Protocol::Chat.room_marker()), Some(3));
        let push = br#"{"push":{"channel":"lt-17","pub":{"data":{"t":5,"s":0}}}}"#;
        assert_eq!(number_after(push, Protocol::Centrifugo.time_marker()), Some(5));
        assert_eq!(room_number(push, Protocol::Centrifugo.room_marker()), Some(17));
    }

    #[test]
    fn finds_the_first_occurrence() {
        assert_eq!(find(br#"{"t":1,"t":2}"#, br#""t":"#), Some(1));
        assert_eq!(find(b"aab", b"ab"), Some(1));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"abc", b""), None);
    }
}
