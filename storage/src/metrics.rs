//! Storage metrics (`gateway_storage_*`): their handles, resolved once, and
//! their help text ([`describe`]). The catalog of every metric, with units,
//! is docs/METRICS.md.

use std::sync::OnceLock;

use metrics::{Counter, Histogram, Unit, counter, describe_counter, describe_histogram, histogram};

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

pub(crate) const OP_DURATION: &str = "gateway_storage_operation_duration_seconds";
pub(crate) const ERRORS: &str = "gateway_storage_errors_total";

/// Registers the help text of every storage metric with the installed
/// recorder, and the metrics themselves, so they are exported (at zero)
/// before their first use. Call once the recorder is installed.
pub fn describe() {
    describe_histogram!(
        "gateway_storage_commit_duration_seconds",
        Unit::Seconds,
        "Time of one durable store write: an embedded group commit, or a CQL append (read-before-write and batches), in seconds."
    );
    describe_histogram!(
        "gateway_storage_batch_messages",
        Unit::Count,
        "Messages in one durable store write (embedded group commit or CQL append)."
    );
    describe_counter!(
        "gateway_storage_messages_written_total",
        Unit::Count,
        "Messages newly stored in the history store."
    );
    describe_counter!(
        "gateway_storage_duplicate_writes_total",
        Unit::Count,
        "Messages given to the store again with the same content (idempotent redeliveries), not written twice."
    );
    describe_counter!(
        "gateway_storage_id_conflicts_total",
        Unit::Count,
        "Messages whose id was already stored with other content (an id reissued after a bus failover); the stored one is kept."
    );
    describe_histogram!(
        OP_DURATION,
        Unit::Seconds,
        "Time of one history store call as its caller sees it, by store (cql, embedded) and op (write: append; read: page or last id), in seconds."
    );
    describe_counter!(
        ERRORS,
        Unit::Count,
        "History store calls that failed, by store (cql, embedded) and op (write, read)."
    );
    get();
}
