//! Shard stream readers: a node reads a stream only while it has local
//! members of a room in it. One task per stream with a dedicated
//! connection (`XREAD BLOCK` would hold up a shared one), started at the
//! stream's last id before the first join's replay read, so the join
//! misses nothing, and resuming from the last entry it read after any
//! Redis outage. A stream nobody local reads any more lingers a while in
//! case a member comes back (joins and leaves flap).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::streams::{StreamId, StreamReadReply};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::redis_error;
use super::conn::{Conn, Target};
use super::streams::{Entry, StreamLayout, parse_entry_id};
use super::window::StreamInfo;
use crate::backoff::Backoff;
use crate::{BusError, Delivery, Sink};

/// How long a stream nobody local reads any more keeps its reader.
const LINGER: Duration = Duration::from_secs(30);
/// How long a join waits for its stream's reader to be positioned.
const POSITION_WAIT: Duration = Duration::from_secs(3);

/// What every reader of one node needs.
pub(crate) struct ReaderContext {
    pub(crate) target: Target,
    pub(crate) layout: StreamLayout,
    pub(crate) node_id: String,
    pub(crate) sink: Arc<dyn Sink>,
    /// Entries per `XREAD`.
    pub(crate) read_count: usize,
    /// `XREAD BLOCK` time.
    pub(crate) block: Duration,
    /// Cancelled when the bus closes.
    pub(crate) closed: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// The node's interest in each stream, and the readers it keeps.
pub(crate) struct Readers {
    ctx: Arc<ReaderContext>,
    streams: Vec<Mutex<Interest>>,
}

#[derive(Default)]
struct Interest {
    /// Local joins of rooms in this stream.
    count: usize,
    /// Bumped on every change to zero, so a stale linger does not stop a
    /// reader that found members again.
    generation: u64,
    reader: Option<ReaderHandle>,
}

struct ReaderHandle {
    cancel: CancellationToken,
    positioned: watch::Receiver<bool>,
}

impl Readers {
    pub(crate) fn new(ctx: ReaderContext) -> Arc<Readers> {
        let streams = (0..ctx.layout.count()).map(|_| Mutex::default()).collect();
        Arc::new(Readers {
            ctx: Arc::new(ctx),
            streams,
        })
    }

    /// A local connection joins `room`: once this returns, the room's
    /// stream is read from a point before any later publish.
    pub(crate) async fn watch(self: &Arc<Self>, room: &str) -> Result<(), BusError> {
        let stream = self.ctx.layout.stream_of(room);
        let mut positioned = {
            let mut s = self.streams[stream as usize].lock();
            s.count += 1;
            s.reader
                .get_or_insert_with(|| start(&self.ctx, stream))
                .positioned
                .clone()
        };
        match tokio::time::timeout(POSITION_WAIT, positioned.wait_for(|p| *p)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.unwatch(room);
                Err(BusError::Unavailable(
                    "redis: the room's stream cannot be read now".into(),
                ))
            }
        }
    }

    /// A local connection left `room` (one call per `watch`).
    pub(crate) fn unwatch(self: &Arc<Self>, room: &str) {
        let stream = self.ctx.layout.stream_of(room) as usize;
        let generation = {
            let mut s = self.streams[stream].lock();
            s.count = s.count.saturating_sub(1);
            if s.count > 0 {
                return;
            }
            s.generation += 1;
            s.generation
        };
        let readers = self.clone();
        self.ctx.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = readers.ctx.closed.cancelled() => return,
            }
            let mut s = readers.streams[stream].lock();
            if s.count == 0
                && s.generation == generation
                && let Some(r) = s.reader.take()
            {
                r.cancel.cancel();
            }
        });
    }
}

fn start(ctx: &Arc<ReaderContext>, stream: u32) -> ReaderHandle {
    let cancel = ctx.closed.child_token();
    let (tx, rx) = watch::channel(false);
    ctx.tasks.spawn(read_stream(ctx.clone(), stream, cancel.clone(), tx));
    ReaderHandle { cancel, positioned: rx }
}

/// Reads one shard stream until cancelled, resuming from the last entry it
/// read after every error.
async fn read_stream(ctx: Arc<ReaderContext>, stream: u32, cancel: CancellationToken, positioned: watch::Sender<bool>) {
    let m = crate::metrics::get();
    m.readers_active.increment(1.0);
    let lag = crate::metrics::reader_lag(stream);
    let key = ctx.layout.key(stream);
    let mut last: Option<String> = None;
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    while !cancel.is_cancelled() {
        let step = async {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(ctx.target.connect(ctx.block + Duration::from_secs(5)).await?),
            };
            let from = match &last {
                Some(id) => id.clone(),
                None => {
                    let id = StreamInfo::read(c, &key)
                        .await?
                        .map(|i| i.last_id)
                        .unwrap_or_else(|| "0-0".into());
                    last = Some(id.clone());
                    let _ = positioned.send(true);
                    id
                }
            };
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(ctx.read_count)
                .arg("BLOCK")
                .arg(ctx.block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(&from)
                .query_async(c)
                .await
                .map_err(|e| redis_error("XREAD", e))?;
            let entries: Vec<StreamId> = reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                .unwrap_or_default();
            if let Some(e) = entries.last() {
                last = Some(e.id.clone());
            }
            m.entries_read.increment(entries.len() as u64);
            // How far behind the stream this reader is: the age of the
            // oldest entry it just read (one clock read per XREAD, not per
            // entry); an empty read means it is caught up.
            let oldest = entries.first().and_then(|e| parse_entry_id(&e.id));
            let behind_ms = oldest.map_or(0, |id| protocol::id::now_ms().saturating_sub(protocol::id::millis(id)));
            lag.set(behind_ms as f64 / 1000.0);
            let batch: Vec<Delivery> = entries
                .iter()
                .filter_map(|e| Some(Entry::decode(e)?.into_delivery(&ctx.node_id)))
                .collect();
            if !batch.is_empty() {
                ctx.sink.deliver(batch);
            }
            Ok::<_, BusError>(())
        };
        let result = tokio::select! {
            r = step => r,
            _ = cancel.cancelled() => break,
        };
        match result {
            Ok(()) => backoff.reset(),
            Err(e) => {
                m.reader_errors.increment(1);
                tracing::warn!(stream, error = %e, "stream reader: will resume from its last entry");
                conn = None;
                if !backoff.wait(&cancel).await {
                    break;
                }
            }
        }
    }
    m.readers_active.decrement(1.0);
    lag.set(0.0);
}
