//! Storage metrics (`gateway_storage_*`).

use std::sync::OnceLock;

use metrics::{Counter, Histogram, counter, histogram};

pub(crate) struct StorageMetrics {
    pub commit_seconds: Histogram,
    pub batch_messages: Histogram,
    pub written: Counter,
    pub duplicates: Counter,
    pub conflicts: Counter,
}

pub(crate) fn get() -> &'static StorageMetrics {
    static M: OnceLock<StorageMetrics> = OnceLock::new();
    M.get_or_init(|| StorageMetrics {
        commit_seconds: histogram!("gateway_storage_commit_duration_seconds"),
        batch_messages: histogram!("gateway_storage_batch_messages"),
        written: counter!("gateway_storage_messages_written_total"),
        duplicates: counter!("gateway_storage_duplicate_writes_total"),
        conflicts: counter!("gateway_storage_id_conflicts_total"),
    })
}
