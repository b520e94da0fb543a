//! Writing replies and events as JSON text.
//!
//! Hand-assembled rather than built through a DOM: these are on the hot
//! path (one `msg` event per message per node), and their shapes are fixed
//! by PROTOCOL.md. Strings go through serde_json's escaper.

use crate::codes::ErrorCode;
use crate::event::{Change, ChangeKind, MessageState};

/// A JSON object under construction: `Obj::new("ok").id(id).str("room", r).finish()`.
pub struct Obj {
    buf: Vec<u8>,
}

impl Obj {
    /// Starts `{"op":"<op>"`.
    pub fn new(op: &str) -> Self {
        Self::with_capacity(op, 64)
    }

    pub fn with_capacity(op: &str, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(b"{\"op\":");
        push_str(&mut buf, op);
        Obj { buf }
    }

    fn key(&mut self, key: &str) {
        self.buf.push(b',');
        push_str(&mut self.buf, key);
        self.buf.push(b':');
    }

    /// `"id":<n>` when the request carried one.
    pub fn id(mut self, id: Option<i64>) -> Self {
        if let Some(id) = id {
            self.key("id");
            self.buf.extend_from_slice(id.to_string().as_bytes());
        }
        self
    }

    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        push_str(&mut self.buf, value);
        self
    }

    /// A message id as a decimal string (JavaScript loses precision past 2^53).
    pub fn msg_id(mut self, key: &str, id: u64) -> Self {
        self.key(key);
        self.buf.push(b'"');
        self.buf.extend_from_slice(id.to_string().as_bytes());
        self.buf.push(b'"');
        self
    }

    pub fn num(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.buf.extend_from_slice(value.to_string().as_bytes());
        self
    }

    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// Already-encoded JSON, inserted as it is.
    pub fn raw(mut self, key: &str, json: &[u8]) -> Self {
        self.key(key);
        self.buf.extend_from_slice(json);
        self
    }

    pub fn str_array<'a>(mut self, key: &str, items: impl IntoIterator<Item = &'a str>) -> Self {
        self.key(key);
        self.buf.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            push_str(&mut self.buf, item);
        }
        self.buf.push(b']');
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }
}

fn push_str(buf: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *buf, s).expect("writing to a Vec cannot fail");
}

/// A stored or live chat message, as the `msg` event carries it.
#[derive(Debug, Clone, Copy)]
pub struct MsgView<'a> {
    pub room: &'a str,
    pub id: u64,
    pub from: &'a str,
    pub ts: u64,
    pub body: &'a str,
    /// (1.1) The message this one replies to.
    pub reply_to: Option<u64>,
    /// (1.1) Set when the entry is an event on an earlier message (`edit`,
    /// `delete`, `react`, `unreact`) rather than a message.
    pub change: Option<&'a Change>,
    /// (1.1) A message's state after its events (history), when not plain.
    pub state: Option<&'a MessageState>,
}

/// `{"op":"msg","room":..,"msg":"<id>","from":..,"ts":..,"body":..}`, or for
/// an event entry `{"op":"edit"|..,"room":..,"msg":"<event id>","target":..}`.
pub fn msg_event(m: MsgView<'_>) -> Vec<u8> {
    let op = m.change.map_or("msg", |c| c.kind.op());
    msg_obj(
        Obj::with_capacity(op, 80 + m.room.len() + m.from.len() + m.body.len()),
        m,
    )
    .finish()
}

fn msg_obj(o: Obj, m: MsgView<'_>) -> Obj {
    let o = o.str("room", m.room).msg_id("msg", m.id);
    let o = match m.change {
        Some(c) => o.msg_id("target", c.target),
        None => o,
    };
    let o = o.str("from", m.from).num("ts", m.ts);
    let o = match m.reply_to {
        Some(r) => o.msg_id("reply_to", r),
        None => o,
    };
    if let Some(c) = m.change {
        return match &c.kind {
            ChangeKind::Edit => o.raw("body", m.body.as_bytes()),
            ChangeKind::Delete => o,
            ChangeKind::React(k) | ChangeKind::Unreact(k) => o.str("key", k),
        };
    }
    let Some(state) = m.state.filter(|s| !s.is_plain()) else {
        return o.raw("body", m.body.as_bytes());
    };
    if state.deleted {
        return o.bool("deleted", true);
    }
    let mut o = o.raw("body", m.body.as_bytes());
    if let Some(at) = state.edited {
        o = o.num("edited", at);
    }
    if !state.reactions.is_empty() {
        o.key("reactions");
        o.buf.push(b'{');
        for (i, r) in state.reactions.iter().enumerate() {
            if i > 0 {
                o.buf.push(b',');
            }
            push_str(&mut o.buf, &r.key);
            o.buf.extend_from_slice(b":{\"count\":");
            o.buf.extend_from_slice(r.count.to_string().as_bytes());
            o.buf
                .extend_from_slice(if r.me { b",\"me\":true}" } else { b",\"me\":false}" });
        }
        o.buf.push(b'}');
    }
    o
}

/// `{"op":"history","id":..,"room":..,"messages":[<msg>...]}`
pub fn history_reply<'a>(id: Option<i64>, room: &str, messages: impl IntoIterator<Item = MsgView<'a>>) -> Vec<u8> {
    let mut o = Obj::with_capacity("history", 256).id(id).str("room", room);
    o.key("messages");
    o.buf.push(b'[');
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            o.buf.push(b',');
        }
        o.buf.extend_from_slice(&msg_event(m));
    }
    o.buf.push(b']');
    o.finish()
}

/// `{"<name>":"<id>",...}`: (1.1) the `read` object of `receipts`.
pub fn id_map<'a>(entries: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<u8> {
    let mut buf = vec![b'{'];
    for (i, (name, id)) in entries.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        push_str(&mut buf, name);
        buf.extend_from_slice(b":\"");
        buf.extend_from_slice(id.to_string().as_bytes());
        buf.push(b'"');
    }
    buf.push(b'}');
    buf
}

/// `{"op":"error","id":..,"code":..,"message":..}`
pub fn error_reply(id: Option<i64>, code: ErrorCode, message: &str) -> Vec<u8> {
    Obj::new("error")
        .id(id)
        .str("code", code.as_str())
        .str("message", message)
        .finish()
}

/// `{"op":"joined"|"left"|"typing","room":..,"user":..}`
pub fn room_user_event(op: &str, room: &str, user: &str) -> Vec<u8> {
    Obj::new(op).str("room", room).str("user", user).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: Vec<u8>) -> serde_json::Value {
        serde_json::from_slice(&v).unwrap()
    }

    #[test]
    fn msg_event_shape() {
        let v = json(msg_event(MsgView {
            room: "r1",
            id: u64::MAX,
            from: "u\"1",
            ts: 5,
            body: r#"{"a":[1]}"#,
            reply_to: None,
            change: None,
            state: None,
        }));
        assert_eq!(
            v,
            serde_json::json!({"op":"msg","room":"r1","msg":"18446744073709551615","from":"u\"1","ts":5,"body":{"a":[1]}})
        );
        let reply = json(msg_event(MsgView {
            room: "r1",
            id: 9,
            from: "u",
            ts: 5,
            body: "1",
            reply_to: Some(7),
            change: None,
            state: None,
        }));
        assert_eq!(reply["reply_to"], "7", "{reply}");
    }

    #[test]
    fn events_and_folded_state() {
        let base = MsgView {
            room: "r",
            id: 9,
            from: "u",
            ts: 5,
            body: r#"{"t":"new"}"#,
            reply_to: None,
            change: None,
            state: None,
        };
        let edit = Change {
            target: 3,
            kind: ChangeKind::Edit,
        };
        assert_eq!(
            json(msg_event(MsgView {
                change: Some(&edit),
                ..base
            })),
            serde_json::json!({"op":"edit","room":"r","msg":"9","target":"3","from":"u","ts":5,"body":{"t":"new"}})
        );
        let react = Change {
            target: 3,
            kind: ChangeKind::React("👍".into()),
        };
        assert_eq!(
            json(msg_event(MsgView {
                change: Some(&react),
                ..base
            })),
            serde_json::json!({"op":"react","room":"r","msg":"9","target":"3","from":"u","ts":5,"key":"👍"})
        );
        let delete = Change {
            target: 3,
            kind: ChangeKind::Delete,
        };
        assert_eq!(
            json(msg_event(MsgView {
                change: Some(&delete),
                ..base
            })),
            serde_json::json!({"op":"delete","room":"r","msg":"9","target":"3","from":"u","ts":5})
        );
        let state = MessageState {
            edited: Some(8),
            deleted: false,
            reactions: vec![
                crate::event::Reaction {
                    key: "👍".into(),
                    count: 2,
                    me: true,
                },
                crate::event::Reaction {
                    key: "x\"".into(),
                    count: 1,
                    me: false,
                },
            ],
        };
        assert_eq!(
            json(msg_event(MsgView {
                state: Some(&state),
                ..base
            })),
            serde_json::json!({"op":"msg","room":"r","msg":"9","from":"u","ts":5,"body":{"t":"new"},"edited":8,
                "reactions":{"👍":{"count":2,"me":true},"x\"":{"count":1,"me":false}}})
        );
        let gone = MessageState {
            deleted: true,
            ..MessageState::default()
        };
        assert_eq!(
            json(msg_event(MsgView {
                state: Some(&gone),
                ..base
            })),
            serde_json::json!({"op":"msg","room":"r","msg":"9","from":"u","ts":5,"deleted":true})
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            json(
                Obj::new("ok")
                    .id(Some(-3))
                    .str("room", "r")
                    .bool("recovered", false)
                    .finish()
            ),
            serde_json::json!({"op":"ok","id":-3,"room":"r","recovered":false})
        );
        assert_eq!(
            json(Obj::new("pong").id(None).finish()),
            serde_json::json!({"op":"pong"})
        );
        assert_eq!(
            json(error_reply(Some(1), ErrorCode::TooLarge, "big")),
            serde_json::json!({"op":"error","id":1,"code":"too_large","message":"big"})
        );
        let m = MsgView {
            room: "r",
            id: 1,
            from: "u",
            ts: 2,
            body: "null",
            reply_to: None,
            change: None,
            state: None,
        };
        let h = json(history_reply(Some(4), "r", [m, MsgView { id: 2, ..m }]));
        assert_eq!(h["messages"].as_array().unwrap().len(), 2);
        assert_eq!(h["messages"][1]["msg"], "2");
        assert_eq!(
            json(id_map([("u\"1", 5), ("u2", u64::MAX)])),
            serde_json::json!({"u\"1":"5","u2":"18446744073709551615"})
        );
        assert_eq!(json(id_map([])), serde_json::json!({}));
        assert_eq!(
            json(history_reply(None, "r", [])),
            serde_json::json!({"op":"history","room":"r","messages":[]})
        );
        assert_eq!(
            json(Obj::new("presence").str_array("users", ["a", "b"]).finish()),
            serde_json::json!({"op":"presence","users":["a","b"]})
        );
    }
}
