//! Group commit for the shard streams: each stream has one task that
//! takes whatever batches queued while its calls were in flight (up to
//! `IN_FLIGHT` of them) and appends them in one append-script call.
//!
//! Why: a script call's fixed cost in Redis (finding the script, the Lua
//! call, wrapping its effects for the AOF and replicas, and with
//! `appendfsync always` an fsync per event-loop round) is paid once per
//! call, not per message. Measured on one Redis (`redis-benchmark`, AOF
//! with `appendfsync always`): one `XADD` per command 8.3–10 µs of Redis
//! CPU a message; eight per script call 4.0 µs; eight with their feed
//! copies 7.8–8.0 µs. Under light load every call holds one batch and
//! nothing waits; under heavy load calls grow, so Redis does less work a
//! message exactly when it is the bottleneck.
//!
//! Order: a stream's calls go on one connection in the order they were
//! gathered, the batches in each in the order they were queued, so a
//! node's appends to a stream keep their order (as the pipelined `XADD`s
//! did before). One exception: after a `NOSCRIPT` (the script cache
//! flushed, or a failover to a replica without the script) the failed call
//! is sent again once the script is loaded; a later call of the same
//! stream that reached Redis just after another node reloaded it has
//! then gone first.

use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;

use super::publish::{Batch, Publisher};

/// Calls in flight per stream: on one connection they run in the order
/// sent. While this many wait for Redis (with `appendfsync always`, each
/// waits for an fsync), what comes queues for the next call.
const IN_FLIGHT: usize = 4;
/// At most this many entries in one call: a call runs alone in Redis, and
/// a long one delays every other client.
const MAX_ENTRIES: usize = 256;
/// At most this many bytes of arguments in one call (a batch bigger than
/// this goes alone).
const MAX_BYTES: usize = 1 << 20;

/// The flushing task of stream `key`, on the publisher's connection
/// `conn`; it ends when the publisher is gone (its queues' senders with
/// it).
pub(super) async fn flush(
    publisher: Weak<Publisher>,
    conn: usize,
    key: String,
    mut rx: mpsc::UnboundedReceiver<Batch>,
) {
    let key: Arc<str> = key.into();
    let mut carry: Option<Batch> = None;
    let mut in_flight = FuturesOrdered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some((batches, result)) = in_flight.next(), if !in_flight.is_empty() => answer(batches, result),
            b = next(&mut carry, &mut rx), if open && in_flight.len() < IN_FLIGHT => {
                let Some(first) = b else {
                    open = false;
                    continue;
                };
                let batches = gather(first, &mut carry, &mut rx);
                let Some(p) = publisher.upgrade() else { return };
                let key = key.clone();
                in_flight.push_back(async move {
                    let result = p.append(conn, &key, &batches).await;
                    (batches, result)
                });
            }
        }
    }
}

/// The batch held over from the last call, else the next one queued.
async fn next(carry: &mut Option<Batch>, rx: &mut mpsc::UnboundedReceiver<Batch>) -> Option<Batch> {
    match carry.take() {
        Some(b) => Some(b),
        None => rx.recv().await,
    }
}

/// `first` and whatever else is queued, up to a call's limits; a batch
/// that would pass the byte limit is held over for the next call.
fn gather(first: Batch, carry: &mut Option<Batch>, rx: &mut mpsc::UnboundedReceiver<Batch>) -> Vec<Batch> {
    let (mut entries, mut bytes) = (first.len, first.bytes());
    let mut batches = vec![first];
    while entries < MAX_ENTRIES {
        let Ok(b) = rx.try_recv() else { break };
        let b_bytes = b.bytes();
        if bytes + b_bytes > MAX_BYTES {
            *carry = Some(b);
            break;
        }
        entries += b.len;
        bytes += b_bytes;
        batches.push(b);
    }
    crate::metrics::get().batch_messages.record(entries as f64);
    batches
}

/// Hands each batch its ids (or the call's error).
fn answer(batches: Vec<Batch>, result: Result<Vec<(u64, bool)>, String>) {
    match result {
        Ok(ids) => {
            let mut ids = ids.into_iter();
            for b in batches {
                let mine: Vec<_> = ids.by_ref().take(b.len).collect();
                let _ = b.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            for b in batches {
                let _ = b.reply.send(Err(e.clone()));
            }
        }
    }
}
