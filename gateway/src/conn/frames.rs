//! Frames in: control frames, reassembly of fragmented messages (the size
//! limit applies to the whole message, not only to each frame), UTF-8, and
//! text messages parsed into requests and handed to the op table
//! ([`super::ops`]). The socket layer calls [`Session::on_frame`] for each
//! frame its [`crate::ws::reader::FrameReader`] completed.

use fastwebsockets::CloseCode;
use protocol::close;
use tokio::time::Instant;

use super::end::End;
use super::session::Session;
use crate::ws::reader::{InFrame, OpCode};
use crate::{metrics, ws};

impl Session {
    /// Handles one frame read from the socket: control frames, reassembly
    /// of fragmented messages, and text messages as requests.
    pub(super) async fn on_frame(&mut self, frame: InFrame) {
        metrics::get().frames_received.increment(1);
        self.last_rx = Instant::now();
        let max = self.settings().max_frame_bytes;
        match frame.opcode {
            OpCode::Text => {
                if self.fragments.is_some() {
                    self.end = Some(End::Close(
                        close::PROTOCOL_ERROR,
                        "new message before the last one ended",
                    ));
                } else if !frame.fin {
                    self.fragments = Some(frame.payload);
                } else if std::str::from_utf8(&frame.payload).is_err() {
                    self.end = Some(End::Close(close::INVALID_PAYLOAD, "invalid UTF-8"));
                } else {
                    let mut payload = frame.payload;
                    self.on_text(&mut payload).await;
                }
            }
            OpCode::Binary => {
                self.end = Some(End::Close(close::UNSUPPORTED_DATA, "binary frames are not supported"));
            }
            OpCode::Continuation => {
                let Some(mut message) = self.fragments.take() else {
                    self.end = Some(End::Close(
                        close::PROTOCOL_ERROR,
                        "continuation frame without a message",
                    ));
                    return;
                };
                if message.len() + frame.payload.len() > max {
                    self.end = Some(End::Close(close::TOO_BIG, "message too big"));
                    return;
                }
                message.extend_from_slice(&frame.payload);
                if !frame.fin {
                    self.fragments = Some(message);
                } else if std::str::from_utf8(&message).is_err() {
                    self.end = Some(End::Close(close::INVALID_PAYLOAD, "invalid UTF-8"));
                } else {
                    self.on_text(&mut message).await;
                }
            }
            OpCode::Ping => self.handle.push_own(ws::pong_frame(&frame.payload)),
            OpCode::Pong => {}
            OpCode::Close => {
                // RFC 6455 5.5.1 and 7.4: no payload, or a code allowed on
                // the wire and a UTF-8 reason (else 1007, 8.1); one byte is
                // a protocol error. The 125-byte limit is the reader's.
                let code = match frame.payload.split_first_chunk::<2>() {
                    None if frame.payload.is_empty() => 1000,
                    None => close::PROTOCOL_ERROR,
                    Some((b, _)) if !CloseCode::from(u16::from_be_bytes(*b)).is_allowed() => close::PROTOCOL_ERROR,
                    Some((_, reason)) if std::str::from_utf8(reason).is_err() => close::INVALID_PAYLOAD,
                    Some((b, _)) => u16::from_be_bytes(*b),
                };
                // Echo the client's code, as RFC 6455 asks (5.5.1).
                self.end = Some(End::Close(code, ""));
            }
        }
    }

    /// Parses one text message and hands the request to its handler; a
    /// malformed one is answered `bad_request` and counted.
    async fn on_text(&mut self, buf: &mut [u8]) {
        let (id, req) = match protocol::parse_request(buf) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.flush_sends().await;
                self.op = metrics::INVALID_OP;
                self.error(e.id, e.code, &e.message);
                self.bad_frame();
                return;
            }
        };
        let op = metrics::op_of(&req);
        metrics::request(op);
        self.dispatch(op, id, req).await;
    }
}
