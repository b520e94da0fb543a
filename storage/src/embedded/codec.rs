//! The embedded store's keys and values, byte by byte.
//!
//! Keys start with the room and a zero byte (room names and user ids
//! never contain one), so one room's records of a table are one contiguous
//! range, ordered by what follows: a message id (big-endian), or a user.
//!
//! | table | key | value |
//! |---|---|---|
//! | `messages` | room, 0, id | a message as sent ([`encode_message`]) |
//! | `events` (1.1) | room, 0, id | an edit, delete or reaction ([`encode_event`]) |
//! | `state` (1.1) | room, 0, id | a changed message's state ([`encode_state`]) |
//! | `reactions` (1.1) | room, 0, user, 0, message id, key | empty: who holds which key |
//! | `reads` (1.1) | room, 0, user | read marker: message id, when set (ms) |
//! | `nonces` (1.1) | keyed hash of (user, room, nonce), 16 bytes | message id, window end (ms) |
//! | `meta` | name | the store's own settings (`nonce-key`) |

use crate::{Change, ChangeKind, MessageState, Reaction, StorageError, StoredMessage};

use super::emb;

pub(super) fn key(room: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + 9);
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `room, 0, user`: a read marker, and the prefix of a user's reactions.
pub(super) fn user_key(room: &str, user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + user.len() + 2);
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k.extend_from_slice(user.as_bytes());
    k
}

/// `room, 0, user, 0, msg, key`; with `key` empty, the lowest key of the
/// user's reactions on `msg`.
pub(super) fn reaction_key(room: &str, user: &str, msg: u64, key: &str) -> Vec<u8> {
    let mut k = user_key(room, user);
    k.push(0);
    k.extend_from_slice(&msg.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// Above every reaction key of `user` on `msg` (UTF-8 never has 0xFF).
pub(super) fn reaction_key_end(room: &str, user: &str, msg: u64) -> Vec<u8> {
    let mut k = reaction_key(room, user, msg, "");
    k.push(0xFF);
    k
}

/// The message id and reaction key of a `reactions` key of `room`, `user`.
pub(super) fn split_reaction_key(room: &str, user: &str, k: &[u8]) -> Option<(u64, String)> {
    let rest = k.get(room.len() + user.len() + 2..)?;
    let id = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((id, std::str::from_utf8(&rest[8..]).ok()?.to_owned()))
}

/// The id at the end of a `messages`, `events` or `state` key.
pub(super) fn key_id(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(k.len().checked_sub(8)?..)?.try_into().ok()?))
}

/// Marks a `reply_to` in the sender length (user ids are far shorter).
const REPLY_FLAG: u16 = 0x8000;

/// ts (u64 BE), from length (u16 BE, top bit set when a `reply_to`
/// follows the sender), from, [reply_to (u64 BE)], body. Records written
/// before 1.1 have the bit clear and read as before.
pub(super) fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut v = Vec::with_capacity(18 + m.from.len() + m.body.len());
    v.extend_from_slice(&m.ts.to_be_bytes());
    let flag = if m.reply_to.is_some() { REPLY_FLAG } else { 0 };
    v.extend_from_slice(&(m.from.len() as u16 | flag).to_be_bytes());
    v.extend_from_slice(m.from.as_bytes());
    if let Some(r) = m.reply_to {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v.extend_from_slice(m.body.as_bytes());
    v
}

/// Reads fields off a value, failing on a short or malformed record.
struct Reader<'a> {
    v: &'a [u8],
    at: usize,
    room: &'a str,
}

impl<'a> Reader<'a> {
    fn new(room: &'a str, v: &'a [u8]) -> Self {
        Reader { v, at: 0, room }
    }

    fn bad(&self) -> StorageError {
        emb("decode", format!("corrupt record in room {:?}", self.room))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        let b = self.v.get(self.at..self.at + n).ok_or_else(|| self.bad())?;
        self.at += n;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, StorageError> {
        Ok(u16::from_be_bytes(self.bytes(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        Ok(u32::from_be_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_be_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    fn str(&mut self, n: usize) -> Result<&'a str, StorageError> {
        let b = self.bytes(n)?;
        std::str::from_utf8(b).map_err(|_| self.bad())
    }

    fn rest(&mut self) -> Result<&'a str, StorageError> {
        let n = self.v.len().saturating_sub(self.at);
        self.str(n)
    }
}

pub(super) fn decode_message(room: &str, k: &[u8], v: &[u8]) -> Result<StoredMessage, StorageError> {
    let mut r = Reader::new(room, v);
    let id = key_id(k).ok_or_else(|| r.bad())?;
    let ts = r.u64()?;
    let len_field = r.u16()?;
    let from = r.str((len_field & !REPLY_FLAG) as usize)?;
    let reply_to = if len_field & REPLY_FLAG != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    Ok(StoredMessage {
        room: room.to_owned(),
        id,
        from: from.to_owned(),
        ts,
        body: r.rest()?.to_owned(),
        reply_to,
        ..StoredMessage::default()
    })
}

/// ts (u64 BE), kind (1 edit, 2 delete, 3 react, 4 unreact), target (u64
/// BE), from length (u16 BE), from, then an edit's body or a reaction's
/// key.
pub(super) fn encode_event(m: &StoredMessage, change: &Change) -> Vec<u8> {
    let (kind, tail) = match &change.kind {
        ChangeKind::Edit => (1u8, m.body.as_str()),
        ChangeKind::Delete => (2, ""),
        ChangeKind::React(k) => (3, k.as_str()),
        ChangeKind::Unreact(k) => (4, k.as_str()),
    };
    let mut v = Vec::with_capacity(19 + m.from.len() + tail.len());
    v.extend_from_slice(&m.ts.to_be_bytes());
    v.push(kind);
    v.extend_from_slice(&change.target.to_be_bytes());
    v.extend_from_slice(&(m.from.len() as u16).to_be_bytes());
    v.extend_from_slice(m.from.as_bytes());
    v.extend_from_slice(tail.as_bytes());
    v
}

pub(super) fn decode_event(room: &str, k: &[u8], v: &[u8]) -> Result<StoredMessage, StorageError> {
    let mut r = Reader::new(room, v);
    let id = key_id(k).ok_or_else(|| r.bad())?;
    let ts = r.u64()?;
    let kind = r.u8()?;
    let target = r.u64()?;
    let from_len = r.u16()? as usize;
    let from = r.str(from_len)?.to_owned();
    let tail = r.rest()?.to_owned();
    let (kind, body) = match kind {
        1 => (ChangeKind::Edit, tail),
        2 => (ChangeKind::Delete, String::new()),
        3 => (ChangeKind::React(tail), String::new()),
        4 => (ChangeKind::Unreact(tail), String::new()),
        _ => return Err(r.bad()),
    };
    Ok(StoredMessage {
        room: room.to_owned(),
        id,
        from,
        ts,
        body,
        change: Some(Change { target, kind }),
        ..StoredMessage::default()
    })
}

const EDITED: u8 = 1;
const DELETED: u8 = 2;

/// flags (1 edited, 2 deleted), edited at (u64 BE), reaction count (u8),
/// each reaction as key length (u8), key, users (u32 BE); then the latest
/// body when edited.
pub(super) fn encode_state(s: &MessageState, body: Option<&str>) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + s.reactions.len() * 12 + body.map_or(0, str::len));
    let flags = if s.edited.is_some() { EDITED } else { 0 } | if s.deleted { DELETED } else { 0 };
    v.push(flags);
    v.extend_from_slice(&s.edited.unwrap_or(0).to_be_bytes());
    v.push(s.reactions.len() as u8);
    for r in &s.reactions {
        v.push(r.key.len() as u8);
        v.extend_from_slice(r.key.as_bytes());
        v.extend_from_slice(&r.count.to_be_bytes());
    }
    if s.edited.is_some()
        && let Some(b) = body
    {
        v.extend_from_slice(b.as_bytes());
    }
    v
}

/// The state and, when edited, the latest body.
pub(super) fn decode_state(room: &str, v: &[u8]) -> Result<(MessageState, Option<String>), StorageError> {
    let mut r = Reader::new(room, v);
    let flags = r.u8()?;
    let edited = r.u64()?;
    let n = r.u8()?;
    let mut reactions = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.u8()? as usize;
        let key = r.str(len)?.to_owned();
        let count = r.u32()?;
        reactions.push(Reaction { key, count, me: false });
    }
    let state = MessageState {
        edited: (flags & EDITED != 0).then_some(edited),
        deleted: flags & DELETED != 0,
        reactions,
    };
    let body = (flags & EDITED != 0).then(|| r.rest().map(str::to_owned)).transpose()?;
    Ok((state, body))
}

/// (1.1) A send nonce's row: the message id, and when its window ends (ms).
pub(super) fn encode_nonce(id: u64, until: u64) -> [u8; 16] {
    encode_read(id, until)
}

pub(super) fn decode_nonce(v: &[u8]) -> Option<(u64, u64)> {
    decode_read("", v).ok()
}

/// A read marker: message id, when it was set (ms).
pub(super) fn encode_read(msg: u64, at: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&msg.to_be_bytes());
    v[8..].copy_from_slice(&at.to_be_bytes());
    v
}

pub(super) fn decode_read(room: &str, v: &[u8]) -> Result<(u64, u64), StorageError> {
    let mut r = Reader::new(room, v);
    Ok((r.u64()?, r.u64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut m = StoredMessage::new("r", 77, "ann", 5, r#"{"t":1}"#);
        m.reply_to = Some(3);
        let k = key("r", 77);
        assert_eq!(decode_message("r", &k, &encode_message(&m)).unwrap(), m);
        for kind in [
            ChangeKind::Edit,
            ChangeKind::Delete,
            ChangeKind::React("👍".into()),
            ChangeKind::Unreact("x".into()),
        ] {
            let mut e = StoredMessage::new("r", 77, "ann", 5, if kind == ChangeKind::Edit { "2" } else { "" });
            e.change = Some(Change { target: 9, kind });
            let v = encode_event(&e, e.change.as_ref().unwrap());
            assert_eq!(decode_event("r", &k, &v).unwrap(), e);
        }
        let mut s = MessageState::default();
        s.apply(&ChangeKind::React("👍".into()), 1);
        s.apply(&ChangeKind::Edit, 8);
        assert_eq!(
            decode_state("r", &encode_state(&s, Some("new"))).unwrap(),
            (s, Some("new".into()))
        );
        assert!(
            decode_state("r", &[1, 2]).is_err(),
            "a short record is refused, not read past"
        );
        assert_eq!(decode_read("r", &encode_read(4, 5)).unwrap(), (4, 5));
        let rk = reaction_key("r", "ann", 9, "👍");
        assert_eq!(split_reaction_key("r", "ann", &rk), Some((9, "👍".into())));
        assert!(rk.as_slice() < reaction_key_end("r", "ann", 9).as_slice());
    }
}
