//! Parsing one client text frame into a [`Request`].
//!
//! simd-json parses the frame in place (it rewrites the buffer). The `body`
//! of a `send` is opaque to the server: its own bytes are found in the
//! frame and validated ([`crate::body`]), and taken out before simd-json
//! sees the rest, then stored and forwarded exactly as they came,
//! whitespace included. Values in a frame nest at most [`MAX_BODY_DEPTH`]
//! levels.
//!
//! Error messages are our own short text, never the JSON library's
//! (offsets, expected tokens, internal type names).

use simd_json::prelude::*;
use simd_json::{BorrowedValue, Buffers, ErrorType};

use crate::body::{BodyError, MAX_BODY_DEPTH, find_body};
use crate::codes::ErrorCode;
use crate::event::{Change, ChangeKind, is_valid_reaction_key};
use crate::room::is_valid_room;

/// Most messages `history` returns in one page, and the default page.
pub const HISTORY_MAX_LIMIT: usize = 500;
pub const HISTORY_DEFAULT_LIMIT: usize = 50;

/// Which page of a room's history `history` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest messages.
    Newest,
    /// The messages just before this id.
    Before(u64),
    /// The messages just after this id.
    After(u64),
}

/// One request from a client, with its fields checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Auth {
        token: Option<String>,
    },
    /// (1.1) A new token for the connection's user.
    Refresh {
        token: String,
    },
    Join {
        room: String,
        since: Option<u64>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        body: String,
        ephemeral: bool,
        /// (1.1) The client's name for this message: a repeat within the
        /// dedupe window is answered with the first one's id.
        nonce: Option<String>,
        /// (1.1) The message this one replies to.
        reply_to: Option<u64>,
    },
    History {
        room: String,
        page: HistoryPage,
        limit: usize,
    },
    Presence {
        room: String,
    },
    Typing {
        room: String,
    },
    Ping,
    /// (1.1) `edit`, `delete`, `react`, `unreact`: an event on message
    /// `change.target`; `body` is the new body of an edit.
    Change {
        room: String,
        change: Change,
        body: Option<String>,
    },
    /// (1.1) Moves the user's read marker forward.
    Read {
        room: String,
        msg: u64,
    },
    /// (1.1) The room's read markers.
    Receipts {
        room: String,
    },
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Auth { .. } => "auth",
            Request::Refresh { .. } => "refresh",
            Request::Join { .. } => "join",
            Request::Leave { .. } => "leave",
            Request::Send { .. } => "send",
            Request::History { .. } => "history",
            Request::Presence { .. } => "presence",
            Request::Typing { .. } => "typing",
            Request::Ping => "ping",
            Request::Change { change, .. } => change.kind.op(),
            Request::Read { .. } => "read",
            Request::Receipts { .. } => "receipts",
        }
    }
}

/// Why a frame is not a valid request; `id` is echoed when it could be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ParseError {
    pub id: Option<i64>,
    pub code: ErrorCode,
    pub message: String,
}

/// Parses one text frame. The buffer is rewritten by simd-json.
pub fn parse_request(buf: &mut [u8]) -> Result<(Option<i64>, Request), ParseError> {
    let body = take_body(buf);
    // A repeated body is answered once the id is known.
    if let Err(e @ (BodyError::Malformed | BodyError::TooDeep)) = body {
        return Err(bad(None, e.to_string()));
    }
    // Any value in a frame nests as deep as a body may (one more level for
    // the frame's own object).
    let mut buffers = Buffers::with_max_depth(buf.len(), MAX_BODY_DEPTH + 1);
    // simd-json's own words (offsets, expected tokens) are not sent.
    let value = simd_json::to_borrowed_value_with_buffers(buf, &mut buffers).map_err(|e| {
        if *e.error() == ErrorType::DepthLimitExceeded {
            bad(
                None,
                format!("frame nests arrays and objects deeper than {MAX_BODY_DEPTH} levels"),
            )
        } else {
            bad(None, BodyError::Malformed.to_string())
        }
    })?;
    if !value.is_object() {
        return Err(bad(None, "a frame must be one JSON object".into()));
    }
    let id = match value.get("id") {
        None => None,
        Some(v) if v.is_null() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(n),
            None => return Err(bad(None, "\"id\" must be an integer".into())),
        },
    };
    let body = body.map_err(|e| bad(id, e.to_string()))?;
    let op = match value.get("op").and_then(|v| v.as_str()) {
        Some(op) => op,
        None => return Err(bad(id, "missing \"op\"".into())),
    };
    let req = match op {
        "auth" => Request::Auth {
            token: opt_str(&value, "token", id)?.map(str::to_owned),
        },
        "refresh" => Request::Refresh {
            token: opt_str(&value, "token", id)?
                .ok_or_else(|| bad(id, "missing \"token\"".into()))?
                .to_owned(),
        },
        "join" => Request::Join {
            room: room(&value, id)?,
            since: opt_msg_id(&value, "since", id)?,
        },
        "leave" => Request::Leave {
            room: room(&value, id)?,
        },
        "send" => {
            let room = room(&value, id)?;
            let Some(body) = body else {
                return Err(bad(id, "missing \"body\"".into()));
            };
            let ephemeral = match value.get("ephemeral") {
                None => false,
                Some(v) if v.is_null() => false,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(id, "\"ephemeral\" must be a boolean".into()))?,
            };
            let nonce = match opt_str(&value, "nonce", id)? {
                None => None,
                Some(n) if is_valid_nonce(n) => Some(n.to_owned()),
                Some(_) => return Err(bad(id, "invalid nonce: use 1 to 64 characters of [A-Za-z0-9_-]".into())),
            };
            let reply_to = opt_msg_id(&value, "reply_to", id)?;
            Request::Send {
                room,
                body,
                ephemeral,
                nonce,
                reply_to,
            }
        }
        "history" => {
            let room = room(&value, id)?;
            let before = opt_msg_id(&value, "before", id)?;
            let after = opt_msg_id(&value, "after", id)?;
            let page = match (before, after) {
                (Some(_), Some(_)) => {
                    return Err(bad(id, "give \"before\" or \"after\", not both".into()));
                }
                (Some(b), None) => HistoryPage::Before(b),
                (None, Some(a)) => HistoryPage::After(a),
                (None, None) => HistoryPage::Newest,
            };
            let limit = match value.get("limit") {
                None => HISTORY_DEFAULT_LIMIT,
                Some(v) if v.is_null() => HISTORY_DEFAULT_LIMIT,
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=HISTORY_MAX_LIMIT as u64).contains(&n) => n as usize,
                    _ => {
                        return Err(bad(
                            id,
                            format!("\"limit\" must be an integer from 1 to {HISTORY_MAX_LIMIT}"),
                        ));
                    }
                },
            };
            Request::History { room, page, limit }
        }
        "presence" => Request::Presence {
            room: room(&value, id)?,
        },
        "typing" => Request::Typing {
            room: room(&value, id)?,
        },
        "ping" => Request::Ping,
        "edit" | "delete" | "react" | "unreact" => {
            let room = room(&value, id)?;
            let target = msg(&value, id)?;
            let key = || match opt_str(&value, "key", id)? {
                None => Err(bad(id, "missing \"key\"".into())),
                Some(k) if is_valid_reaction_key(k) => Ok(k.to_owned()),
                Some(_) => Err(bad(
                    id,
                    "invalid key: use 1 to 32 bytes of text without control characters".into(),
                )),
            };
            let kind = match op {
                "edit" => ChangeKind::Edit,
                "delete" => ChangeKind::Delete,
                "react" => ChangeKind::React(key()?),
                _ => ChangeKind::Unreact(key()?),
            };
            let body = match (&kind, body) {
                (ChangeKind::Edit, None) => return Err(bad(id, "missing \"body\"".into())),
                (ChangeKind::Edit, b) => b,
                _ => None,
            };
            Request::Change {
                room,
                change: Change { target, kind },
                body,
            }
        }
        "read" => Request::Read {
            room: room(&value, id)?,
            msg: msg(&value, id)?,
        },
        "receipts" => Request::Receipts {
            room: room(&value, id)?,
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(id, format!("unknown op {shown:?}")));
        }
    };
    Ok((id, req))
}

/// Takes the top-level `body` out of the frame: its own bytes, validated
/// by [`find_body`] (numbers of any size pass), and a `0` padded with
/// spaces left in their place. simd-json then parses the rest: it never
/// rewrites the body, nor refuses the numbers it cannot represent. A valid
/// body in a frame that is valid with the placeholder means the frame as
/// sent was valid.
fn take_body(buf: &mut [u8]) -> Result<Option<String>, BodyError> {
    let Some(span) = find_body(buf)? else {
        return Ok(None);
    };
    let body = std::str::from_utf8(&buf[span.clone()])
        .map_err(|_| BodyError::Malformed)?
        .to_owned();
    buf[span.start] = b'0';
    buf[span.start + 1..span.end].fill(b' ');
    Ok(Some(body))
}

fn bad(id: Option<i64>, message: String) -> ParseError {
    ParseError {
        id,
        code: ErrorCode::BadRequest,
        message,
    }
}

fn opt_str<'v>(value: &'v BorrowedValue<'_>, key: &str, id: Option<i64>) -> Result<Option<&'v str>, ParseError> {
    match value.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| bad(id, format!("\"{key}\" must be a string"))),
    }
}

/// (1.1) A `send`'s nonce: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_nonce(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn room(value: &BorrowedValue<'_>, id: Option<i64>) -> Result<String, ParseError> {
    match opt_str(value, "room", id)? {
        None => Err(bad(id, "missing \"room\"".into())),
        Some(r) if is_valid_room(r) => Ok(r.to_owned()),
        Some(_) => Err(bad(
            id,
            "invalid room: use 1 to 128 characters of [A-Za-z0-9_.:-]".into(),
        )),
    }
}

/// The required `msg` of the (1.1) ops that name a message.
fn msg(value: &BorrowedValue<'_>, id: Option<i64>) -> Result<u64, ParseError> {
    opt_msg_id(value, "msg", id)?.ok_or_else(|| bad(id, "missing \"msg\"".into()))
}

/// A message id: a decimal string (as the server sends them) or a
/// non-negative integer.
fn opt_msg_id(value: &BorrowedValue<'_>, key: &str, id: Option<i64>) -> Result<Option<u64>, ParseError> {
    let err = || bad(id, format!("\"{key}\" must be a message id (a decimal string)"));
    match value.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => {
            if let Some(s) = v.as_str() {
                if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                s.parse::<u64>().map(Some).map_err(|_| err())
            } else {
                v.as_u64().map(Some).ok_or_else(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<(Option<i64>, Request), ParseError> {
        parse_request(&mut s.as_bytes().to_vec())
    }

    #[test]
    fn parses_the_v1_1_event_ops() {
        let change = |frame: &str| match parse(frame).unwrap().1 {
            Request::Change { room, change, body } => (room, change, body),
            other => panic!("{frame}: {other:?}"),
        };
        assert_eq!(
            change(r#"{"op":"edit","room":"r","msg":"7","body":{"t":"x"}}"#),
            (
                "r".into(),
                Change {
                    target: 7,
                    kind: ChangeKind::Edit
                },
                Some(r#"{"t":"x"}"#.into())
            )
        );
        assert_eq!(
            change(r#"{"op":"delete","room":"r","msg":7,"body":1}"#).1.kind,
            ChangeKind::Delete
        );
        assert_eq!(
            change(r#"{"op":"react","room":"r","msg":"7","key":"👍"}"#).1.kind,
            ChangeKind::React("👍".into())
        );
        assert_eq!(
            change(r#"{"op":"unreact","room":"r","msg":"7","key":"+1"}"#).1.kind,
            ChangeKind::Unreact("+1".into())
        );
        assert_eq!(
            parse(r#"{"op":"read","id":3,"room":"r","msg":"9"}"#).unwrap(),
            (
                Some(3),
                Request::Read {
                    room: "r".into(),
                    msg: 9
                }
            )
        );
        assert_eq!(
            parse(r#"{"op":"receipts","room":"r"}"#).unwrap().1,
            Request::Receipts { room: "r".into() }
        );
    }

    #[test]
    fn parses_every_op() {
        assert_eq!(
            parse(r#"{"op":"auth","id":1,"token":"t"}"#).unwrap(),
            (
                Some(1),
                Request::Auth {
                    token: Some("t".into())
                }
            )
        );
        assert_eq!(
            parse(r#"{"op":"refresh","id":2,"token":"t2"}"#).unwrap(),
            (Some(2), Request::Refresh { token: "t2".into() })
        );
        assert_eq!(
            parse(r#"{"op":"refresh","id":3}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse(r#"{"op":"auth","id":1}"#).unwrap().1,
            Request::Auth { token: None }
        );
        assert_eq!(
            parse(r#"{"op":"join","room":"r1","since":"42"}"#).unwrap().1,
            Request::Join {
                room: "r1".into(),
                since: Some(42)
            }
        );
        assert_eq!(
            parse(r#"{"op":"join","room":"r1","since":7}"#).unwrap().1,
            Request::Join {
                room: "r1".into(),
                since: Some(7)
            }
        );
        assert_eq!(
            parse(r#"{"op":"leave","room":"r1"}"#).unwrap().1,
            Request::Leave { room: "r1".into() }
        );
        assert_eq!(
            parse(r#"{"op":"send","id":3,"room":"r1","body":{"t": "hi", "n":[1,2]}}"#).unwrap(),
            (
                Some(3),
                Request::Send {
                    room: "r1".into(),
                    body: r#"{"t": "hi", "n":[1,2]}"#.into(),
                    ephemeral: false,
                    nonce: None,
                    reply_to: None
                }
            )
        );
        assert_eq!(
            parse(r#"{"op":"send","room":"r1","body":"x","ephemeral":true}"#)
                .unwrap()
                .1,
            Request::Send {
                room: "r1".into(),
                body: r#""x""#.into(),
                ephemeral: true,
                nonce: None,
                reply_to: None
            }
        );
        assert_eq!(
            parse(r#"{"op":"send","room":"r1","body":1,"nonce":"a-Z_9","reply_to":"42"}"#)
                .unwrap()
                .1,
            Request::Send {
                room: "r1".into(),
                body: "1".into(),
                ephemeral: false,
                nonce: Some("a-Z_9".into()),
                reply_to: Some(42)
            }
        );
        for bad_nonce in [r#""""#, r#""a b""#, r#""é""#, "7", &format!("{:?}", "n".repeat(65))] {
            let frame = format!(r#"{{"op":"send","id":4,"room":"r1","body":1,"nonce":{bad_nonce}}}"#);
            let e = parse(&frame).unwrap_err();
            assert_eq!((e.id, e.code), (Some(4), ErrorCode::BadRequest), "{frame}");
        }
        assert_eq!(
            parse(r#"{"op":"history","room":"r1","before":"9","limit":10}"#)
                .unwrap()
                .1,
            Request::History {
                room: "r1".into(),
                page: HistoryPage::Before(9),
                limit: 10
            }
        );
        assert_eq!(
            parse(r#"{"op":"history","room":"r1"}"#).unwrap().1,
            Request::History {
                room: "r1".into(),
                page: HistoryPage::Newest,
                limit: 50
            }
        );
        assert_eq!(
            parse(r#"{"op":"presence","room":"r1"}"#).unwrap().1,
            Request::Presence { room: "r1".into() }
        );
        assert_eq!(
            parse(r#"{"op":"typing","room":"r1"}"#).unwrap().1,
            Request::Typing { room: "r1".into() }
        );
        assert_eq!(
            parse(r#"{"op":"ping","id":9,"extra":true}"#).unwrap(),
            (Some(9), Request::Ping)
        );
    }

    fn body_of(frame: &str) -> Result<String, ParseError> {
        match parse(frame)?.1 {
            Request::Send { body, .. } => Ok(body),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn send_bodies_are_the_frames_own_bytes() {
        for body in [
            "123456789012345678901234567890",
            "-0",
            "1E2",
            "0.10000000000000000555",
            "1E400",
            "-1e-400",
            r#""\u00e9\/\"\\""#,
            r#"{ "b" : 1 , "a" : [ ] }"#,
            "[\n1,\t2\r\n]",
            r#"{"x":"}]\"","y":[{"z":"["}]}"#,
        ] {
            for frame in [
                format!(r#"{{"op":"send","room":"r","body":{body}}}"#),
                format!(r#"{{ "body" : {body} , "op" : "send", "room":"r" }}"#),
            ] {
                assert_eq!(body_of(&frame).as_deref(), Ok(body), "{frame}");
            }
        }
        let keys: Vec<String> = (0..100).rev().map(|i| format!("\"k{i}\":{i}")).collect();
        let many = format!("{{{}}}", keys.join(","));
        assert_eq!(
            body_of(&format!(r#"{{"op":"send","room":"r","body":{many}}}"#)),
            Ok(many)
        );
    }

    #[test]
    fn depth_limit_and_repeated_bodies() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let frame = |body: &str| format!(r#"{{"op":"send","id":2,"room":"r","body":{body}}}"#);
        let ok = nested(MAX_BODY_DEPTH);
        assert_eq!(body_of(&frame(&ok)), Ok(ok));
        for n in [MAX_BODY_DEPTH + 1, 1000, 5000] {
            let err = parse(&frame(&nested(n))).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(err.message.contains("deeper than 64"), "{n}: {err}");
        }
        // Any field of a frame is bound by the same limit.
        let extra = format!(r#"{{"op":"ping","x":{}}}"#, nested(MAX_BODY_DEPTH));
        assert_eq!(parse(&extra).unwrap().1, Request::Ping);
        let deep_extra = format!(r#"{{"op":"ping","x":{}}}"#, nested(MAX_BODY_DEPTH + 1));
        assert!(parse(&deep_extra).unwrap_err().message.contains("deeper than 64"));
        let twice = parse(r#"{"op":"send","id":4,"room":"r","body":1,"body":2}"#).unwrap_err();
        assert_eq!((twice.id, twice.code), (Some(4), ErrorCode::BadRequest));
    }

    #[test]
    fn json_errors_say_malformed_only() {
        for frame in [
            "{not json",
            r#"{"op":"ping",}"#,
            "",
            r#"{"op":"send","room":"r","body":"\x"}"#,
            r#"{"op":"send","room":"r","body":01}"#,
            r#"{"op":"send","room":"r","body":[1,]}"#,
            r#"{"op":"send","room":"r","body":{"a"}}"#,
            "{\"op\":\"send\",\"room\":\"r\",\"body\":\"a\u{1}\"}",
            r#"{"op":"send","room":"r","body":1,"#,
            r#"{"op":"send","room":"r","body":1}x"#,
        ] {
            let err = parse(frame).unwrap_err();
            assert_eq!(err.message, "malformed JSON", "{frame}");
        }
    }

    #[test]
    fn rejects_bad_input_with_the_id_when_known() {
        for (frame, id) in [
            ("not json", None),
            ("[1,2]", None),
            (r#"{"op":"ping","id":"x"}"#, None),
            (r#"{"id":4}"#, Some(4)),
            (r#"{"op":"nope","id":5}"#, Some(5)),
            (r#"{"op":"join","id":6}"#, Some(6)),
            (r#"{"op":"join","id":6,"room":"bad room"}"#, Some(6)),
            (r#"{"op":"join","id":6,"room":""}"#, Some(6)),
            (r#"{"op":"join","id":6,"room":"r","since":"-1"}"#, Some(6)),
            (r#"{"op":"join","id":6,"room":"r","since":1.5}"#, Some(6)),
            (r#"{"op":"send","id":7,"room":"r"}"#, Some(7)),
            (r#"{"op":"send","id":7,"room":"r","body":1,"ephemeral":"yes"}"#, Some(7)),
            (r#"{"op":"history","id":8,"room":"r","limit":0}"#, Some(8)),
            (r#"{"op":"history","id":8,"room":"r","limit":501}"#, Some(8)),
            (
                r#"{"op":"history","id":8,"room":"r","before":"1","after":"2"}"#,
                Some(8),
            ),
            (r#"{"op":"auth","id":9,"token":5}"#, Some(9)),
            (r#"{"op":"edit","id":10,"room":"r","msg":"1"}"#, Some(10)),
            (r#"{"op":"edit","id":10,"room":"r","body":1}"#, Some(10)),
            (r#"{"op":"delete","id":11,"room":"r","msg":"x"}"#, Some(11)),
            (r#"{"op":"react","id":12,"room":"r","msg":"1"}"#, Some(12)),
            (r#"{"op":"react","id":12,"room":"r","msg":"1","key":""}"#, Some(12)),
            (
                r#"{"op":"unreact","id":12,"room":"r","msg":"1","key":"a\nb"}"#,
                Some(12),
            ),
            (
                r#"{"op":"react","id":12,"room":"r","msg":"1","key":"123456789012345678901234567890123"}"#,
                Some(12),
            ),
            (r#"{"op":"read","id":13,"room":"r"}"#, Some(13)),
            (r#"{"op":"receipts","id":14}"#, Some(14)),
        ] {
            let err = parse(frame).expect_err(frame);
            assert_eq!(err.code, ErrorCode::BadRequest, "{frame}");
            assert_eq!(err.id, id, "{frame}");
        }
    }
}
