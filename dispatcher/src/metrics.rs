//! Bus and persister metrics (`gateway_bus_*`, `gateway_persister_*`):
//! their handles, resolved once so hot paths only touch atomics, and their
//! help text ([`describe`]). The catalog of every metric, with units, is
//! docs/METRICS.md. No room or user id is ever a label; a shard stream's
//! number is (there are `--stream-shards` of them, 16 by default).

use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

pub(crate) struct BusMetrics {
    pub published: Counter,
    pub publish_failures: Counter,
    pub publish_seconds: Histogram,
    pub batch_messages: Histogram,
    pub sequence_seconds: Histogram,
    pub entries_read: Counter,
    pub reader_errors: Counter,
    pub readers_active: Gauge,
    pub ready: Gauge,
    pub history: ReadMetrics,
    pub replay: ReadMetrics,
    pub stream_entries: Gauge,
    pub stream_window: Gauge,
    pub trim_runs: Counter,
    pub persisted: Counter,
    pub persist_errors: Counter,
    pub persist_conflicts: Counter,
    pub persist_batch: Histogram,
    pub persister_lag: Gauge,
    pub persister_pending: Gauge,
    pub persister_lag_seconds: Gauge,
    pub feed_written: Counter,
    pub feed_dropped: Counter,
    pub feed_reaped: Counter,
}

/// A read of history or a replay through the bus: its time and failures.
pub(crate) struct ReadMetrics {
    pub seconds: Histogram,
    pub errors: Counter,
}

impl ReadMetrics {
    fn new(op: &'static str) -> ReadMetrics {
        ReadMetrics {
            seconds: histogram!(READ_DURATION, "op" => op),
            errors: counter!(READ_ERRORS, "op" => op),
        }
    }

    /// Records one read that started at `started`.
    pub fn record<T, E>(&self, started: std::time::Instant, result: &Result<T, E>) {
        self.seconds.record(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors.increment(1);
        }
    }
}

const READ_DURATION: &str = "gateway_bus_read_duration_seconds";
const READ_ERRORS: &str = "gateway_bus_read_errors_total";
const READER_LAG: &str = "gateway_bus_reader_lag_seconds";

pub(crate) fn get() -> &'static BusMetrics {
    static M: OnceLock<BusMetrics> = OnceLock::new();
    M.get_or_init(|| BusMetrics {
        published: counter!("gateway_bus_messages_published_total"),
        publish_failures: counter!("gateway_bus_publish_failures_total"),
        publish_seconds: histogram!("gateway_bus_publish_duration_seconds"),
        batch_messages: histogram!("gateway_bus_batch_messages"),
        sequence_seconds: histogram!("gateway_bus_batch_duration_seconds"),
        entries_read: counter!("gateway_bus_entries_read_total"),
        reader_errors: counter!("gateway_bus_reader_errors_total"),
        readers_active: gauge!("gateway_bus_shard_readers"),
        ready: gauge!("gateway_bus_ready"),
        history: ReadMetrics::new("history"),
        replay: ReadMetrics::new("replay"),
        stream_entries: gauge!("gateway_bus_stream_length_entries"),
        stream_window: gauge!("gateway_bus_stream_window_entries"),
        trim_runs: counter!("gateway_bus_trim_runs_total"),
        persisted: counter!("gateway_persister_entries_total"),
        persist_errors: counter!("gateway_persister_errors_total"),
        persist_conflicts: counter!("gateway_persister_id_conflicts_total"),
        persist_batch: histogram!("gateway_persister_batch_entries"),
        persister_lag: gauge!("gateway_persister_lag_entries"),
        persister_pending: gauge!("gateway_persister_pending_entries"),
        persister_lag_seconds: gauge!("gateway_persister_lag_seconds"),
        feed_written: counter!("gateway_feed_connection_events_total"),
        feed_dropped: counter!("gateway_feed_dropped_events_total"),
        feed_reaped: counter!("gateway_feed_reaped_connections_total"),
    })
}

/// The lag gauge of one shard stream's reader (resolved once per reader).
pub(crate) fn reader_lag(stream: u32) -> Gauge {
    gauge!(READER_LAG, "stream" => stream.to_string())
}

/// Registers the help text of every bus and persister metric with the
/// installed recorder, and the metrics themselves, so they are exported
/// (at zero) before their first use. Call once the recorder is installed.
/// The Prometheus exporter's builder with the project's buckets: seconds
/// from 0.1 ms to 10 s, `_messages` and `_entries` from 1 to 1024. The one
/// place they are set, for the gateway's recorder and the dispatcher's
/// listener alike.
pub fn exporter_builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const LATENCY: [f64; 16] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const SIZES: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_messages".into()), &SIZES))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_entries".into()), &SIZES))
        .expect("static bucket lists are not empty")
}

pub fn describe() {
    describe_counter!(
        "gateway_feed_connection_events_total",
        Unit::Count,
        "(1.1) Connection events (connect, disconnect, join, leave) this node wrote to the event feed."
    );
    describe_counter!(
        "gateway_feed_reaped_connections_total",
        Unit::Count,
        "(1.1) Connections of dead nodes whose leaves and disconnect this node wrote to the event feed (marked lost)."
    );
    describe_counter!(
        "gateway_feed_dropped_events_total",
        Unit::Count,
        "(1.1) Connection events this node dropped: more than 100,000 waited while Redis was away, or Redis was away when it drained."
    );
    describe_counter!(
        "gateway_bus_messages_published_total",
        Unit::Count,
        "Messages the bus accepted and ordered (sends and server API posts; events not counted)."
    );
    describe_counter!(
        "gateway_bus_publish_failures_total",
        Unit::Count,
        "Messages the bus could not publish (answered unavailable)."
    );
    describe_histogram!(
        "gateway_bus_publish_duration_seconds",
        Unit::Seconds,
        "Time of one publish round trip: an XADD or a pipeline of them on Redis; one sequencer batch (ids, commit, delivery) in process, in seconds."
    );
    describe_histogram!(
        "gateway_bus_batch_messages",
        Unit::Count,
        "Messages in one batch of the in-process bus's sequencer."
    );
    describe_histogram!(
        "gateway_bus_batch_duration_seconds",
        Unit::Seconds,
        "Time the in-process bus's sequencer took for one batch (ids, durable commit, delivery), in seconds."
    );
    describe_counter!(
        "gateway_bus_entries_read_total",
        Unit::Count,
        "Shard stream entries this node's readers read from Redis (messages and events)."
    );
    describe_counter!(
        "gateway_bus_reader_errors_total",
        Unit::Count,
        "Failed reads of a shard stream reader (it reconnects and resumes from its last entry)."
    );
    describe_gauge!(
        "gateway_bus_shard_readers",
        Unit::Count,
        "Shard streams this node reads now (those with local members of a room)."
    );
    describe_gauge!(
        READER_LAG,
        Unit::Seconds,
        "Per shard stream read by this node: age of the oldest entry of its latest read when read (0 when it found nothing new), in seconds."
    );
    describe_gauge!(
        "gateway_bus_ready",
        Unit::Count,
        "1 while the bus can serve (Redis answered the last heartbeat; always 1 in process), else 0."
    );
    describe_histogram!(
        READ_DURATION,
        Unit::Seconds,
        "Time of one history or replay read through the bus (stream window merged with the store), by op, in seconds."
    );
    describe_counter!(
        READ_ERRORS,
        Unit::Count,
        "History or replay reads through the bus that failed, by op."
    );
    describe_gauge!(
        "gateway_bus_stream_length_entries",
        Unit::Count,
        "Entries in all shard streams together, at the last trim run (cluster-wide: every node reports it)."
    );
    describe_gauge!(
        "gateway_bus_stream_window_entries",
        Unit::Count,
        "The configured stream window: --stream-maxlen entries per shard stream times the shard streams."
    );
    describe_counter!(
        "gateway_bus_trim_runs_total",
        Unit::Count,
        "Completed trim runs over every shard stream (by this node's heartbeat)."
    );
    describe_counter!(
        "gateway_persister_entries_total",
        Unit::Count,
        "Stream entries the persister stored (or found stored) and acknowledged."
    );
    describe_counter!(
        "gateway_persister_errors_total",
        Unit::Count,
        "Persister steps that failed (Redis or store); unacknowledged entries stay pending and are retried."
    );
    describe_counter!(
        "gateway_persister_id_conflicts_total",
        Unit::Count,
        "Entries whose id the store already held with other content (kept the stored one)."
    );
    describe_histogram!(
        "gateway_persister_batch_entries",
        Unit::Count,
        "Stream entries in one persister batch (one store append and one XACK)."
    );
    describe_gauge!(
        "gateway_persister_lag_entries",
        Unit::Count,
        "Entries of all shard streams the persister group has not read yet, at the last trim run (cluster-wide)."
    );
    describe_gauge!(
        "gateway_persister_pending_entries",
        Unit::Count,
        "Entries the persister group read and has not acknowledged (stored) yet, at the last trim run (cluster-wide)."
    );
    describe_gauge!(
        "gateway_persister_lag_seconds",
        Unit::Seconds,
        "Age of the oldest stream entry not stored yet (0 when all are), at the last trim run (cluster-wide), in seconds."
    );
    get();
}
