//! Bus metrics (`gateway_bus_*`).

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

pub(crate) struct BusMetrics {
    pub published: Counter,
    pub publish_failures: Counter,
    pub batch_messages: Histogram,
    pub sequence_seconds: Histogram,
    pub entries_read: Counter,
    pub reader_errors: Counter,
    pub readers_active: Gauge,
    pub ready: Gauge,
    pub persisted: Counter,
    pub persist_errors: Counter,
    pub persist_conflicts: Counter,
    pub persister_lag: Gauge,
    pub trim_runs: Counter,
}

pub(crate) fn get() -> &'static BusMetrics {
    static M: OnceLock<BusMetrics> = OnceLock::new();
    M.get_or_init(|| BusMetrics {
        published: counter!("gateway_bus_messages_published_total"),
        publish_failures: counter!("gateway_bus_publish_failures_total"),
        batch_messages: histogram!("gateway_bus_batch_messages"),
        sequence_seconds: histogram!("gateway_bus_batch_duration_seconds"),
        entries_read: counter!("gateway_bus_entries_read_total"),
        reader_errors: counter!("gateway_bus_reader_errors_total"),
        readers_active: gauge!("gateway_bus_shard_readers"),
        ready: gauge!("gateway_bus_ready"),
        persisted: counter!("gateway_persister_entries_total"),
        persist_errors: counter!("gateway_persister_errors_total"),
        persist_conflicts: counter!("gateway_persister_id_conflicts_total"),
        persister_lag: gauge!("gateway_persister_lag_entries"),
        trim_runs: counter!("gateway_bus_trim_runs_total"),
    })
}
