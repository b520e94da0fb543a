//! Reading the event feed with a consumer group, at least once: one task
//! per feed stream (the shard streams, with the feed on; see
//! [`crate::groups`]), each batch handed to a [`FeedHandler`] and
//! acknowledged only after it returns `Ok`; entries a stopped consumer
//! left pending are taken over (`XAUTOCLAIM`) by another after
//! `claim_idle`. A backend runs as many consumers in one group as it
//! likes; each entry reaches one of them, again only if it was not
//! acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::BusError;
use crate::groups::GroupReader;
use crate::redis_bus::conn::Target;
use crate::redis_bus::streams::{StreamLayout, parse_entry_id};

/// One feed entry: which stream, its id, its fields (docs/FEED.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    pub stream: u32,
    pub id: String,
    pub fields: BTreeMap<String, String>,
}

impl FeedEntry {
    /// The feed entry a stream entry is, in docs/FEED.md's form; `None`
    /// for what the shard streams carry beside the feed (ephemeral
    /// messages, typing, read markers, presence) and entries this version
    /// does not know.
    ///
    /// Room events are stored in the streams' own codec (`k` `m` or `c`,
    /// the user as `f`, the change's op as `x`, and no `m` or `ts`: they
    /// are the entry id's); connection events as they are in the feed.
    pub fn from_stream(stream: u32, e: &StreamId) -> Option<FeedEntry> {
        let text = |name: &str| {
            e.map
                .get(name)
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        };
        let mut fields = BTreeMap::new();
        match text("k")?.as_str() {
            "connect" | "disconnect" | "join" | "leave" => {
                for (k, v) in &e.map {
                    fields.insert(k.clone(), redis::from_redis_value::<String>(v.clone()).ok()?);
                }
            }
            kind @ ("m" | "c") => {
                let id = parse_entry_id(&e.id)?;
                let k = if kind == "m" { "message".to_string() } else { text("x")? };
                fields.insert("k".into(), k);
                fields.insert("m".into(), id.to_string());
                fields.insert("ts".into(), protocol::id::millis(id).to_string());
                fields.insert("u".into(), text("f")?);
                for name in ["r", "b", "p", "t", "y", "n"] {
                    if let Some(v) = text(name) {
                        fields.insert(name.into(), v);
                    }
                }
            }
            _ => return None,
        }
        Some(FeedEntry {
            stream,
            id: e.id.clone(),
            fields,
        })
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

/// What a consumer does with each batch; `Err` leaves it unacknowledged
/// (read again after a backoff).
pub trait FeedHandler: Send + Sync + 'static {
    fn handle(&self, entries: &[FeedEntry]) -> Result<(), BusError>;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub target: Target,
    /// The gateways' key prefix and stream count.
    pub layout: StreamLayout,
    /// The backend's consumer group (created at the end of each stream
    /// when it does not exist: a new group hears what comes from then on).
    pub group: String,
    /// This consumer's name, unique in the group.
    pub consumer: String,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub claim_idle: Duration,
}

/// Consumes every feed stream until `shutdown`.
pub async fn run(cfg: ConsumerConfig, handler: Arc<dyn FeedHandler>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    for stream in 0..cfg.layout.count() {
        let reader = GroupReader {
            target: cfg.target.clone(),
            key: cfg.layout.feed_key(stream),
            group: cfg.group.clone(),
            consumer: cfg.consumer.clone(),
            start: "$",
            batch_max: cfg.batch_max,
            batch_wait: cfg.batch_wait,
            claim_idle: cfg.claim_idle,
            name: "feed consumer",
        };
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        tasks.spawn(async move {
            reader
                .run(
                    &shutdown,
                    |entries: Vec<StreamId>| {
                        // What is not the feed's is acknowledged unseen.
                        let entries: Vec<FeedEntry> = entries
                            .iter()
                            .filter_map(|e| FeedEntry::from_stream(stream, e))
                            .collect();
                        let r = if entries.is_empty() {
                            Ok(())
                        } else {
                            handler.handle(&entries)
                        };
                        Box::pin(async move { r })
                    },
                    || {},
                )
                .await
        });
    }
    tasks.close();
    tasks.wait().await;
}
