//! The event feed (1.1) with real gateway processes, real Redis and real
//! Cassandra, read by real `feed-consumer` processes in one consumer
//! group: every connect, disconnect, join, leave and stored room event of
//! a run is seen, in room order, across a consumer kill -9 (another takes
//! its pending entries over) and a gateway kill -9 (what it acknowledged
//! is in the feed; the connections it lost are reaped as disconnects by
//! the nodes that survive). Nothing is seen again once acknowledged: the
//! only repeats are the entries the killed consumer printed but had not
//! acknowledged.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use testkit::{GatewayProcess, RedisServer, Wait, cql_nodes, fresh_keyspace, redis_command};

const SHARDS: &str = "4";
/// A consumer's batch: what it may have printed and not acknowledged.
const BATCH: usize = 5;

/// A `feed-consumer` process whose printed entries are collected.
struct Consumer {
    child: Child,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Consumer {
    fn start(redis: &RedisServer, name: &str) -> Consumer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_feed-consumer"))
            .args([
                "--redis-url",
                &redis.url(),
                "--stream-shards",
                SHARDS,
                "--group",
                "test",
            ])
            .args(["--consumer", name, "--claim-idle", "1s", "--batch", &BATCH.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let into = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                into.lock().unwrap().push(serde_json::from_str::<Value>(&line).unwrap());
            }
        });
        Consumer { child, seen }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What an entry says happened, without its ids and times.
fn event(v: &Value) -> String {
    let f = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    match v["k"].as_str().unwrap_or("") {
        "message" | "edit" | "delete" | "react" | "unreact" => format!("{} {} {} {}", f("k"), f("u"), f("r"), f("m")),
        "join" | "leave" => format!("{} {} {}", f("k"), f("u"), f("r")),
        _ => format!("{} {}", f("k"), f("u")),
    }
}

fn all_seen(consumers: &[&Consumer]) -> Vec<Value> {
    consumers.iter().flat_map(|c| c.seen.lock().unwrap().clone()).collect()
}

/// Waits until every one of `expected` has been printed by a consumer.
fn wait_seen(consumers: &[&Consumer], expected: &BTreeSet<String>) {
    Wait::new(format!("{} feed events seen", expected.len()), Duration::from_secs(30))
        .every(Duration::from_millis(50))
        .until(|| {
            let seen: BTreeSet<String> = all_seen(consumers).iter().map(event).collect();
            let missing: Vec<&String> = expected.difference(&seen).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        });
}

fn gateway(dir: &std::path::Path, redis: &RedisServer, ks: &str) -> GatewayProcess {
    let cql = cql_nodes().join(",");
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--stream-shards",
        SHARDS,
        "--feed",
        "--jwt-secret",
        SECRET,
        "--scylla-nodes",
        &cql,
        "--scylla-keyspace",
        ks,
        "--presence-ttl",
        "2s",
        "--send-rate",
        "100000",
        "--send-burst",
        "100000",
    ];
    GatewayProcess::start(env!("CARGO_BIN_EXE_gateway"), dir, &args)
}

async fn ok(c: &mut Client, v: Value) -> Value {
    let r = c.request(v).await;
    assert_eq!(r["op"], "ok", "{r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_sees_every_event_once_in_room_order_across_kills() {
    let redis = RedisServer::start();
    let ks = fresh_keyspace("feed");
    let mut a = Consumer::start(&redis, "a");
    let b = Consumer::start(&redis, "b");
    // The group exists on every feed stream before anything happens.
    Wait::new("the consumer group on every feed stream", Duration::from_secs(20)).until(|| {
        let missing: Vec<u32> = (0..4)
            .filter(|s| {
                let key = format!("gw:feed:{{s{s}}}");
                !redis_command(redis.port, &["XINFO", "GROUPS", &key]).is_some_and(|r| r.contains("test"))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{missing:?}"))
        }
    });
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = gateway(d1.path(), &redis, &ks);
    let mut n2 = gateway(d2.path(), &redis, &ks);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut expect = |s: String| {
        expected.insert(s);
    };

    let mut u1 = authed(&n1.url(), &token(claims_issued("u1", 0))).await;
    let mut u2 = authed(&n2.url(), &token(claims_issued("u2", 0))).await;
    expect("connect u1".into());
    expect("connect u2".into());
    for room in ["r1", "r2"] {
        u1.join(room).await;
        expect(format!("join u1 {room}"));
    }
    u2.join("r1").await;
    expect("join u2 r1".into());
    let mut mine = Vec::new();
    for i in 0..10 {
        let id = u1.send_msg("r1", json!({"i": i})).await;
        expect(format!("message u1 r1 {id}"));
        mine.push(id);
        let id = u2.send_msg("r1", json!({"j": i})).await;
        expect(format!("message u2 r1 {id}"));
        if i == 4 {
            // Consumer a dies with whatever it had not acknowledged.
            a.kill9();
        }
    }
    let c = Consumer::start(&redis, "c");
    for i in 0..5 {
        let id = u1.send_msg("r2", json!({"k": i})).await;
        expect(format!("message u1 r2 {id}"));
    }
    // What the shard streams carry beside the feed is not in it: an
    // ephemeral message, typing, a read marker.
    ok(&mut u1, json!({"op":"send","room":"r1","body":"gone","ephemeral":true})).await;
    u1.send(json!({"op":"typing","room":"r1"})).await;
    ok(&mut u2, json!({"op":"read","room":"r1","msg":mine[9].to_string()})).await;
    let target = mine[3].to_string();
    let r = ok(&mut u2, json!({"op":"react","room":"r1","msg":target,"key":"+1"})).await;
    expect(format!("react u2 r1 {}", r["msg"].as_str().unwrap()));
    let r = ok(&mut u1, json!({"op":"edit","room":"r1","msg":target,"body":"edited"})).await;
    expect(format!("edit u1 r1 {}", r["msg"].as_str().unwrap()));
    let r = ok(&mut u2, json!({"op":"unreact","room":"r1","msg":target,"key":"+1"})).await;
    expect(format!("unreact u2 r1 {}", r["msg"].as_str().unwrap()));
    let r = ok(&mut u1, json!({"op":"delete","room":"r1","msg":target})).await;
    expect(format!("delete u1 r1 {}", r["msg"].as_str().unwrap()));
    ok(&mut u1, json!({"op":"leave","room":"r2"})).await;
    expect("leave u1 r2".into());

    // Node 2 is killed: every message it acknowledged is in the feed, and
    // its lost connection is reaped as a leave and a disconnect.
    let last = u2.send_msg("r1", json!("last words")).await;
    expect(format!("message u2 r1 {last}"));
    n2.kill9();
    expect("leave u2 r1".into());
    expect("disconnect u2".into());
    drop(u2);

    u1.ws.close(None).await.unwrap();
    expect("leave u1 r1".into());
    expect("disconnect u1".into());
    let mut u3 = authed(&n1.url(), &token(claims_issued("u3", 0))).await;
    expect("connect u3".into());
    u3.join("r1").await;
    expect("join u3 r1".into());
    let id = u3.send_msg("r1", json!("after the kills")).await;
    expect(format!("message u3 r1 {id}"));

    let consumers = [&a, &b, &c];
    wait_seen(&consumers, &expected);
    // Everything acknowledged in the end.
    Wait::new("no pending feed entries", Duration::from_secs(20)).until(|| {
        let pending: Vec<String> = (0..4)
            .map(|s| {
                let key = format!("gw:feed:{{s{s}}}");
                redis_command(redis.port, &["XPENDING", &key, "test"]).unwrap_or_default()
            })
            .filter(|r| !r.starts_with("*4\r\n:0"))
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!("{pending:?}"))
        }
    });

    let seen = all_seen(&consumers);
    // No event the run did not cause, and each entry seen once, but for
    // what the killed consumer printed and had not acknowledged.
    let kinds: BTreeSet<String> = seen.iter().map(event).collect();
    assert_eq!(kinds, expected, "the feed holds exactly the run's events");
    let mut by_entry: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for v in &seen {
        *by_entry
            .entry((v["stream"].as_u64().unwrap(), v["id"].as_str().unwrap().to_string()))
            .or_default() += 1;
    }
    let repeats: usize = by_entry.values().map(|n| n - 1).sum();
    assert!(
        repeats <= BATCH * 4,
        "{repeats} entries seen twice: more than consumer a could hold unacknowledged"
    );
    let a_seen = a.seen.lock().unwrap().len();
    assert!(a_seen > 0, "consumer a read before it was killed");
    // A message's entry as docs/FEED.md gives it.
    let first_id = mine[0].to_string();
    let first = seen
        .iter()
        .find(|v| v["m"] == first_id.as_str())
        .expect("the first message");
    assert_eq!(first["k"], "message");
    assert_eq!(first["b"], r#"{"i":0}"#);
    assert_eq!(first["ts"], (mine[0] >> 22).to_string());
    let react = seen.iter().find(|v| v["k"] == "react").expect("the reaction");
    assert_eq!(
        (&react["t"], &react["y"], &react["n"]),
        (&json!(target), &json!("+1"), &json!("1"))
    );

    // Room order: per room, its stored events' ids ascend in feed order.
    let mut entries: Vec<&Value> = by_entry
        .keys()
        .map(|(s, id)| {
            seen.iter()
                .find(|v| v["stream"].as_u64() == Some(*s) && v["id"] == id.as_str())
                .unwrap()
        })
        .collect();
    entries.sort_by_key(|v| {
        let id = v["id"].as_str().unwrap();
        let (ms, seq) = id.split_once('-').unwrap();
        (
            v["stream"].as_u64().unwrap(),
            ms.parse::<u64>().unwrap(),
            seq.parse::<u64>().unwrap(),
        )
    });
    let mut last_in_room: BTreeMap<String, u64> = BTreeMap::new();
    for v in entries.iter().filter(|v| v["m"].is_string()) {
        let room = v["r"].as_str().unwrap().to_string();
        let m: u64 = v["m"].as_str().unwrap().parse().unwrap();
        let prev = last_in_room.insert(room.clone(), m).unwrap_or(0);
        assert!(m > prev, "{room}: {m} after {prev} in the feed");
    }

    // A node with the feed off would write streams nobody with it on
    // reads: it refuses to start (exit 64), naming the setting.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
            "--stream-shards",
            SHARDS,
        ])
        .args([
            "--jwt-secret",
            SECRET,
            "--scylla-nodes",
            &cql_nodes().join(","),
            "--scylla-keyspace",
            &ks,
        ])
        .args(["--data-dir", d2.path().to_str().unwrap()])
        .output()
        .unwrap();
    // The error is logged (to stdout, as all logs are).
    let err = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("GATEWAY_FEED"), "{err}");
    drop(n1);
}
