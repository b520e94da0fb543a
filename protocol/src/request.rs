//! Parsing one client text frame into a [`Request`].
//!
//! simd-json parses the frame in place (it rewrites the buffer). The `body`
//! of a `send` is kept as canonical JSON text: opaque to the server, stored
//! and forwarded as it came (whitespace aside).

use simd_json::BorrowedValue;
use simd_json::prelude::*;

use crate::codes::ErrorCode;
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
}

impl Request {
    pub fn op(&self) -> &'static str {
        match self {
            Request::Auth { .. } => "auth",
            Request::Join { .. } => "join",
            Request::Leave { .. } => "leave",
            Request::Send { .. } => "send",
            Request::History { .. } => "history",
            Request::Presence { .. } => "presence",
            Request::Typing { .. } => "typing",
            Request::Ping => "ping",
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
    let value = simd_json::to_borrowed_value(buf).map_err(|e| ParseError {
        id: None,
        code: ErrorCode::BadRequest,
        message: format!("malformed JSON: {e}"),
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
    let op = match value.get("op").and_then(|v| v.as_str()) {
        Some(op) => op,
        None => return Err(bad(id, "missing \"op\"".into())),
    };
    let req = match op {
        "auth" => Request::Auth {
            token: opt_str(&value, "token", id)?.map(str::to_owned),
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
            let body = match value.get("body") {
                Some(b) => b.encode(),
                None => return Err(bad(id, "missing \"body\"".into())),
            };
            let ephemeral = match value.get("ephemeral") {
                None => false,
                Some(v) if v.is_null() => false,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(id, "\"ephemeral\" must be a boolean".into()))?,
            };
            Request::Send { room, body, ephemeral }
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
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(id, format!("unknown op {shown:?}")));
        }
    };
    Ok((id, req))
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
                    body: r#"{"t":"hi","n":[1,2]}"#.into(),
                    ephemeral: false
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
                ephemeral: true
            }
        );
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
        ] {
            let err = parse(frame).expect_err(frame);
            assert_eq!(err.code, ErrorCode::BadRequest, "{frame}");
            assert_eq!(err.id, id, "{frame}");
        }
    }
}
