//! The client protocol (`shared/PROTOCOL.md`, v1) as code, shared by the
//! gateway and the load generator.
//!
//! - [`request`] parses one client text frame (simd-json) into a [`Request`].
//! - [`body`] finds a message body's own bytes and limits its depth.
//! - [`user`] says what a user id may be.
//! - [`encode`] writes replies and server events as JSON text, once per
//!   message, so the gateway can hand the same bytes to every connection.
//! - [`room`] validates room names and matches the `rooms` claim patterns.
//! - [`codes`]: the error codes and WebSocket close codes PROTOCOL.md names.
//! - [`event`] (1.1): edits, deletions and reactions, and the message
//!   state they fold into.
//! - [`id`] packs message ids (milliseconds and a sequence) into 64 bits.

#![forbid(unsafe_code)]

pub mod body;
pub mod codes;
pub mod encode;
pub mod event;
pub mod id;
pub mod request;
pub mod room;
pub mod user;

pub use body::MAX_BODY_DEPTH;
pub use codes::{ErrorCode, close};
pub use event::{Change, ChangeKind, MessageState, Reaction};
pub use request::{HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, ParseError, Request, parse_request};
