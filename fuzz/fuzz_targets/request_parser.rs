//! `protocol::parse_request` on arbitrary bytes: it never panics, and what
//! it accepts holds up. The parser rewrites its buffer, so it gets a copy.
//!
//! On `Ok`:
//! - the frame as sent is one JSON object (serde_json agrees);
//! - every room it names is valid (`protocol::room::is_valid_room`);
//! - a `send`'s body is valid JSON, appears byte for byte in the frame, has
//!   no whitespace around it, and is the frame's `body` value (serde_json's
//!   reading of both agree whenever serde_json can represent them);
//! - a `history` limit is within 1..=HISTORY_MAX_LIMIT.
//!
//! On `Err`: the message is our own short text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::room::is_valid_room;
use protocol::{HISTORY_MAX_LIMIT, Request, parse_request};
use serde::de::IgnoredAny;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let (_, req) = match parse_request(&mut buf) {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(e.message.len() <= 256, "long error message: {:?}", e.message);
            return;
        }
    };
    assert!(
        serde_json::from_slice::<IgnoredAny>(data).is_ok(),
        "accepted a frame serde_json refuses: {req:?}"
    );
    let frame: Option<serde_json::Map<String, Value>> = serde_json::from_slice(data).ok();
    match &req {
        Request::Auth { .. } | Request::Ping => {}
        Request::Join { room, .. }
        | Request::Leave { room }
        | Request::Presence { room }
        | Request::Typing { room } => assert!(is_valid_room(room), "{room:?}"),
        Request::History { room, limit, .. } => {
            assert!(is_valid_room(room), "{room:?}");
            assert!((1..=HISTORY_MAX_LIMIT).contains(limit), "limit {limit}");
        }
        Request::Send { room, body, .. } => {
            assert!(is_valid_room(room), "{room:?}");
            assert!(
                serde_json::from_str::<IgnoredAny>(body).is_ok(),
                "body is not JSON: {body:?}"
            );
            assert!(
                memchr::memmem::find(data, body.as_bytes()).is_some(),
                "body is not the frame's own bytes: {body:?}"
            );
            assert_eq!(body.trim_matches([' ', '\t', '\n', '\r']), body, "whitespace kept");
            if let (Some(frame), Ok(parsed)) = (&frame, serde_json::from_str::<Value>(body)) {
                assert_eq!(frame.get("body"), Some(&parsed), "body differs from the frame's");
            }
        }
    }
});
