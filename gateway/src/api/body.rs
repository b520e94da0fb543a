//! Request bodies and JSON replies of the server API. A body is refused
//! over its limit before any of it is read when `Content-Length` says so
//! (413), and otherwise as soon as it passes the limit; one that trickles
//! in slower than `http_body_timeout` gets 408 and the connection closes.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use protocol::ErrorCode;
use protocol::encode::Obj;
use serde::Deserialize;

use super::ApiError;
use crate::Node;

pub type Body = Full<Bytes>;

pub fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

/// `{"op":"error","code":..,"message":..}` with the code's HTTP status.
pub fn api_error(code: ErrorCode, message: &str) -> Response<Body> {
    let status = match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = json(
        status,
        Obj::new("error")
            .str("code", code.as_str())
            .str("message", message)
            .finish(),
    );
    if code == ErrorCode::Unauthorized {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(ErrorCode::TooLarge, format!("request body is over {limit} bytes"))
}

/// Reads a request body of at most `limit` bytes within the node's
/// `http_body_timeout`.
pub async fn read(node: &Node, req: http::Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let timeout = node.settings.config.http_body_timeout;
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "server API: reading the request body failed");
            Err(ApiError::bad_request("reading the request body failed"))
        }
        Err(_) => Err(ApiError {
            status: Some(StatusCode::REQUEST_TIMEOUT),
            ..ApiError::bad_request(format!(
                "request body not received within {}",
                humantime::format_duration(timeout)
            ))
        }),
    }
}

/// Parses a JSON body as `T`; an empty body is `{}` (every field of the
/// calls that take one is optional or named in `shape`). serde's words
/// (offsets, type names) are logged, not sent.
pub fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], shape: &str) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        tracing::debug!(error = %e, "server API: refused request body");
        match e.classify() {
            serde_json::error::Category::Data => ApiError::bad_request(format!("a request is {shape}")),
            _ => ApiError::bad_request("malformed JSON"),
        }
    })
}
