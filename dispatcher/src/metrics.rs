//! Bus metrics (`gateway_bus_*`).

use std::sync::OnceLock;

use metrics::{Counter, Histogram, counter, histogram};

pub(crate) struct BusMetrics {
    pub published: Counter,
    pub publish_failures: Counter,
    pub batch_messages: Histogram,
    pub sequence_seconds: Histogram,
}

pub(crate) fn get() -> &'static BusMetrics {
    static M: OnceLock<BusMetrics> = OnceLock::new();
    M.get_or_init(|| BusMetrics {
        published: counter!("gateway_bus_messages_published_total"),
        publish_failures: counter!("gateway_bus_publish_failures_total"),
        batch_messages: histogram!("gateway_bus_batch_messages"),
        sequence_seconds: histogram!("gateway_bus_batch_duration_seconds"),
    })
}
