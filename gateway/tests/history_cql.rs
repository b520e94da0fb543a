//! History in a real CQL server (Cassandra standing in for ScyllaDB), with
//! real Redis and real gateway processes: every message stored exactly
//! once, and recovery from the store beyond the stream window.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use storage::{CqlConfig, CqlStore, HistoryStore, Page, Replication};
use testkit::{GatewayProcess, RedisServer, Wait, cql_nodes, fresh_keyspace, redis_command};

/// One shard stream of about 100 entries, trimmed every second.
const SMALL_WINDOW: [&str; 6] = [
    "--stream-shards",
    "1",
    "--stream-maxlen",
    "100",
    "--stream-trim-interval",
    "1s",
];

/// Entries in the one shard stream `gw:{s0}`.
fn stream_len(redis: &RedisServer) -> Option<u64> {
    redis_command(redis.port, &["XLEN", "gw:{s0}"]).and_then(|r| r.trim_start_matches(':').trim().parse().ok())
}

async fn store(keyspace: &str) -> CqlStore {
    CqlStore::connect(&CqlConfig {
        nodes: cql_nodes(),
        keyspace: keyspace.into(),
        replication: Replication::Simple(1),
        bucket: Duration::from_secs(86_400),
    })
    .await
    .unwrap()
}

/// Every stored id of a room, ascending.
async fn stored_ids(store: &CqlStore, room: &str) -> Vec<u64> {
    store
        .page(room, Page::After(0), 10_000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect()
}

async fn wait_stored(store: &CqlStore, room: &str, n: usize) -> Vec<u64> {
    Wait::new(format!("{n} messages of {room} stored"), Duration::from_secs(60))
        .every(Duration::from_millis(100))
        .until_async(async || {
            let ids = stored_ids(store, room).await;
            if ids.len() >= n {
                Ok(ids)
            } else {
                Err(format!("only {} of {n} stored", ids.len()))
            }
        })
        .await
}

fn node(redis: &RedisServer, keyspace: &str, extra: &[&str]) -> (GatewayProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cql_nodes().join(",");
    let mut args = vec![
        "--redis-url",
        &*Box::leak(redis.url().into_boxed_str()),
        "--scylla-nodes",
        &*Box::leak(nodes.into_boxed_str()),
        "--scylla-keyspace",
        &*Box::leak(keyspace.to_string().into_boxed_str()),
        "--send-rate",
        "100000",
        "--send-burst",
        "100000",
        "--persister-wait",
        "20ms",
    ];
    args.extend_from_slice(extra);
    (
        GatewayProcess::start(env!("CARGO_BIN_EXE_gateway"), dir.path(), &args),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_across_nodes_land_in_history_exactly_once() {
    let redis = RedisServer::start();
    let ks = fresh_keyspace("once");
    let (a, _da) = node(&redis, &ks, &[]);
    let (b, _db) = node(&redis, &ks, &[]);
    let mut acked = Vec::new();
    for n in [&a, &b] {
        let mut c = guest(&n.url()).await;
        c.join("h").await;
        for i in 0..150 {
            acked.push(c.send_msg("h", json!(i)).await);
        }
    }
    acked.sort();
    let store = store(&ks).await;
    let stored = wait_stored(&store, "h", acked.len()).await;
    assert_eq!(stored, acked, "every acknowledged message stored once");
    // Redelivery after a persister restart stores nothing twice: a third
    // node joins the group and claims nothing new.
    let (_c, _dc) = node(&redis, &ks, &[]);
    assert_eq!(stored_ids(&store, "h").await, acked);
    // History through a node merges the store and the window: the same ids.
    let mut reader = guest(&a.url()).await;
    assert_eq!(all_history(&mut reader, "h").await, acked);

    // (1.1) A reply keeps what it replies to through the stream, the
    // persister and the store.
    reader.join("h").await;
    let r = reader
        .request(json!({"op":"send","room":"h","body":"re","reply_to":acked[0].to_string()}))
        .await;
    let reply = msg_id(&r);
    wait_stored(&store, "h", acked.len() + 1).await;
    let stored = store.page("h", Page::After(reply - 1), 1).await.unwrap();
    assert_eq!((stored[0].id, stored[0].reply_to), (reply, Some(acked[0])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_away_longer_than_the_window_recovers_from_the_store() {
    let redis = RedisServer::start();
    let ks = fresh_keyspace("window");
    let (n, _d) = node(&redis, &ks, &SMALL_WINDOW);
    let mut c = guest(&n.url()).await;
    c.join("w").await;
    let mut acked = Vec::new();
    for i in 0..500 {
        acked.push(c.send_msg("w", json!(i)).await);
    }
    let store = store(&ks).await;
    wait_stored(&store, "w", 500).await;
    // The window is trimmed once the persister has stored what it cuts.
    Wait::new("the stream trimmed below 400 entries", Duration::from_secs(30))
        .every(Duration::from_millis(200))
        .until_async(async || {
            let len = stream_len(&redis).unwrap_or(u64::MAX);
            if len < 400 {
                Ok(())
            } else {
                Err(format!("length {len}"))
            }
        })
        .await;
    let mut late = guest(&n.url()).await;
    let r = late
        .request(json!({"op":"join","room":"w","since":acked[0].to_string()}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let replayed: Vec<u64> = late.backlog.iter().filter(|v| v["op"] == "msg").map(msg_id).collect();
    assert_eq!(
        replayed,
        acked[1..].to_vec(),
        "no gap, no duplicate, from the store and the window"
    );
    // History pages through both as well.
    assert_eq!(all_history(&mut late, "w").await, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_stream_loses_and_duplicates_nothing_in_history() {
    let redis = RedisServer::start();
    let ks = fresh_keyspace("nodekill");
    let claim = ["--persister-claim-idle", "1s", "--persister-batch", "64"];
    let (mut a, _da) = node(&redis, &ks, &claim);
    let (b, _db) = node(&redis, &ks, &claim);
    let mut ca = guest(&a.url()).await;
    ca.join("k").await;
    let mut cb = guest(&b.url()).await;
    cb.join("k").await;
    let mut acked = Vec::new();
    for i in 0..400 {
        acked.push(ca.send_msg("k", json!(i)).await);
    }
    // Node A (its persister in the middle of its batches) dies.
    a.kill9();
    for i in 0..200 {
        acked.push(cb.send_msg("k", json!(1000 + i)).await);
    }
    acked.sort();
    let store = store(&ks).await;
    let stored = wait_stored(&store, "k", acked.len()).await;
    assert_eq!(stored, acked, "every acknowledged message stored exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_not_trimmed_below_what_the_persister_has_not_stored() {
    let redis = RedisServer::start();
    let ks = fresh_keyspace("trim");
    let mut no_persister = SMALL_WINDOW.to_vec();
    no_persister.extend_from_slice(&["--persister", "false"]);
    let (a, _da) = node(&redis, &ks, &no_persister);
    let mut c = guest(&a.url()).await;
    c.join("t").await;
    let mut acked = Vec::new();
    for i in 0..500 {
        acked.push(c.send_msg("t", json!(i)).await);
    }
    let xlen = || stream_len(&redis).unwrap_or(0);
    // Two trim runs pass with nothing stored: the stream keeps every entry.
    let runs = a.metric("gateway_bus_trim_runs_total");
    Wait::new("two trim runs", Duration::from_secs(30))
        .every(Duration::from_millis(100))
        .until_async(async || {
            let now = a.metric("gateway_bus_trim_runs_total");
            if now >= runs + 2.0 {
                Ok(())
            } else {
                Err(format!("{} trim runs", now - runs))
            }
        })
        .await;
    assert!(xlen() >= 500, "trimmed to {} before anything was stored", xlen());
    // A node with a persister stores them; then the window is trimmed.
    let (_b, _db) = node(&redis, &ks, &SMALL_WINDOW);
    let store = store(&ks).await;
    wait_stored(&store, "t", 500).await;
    Wait::new(
        "the stream trimmed below 400 entries after storing",
        Duration::from_secs(30),
    )
    .every(Duration::from_millis(100))
    .until_async(async || {
        let len = xlen();
        if len < 400 {
            Ok(())
        } else {
            Err(format!("{len} entries"))
        }
    })
    .await;
    let mut reader = guest(&a.url()).await;
    assert_eq!(
        all_history(&mut reader, "t").await,
        acked,
        "store and window together still hold everything"
    );
}
