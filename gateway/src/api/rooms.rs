//! (1.1) What the server API tells about a room: its counts and its last
//! message, and who is present, over the whole cluster when the bus knows
//! it (Redis), else this node.

use std::collections::BTreeMap;

use dispatcher::Page;
use http::StatusCode;
use protocol::encode::Obj;

use super::body::json;
use super::{ApiError, ApiResult};
use crate::Node;

/// Each user in the room with their connections in it.
async fn members(node: &Node, room: &str) -> Result<BTreeMap<String, u32>, ApiError> {
    match node.bus.room_members(room).await {
        Ok(Some(members)) => Ok(members.into_iter().collect()),
        Ok(None) => Ok(node
            .hub
            .members(room)
            .into_iter()
            .map(|(u, n)| (u.to_string(), n))
            .collect()),
        Err(e) => Err(ApiError::unavailable(&e)),
    }
}

/// `GET /api/rooms/{room}`: `members` the connections in the room,
/// `users` the distinct users among them, `last_msg` its newest message.
pub async fn info(node: &Node, room: String) -> ApiResult {
    let members = members(node, &room).await?;
    let newest = node
        .bus
        .history(&room, Page::Newest, 1, None)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let mut reply = Obj::new("ok")
        .str("room", &room)
        .num("members", members.values().map(|&n| u64::from(n)).sum())
        .num("users", members.len() as u64);
    if let Some(last) = newest.last() {
        reply = reply.msg_id("last_msg", last.id);
    }
    Ok(json(StatusCode::OK, reply.finish()))
}

/// `GET /api/rooms/{room}/presence`
pub async fn presence(node: &Node, room: String) -> ApiResult {
    let members = members(node, &room).await?;
    Ok(json(
        StatusCode::OK,
        Obj::new("ok")
            .str("room", &room)
            .str_array("users", members.keys().map(String::as_str))
            .finish(),
    ))
}
