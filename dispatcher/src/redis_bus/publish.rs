//! Appending to the shard streams: one append script (nonces, the feed
//! copy) on one shared multiplexed connection, called once for whatever
//! batches queued for a stream while its previous call was in flight
//! (`queue`). The id Redis gives an entry is the message id (strictly
//! increasing per stream, so every node sees one order).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::conn::redis_error;
use super::conn::{Conn, Target};
use super::streams::parse_entry_id;
use crate::BusError;

/// Connections the appends spread over, by stream. Redis reads at most
/// 16 KB of one client's commands per event-loop round, and with
/// `appendfsync always` every round waits for an fsync: one connection
/// caps the appends at 16 KB a round (measured: about 80,000 messages a
/// second on this machine's disk, whatever the CPU).
const CONNECTIONS: usize = 4;

pub(crate) struct Publisher {
    target: Target,
    /// `Some(maxlen)`: trim on every append (no store behind the window);
    /// `None`: the trim task cuts only what the persister has stored.
    maxlen: Option<usize>,
    /// How long a send's nonce is remembered.
    dedupe_window: Duration,
    /// (1.1) Entries each feed stream keeps, when the feed is on.
    pub(crate) feed: Option<usize>,
    /// [`CONNECTIONS`] connections, each stream's calls on one of them.
    conns: Vec<tokio::sync::Mutex<Option<Conn>>>,
    /// Each stream's queue of batches waiting for its next script call.
    queues: std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<Batch>>>,
}

/// The append script, run with `EVALSHA` (its text is loaded once per
/// connection: sent with every append, its 1.5 KB would fill Redis's 16 KB
/// reads with ten commands each, and with `appendfsync always` every read
/// costs an fsync). One call appends every batch queued for a shard stream,
/// in order (the per-call cost of a script is paid once a call), and for
/// each entry:
/// - with a nonce key (the next of KEYS[3..], same hash slot as the
///   stream), appends it once: if the key names an entry already, that
///   entry's id; else the new id, remembered under the key for the window.
///   One script, so two nodes retrying the same send at once cannot both
///   append it;
/// - (1.1) when asked, copies it to the feed stream beside it (KEYS[2],
///   same hash slot), so the feed has a message exactly when its stream
///   does, in the room's order. The copy (docs/FEED.md) is made here from
///   the entry's own fields (`r`, `f` as `u`, `b`, `p`) and its id (`m`,
///   `ts`), as the change script makes its copies: sending the body twice
///   would double the bytes of a call.
///
/// KEYS: stream, feed stream, the nonce keys of the entries that have one.
/// ARGV: window ms, maxlen (0: none), feed maxlen, then per entry: has a
/// nonce (`0`/`1`), N, its N field names and values, copy to the feed
/// (`0`/`1`). Replies `repeat, id` per entry (`repeat` 1: a repeated
/// nonce, nothing appended).
fn append_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(&format!(
            "{}{}{}",
            super::feed::MESSAGE_ID_FN,
            super::feed::FEED_FN,
            r#"
local out, i, k = {}, 4, 3
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
    if ARGV[fs + nf] == '1' then
      feed(KEYS[2], ARGV[3], 'message', id, ARGV, fs, fs + nf - 1)
    end
    out[#out + 1] = 0
    out[#out + 1] = id
  end
  i = fs + nf + 1
end
return out
"#
        ))
    })
}

/// One entry to append: its fields, for a send with a nonce the key that
/// remembers it, and for a stored message with the feed on, the feed
/// stream its copy goes to.
pub(crate) struct Append<'a> {
    pub(crate) fields: &'a [(&'a str, &'a str)],
    pub(crate) nonce_key: Option<String>,
    pub(crate) feed: Option<String>,
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
            conns: std::iter::once(Some(conn))
                .chain(std::iter::repeat_with(|| None))
                .take(CONNECTIONS)
                .map(tokio::sync::Mutex::new)
                .collect(),
            queues: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Connection `i` (connected again after a failure, lazily).
    async fn conn(&self, i: usize) -> Result<Conn, BusError> {
        let mut slot = self.conns[i % CONNECTIONS].lock().await;
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
    async fn failed(&self, i: usize, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            *self.conns[i % CONNECTIONS].lock().await = None;
        }
    }

    /// Appends one entry; its id.
    pub(crate) async fn add(self: &Arc<Self>, key: &str, fields: &[(&str, &str)]) -> Result<u64, BusError> {
        let entry = Append {
            fields,
            nonce_key: None,
            feed: None,
        };
        let ids = self.add_all(key, std::slice::from_ref(&entry)).await?;
        Ok(ids[0].0)
    }

    /// Appends entries to one stream, in order; each one's id and whether
    /// it was a repeated nonce (then the first one's id, and nothing
    /// appended). The entries wait in the stream's queue while its
    /// previous call is in flight, and go with whatever else queued there
    /// in one script call ([`super::queue`]).
    pub(crate) async fn add_all(
        self: &Arc<Self>,
        key: &str,
        entries: &[Append<'_>],
    ) -> Result<Vec<(u64, bool)>, BusError> {
        let (batch, reply) = Batch::encode(entries);
        self.queue(key).send(batch).map_err(|_| BusError::Closed)?;
        match reply.await {
            Ok(Ok(ids)) => Ok(ids),
            Ok(Err(e)) => Err(BusError::Unavailable(e)),
            Err(_) => Err(BusError::Closed),
        }
    }

    /// The queue of `key`'s stream, its flushing task started on first use.
    fn queue(self: &Arc<Self>, key: &str) -> mpsc::UnboundedSender<Batch> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = queues.get(key) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = queues.len() % CONNECTIONS;
        tokio::spawn(super::queue::flush(Arc::downgrade(self), conn, key.to_owned(), rx));
        queues.insert(key.to_owned(), tx.clone());
        tx
    }

    /// One append script call for `batches` (all for stream `key`, in
    /// queue order) on connection `conn`: each batch's ids, in order.
    pub(super) async fn append(&self, conn: usize, key: &str, batches: &[Batch]) -> Result<Vec<(u64, bool)>, String> {
        let feed_key = batches.iter().find_map(|b| b.feed_key.as_deref());
        let nonces = batches.iter().map(|b| b.nonce_keys.len()).sum::<usize>();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(append_script().get_hash())
            .arg(2 + nonces)
            .arg(key)
            .arg(feed_key.unwrap_or(key));
        for b in batches {
            cmd.arg(&b.nonce_keys);
        }
        cmd.arg(self.dedupe_window.as_millis() as u64)
            .arg(self.maxlen.unwrap_or(0))
            .arg(self.feed.unwrap_or(0));
        for b in batches {
            for arg in b.args.args_iter() {
                if let redis::Arg::Simple(a) = arg {
                    cmd.arg(a);
                }
            }
        }
        let entries = batches.iter().map(|b| b.len).sum::<usize>();
        let i = conn;
        let mut conn = self.conn(i).await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut reply = cmd.query_async::<redis::Value>(&mut conn).await;
        if reply.as_ref().is_err_and(is_noscript) {
            // The script cache was flushed (or a failover): the call did
            // not run; load the script and send it again.
            load_script(&mut conn).await.map_err(|e| e.to_string())?;
            reply = cmd.query_async::<redis::Value>(&mut conn).await;
        }
        crate::metrics::get()
            .publish_seconds
            .record(started.elapsed().as_secs_f64());
        match reply {
            Ok(redis::Value::Array(pairs)) if pairs.len() == entries * 2 => pairs
                .chunks(2)
                .map(appended)
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string()),
            Ok(other) => Err(format!("redis append script: unexpected reply {other:?}")),
            Err(e) => {
                self.failed(i, &e).await;
                Err(redis_error("append script", e).to_string())
            }
        }
    }
}

/// One sender's entries, encoded as the append script's per-entry ARGV.
pub(super) struct Batch {
    pub(super) args: redis::Cmd,
    pub(super) nonce_keys: Vec<String>,
    pub(super) feed_key: Option<String>,
    /// Entries.
    pub(super) len: usize,
    pub(super) reply: oneshot::Sender<Result<Vec<(u64, bool)>, String>>,
}

type Reply = oneshot::Receiver<Result<Vec<(u64, bool)>, String>>;

impl Batch {
    fn encode(entries: &[Append<'_>]) -> (Batch, Reply) {
        let mut args = redis::Cmd::new();
        let mut nonce_keys = Vec::new();
        let mut feed_key = None;
        for e in entries {
            args.arg(if e.nonce_key.is_some() { "1" } else { "0" })
                .arg(e.fields.len() * 2);
            for (k, v) in e.fields {
                args.arg(*k).arg(*v);
            }
            args.arg(if e.feed.is_some() { "1" } else { "0" });
            nonce_keys.extend(e.nonce_key.clone());
            if feed_key.is_none() {
                feed_key = e.feed.clone();
            }
        }
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            args,
            nonce_keys,
            feed_key,
            len: entries.len(),
            reply: tx,
        };
        (batch, rx)
    }

    /// Bytes of ARGV it adds to a call.
    pub(super) fn bytes(&self) -> usize {
        self.args
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(a) => a.len(),
                _ => 0,
            })
            .sum()
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
        let mut conn = self.conn(0).await?;
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
                self.failed(0, &e).await;
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
