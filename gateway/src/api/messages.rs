//! Messages through the server API: publish one, read history, delete one
//! as a moderator (1.1), broadcast one body to many rooms (1.1). Bodies
//! meet the rules a WebSocket `send` meets (size, depth, grammar).

use dispatcher::{Change, ChangeKind, NewMessage, Page, Refusal};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use protocol::ErrorCode;
use protocol::encode::{Obj, history_reply};
use protocol::room::is_valid_room;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::{self, json};
use super::{ApiError, ApiResult, check_user};
use crate::Node;
use crate::view::view;

/// Rooms one broadcast may name.
pub const MAX_BROADCAST_ROOMS: usize = 1000;

#[derive(Deserialize)]
struct Publish<'a> {
    /// `Some` whenever the field is there, `null` included (a body may be
    /// any JSON value); serde's `Option` would read `null` as absent.
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    from: Option<String>,
    /// (1.1) The message this one replies to: a decimal string, as ids are
    /// sent, or a non-negative integer.
    reply_to: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Broadcast<'a> {
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    from: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A message id as the protocol sends them (a decimal string) or a
/// non-negative integer; `Err` when it is neither.
fn message_id(v: Option<&serde_json::Value>) -> Result<Option<u64>, ()> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => decimal_id(s).map(Some).ok_or(()),
        Some(serde_json::Value::Number(n)) => n.as_u64().map(Some).ok_or(()),
        Some(_) => Err(()),
    }
}

fn decimal_id(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// A body that may be stored: present, within the size, valid.
fn checked_body<'a>(node: &Node, body: Option<&'a RawValue>) -> Result<&'a str, ApiError> {
    let body = body.ok_or_else(|| ApiError::bad_request("missing \"body\""))?.get();
    let max = node.settings.config.max_body_bytes;
    if body.len() > max {
        return Err(ApiError::new(ErrorCode::TooLarge, format!("body is over {max} bytes")));
    }
    protocol::body::validate(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(body)
}

fn sender(from: Option<String>) -> Result<String, ApiError> {
    let from = from.unwrap_or_else(|| "system".into());
    check_user(&from).map_err(|e| ApiError::bad_request(format!("\"from\": {}", e.message)))?;
    Ok(from)
}

/// `POST /api/rooms/{room}/messages`
pub async fn publish(node: &Node, room: String, req: Request<Incoming>) -> ApiResult {
    let bytes = body::read(node, req, node.settings.config.max_frame_bytes).await?;
    let parsed: Publish = body::parse(&bytes, "{\"body\":<any JSON>,\"from\":<user id>?,\"reply_to\":<id>?}")?;
    let body = checked_body(node, parsed.body)?;
    let from = sender(parsed.from)?;
    let reply_to = message_id(parsed.reply_to.as_ref())
        .map_err(|()| ApiError::bad_request("\"reply_to\" must be a message id (a decimal string)"))?;
    let msg = NewMessage {
        reply_to,
        ..NewMessage::new(room, from, body)
    };
    let p = node.bus.publish(msg).await.map_err(|e| ApiError::unavailable(&e))?;
    Ok(json(
        StatusCode::OK,
        Obj::new("ok").msg_id("msg", p.id).num("ts", p.ts).finish(),
    ))
}

/// `GET /api/rooms/{room}/messages?before=&after=&limit=`
pub async fn history(node: &Node, room: String, query: &str) -> ApiResult {
    let (mut before, mut after, mut limit) = (None, None, protocol::HISTORY_DEFAULT_LIMIT);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if value.is_empty() {
            continue;
        }
        let Ok(n) = value.parse::<u64>() else {
            return Err(ApiError::bad_request(format!("{key} must be a non-negative integer")));
        };
        match key {
            "before" => before = Some(n),
            "after" => after = Some(n),
            "limit" if (1..=protocol::HISTORY_MAX_LIMIT as u64).contains(&n) => limit = n as usize,
            "limit" => {
                return Err(ApiError::bad_request(format!(
                    "limit must be from 1 to {}",
                    protocol::HISTORY_MAX_LIMIT
                )));
            }
            _ => {}
        }
    }
    let page = match (before, after) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give before or after, not both")),
        (Some(b), None) => Page::Before(b),
        (None, Some(a)) => Page::After(a),
        (None, None) => Page::Newest,
    };
    let messages = node
        .bus
        .history(&room, page, limit, None)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(json(
        StatusCode::OK,
        history_reply(None, &room, messages.iter().map(view)),
    ))
}

/// `DELETE /api/rooms/{room}/messages/{msg}` (1.1): deleted as a
/// moderator would, a room event like any other (`from` is `system`).
pub async fn delete(node: &Node, room: String, msg: &str) -> ApiResult {
    let target = decimal_id(msg).ok_or_else(|| ApiError::bad_request("the message id must be a decimal string"))?;
    let event = NewMessage {
        change: Some(Change {
            target,
            kind: ChangeKind::Delete,
        }),
        moderator: true,
        ..NewMessage::new(room.as_str(), "system", "")
    };
    match node.bus.publish(event).await {
        Ok(p) => Ok(json(
            StatusCode::OK,
            Obj::new("ok")
                .str("room", &room)
                .msg_id("msg", p.id)
                .num("ts", p.ts)
                .finish(),
        )),
        Err(dispatcher::BusError::Refused(Refusal::NotFound)) => Err(ApiError::new(
            ErrorCode::NotFound,
            "no such message in this room (or it was deleted)",
        )),
        Err(e) => Err(ApiError::unavailable(&e)),
    }
}

/// `POST /api/broadcast` (1.1): one message per room, published together
/// (one pipeline per shard stream). All stored: 200 with each room's id.
/// Any not: 503 with the ones that were and the rooms that failed, to be
/// retried alone.
pub async fn broadcast(node: &Node, req: Request<Incoming>) -> ApiResult {
    let limit = node.settings.config.max_frame_bytes + MAX_BROADCAST_ROOMS * 132;
    let bytes = body::read(node, req, limit).await?;
    let parsed: Broadcast = body::parse(
        &bytes,
        "{\"rooms\":[<room>,...],\"body\":<any JSON>,\"from\":<user id>?}",
    )?;
    if parsed.rooms.is_empty() || parsed.rooms.len() > MAX_BROADCAST_ROOMS {
        return Err(ApiError::bad_request(format!(
            "\"rooms\" must name 1 to {MAX_BROADCAST_ROOMS} rooms"
        )));
    }
    if let Some(bad) = parsed.rooms.iter().find(|r| !is_valid_room(r)) {
        return Err(ApiError::bad_request(format!(
            "invalid room {bad:?}: use 1 to 128 characters of [A-Za-z0-9_.:-]"
        )));
    }
    let mut rooms = parsed.rooms;
    rooms.sort();
    rooms.dedup();
    let body = checked_body(node, parsed.body)?;
    let from = sender(parsed.from)?;
    let msgs = rooms
        .iter()
        .map(|r| NewMessage::new(r.as_str(), from.as_str(), body))
        .collect();
    let results = node.bus.publish_batch(msgs).await;
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for (room, r) in rooms.iter().zip(results) {
        match r {
            Ok(p) => done.push(serde_json::json!({"room": room, "msg": p.id.to_string(), "ts": p.ts})),
            Err(e) => {
                tracing::debug!(room, error = %e, "broadcast: not published");
                failed.push(room.as_str());
            }
        }
    }
    if failed.is_empty() {
        let reply = serde_json::json!({"op": "ok", "messages": done});
        return Ok(json(StatusCode::OK, reply.to_string().into_bytes()));
    }
    let reply = serde_json::json!({
        "op": "error",
        "code": ErrorCode::Unavailable.as_str(),
        "message": "some rooms' messages were not published: retry those in \"failed\"",
        "messages": done,
        "failed": failed,
    });
    let mut response = json(StatusCode::SERVICE_UNAVAILABLE, reply.to_string().into_bytes());
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(1));
    Ok(response)
}
