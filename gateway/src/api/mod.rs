//! The server API (`/api/...`): what a chat backend does to the gateway
//! with an API key. Every call is authorized by one of the configured keys
//! ([`keys`]), logged with that key's name and counted in
//! `gateway_api_requests_total`; every error is `{"op":"error","code":..,
//! "message":..}` with the protocol's code and the matching HTTP status.
//!
//! - [`messages`]: publish, history, delete as a moderator, broadcast.
//! - [`moderation`] (1.1): kick (and ban), disconnect, revoke: handed to
//!   the bus, which applies them on every node (`dispatcher::control`).
//! - [`rooms`] (1.1): room info and presence, counted over the cluster.
//! - [`body`]: reading request bodies within a size and a time limit, and
//!   the JSON replies.
//!
//! docs/API.md documents each call with a curl example.

pub mod body;
pub mod keys;
mod messages;
mod moderation;
mod rooms;

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use protocol::ErrorCode;
use protocol::room::is_valid_room;

use self::body::{Body, api_error};
use crate::{Node, auth};

/// A refused call: its protocol code and the message the caller reads.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// A status other than the code's own (408, 405).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            status: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// The bus failed: fixed text out, the bus's own words (Redis commands,
    /// hosts) to the log.
    pub fn unavailable(e: &dispatcher::BusError) -> ApiError {
        tracing::debug!(error = %e, "server API: bus unavailable");
        match e {
            dispatcher::BusError::Unsupported(what) => ApiError::new(
                ErrorCode::Unavailable,
                format!("{what}: not available on this gateway's configuration"),
            ),
            _ => ApiError::new(ErrorCode::Unavailable, "service unavailable, retry"),
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = api_error(self.code, &self.message);
        if let Some(status) = self.status {
            *response.status_mut() = status;
        }
        if self.status == Some(StatusCode::REQUEST_TIMEOUT) {
            // The rest of a body that came too slowly is never read.
            response = crate::http::closing(response);
        }
        response
    }
}

pub type ApiResult = Result<Response<Body>, ApiError>;

/// One route of the API: what it is called in logs and metrics, and the
/// method it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Publish,
    History,
    Delete,
    Kick,
    Disconnect,
    Revoke,
    Broadcast,
    Room,
    Presence,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::History => "history",
            Action::Delete => "delete",
            Action::Kick => "kick",
            Action::Disconnect => "disconnect",
            Action::Revoke => "revoke",
            Action::Broadcast => "broadcast",
            Action::Room => "room",
            Action::Presence => "presence",
        }
    }
}

/// A request's route: the action and the path's parameters (a room, a
/// user, a message id, as the path gave them).
struct Route<'a> {
    action: Action,
    room: Option<&'a str>,
    user: Option<&'a str>,
    msg: Option<&'a str>,
}

/// The route of `path` for `method`: `Err(None)` no such path, `Err(Some)`
/// the path exists with other methods (the `Allow` value).
fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, Option<&'static str>> {
    let rest = path.strip_prefix("/api/").ok_or(None)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let r = |action, room, user, msg| Route {
        action,
        room,
        user,
        msg,
    };
    let route = match (parts.as_slice(), method) {
        (["rooms", room, "messages"], &Method::POST) => r(Action::Publish, Some(*room), None, None),
        (["rooms", room, "messages"], &Method::GET) => r(Action::History, Some(*room), None, None),
        (["rooms", _, "messages"], _) => return Err(Some("GET, POST")),
        (["rooms", room, "messages", msg], &Method::DELETE) => r(Action::Delete, Some(*room), None, Some(*msg)),
        (["rooms", _, "messages", _], _) => return Err(Some("DELETE")),
        (["rooms", room, "kick"], &Method::POST) => r(Action::Kick, Some(*room), None, None),
        (["rooms", _, "kick"], _) => return Err(Some("POST")),
        (["rooms", room, "presence"], &Method::GET) => r(Action::Presence, Some(*room), None, None),
        (["rooms", _, "presence"], _) => return Err(Some("GET")),
        (["rooms", room], &Method::GET) => r(Action::Room, Some(*room), None, None),
        (["rooms", _], _) => return Err(Some("GET")),
        (["users", user, "disconnect"], &Method::POST) => r(Action::Disconnect, None, Some(*user), None),
        (["users", user, "revoke"], &Method::POST) => r(Action::Revoke, None, Some(*user), None),
        (["users", _, "disconnect" | "revoke"], _) => return Err(Some("POST")),
        (["broadcast"], &Method::POST) => r(Action::Broadcast, None, None, None),
        (["broadcast"], _) => return Err(Some("POST")),
        _ => return Err(None),
    };
    Ok(route)
}

/// Serves one `/api/...` request: the key, the route, the call; logs and
/// counts it.
pub async fn serve(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let key = node.settings.api_keys.check(auth::bearer(req.headers()));
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let (key_name, result, action) = match key {
        Err(e) => ("none".to_string(), Err(e), "unknown"),
        Ok(name) => {
            let name = name.to_string();
            match route(&method, &path) {
                Ok(route) => {
                    let action = route.action.name();
                    (name, call(node, route, req).await, action)
                }
                Err(allow) => {
                    let e = match allow {
                        None => ApiError::new(ErrorCode::NotFound, "no such API path"),
                        Some(allow) => ApiError {
                            status: Some(StatusCode::METHOD_NOT_ALLOWED),
                            ..ApiError::bad_request(format!("use {allow}"))
                        },
                    };
                    let allow = allow.map(|a| a.to_string());
                    let outcome = e.code.as_str();
                    let mut response = e.into_response();
                    if let Some(allow) = allow {
                        response
                            .headers_mut()
                            .insert(header::ALLOW, http::HeaderValue::from_str(&allow).expect("static"));
                    }
                    crate::metrics::api_request(&name, "unknown", outcome);
                    tracing::info!(key = %name, %method, path = %path, status = response.status().as_u16(), "server API call");
                    return response;
                }
            }
        }
    };
    let outcome = match &result {
        Ok(r) if r.status().is_success() => "ok",
        // A broadcast some of whose rooms failed.
        Ok(_) => ErrorCode::Unavailable.as_str(),
        Err(e) => e.code.as_str(),
    };
    crate::metrics::api_request(&key_name, action, outcome);
    let response = result.unwrap_or_else(ApiError::into_response);
    tracing::info!(key = %key_name, action, %method, path = %path, status = response.status().as_u16(), "server API call");
    response
}

async fn call(node: Arc<Node>, route: Route<'_>, req: Request<Incoming>) -> ApiResult {
    let room = match route.room {
        Some(room) if !is_valid_room(room) => {
            return Err(ApiError::bad_request(
                "invalid room: use 1 to 128 characters of [A-Za-z0-9_.:-]",
            ));
        }
        room => room.map(str::to_owned),
    };
    let user = route.user.map(path_user).transpose()?;
    let query = req.uri().query().unwrap_or("").to_owned();
    match (route.action, room, user) {
        (Action::Publish, Some(room), _) => messages::publish(&node, room, req).await,
        (Action::History, Some(room), _) => messages::history(&node, room, &query).await,
        (Action::Delete, Some(room), _) => messages::delete(&node, room, route.msg.unwrap_or("")).await,
        (Action::Broadcast, _, _) => messages::broadcast(&node, req).await,
        (Action::Kick, Some(room), _) => moderation::kick(&node, room, req).await,
        (Action::Disconnect, _, Some(user)) => moderation::disconnect(&node, user, req).await,
        (Action::Revoke, _, Some(user)) => moderation::revoke(&node, user, req).await,
        (Action::Room, Some(room), _) => rooms::info(&node, room).await,
        (Action::Presence, Some(room), _) => rooms::presence(&node, room).await,
        _ => Err(ApiError::new(ErrorCode::Internal, "route without its parameters")),
    }
}

/// A user id from a path segment: percent-decoded UTF-8, and a valid id.
fn path_user(segment: &str) -> Result<String, ApiError> {
    let user = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("the user id in the path is not percent-encoded UTF-8"))?;
    check_user(&user)?;
    Ok(user.into_owned())
}

/// A user id as tokens carry them.
pub fn check_user(user: &str) -> Result<(), ApiError> {
    if protocol::user::is_valid_user_id(user) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "a user id is 1 to {} bytes without control, bidirectional or invisible format characters",
            protocol::user::MAX_USER_LEN
        )))
    }
}
