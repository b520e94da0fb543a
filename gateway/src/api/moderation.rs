//! (1.1) Moderation through the server API: kick (with an optional ban),
//! disconnect, revoke. Each is handed to the bus (`Bus::control`), which
//! stores what must last (the ban, the revocation) and has every node of
//! the cluster apply it to its connections; the reply comes once it is
//! stored and on its way to every node.

use std::sync::Arc;

use dispatcher::Control;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use protocol::encode::Obj;
use serde::Deserialize;

use super::body::{self, json};
use super::{ApiError, ApiResult, check_user};
use crate::Node;

/// The longest ban: ten years.
const MAX_BAN_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Request bodies here are small.
const BODY_LIMIT: usize = 4096;

#[derive(Deserialize)]
struct Kick {
    user: Option<String>,
    ban_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct Disconnect {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct Revoke {
    before: Option<u64>,
}

async fn apply(node: &Node, action: Control) -> Result<(), ApiError> {
    node.bus.control(action).await.map_err(|e| ApiError::unavailable(&e))
}

/// `POST /api/rooms/{room}/kick` `{"user":..,"ban_seconds":N?}`
pub async fn kick(node: &Node, room: String, req: Request<Incoming>) -> ApiResult {
    let bytes = body::read(node, req, BODY_LIMIT).await?;
    let parsed: Kick = body::parse(&bytes, "{\"user\":<user id>,\"ban_seconds\":<seconds>?}")?;
    let user = parsed.user.ok_or_else(|| ApiError::bad_request("missing \"user\""))?;
    check_user(&user)?;
    let ban_seconds = parsed.ban_seconds.filter(|&s| s > 0);
    if ban_seconds.is_some_and(|s| s > MAX_BAN_SECONDS) {
        return Err(ApiError::bad_request(format!(
            "\"ban_seconds\" is at most {MAX_BAN_SECONDS}"
        )));
    }
    let ban_until = ban_seconds.map(|s| protocol::id::now_ms() + s * 1000);
    let room: Arc<str> = room.into();
    apply(
        node,
        Control::Kick {
            room: room.clone(),
            user: user.as_str().into(),
            ban_until,
        },
    )
    .await?;
    let mut reply = Obj::new("ok").str("room", &room).str("user", &user);
    if let Some(until) = ban_until {
        reply = reply.num("banned_until", until);
    }
    Ok(json(StatusCode::OK, reply.finish()))
}

/// `POST /api/users/{user}/disconnect` `{"reason":..?}`
pub async fn disconnect(node: &Node, user: String, req: Request<Incoming>) -> ApiResult {
    let bytes = body::read(node, req, BODY_LIMIT).await?;
    let parsed: Disconnect = body::parse(&bytes, "{\"reason\":<text>?}")?;
    if let Some(reason) = &parsed.reason {
        // The reason is the operator's record, not sent to the client.
        tracing::info!(reason = %reason.chars().take(200).collect::<String>(), "disconnect requested");
    }
    apply(
        node,
        Control::Disconnect {
            user: user.as_str().into(),
        },
    )
    .await?;
    Ok(json(StatusCode::OK, Obj::new("ok").str("user", &user).finish()))
}

/// `POST /api/users/{user}/revoke` `{"before":<ms>?}`: kept for the
/// longest token lifetime accepted, after which every token it covers has
/// expired.
pub async fn revoke(node: &Node, user: String, req: Request<Incoming>) -> ApiResult {
    let bytes = body::read(node, req, BODY_LIMIT).await?;
    let parsed: Revoke = body::parse(&bytes, "{\"before\":<Unix ms>?}")?;
    let now = protocol::id::now_ms();
    let lifetime = node.settings.config.token_max_lifetime.as_millis() as u64;
    let before = parsed.before.unwrap_or(now);
    if before > now + lifetime {
        return Err(ApiError::bad_request(
            "\"before\" is more than the longest token lifetime ahead",
        ));
    }
    apply(
        node,
        Control::Revoke {
            user: user.as_str().into(),
            before,
            keep_until: before.max(now) + lifetime,
        },
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        Obj::new("ok").str("user", &user).num("before", before).finish(),
    ))
}
