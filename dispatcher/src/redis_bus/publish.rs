//! Appending to the shard streams: `XADD` on one shared multiplexed
//! connection, so concurrent publishes pipeline on it, and one pipeline per
//! stream for a sender's batch. The id Redis gives an entry is the message
//! id (strictly increasing per stream, so every node sees one order).

use std::time::{Duration, Instant};

use super::conn::redis_error;
use super::conn::{Conn, Target};
use super::streams::parse_entry_id;
use crate::BusError;

pub(crate) struct Publisher {
    target: Target,
    /// `Some(maxlen)`: trim on every append (no store behind the window);
    /// `None`: the trim task cuts only what the persister has stored.
    maxlen: Option<usize>,
    /// How long a send's nonce is remembered.
    dedupe_window: Duration,
    /// (1.1) Entries each feed stream keeps, when the feed is on.
    pub(crate) feed: Option<usize>,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

/// Appends a send with a nonce once: if the nonce's key (same hash slot as
/// the stream) names an entry already, that entry's id; else the entry's
/// new id, remembered under the key for the window. One script, so two
/// nodes retrying the same send at once cannot both append it.
/// KEYS: stream, nonce key. ARGV: window ms, maxlen (0: none), fields.
const APPEND_ONCE: &str = "local seen = redis.call('GET', KEYS[2]) \
    if seen then return {1, seen} end \
    local id \
    if ARGV[2] == '0' then id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3)) \
    else id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3)) end \
    redis.call('SET', KEYS[2], id, 'PX', ARGV[1]) \
    return {0, id}";

/// (1.1) [`APPEND_ONCE`] with the event feed: appends a stored message to
/// its shard stream and its copy to the feed stream beside it (same hash
/// slot), so the feed has it exactly when the stream does, in the room's
/// order. KEYS: stream, feed stream, the nonce key (optional). ARGV:
/// window ms, maxlen (0: none), feed maxlen, fields.
fn append_feed_script() -> &'static str {
    static SCRIPT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        format!(
            "{}{}",
            super::feed::FEED_FN,
            r#"
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {1, seen} end
end
local args = {KEYS[1]}
if ARGV[2] ~= '0' then
  args[#args + 1] = 'MAXLEN'
  args[#args + 1] = '~'
  args[#args + 1] = ARGV[2]
end
args[#args + 1] = '*'
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
local id = redis.call('XADD', unpack(args))
if KEYS[3] then redis.call('SET', KEYS[3], id, 'PX', ARGV[1]) end
feed(KEYS[2], ARGV[3], 'message', id, ARGV, 4, #ARGV - 1, nil)
return {0, id}
"#
        )
    })
}

/// One entry to append: its fields, for a send with a nonce the key that
/// remembers it, and for a stored message with the feed on, the feed
/// stream its copy goes to.
pub(crate) struct Append<'a> {
    pub(crate) fields: &'a [(&'a str, &'a str)],
    pub(crate) nonce_key: Option<String>,
    pub(crate) feed_key: Option<String>,
}

impl Publisher {
    /// Connects now, so a node that cannot publish does not start.
    pub(crate) async fn connect(
        target: Target,
        maxlen: Option<usize>,
        dedupe_window: Duration,
        feed: Option<usize>,
    ) -> Result<Publisher, BusError> {
        let conn = target.connect(Duration::from_secs(5)).await?;
        Ok(Publisher {
            target,
            maxlen,
            dedupe_window,
            feed,
            conn: tokio::sync::Mutex::new(Some(conn)),
        })
    }

    async fn conn(&self) -> Result<Conn, BusError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.target.connect(Duration::from_secs(5)).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// After a failed command: reconnect on the next publish when the
    /// multiplexed connection may be dead.
    async fn failed(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            *self.conn.lock().await = None;
        }
    }

    fn xadd(&self, key: &str, fields: &[(&str, &str)]) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key);
        if let Some(maxlen) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd
    }

    /// Appends one entry; its id.
    pub(crate) async fn add(&self, key: &str, fields: &[(&str, &str)]) -> Result<u64, BusError> {
        let cmd = self.xadd(key, fields);
        let mut conn = self.conn().await?;
        let started = Instant::now();
        let reply = cmd.query_async::<String>(&mut conn).await;
        crate::metrics::get()
            .publish_seconds
            .record(started.elapsed().as_secs_f64());
        match reply {
            Ok(id) => parse_id(&id),
            Err(e) => {
                self.failed(&e).await;
                Err(redis_error("XADD", e))
            }
        }
    }

    fn append_once(&self, key: &str, nonce_key: &str, fields: &[(&str, &str)]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(APPEND_ONCE)
            .arg(2)
            .arg(key)
            .arg(nonce_key)
            .arg(self.dedupe_window.as_millis() as u64)
            .arg(self.maxlen.unwrap_or(0));
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd
    }

    fn append_feed(&self, key: &str, feed_key: &str, nonce_key: Option<&str>, fields: &[(&str, &str)]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(append_feed_script())
            .arg(if nonce_key.is_some() { 3 } else { 2 })
            .arg(key)
            .arg(feed_key);
        if let Some(nonce_key) = nonce_key {
            cmd.arg(nonce_key);
        }
        cmd.arg(self.dedupe_window.as_millis() as u64)
            .arg(self.maxlen.unwrap_or(0))
            .arg(self.feed.unwrap_or(0));
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd
    }

    /// Appends entries to one stream in one pipeline, in order; each one's
    /// id and whether it was a repeated nonce (then the first one's id, and
    /// nothing appended).
    pub(crate) async fn add_all(&self, key: &str, entries: &[Append<'_>]) -> Result<Vec<(u64, bool)>, BusError> {
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.add_command(match (&e.feed_key, &e.nonce_key) {
                (Some(feed_key), nonce_key) => self.append_feed(key, feed_key, nonce_key.as_deref(), e.fields),
                (None, None) => self.xadd(key, e.fields),
                (None, Some(nonce_key)) => self.append_once(key, nonce_key, e.fields),
            });
        }
        let mut conn = self.conn().await?;
        let started = Instant::now();
        let reply = pipe.query_async::<Vec<redis::Value>>(&mut conn).await;
        crate::metrics::get()
            .publish_seconds
            .record(started.elapsed().as_secs_f64());
        match reply {
            Ok(replies) => replies.iter().map(appended).collect(),
            Err(e) => {
                self.failed(&e).await;
                Err(redis_error("XADD pipeline", e))
            }
        }
    }
}

impl Publisher {
    /// Runs one command (a script) on the shared connection; `what` names
    /// it in errors.
    pub(crate) async fn run(&self, cmd: redis::Cmd, what: &'static str) -> Result<redis::Value, BusError> {
        let mut conn = self.conn().await?;
        match cmd.query_async::<redis::Value>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.failed(&e).await;
                Err(redis_error(what, e))
            }
        }
    }
}

/// An `XADD` reply (an id) or an [`APPEND_ONCE`] reply (`[repeat, id]`).
fn appended(v: &redis::Value) -> Result<(u64, bool), BusError> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let odd = || redis_error("XADD", format!("unexpected reply {v:?}"));
    match v {
        Value::Array(parts) if parts.len() == 2 => {
            let repeat = matches!(parts[0], Value::Int(1));
            let id = text(&parts[1]).ok_or_else(odd)?;
            Ok((parse_id(&id)?, repeat))
        }
        other => Ok((parse_id(&text(other).ok_or_else(odd)?)?, false)),
    }
}

fn parse_id(id: &str) -> Result<u64, BusError> {
    parse_entry_id(id).ok_or_else(|| redis_error("XADD", format!("unexpected entry id {id:?}")))
}
