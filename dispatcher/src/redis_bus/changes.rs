//! (1.1) Edits, deletions and reactions through the shard streams.
//!
//! A change is judged and appended by one script, atomically beside the
//! room's stream (same hash slot), so two nodes racing on one message are
//! judged in order. The script keeps each changed message's state in
//! Redis, in two hashes named by [`StreamLayout::state_key`] and
//! [`StreamLayout::holders_key`]:
//! - state: `a` author, `d` deleted, `e` edited (ms), `b` latest body,
//!   `c:<key>` users per reaction key, `n` distinct keys, `s` whether the
//!   store may know holders this hash does not (seeded from the store);
//! - holders: `<key>\n<user>` -> `1` held, `0` given back.
//!
//! The first change of a message after its state expired (or ever) has no
//! state in Redis: the script answers "seed me", and the bus reads the
//! target (store first, for a stored message's folded state; else the
//! stream window) and runs it again with the seed. A reaction on a
//! message seeded from the store, by a user the holders hash does not
//! know, is answered "ask the store", and the bus reads that user's hold.
//! The state lives [`STATE_TTL`] after the message's last change: with a
//! store, far longer than the persister's lag (which folds the same
//! changes into the store's state); without one, it is the only record of
//! a message's changes, so they are forgotten that long after the last
//! one (by then the window has usually trimmed the message too).
//!
//! History and replay read the window's messages as they were sent:
//! [`Changes::overlay`] folds the Redis state into them (and marks `me`).

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::streams::StreamRangeReply;
use storage::HistoryStore;

use super::conn::{Pool, redis_error};
use super::publish::Publisher;
use super::streams::{Entry, StreamLayout, change_fields, entry_id, parse_entry_id};
use crate::{BusError, Change, NewMessage, Published, Refusal, StoredMessage};
use protocol::event::{MAX_REACTION_KEYS, Reaction};

/// How long a message's state stays in Redis after its last change.
pub const STATE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// KEYS: stream, state, holders. ARGV: 1 op, 2 user, 3 moderator (1/0),
/// 4 reaction key, 5 ttl ms, 6 maxlen (0: none), 7 holder hint (``, 0, 1),
/// 8 seed (``: none, `w`: from the window, `s`: from the store), 9 seed
/// author, 10 seed deleted (1/0), 11 an edit's body, 12 most reaction keys,
/// 13 entry field count F, 14..13+F the entry's fields, then the seed's
/// reaction counts as key, count pairs.
/// A reaction's entry gets one more field, `n`: the key's count after it.
/// Replies `{0, id}` stored, `{1}` not found, `{2}` not allowed, `{3}`
/// unchanged, `{4}` too many keys, `{5}` seed me, `{6}` ask the store.
const JUDGE: &str = r#"
local st, rh = KEYS[2], KEYS[3]
local op, user, key = ARGV[1], ARGV[2], ARGV[4]
local nf = tonumber(ARGV[13])
if redis.call('EXISTS', st) == 0 then
  if ARGV[8] == '' then return {5} end
  local n = 0
  local i = 14 + nf
  while i < #ARGV do
    redis.call('HSET', st, 'c:' .. ARGV[i], ARGV[i + 1])
    n = n + 1
    i = i + 2
  end
  redis.call('HSET', st, 'a', ARGV[9], 'd', ARGV[10], 'n', n, 's', ARGV[8] == 's' and '1' or '0')
end
if redis.call('HGET', st, 'd') == '1' then return {1} end
local author = redis.call('HGET', st, 'a')
if op == 'edit' and author ~= user then return {2} end
if op == 'delete' and author ~= user and ARGV[3] ~= '1' then return {2} end
local hf = key .. '\n' .. user
if op == 'react' or op == 'unreact' then
  local held = redis.call('HGET', rh, hf)
  if not held then
    if redis.call('HGET', st, 's') == '1' then
      if ARGV[7] == '' then return {6} end
      held = ARGV[7]
    else
      held = '0'
    end
  end
  if (op == 'react') == (held == '1') then return {3} end
  if op == 'react' and redis.call('HEXISTS', st, 'c:' .. key) == 0
    and tonumber(redis.call('HGET', st, 'n')) >= tonumber(ARGV[12]) then
    return {4}
  end
end
-- A reaction's entry carries the key's count after it (`n`), so the
-- store can write it without reading.
local args = {KEYS[1]}
if ARGV[6] ~= '0' then
  table.insert(args, 'MAXLEN')
  table.insert(args, '~')
  table.insert(args, ARGV[6])
end
table.insert(args, '*')
for i = 14, 13 + nf do table.insert(args, ARGV[i]) end
if op == 'react' or op == 'unreact' then
  local c = tonumber(redis.call('HGET', st, 'c:' .. key) or '0')
  if op == 'react' then c = c + 1 else c = math.max(c - 1, 0) end
  table.insert(args, 'n')
  table.insert(args, tostring(c))
end
local id = redis.call('XADD', unpack(args))
if op == 'edit' then
  redis.call('HSET', st, 'e', string.match(id, '^(%d+)'), 'b', ARGV[11])
elseif op == 'delete' then
  for _, f in ipairs(redis.call('HKEYS', st)) do
    if string.sub(f, 1, 2) == 'c:' or f == 'b' or f == 'e' then redis.call('HDEL', st, f) end
  end
  redis.call('HSET', st, 'd', '1', 'n', 0)
  redis.call('DEL', rh)
elseif op == 'react' then
  if redis.call('HINCRBY', st, 'c:' .. key, 1) == 1 then redis.call('HINCRBY', st, 'n', 1) end
  redis.call('HSET', rh, hf, '1')
else
  if redis.call('HINCRBY', st, 'c:' .. key, -1) <= 0 then
    redis.call('HDEL', st, 'c:' .. key)
    redis.call('HINCRBY', st, 'n', -1)
  end
  redis.call('HSET', rh, hf, '0')
end
redis.call('PEXPIRE', st, ARGV[5])
if redis.call('EXISTS', rh) == 1 then redis.call('PEXPIRE', rh, ARGV[5]) end
return {0, id}
"#;

/// What the script is told of a target whose state is not in Redis.
struct Seed {
    author: String,
    deleted: bool,
    counts: Vec<(String, u32)>,
    /// Read from the store (which may know holders Redis does not).
    from_store: bool,
}

/// The changes of a Redis bus: judging and appending them, and folding
/// their state into what the window reads.
pub(crate) struct Changes {
    pub(crate) pool: Pool,
    pub(crate) layout: StreamLayout,
    pub(crate) store: Option<Arc<dyn HistoryStore>>,
    /// Trim on append (no store), as the publisher does.
    pub(crate) maxlen: Option<usize>,
}

/// [`JUDGE`], run by its hash (its 3 KB of text in every command would
/// fill Redis's reads).
fn judge_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(JUDGE))
}

impl Changes {
    /// Judges the change `msg` carries against its target and appends it.
    pub(crate) async fn publish(&self, publisher: &Publisher, msg: &NewMessage) -> Result<Published, BusError> {
        let Some(change) = &msg.change else {
            return Err(BusError::Unavailable("not a change".into()));
        };
        let target = change.target.to_string();
        let fields = change_fields(msg, change, &target);
        let (mut seed, mut hint) = (None, None);
        // At most: seed me, ask the store, then an answer.
        for _ in 0..3 {
            let cmd = self.judge(msg, change, &fields, seed.as_ref(), hint);
            let reply = publisher
                .run_script(judge_script(), cmd, "EVALSHA (judge a change)")
                .await?;
            match code(&reply)? {
                (0, Some(id)) => {
                    let id = parse_entry_id(&id).ok_or_else(|| redis_error("XADD", format!("odd id {id:?}")))?;
                    return Ok(Published {
                        id,
                        ts: protocol::id::millis(id),
                        duplicate: false,
                    });
                }
                (1, _) => return Err(BusError::Refused(Refusal::NotFound)),
                (2, _) => return Err(BusError::Refused(Refusal::NotAllowed)),
                (3, _) => return Err(BusError::Refused(Refusal::Unchanged)),
                (4, _) => return Err(BusError::Refused(Refusal::TooManyKeys)),
                // The store's hold of a reaction is read beside the seed (the
                // script would ask for it next), saving a round trip.
                (5, _) => {
                    let want_hint = hint.is_none() && change.kind.key().is_some() && self.store.is_some();
                    let (found, held) = tokio::try_join!(self.seed(&msg.room, change.target), async {
                        if want_hint {
                            self.held(msg, change).await.map(Some)
                        } else {
                            Ok(hint)
                        }
                    })?;
                    match found {
                        Some(s) => seed = Some(s),
                        None => return Err(BusError::Refused(Refusal::NotFound)),
                    }
                    hint = held;
                }
                (6, _) => hint = Some(self.held(msg, change).await?),
                (other, _) => return Err(redis_error("EVAL", format!("unexpected reply {other}"))),
            }
        }
        Err(redis_error(
            "EVAL",
            "the change script asked for more than it was given",
        ))
    }

    fn judge(
        &self,
        msg: &NewMessage,
        change: &Change,
        fields: &[(&str, &str)],
        seed: Option<&Seed>,
        hint: Option<bool>,
    ) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(judge_script().get_hash())
            .arg(3)
            .arg(self.layout.room_key(&msg.room))
            .arg(self.layout.state_key(&msg.room, change.target))
            .arg(self.layout.holders_key(&msg.room, change.target))
            .arg(change.kind.op())
            .arg(&*msg.from)
            .arg(if msg.moderator { "1" } else { "0" })
            .arg(change.kind.key().unwrap_or(""))
            .arg(STATE_TTL.as_millis() as u64)
            .arg(self.maxlen.unwrap_or(0))
            .arg(match hint {
                None => "",
                Some(true) => "1",
                Some(false) => "0",
            })
            .arg(match seed {
                None => "",
                Some(s) if s.from_store => "s",
                Some(_) => "w",
            })
            .arg(seed.map_or("", |s| s.author.as_str()))
            .arg(if seed.is_some_and(|s| s.deleted) { "1" } else { "0" })
            .arg(msg.body.as_str())
            .arg(MAX_REACTION_KEYS)
            .arg(fields.len() * 2);
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        for (k, n) in seed.map(|s| s.counts.as_slice()).unwrap_or_default() {
            cmd.arg(k).arg(*n);
        }
        cmd
    }

    /// The target as the store has it (with its folded state), else as the
    /// stream window has it; `None` when neither has such a message.
    async fn seed(&self, room: &str, id: u64) -> Result<Option<Seed>, BusError> {
        if let Some(store) = &self.store
            && let Some(m) = store.message(room, id).await?
        {
            return Ok(Some(Seed {
                author: m.from,
                deleted: m.state.deleted,
                counts: m.state.reactions.into_iter().map(|r| (r.key, r.count)).collect(),
                from_store: true,
            }));
        }
        let mut conn = self.pool.get().await?;
        let at = entry_id(id);
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.layout.room_key(room))
            .arg(&at)
            .arg(&at)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("XRANGE", e))?;
        let found = reply.ids.first().and_then(Entry::decode);
        Ok(match found {
            Some(Entry::Message { msg, ephemeral: false }) if msg.room == room && msg.change.is_none() => Some(Seed {
                author: msg.from,
                deleted: false,
                counts: Vec::new(),
                // A store may have it any moment (the persister).
                from_store: self.store.is_some(),
            }),
            _ => None,
        })
    }

    /// Whether the store has `msg.from` holding the change's reaction key.
    async fn held(&self, msg: &NewMessage, change: &Change) -> Result<bool, BusError> {
        let (Some(store), Some(key)) = (&self.store, change.kind.key()) else {
            return Ok(false);
        };
        Ok(store
            .reactions_by(&msg.room, &msg.from, change.target, change.target)
            .await?
            .iter()
            .any(|(_, k)| k == key))
    }

    /// Folds the Redis state of `page`'s messages into them: the latest
    /// body and `edited`, `deleted`, and (with `reactions`) the reaction
    /// counts with `me` for `viewer`; without `reactions` (a replay, whose
    /// react events carry them) none. Changes pass through untouched.
    pub(crate) async fn overlay(
        &self,
        room: &str,
        page: &mut [StoredMessage],
        viewer: Option<&str>,
        reactions: bool,
    ) -> Result<(), BusError> {
        let ids: Vec<usize> = (0..page.len()).filter(|&i| page[i].change.is_none()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &i in &ids {
            pipe.cmd("HGETALL").arg(self.layout.state_key(room, page[i].id));
        }
        let mut conn = self.pool.get().await?;
        let states: Vec<Vec<(String, String)>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("HGETALL (message state)", e))?;
        // The store's `me` first; Redis's holders, newer, override it.
        if reactions && let Some(viewer) = viewer {
            crate::changes::mark_mine(self.store.as_deref(), room, viewer, page).await?;
        }
        for (&i, state) in ids.iter().zip(states) {
            if state.is_empty() {
                continue;
            }
            let m = &mut page[i];
            let mine: Vec<String> = m
                .state
                .reactions
                .iter()
                .filter(|r| r.me)
                .map(|r| r.key.clone())
                .collect();
            let get = |f: &str| state.iter().find(|(k, _)| k == f).map(|(_, v)| v.as_str());
            if get("d") == Some("1") {
                m.state.deleted = true;
                m.state.reactions.clear();
                m.body.clear();
                continue;
            }
            if let Some(e) = get("e").and_then(|e| e.parse().ok()) {
                m.state.edited = Some(e);
                m.body = get("b").unwrap_or_default().to_owned();
            }
            let mut counts: Vec<Reaction> = state
                .iter()
                .filter_map(|(k, v)| {
                    let key = k.strip_prefix("c:")?;
                    let count: u32 = v.parse().ok().filter(|n| *n > 0)?;
                    Some(Reaction {
                        key: key.to_owned(),
                        count,
                        me: mine.iter().any(|k| k == key),
                    })
                })
                .collect();
            counts.sort_by(|a, b| a.key.cmp(&b.key));
            m.state.reactions = if reactions { counts } else { Vec::new() };
        }
        if let Some(viewer) = viewer.filter(|_| reactions) {
            self.mark_held(&mut conn, room, viewer, page).await?;
        }
        Ok(())
    }

    /// Sets `me` on the page's reactions from the Redis holders hashes
    /// (explicit `1`/`0`; a field a hash lacks, or a hash that is gone,
    /// keeps what the store said): one pipeline for the page, not one
    /// round trip per reacted message.
    async fn mark_held(
        &self,
        conn: &mut super::conn::Pooled,
        room: &str,
        viewer: &str,
        page: &mut [StoredMessage],
    ) -> Result<(), BusError> {
        let asked: Vec<usize> = (0..page.len())
            .filter(|&i| page[i].change.is_none() && !page[i].state.reactions.is_empty())
            .collect();
        if asked.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &i in &asked {
            let fields: Vec<String> = page[i]
                .state
                .reactions
                .iter()
                .map(|r| format!("{}\n{viewer}", r.key))
                .collect();
            pipe.cmd("HMGET")
                .arg(self.layout.holders_key(room, page[i].id))
                .arg(fields);
        }
        let held: Vec<Vec<Option<String>>> = pipe
            .query_async(conn)
            .await
            .map_err(|e| redis_error("HMGET (reaction holders)", e))?;
        for (&i, held) in asked.iter().zip(held) {
            for (r, h) in page[i].state.reactions.iter_mut().zip(held) {
                match h.as_deref() {
                    Some("1") => r.me = true,
                    Some("0") => r.me = false,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// The script's reply: its code, and the new entry's id when stored.
fn code(v: &Value) -> Result<(i64, Option<String>), BusError> {
    let odd = || redis_error("EVAL", format!("unexpected reply {v:?}"));
    let Value::Array(parts) = v else { return Err(odd()) };
    let code = match parts.first() {
        Some(Value::Int(n)) => *n,
        _ => return Err(odd()),
    };
    let id = match parts.get(1) {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        _ => None,
    };
    Ok((code, id))
}
