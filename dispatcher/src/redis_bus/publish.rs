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
    conn: tokio::sync::Mutex<Option<Conn>>,
}

/// The append script, run with `EVALSHA` (its text is loaded once per
/// connection: sent with every append, it would fill Redis's 16 KB reads
/// with a few commands each, and with `appendfsync always` every read
/// costs an fsync). One call appends a sender's whole batch to its shard
/// stream, in order (the per-call cost of a script is paid once a batch);
/// an entry with a nonce key (the next of KEYS[2..], same hash slot as the
/// stream) is appended once: if the key names an entry already, that
/// entry's id; else the new id, remembered under the key for the window.
/// One script, so two nodes retrying the same send at once cannot both
/// append it.
///
/// KEYS: stream, the nonce keys of the entries that have one.
/// ARGV: window ms, maxlen (0: none), then per entry: has a nonce
/// (`0`/`1`), N, its N field names and values. Replies `repeat, id` per
/// entry (`repeat` 1: a repeated nonce, nothing appended).
fn append_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r#"
local out, i, k = {}, 3, 2
while i <= #ARGV do
  local nonce = nil
  if ARGV[i] == '1' then
    nonce = KEYS[k]
    k = k + 1
  end
  local nf = tonumber(ARGV[i + 1])
  local fs = i + 2
  local seen = nonce and redis.call('GET', nonce)
  if seen then
    out[#out + 1] = 1
    out[#out + 1] = seen
  else
    local id
    if ARGV[2] == '0' then
      id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, fs, fs + nf - 1))
    else
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, fs, fs + nf - 1))
    end
    if nonce then redis.call('SET', nonce, id, 'PX', ARGV[1]) end
    out[#out + 1] = 0
    out[#out + 1] = id
  end
  i = fs + nf
end
return out
"#,
        )
    })
}

/// One entry to append: its fields, and for a send with a nonce the key
/// that remembers it.
pub(crate) struct Append<'a> {
    pub(crate) fields: &'a [(&'a str, &'a str)],
    pub(crate) nonce_key: Option<String>,
}

impl Publisher {
    /// Connects now, so a node that cannot publish does not start.
    pub(crate) async fn connect(
        target: Target,
        maxlen: Option<usize>,
        dedupe_window: Duration,
    ) -> Result<Publisher, BusError> {
        let conn = target.connect(Duration::from_secs(5)).await?;
        Ok(Publisher {
            target,
            maxlen,
            dedupe_window,
            conn: tokio::sync::Mutex::new(Some(conn)),
        })
    }

    async fn conn(&self) -> Result<Conn, BusError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut c = self.target.connect(Duration::from_secs(5)).await?;
        load_script(&mut c).await?;
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

    /// The append script for a batch (see [`append_script`]).
    fn append(&self, key: &str, entries: &[Append<'_>]) -> redis::Cmd {
        let nonces: Vec<&str> = entries.iter().filter_map(|e| e.nonce_key.as_deref()).collect();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(append_script().get_hash())
            .arg(1 + nonces.len())
            .arg(key)
            .arg(&nonces)
            .arg(self.dedupe_window.as_millis() as u64)
            .arg(self.maxlen.unwrap_or(0));
        for e in entries {
            cmd.arg(if e.nonce_key.is_some() { "1" } else { "0" })
                .arg(e.fields.len() * 2);
            for (k, v) in e.fields {
                cmd.arg(*k).arg(*v);
            }
        }
        cmd
    }

    /// Appends entries to one stream in one pipeline, in order; each one's
    /// id and whether it was a repeated nonce (then the first one's id, and
    /// nothing appended).
    pub(crate) async fn add_all(&self, key: &str, entries: &[Append<'_>]) -> Result<Vec<(u64, bool)>, BusError> {
        // Plain XADDs, or one script for the batch: after a NOSCRIPT (the
        // script cache flushed, a failover) it did not run, and is sent
        // again once the script is loaded.
        let scripted = entries.iter().any(|e| e.nonce_key.is_some());
        let mut pipe = redis::pipe();
        if scripted {
            pipe.add_command(self.append(key, entries));
        } else {
            for e in entries {
                pipe.add_command(self.xadd(key, e.fields));
            }
        }
        let mut conn = self.conn().await?;
        let started = Instant::now();
        let mut reply = pipe.query_async::<Vec<redis::Value>>(&mut conn).await;
        if scripted && reply.as_ref().is_err_and(is_noscript) {
            load_script(&mut conn).await?;
            reply = pipe.query_async::<Vec<redis::Value>>(&mut conn).await;
        }
        crate::metrics::get()
            .publish_seconds
            .record(started.elapsed().as_secs_f64());
        match reply {
            Ok(replies) if scripted => match replies.as_slice() {
                [redis::Value::Array(pairs)] if pairs.len() == entries.len() * 2 => {
                    pairs.chunks(2).map(appended).collect()
                }
                other => Err(redis_error("append script", format!("unexpected reply {other:?}"))),
            },
            Ok(replies) => replies.iter().map(|v| appended(std::slice::from_ref(v))).collect(),
            Err(e) => {
                self.failed(&e).await;
                Err(redis_error("XADD pipeline", e))
            }
        }
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Loads the append script into the Redis behind `conn` (every master of
/// a cluster).
async fn load_script(conn: &mut Conn) -> Result<(), BusError> {
    append_script()
        .prepare_invoke()
        .load_async(conn)
        .await
        .map(drop)
        .map_err(|e| redis_error("SCRIPT LOAD", e))
}

impl Publisher {
    /// Runs `script` (by its hash: `cmd` is its `EVALSHA`) on the shared
    /// connection, loading it first when Redis does not have it; `what`
    /// names it in errors.
    pub(crate) async fn run_script(
        &self,
        script: &redis::Script,
        cmd: redis::Cmd,
        what: &'static str,
    ) -> Result<redis::Value, BusError> {
        let mut conn = self.conn().await?;
        let mut reply = cmd.query_async::<redis::Value>(&mut conn).await;
        if reply.as_ref().is_err_and(is_noscript) {
            script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| redis_error("SCRIPT LOAD", e))?;
            reply = cmd.query_async::<redis::Value>(&mut conn).await;
        }
        match reply {
            Ok(v) => Ok(v),
            Err(e) => {
                self.failed(&e).await;
                Err(redis_error(what, e))
            }
        }
    }
}

/// An `XADD` reply (`[id]`) or an [`append_script`] entry's (`[repeat, id]`).
fn appended(v: &[redis::Value]) -> Result<(u64, bool), BusError> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let odd = || redis_error("XADD", format!("unexpected reply {v:?}"));
    match v {
        [repeat, id] => Ok((parse_id(&text(id).ok_or_else(odd)?)?, matches!(repeat, Value::Int(1)))),
        [id] => Ok((parse_id(&text(id).ok_or_else(odd)?)?, false)),
        _ => Err(odd()),
    }
}

fn parse_id(id: &str) -> Result<u64, BusError> {
    parse_entry_id(id).ok_or_else(|| redis_error("XADD", format!("unexpected entry id {id:?}")))
}
