//! What the shard streams look like in Redis: their keys, which stream a
//! room lives in, and the one codec of their entries. The bus, its readers,
//! the window scans and the persister all read entries through [`Entry`].
//!
//! An entry's fields: `r` room, `f` sender (or the user of an event), `k`
//! kind, `b` body (messages; an edit's new body), `p` the message replied
//! to (1.1), `o` origin `node/connection` (events a client caused, so its
//! own connection can skip them), and for a change (1.1) `t` its target
//! message, `x` what it does (`edit`, `delete`, `react`, `unreact`), `y` a
//! reaction's key, `n` the key's count after it. Kinds: `m` stored message, `e` ephemeral message, `c`
//! stored change (1.1), `j` joined, `l` left, `t` typing, `d` a read marker
//! moved (1.1; `m` its message).

use std::collections::HashMap;
use std::sync::Arc;

use std::hash::Hasher;

use redis::Value;
use redis::streams::StreamId;
use siphasher::sip::SipHasher13;

use crate::{Change, ChangeKind, Delivery, EventKind, NewMessage, StoredMessage};

/// The consumer group every persister joins; trimming asks it how far the
/// store has got.
pub const PERSISTER_GROUP: &str = "persister";

/// Separates user hashes from room hashes under the one cluster key.
const USER_DOMAIN: u64 = 0x7573_6572_0000_0001;
/// Separates nonce hashes from the others.
const NONCE_DOMAIN: u64 = 0x6e6f_6e63_0000_0001;

/// The shard streams of one deployment: a key prefix, how many streams
/// rooms are spread over, and the cluster's hash key. Every node and
/// persister must agree on all three (the key lives in Redis).
#[derive(Clone, PartialEq, Eq)]
pub struct StreamLayout {
    prefix: String,
    count: u32,
    /// SipHash key of the room-to-stream map: secret, so clients cannot
    /// pick room names that all land on one stream.
    key: (u64, u64),
    /// (1.1) The event feed is on: the shard streams are the feed streams
    /// ([`StreamLayout::key`]).
    feed: bool,
}

impl std::fmt::Debug for StreamLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLayout")
            .field("prefix", &self.prefix)
            .field("count", &self.count)
            .field("feed", &self.feed)
            .finish_non_exhaustive()
    }
}

impl StreamLayout {
    /// `count` must be at least 1 (settings validate it). The hash key is
    /// zero until [`StreamLayout::with_hash_key`] sets the cluster's.
    pub fn new(prefix: impl Into<String>, count: u32) -> StreamLayout {
        StreamLayout {
            prefix: prefix.into(),
            count: count.max(1),
            key: (0, 0),
            feed: false,
        }
    }

    /// (1.1) The same layout with the event feed on or off: with it on, the
    /// shard streams are named as the feed's (`<prefix>:feed:{sN}`), and
    /// carry the feed's connection events beside the room events, so a
    /// stored event is written once and is in the feed exactly when it is
    /// in its stream (docs/FEED.md).
    pub fn with_feed(mut self, feed: bool) -> StreamLayout {
        self.feed = feed;
        self
    }

    /// (1.1) Whether the event feed is on.
    pub fn feed(&self) -> bool {
        self.feed
    }

    /// The same layout keyed with the cluster's hash key (32 hex digits, as
    /// stored at [`StreamLayout::hash_key_name`]); `None` if malformed.
    pub fn with_hash_key(mut self, hex: &str) -> Option<StreamLayout> {
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.key = (
            u64::from_str_radix(&hex[..16], 16).ok()?,
            u64::from_str_radix(&hex[16..], 16).ok()?,
        );
        Some(self)
    }

    /// Where the cluster's hash key is kept; the first node to start
    /// writes it.
    pub fn hash_key_name(&self) -> String {
        format!("{}:hashkey", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many shard streams there are.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The key of stream `index`; its hash tag gives each stream its own
    /// slot, so one command never spans two Redis Cluster slots. With the
    /// feed on, it is feed stream `index`'s key.
    pub fn key(&self, index: u32) -> String {
        if self.feed {
            self.feed_key(index)
        } else {
            format!("{}:{{s{index}}}", self.prefix)
        }
    }

    /// (1.1) The key of feed stream `index`, what the shard stream is
    /// named when the feed is on (same hash tag as without).
    pub fn feed_key(&self, index: u32) -> String {
        format!("{}:feed:{{s{index}}}", self.prefix)
    }

    /// (1.1) Where a cluster records whether its shard streams are the
    /// feed's (`feed`) or not (`plain`): every node and persister must use
    /// the same keys.
    pub fn stream_keys_name(&self) -> String {
        format!("{}:streamkeys", self.prefix)
    }

    /// (1.1) The set of node incarnations writing the feed.
    pub fn feed_nodes_key(&self) -> String {
        format!("{}:feednodes", self.prefix)
    }

    /// (1.1) The open connections of node incarnation `node` (a hash:
    /// connection -> user and rooms, one per line), for the reaper.
    pub fn feed_conns_key(&self, node: &str) -> String {
        format!("{}:feedconns:{node}", self.prefix)
    }

    /// (1.1) The lock of the node reaping dead incarnation `node`.
    pub fn feed_reap_key(&self, node: &str) -> String {
        format!("{}:feedreap:{node}", self.prefix)
    }

    /// (1.1) The feed stream a user's connect and disconnect go to.
    pub fn feed_of_user(&self, user: &str) -> u32 {
        (self.user_hash(user) % u64::from(self.count)) as u32
    }

    /// The stream `room` lives in.
    pub fn stream_of(&self, room: &str) -> u32 {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(room.as_bytes());
        (h.finish() % u64::from(self.count)) as u32
    }

    /// The key of the stream `room` lives in.
    pub fn room_key(&self, room: &str) -> String {
        self.key(self.stream_of(room))
    }

    /// A node's heartbeat key: its id lease and proof of life for presence.
    pub fn node_key(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}", self.prefix)
    }

    /// A user's key in the cluster's per-user counts: a keyed hash of the
    /// id (ids never appear in Redis keys, and clients cannot pick ids that
    /// collide), the same on every node.
    pub fn user_hash(&self, user: &str) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.key.0 ^ USER_DOMAIN, self.key.1);
        h.write(user.as_bytes());
        h.finish()
    }

    /// The hash of `node|token` -> connections a user has on that node
    /// (see `users`).
    pub fn user_connections_key(&self, user: u64) -> String {
        format!("{}:user:{user:016x}:conns", self.prefix)
    }

    /// Sends of a user in fixed window number `window`, over the cluster.
    pub fn user_sends_key(&self, user: u64, window: u64) -> String {
        format!("{}:user:{user:016x}:sends:{window}", self.prefix)
    }

    /// The key remembering `nonce` of `user` in `room` (1.1): beside the
    /// room's stream, in its hash slot, so one script touches both.
    pub fn nonce_key(&self, room: &str, user: &str, nonce: &str) -> String {
        let stream = self.stream_of(room);
        let hash = crate::dedupe::nonce_hash((self.key.0 ^ NONCE_DOMAIN, self.key.1), user, room, nonce);
        format!("{}:{{s{stream}}}:nonce:{hash:032x}", self.prefix)
    }

    /// (1.1) The state of message `id` of `room` while it has recent
    /// events (a hash: author, deleted, edited, latest body, reaction
    /// counts), beside the room's stream in its hash slot.
    pub fn state_key(&self, room: &str, id: u64) -> String {
        format!("{}:{{s{}}}:st:{room}:{id}", self.prefix, self.stream_of(room))
    }

    /// (1.1) Who holds which reaction on message `id` of `room` (a hash
    /// `<key>\n<user>` -> `1` held, `0` given back), beside its state.
    pub fn holders_key(&self, room: &str, id: u64) -> String {
        format!("{}:{{s{}}}:rh:{room}:{id}", self.prefix, self.stream_of(room))
    }

    /// (1.1) The read markers of `room` when there is no store.
    pub fn reads_key(&self, room: &str) -> String {
        format!("{}:reads:{{{room}}}", self.prefix)
    }

    /// (1.1) The hash of `node|user` -> that user's connections in `room`
    /// on that node: presence and room counts over the cluster.
    pub fn members_key(&self, room: &str) -> String {
        format!("{}:members:{{{room}}}", self.prefix)
    }

    /// (1.1) The stream of operator actions every node reads (see
    /// `crate::control`).
    pub fn control_key(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// (1.1) A user's ban from a room: its end (ms), expiring then.
    pub fn ban_key(&self, room: &str, user: &str) -> String {
        format!("{}:ban:{{{room}}}:{:016x}", self.prefix, self.user_hash(user))
    }

    /// (1.1) A user's token revocation: the time before which tokens are
    /// revoked (ms), expiring when no token it covers can still be valid.
    pub fn revoked_key(&self, user: &str) -> String {
        format!("{}:revoked:{:016x}", self.prefix, self.user_hash(user))
    }
}

/// A stream entry id (`ms-seq`) as a message id; `None` when the sequence
/// does not fit its 22 bits.
pub fn parse_entry_id(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq) = (ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?);
    (seq <= protocol::id::SEQ_MAX).then(|| protocol::id::pack(ms, seq))
}

/// A message id as a stream entry id.
pub fn entry_id(id: u64) -> String {
    format!("{}-{}", protocol::id::millis(id), protocol::id::seq(id))
}

/// A message's entry fields; `reply_to` is the message's `reply_to` as
/// text (the caller owns it).
pub fn message_fields<'a>(msg: &'a NewMessage, reply_to: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let kind = if msg.ephemeral { "e" } else { "m" };
    let mut fields = vec![
        ("r", &*msg.room),
        ("f", &*msg.from),
        ("k", kind),
        ("b", msg.body.as_str()),
    ];
    if let Some(r) = reply_to {
        fields.push(("p", r));
    }
    fields
}

/// (1.1) A change's entry fields; `target` is its target id as text.
pub fn change_fields<'a>(msg: &'a NewMessage, change: &'a Change, target: &'a str) -> Vec<(&'static str, &'a str)> {
    let mut fields = vec![
        ("r", &*msg.room),
        ("f", &*msg.from),
        ("k", "c"),
        ("t", target),
        ("x", change.kind.op()),
    ];
    match &change.kind {
        ChangeKind::Edit => fields.push(("b", msg.body.as_str())),
        ChangeKind::Delete => {}
        ChangeKind::React(k) | ChangeKind::Unreact(k) => fields.push(("y", k.as_str())),
    }
    fields
}

/// A room event's entry fields; `origin` is `node/connection`, `msg` a
/// read marker's id as text (the caller owns both).
pub fn event_fields<'a>(
    room: &'a str,
    kind: EventKind,
    user: &'a str,
    origin: Option<&'a str>,
    msg: &'a str,
) -> Vec<(&'static str, &'a str)> {
    let k = match kind {
        EventKind::Joined => "j",
        EventKind::Left => "l",
        EventKind::Typing => "t",
        EventKind::Read { .. } => "d",
    };
    let mut fields = vec![("r", room), ("f", user), ("k", k)];
    if let Some(o) = origin {
        fields.push(("o", o));
    }
    if let EventKind::Read { .. } = kind {
        fields.push(("m", msg));
    }
    fields
}

/// The origin field of an event a local connection caused.
pub fn origin(node_id: &str, connection: u64) -> String {
    format!("{node_id}/{connection}")
}

/// One decoded stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A message: stored unless `ephemeral`.
    Message { msg: StoredMessage, ephemeral: bool },
    /// A room event, never stored.
    Event {
        room: String,
        kind: EventKind,
        user: String,
        /// `(node, connection)` that caused it.
        origin: Option<(String, u64)>,
    },
}

impl Entry {
    /// `None` for entries this version does not know or that are malformed.
    pub fn decode(entry: &StreamId) -> Option<Entry> {
        let id = parse_entry_id(&entry.id)?;
        let room = field(&entry.map, "r")?;
        let from = field(&entry.map, "f")?;
        let kind = field(&entry.map, "k")?;
        Some(match kind.as_str() {
            "m" | "e" => Entry::Message {
                msg: StoredMessage {
                    room,
                    id,
                    from,
                    ts: protocol::id::millis(id),
                    body: field(&entry.map, "b")?,
                    reply_to: field(&entry.map, "p").and_then(|p| p.parse().ok()),
                    ..Default::default()
                },
                ephemeral: kind == "e",
            },
            "c" => {
                let target = field(&entry.map, "t")?.parse().ok()?;
                let key = || field(&entry.map, "y");
                let (kind, body) = match field(&entry.map, "x")?.as_str() {
                    "edit" => (ChangeKind::Edit, field(&entry.map, "b")?),
                    "delete" => (ChangeKind::Delete, String::new()),
                    "react" => (ChangeKind::React(key()?), String::new()),
                    "unreact" => (ChangeKind::Unreact(key()?), String::new()),
                    _ => return None,
                };
                Entry::Message {
                    msg: StoredMessage {
                        room,
                        id,
                        from,
                        ts: protocol::id::millis(id),
                        body,
                        change: Some(Change { target, kind }),
                        reaction_count: field(&entry.map, "n").and_then(|n| n.parse().ok()),
                        ..Default::default()
                    },
                    ephemeral: false,
                }
            }
            "j" | "l" | "t" | "d" => Entry::Event {
                room,
                kind: match kind.as_str() {
                    "j" => EventKind::Joined,
                    "l" => EventKind::Left,
                    "d" => EventKind::Read {
                        msg: field(&entry.map, "m")?.parse().ok()?,
                    },
                    _ => EventKind::Typing,
                },
                user: from,
                origin: field(&entry.map, "o").and_then(|o| {
                    let (node, conn) = o.rsplit_once('/')?;
                    Some((node.to_string(), conn.parse().ok()?))
                }),
            },
            _ => return None,
        })
    }

    /// The message to store, for stored (`m`) entries.
    pub fn into_stored(self) -> Option<StoredMessage> {
        match self {
            Entry::Message { msg, ephemeral: false } => Some(msg),
            _ => None,
        }
    }

    /// What node `node_id` hands its sink: an event keeps its origin
    /// connection only on the node that connection is on.
    pub fn into_delivery(self, node_id: &str) -> Delivery {
        match self {
            Entry::Message { msg, ephemeral } => Delivery::Message {
                msg: Arc::new(msg),
                ephemeral,
            },
            Entry::Event {
                room,
                kind,
                user,
                origin,
            } => Delivery::Event {
                room: room.into(),
                kind,
                user: user.into(),
                origin: origin.and_then(|(node, conn)| (node == node_id).then_some(conn)),
            },
        }
    }
}

/// Whether `entry` is a stored message of `room` (or, with `changes`, a
/// stored change too), checked without copying its fields (window scans
/// pass over every other room of the stream).
pub fn is_stored_in(entry: &StreamId, room: &str, changes: bool) -> bool {
    let is = |name: &str, want: &[u8]| match entry.map.get(name) {
        Some(Value::BulkString(b)) => b.as_slice() == want,
        Some(Value::SimpleString(s)) => s.as_bytes() == want,
        _ => false,
    };
    is("r", room.as_bytes()) && (is("k", b"m") || (changes && is("k", b"c")))
}

fn field(map: &HashMap<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A RESP2 flat array or RESP3 map (`XINFO` replies) as key/value pairs.
pub(crate) fn flat_map(v: Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [Value::BulkString(k), v] => Some((String::from_utf8_lossy(k).into_owned(), v.clone())),
                [Value::SimpleString(k), v] => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .into_iter()
            .filter_map(|(k, v)| redis::from_redis_value::<String>(k).ok().map(|k| (k, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The value of `name` in a [`flat_map`], as `T`.
pub(crate) fn lookup<T: redis::FromRedisValue>(pairs: &[(String, Value)], name: &str) -> Option<T> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| redis::from_redis_value::<T>(v.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn stream_hash_and_ids_are_stable() {
        // Every node and every version must map a room to the same stream
        // under one key (SipHash-1-3 of the room name).
        let key = "000102030405060708090a0b0c0d0e0f";
        let layout = StreamLayout::new("gw", 16).with_hash_key(key).unwrap();
        let mut h = SipHasher13::new_with_keys(0x0001_0203_0405_0607, 0x0809_0a0b_0c0d_0e0f);
        h.write(b"lobby");
        assert_eq!(layout.stream_of("lobby"), (h.finish() % 16) as u32);
        assert_eq!(layout.room_key("lobby"), layout.key(layout.stream_of("lobby")));
        assert_eq!(layout.key(7), "gw:{s7}");
        let fed = layout.clone().with_feed(true);
        assert_eq!(fed.key(7), "gw:feed:{s7}");
        assert_eq!(fed.stream_of("lobby"), layout.stream_of("lobby"));
        assert_eq!(entry_id(parse_entry_id("1700000000000-7").unwrap()), "1700000000000-7");
        assert_eq!(parse_entry_id("12-99999999"), None, "sequence beyond 22 bits");
        assert!(StreamLayout::new("gw", 16).with_hash_key("xyz").is_none());
    }

    #[test]
    fn the_key_decides_where_rooms_go() {
        // Under another key the same rooms spread differently: a client
        // cannot compute names that land on one stream.
        let a = StreamLayout::new("gw", 16).with_hash_key(&"1".repeat(32)).unwrap();
        let b = StreamLayout::new("gw", 16).with_hash_key(&"2".repeat(32)).unwrap();
        let rooms: Vec<String> = (0..64).map(|i| format!("room-{i}")).collect();
        let differ = rooms.iter().filter(|r| a.stream_of(r) != b.stream_of(r)).count();
        assert!(differ > 32, "only {differ} of 64 rooms moved");
    }

    #[test]
    fn messages_and_events_round_trip() {
        let msg = NewMessage {
            room: "lobby".into(),
            from: "ann".into(),
            body: r#"{"t":1}"#.into(),
            ephemeral: false,
            nonce: None,
            reply_to: None,
            change: None,
            moderator: false,
        };
        let e = Entry::decode(&entry("5-1", &message_fields(&msg, None))).unwrap();
        let stored = e.clone().into_stored().unwrap();
        assert_eq!(
            (stored.room.as_str(), stored.from.as_str(), stored.body.as_str()),
            ("lobby", "ann", r#"{"t":1}"#)
        );
        assert_eq!(stored.id, protocol::id::pack(5, 1));
        assert_eq!(stored.ts, 5);
        assert!(is_stored_in(&entry("5-1", &message_fields(&msg, None)), "lobby", false));
        assert!(!is_stored_in(
            &entry("5-1", &message_fields(&msg, None)),
            "other",
            false
        ));

        let eph = NewMessage { ephemeral: true, ..msg };
        let e = Entry::decode(&entry("5-2", &message_fields(&eph, None))).unwrap();
        assert!(e.clone().into_stored().is_none(), "ephemeral messages are not stored");
        assert!(matches!(
            e.into_delivery("gw-0"),
            Delivery::Message { ephemeral: true, .. }
        ));

        let o = origin("gw-1", 42);
        let typing = entry("6-0", &event_fields("lobby", EventKind::Typing, "bob", Some(&o), ""));
        let read = entry(
            "6-1",
            &event_fields("lobby", EventKind::Read { msg: 77 }, "bob", None, "77"),
        );
        assert!(matches!(
            Entry::decode(&read),
            Some(Entry::Event {
                kind: EventKind::Read { msg: 77 },
                ..
            })
        ));
        let e = Entry::decode(&typing).unwrap();
        assert!(e.clone().into_stored().is_none());
        assert!(matches!(
            e.clone().into_delivery("gw-1"),
            Delivery::Event {
                kind: EventKind::Typing,
                origin: Some(42),
                ..
            }
        ));
        assert!(
            matches!(e.into_delivery("gw-2"), Delivery::Event { origin: None, .. }),
            "another node's connection"
        );
        assert_eq!(
            Entry::decode(&entry("7-0", &[("r", "x"), ("f", "u"), ("k", "?")])),
            None
        );
    }
}
