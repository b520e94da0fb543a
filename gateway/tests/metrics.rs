//! The metrics catalog against real nodes: two gateway processes on a real
//! Redis and the CQL store (Cassandra standing in for ScyllaDB), a little
//! of every kind of traffic (sends across nodes, a join with `since`, a
//! history page, a bad frame, a failed auth), then each node's `/metrics`:
//! - the real `promtool check metrics` passes on it (help text, types,
//!   naming lints);
//! - every metric docs/METRICS.md lists is there with the type it says, and
//!   every `gateway_*` or `process_*` metric there is in docs/METRICS.md;
//! - the traffic shows in the metrics it should move.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::{GatewayProcess, RedisServer, Wait, cql_nodes, fresh_keyspace, promtool_check};

fn node(redis: &RedisServer, keyspace: &str) -> (GatewayProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let redis_url = redis.url();
    let cql = cql_nodes().join(",");
    let args = [
        "--redis-url",
        &redis_url,
        "--scylla-nodes",
        &cql,
        "--scylla-keyspace",
        keyspace,
        "--stream-shards",
        "4",
        "--stream-trim-interval",
        "1s",
        "--persister-wait",
        "20ms",
        "--api-key",
        API_KEY,
    ];
    (
        GatewayProcess::start(env!("CARGO_BIN_EXE_gateway"), dir.path(), &args),
        dir,
    )
}

/// The metrics docs/METRICS.md lists, with their types.
fn catalog() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/METRICS.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        assert!(
            out.insert(name.to_string(), cells[2].to_string()).is_none(),
            "{name} is listed twice in docs/METRICS.md"
        );
    }
    assert!(out.len() > 40, "docs/METRICS.md lists only {} metrics", out.len());
    out
}

/// The metrics a `/metrics` text declares (`# TYPE` lines), with their types.
fn declared(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_string(), kind.to_string())
        })
        .collect()
}

/// The value of the series of `name` carrying every label of `labels`
/// (`k="v"` each); summed when several do.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
        if series_name == name && labels.iter().all(|l| series_labels.contains(l)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

/// Waits until `name{labels}` on `node` is at least `min`; the text then.
fn wait_for(node: &GatewayProcess, name: &str, labels: &[&str], min: f64) -> String {
    Wait::new(format!("{name}{labels:?} >= {min}"), Duration::from_secs(60))
        .every(Duration::from_millis(100))
        .until(|| {
            let text = node.metrics_text();
            match sample(&text, name, labels) {
                Some(v) if v >= min => Ok(text),
                v => Err(format!("{v:?}")),
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cataloged_metric_is_exported_with_help_and_passes_promtool() {
    let redis = RedisServer::start();
    let ks = fresh_keyspace("metrics");
    let (a, _da) = node(&redis, &ks);
    let (b, _db) = node(&redis, &ks);

    // Sends on node a, delivered on both nodes.
    let mut sender = guest(&a.url()).await;
    let mut member = guest(&b.url()).await;
    sender.join("metrics").await;
    member.join("metrics").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(sender.send_msg("metrics", json!({"n": i})).await);
    }
    for _ in 0..20 {
        member.next_msg("metrics").await;
    }
    // A join with since on node a: the 19 messages after the first replayed.
    let mut late = guest(&a.url()).await;
    let r = late
        .request(json!({"op":"join","room":"metrics","since":ids[0].to_string()}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    // A history page, a bad frame, a failed auth (no JWT key: no token is good).
    assert_eq!(
        late.request(json!({"op":"history","room":"metrics"})).await["op"],
        "history"
    );
    late.send_raw(tokio_tungstenite::tungstenite::Message::Text("not json".into()))
        .await;
    assert_eq!(late.recv_matching(|v| v["op"] == "error").await["code"], "bad_request");
    let mut bad = Client::connect(&a.url(), None).await;
    let r = bad.request(json!({"op":"auth","token":"not-a-token"})).await;
    assert_eq!(r["code"], "unauthorized", "{r}");
    assert_eq!(bad.until_closed().await.0, Ended::Close(4001));
    // A server API call, counted by its key's name.
    let (status, v) = api(a.addr, "GET", "/api/rooms/metrics", serde_json::Value::Null).await;
    assert_eq!(status, 200, "{v}");

    // Stored by a persister, and a trim run after that has seen it.
    let written = |n: &GatewayProcess| sample(&n.metrics_text(), "gateway_persister_entries_total", &[]).unwrap_or(0.0);
    Wait::new("20 entries persisted by the two nodes", Duration::from_secs(60))
        .every(Duration::from_millis(100))
        .until(|| {
            let n = written(&a) + written(&b);
            if n >= 20.0 { Ok(()) } else { Err(n) }
        });
    let runs = sample(&a.metrics_text(), "gateway_bus_trim_runs_total", &[]).unwrap_or(0.0);
    wait_for(&a, "gateway_bus_trim_runs_total", &[], runs + 1.0);

    let docs = catalog();
    for (name, n) in [("a", &a), ("b", &b)] {
        let text = n.metrics_text();
        if let Err(e) = promtool_check(&text) {
            panic!("node {name}: {e}\n{text}");
        }
        let exported = declared(&text);
        // Node a had every kind of traffic (node b no error reply, so no
        // gateway_ws_errors_total series yet).
        if name == "a" {
            for (metric, kind) in &docs {
                assert_eq!(
                    exported.get(metric),
                    Some(kind),
                    "node {name}: docs/METRICS.md lists {metric} ({kind}); /metrics has {:?}",
                    exported.get(metric)
                );
            }
        }
        for (metric, kind) in &exported {
            if metric.starts_with("gateway_") || metric.starts_with("process_") {
                assert_eq!(
                    docs.get(metric),
                    Some(kind),
                    "node {name} exports {metric} ({kind}); docs/METRICS.md has {:?}",
                    docs.get(metric)
                );
            }
        }
        let build = text.lines().find(|l| l.starts_with("gateway_build_info{")).unwrap();
        assert!(build.contains("version=\"") && build.contains("commit=\""), "{build}");
        assert_eq!(sample(&text, "gateway_node_ready", &[]), Some(1.0), "node {name}");
        assert!(sample(&text, "process_open_fds", &[]).unwrap() > 0.0);
        assert!(sample(&text, "process_max_fds", &[]).unwrap() > 0.0);
    }

    // The traffic, where it should show.
    let ta = a.metrics_text();
    let at_least = |text: &str, name: &str, labels: &[&str], min: f64| {
        let v = sample(text, name, labels).unwrap_or(0.0);
        assert!(v >= min, "{name}{labels:?} is {v}, expected at least {min}");
    };
    at_least(&ta, "gateway_ws_requests_total", &["op=\"send\""], 20.0);
    at_least(&ta, "gateway_bus_messages_published_total", &[], 20.0);
    at_least(&ta, "gateway_send_ack_duration_seconds_count", &[], 20.0);
    at_least(&ta, "gateway_bus_publish_duration_seconds_count", &[], 1.0);
    at_least(&ta, "gateway_replay_requests_total", &["recovered=\"true\""], 1.0);
    at_least(&ta, "gateway_replay_messages_total", &[], 19.0);
    at_least(&ta, "gateway_bus_read_duration_seconds_count", &["op=\"replay\""], 1.0);
    at_least(&ta, "gateway_bus_read_duration_seconds_count", &["op=\"history\""], 1.0);
    at_least(
        &ta,
        "gateway_ws_errors_total",
        &["op=\"invalid\"", "code=\"bad_request\""],
        1.0,
    );
    at_least(
        &ta,
        "gateway_ws_errors_total",
        &["op=\"auth\"", "code=\"unauthorized\""],
        1.0,
    );
    at_least(&ta, "gateway_auth_failures_total", &["reason=\"no_key\""], 1.0);
    at_least(&ta, "gateway_connections_closed_total", &["code=\"4001\""], 1.0);
    at_least(&ta, "gateway_connections_opened_total", &[], 3.0);
    at_least(&ta, "gateway_connections_active", &[], 2.0);
    at_least(&ta, "gateway_ws_received_bytes_total", &[], 1000.0);
    at_least(&ta, "gateway_ws_sent_bytes_total", &[], 1000.0);
    at_least(&ta, "gateway_bus_stream_length_entries", &[], 20.0);
    at_least(&ta, "gateway_bus_stream_window_entries", &[], 4.0 * 100_000.0);
    let tb = b.metrics_text();
    // Node b only read the messages from its stream and wrote them out.
    at_least(&tb, "gateway_fanout_delivery_latency_seconds_count", &[], 20.0);
    at_least(&tb, "gateway_fanout_deliveries_total", &[], 20.0);
    at_least(&tb, "gateway_bus_entries_read_total", &[], 20.0);
    at_least(&tb, "gateway_bus_shard_readers", &[], 1.0);
    assert!(sample(&tb, "gateway_bus_reader_lag_seconds", &[]).is_some());
    // The persisters' writes went through the instrumented CQL store.
    let writes = |t: &str| sample(t, "gateway_storage_operation_duration_seconds_count", &["op=\"write\""]);
    let writes = writes(&ta).unwrap_or(0.0) + writes(&tb).unwrap_or(0.0);
    assert!(writes >= 1.0, "no store writes measured");
    for t in [&ta, &tb] {
        assert_eq!(sample(t, "gateway_storage_errors_total", &[]), Some(0.0));
        assert_eq!(
            sample(t, "gateway_persister_lag_seconds", &[]).map(|v| v < 60.0),
            Some(true)
        );
    }
}
