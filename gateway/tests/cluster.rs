//! Several real gateway processes through real Redis (one server, and a
//! three-master Redis Cluster): one order for everyone, resume on another
//! node after kill -9, Redis restarted under traffic, interest-driven
//! reading, and presence across nodes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dispatcher::redis_bus::StreamLayout;
use serde_json::json;
use testkit::{GatewayProcess, RedisCluster, RedisServer, Wait, wait_until_async};

/// `n` gateway processes on one bus (`bus` are the Redis flags), with no
/// send rate in the way.
fn nodes(n: usize, bus: &[String], extra: &[&str]) -> Processes {
    let mut args = vec!["--send-rate", "100000", "--send-burst", "100000"];
    args.extend_from_slice(extra);
    processes(n, bus, &args)
}

fn single(redis: &RedisServer) -> Vec<String> {
    vec!["--redis-url".into(), redis.url()]
}

/// The hash key tests give a cluster before its first node starts, so
/// they know which stream each room is in.
const HASH_KEY: &str = "00112233445566778899aabbccddeeff";

fn layout() -> StreamLayout {
    StreamLayout::new("gw", 16).with_hash_key(HASH_KEY).unwrap()
}

/// Sets [`HASH_KEY`] as the cluster's (on whichever master holds it).
fn set_hash_key(port: u16) {
    let out = std::process::Command::new("redis-cli")
        .args(["-c", "-p", &port.to_string(), "SET", "gw:hashkey", HASH_KEY])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

fn cluster_flags(c: &RedisCluster) -> Vec<String> {
    vec!["--redis-cluster-nodes".into(), c.urls().join(",")]
}

async fn all_msgs(c: &mut Client, room: &str, n: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        ids.push(msg_id(&c.next_msg(room).await));
    }
    ids
}

/// Members on every node see every message, in one ascending order.
async fn one_order_across_nodes(bus: Vec<String>) {
    let cluster = nodes(3, &bus, &[]);
    let mut node_ids = Vec::new();
    let mut members = Vec::new();
    for n in &cluster.nodes {
        for _ in 0..2 {
            let mut c = Client::connect(&n.url(), None).await;
            let ok = c.request(json!({"op":"auth"})).await;
            node_ids.push(ok["node"].as_str().unwrap().to_string());
            c.join("global").await;
            members.push(c);
        }
    }
    node_ids.dedup();
    assert_eq!(node_ids.len(), 3, "leased node ids are distinct: {node_ids:?}");
    let mut senders = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mut c = guest(&n.url()).await;
        c.join("global").await;
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for j in 0..30 {
                acked.push(c.send_msg("global", json!({"node": i, "j": j})).await);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    acked.sort();
    let first = all_msgs(&mut members[0], "global", 90).await;
    assert_eq!(first, acked, "every acknowledged message, ascending");
    for m in &mut members[1..] {
        assert_eq!(all_msgs(m, "global", 90).await, first, "the same order on every node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_across_three_nodes_on_one_redis() {
    let redis = RedisServer::start();
    one_order_across_nodes(single(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_across_three_nodes_on_a_redis_cluster() {
    let redis = RedisCluster::start(3);
    one_order_across_nodes(cluster_flags(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_another_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let mut cluster = nodes(2, &single(&redis), &[]);
    let mut x = guest(&cluster.nodes[0].url()).await;
    x.join("r").await;
    let mut sender = guest(&cluster.nodes[1].url()).await;
    sender.join("r").await;
    let sending = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..200 {
            acked.push(sender.send_msg("r", json!(i)).await);
        }
        acked
    });
    // Read a part, then lose the node.
    let seen = all_msgs(&mut x, "r", 40).await;
    cluster.nodes[0].kill9();
    let acked = sending.await.unwrap();
    let mut x = guest(&cluster.nodes[1].url()).await;
    let last = *seen.last().unwrap();
    let r = x
        .request(json!({"op":"join","room":"r","since":last.to_string()}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let rest = all_msgs(&mut x, "r", 160).await;
    let mut all = seen;
    all.extend(rest);
    assert_eq!(all, acked, "no gap, no duplicate, one order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_traffic_loses_no_acknowledged_message() {
    let mut redis = RedisServer::start();
    let cluster = nodes(1, &single(&redis), &[]);
    let node = &cluster.nodes[0];
    let mut member = guest(&node.url()).await;
    member.join("r").await;
    let mut sender = guest(&node.url()).await;
    sender.join("r").await;
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0usize));
    let sending = {
        let (acked, refused) = (acked.clone(), refused.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            while acked.lock().unwrap().len() < 300 {
                assert!(started.elapsed() < Duration::from_secs(60), "sends never recovered");
                let r = sender.request(json!({"op":"send","room":"r","body":"x"})).await;
                match r["op"].as_str() {
                    Some("ok") => acked.lock().unwrap().push(msg_id(&r)),
                    _ => {
                        assert_eq!(r["code"], "unavailable", "{r}");
                        *refused.lock().unwrap() += 1;
                    }
                }
            }
        })
    };
    wait_until_async("100 acks", STEP, async || acked.lock().unwrap().len() >= 100).await;
    redis.kill();
    // While Redis is down: the node is not ready; clients stay connected.
    wait_until_async("readyz 503", STEP, async || ready_status(node) == 503).await;
    wait_until_async("a refused send", STEP, async || *refused.lock().unwrap() > 0).await;
    redis.start_again();
    wait_until_async("readyz 200", STEP, async || ready_status(node) == 200).await;
    sending.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "redis restart: {} acknowledged, {} refused while down",
        acked.len(),
        refused.lock().unwrap()
    );
    // The member, connected throughout, got every acknowledged message once,
    // in order; and the stream window holds them all. A send refused while
    // Redis died may still have been written (its reply was lost with the
    // connection): such messages may appear too, at most one per refusal.
    let refused = *refused.lock().unwrap();
    let history = all_history(&mut member, "r").await;
    assert!(
        history.windows(2).all(|w| w[0] < w[1]),
        "history ascends without duplicates"
    );
    assert!(
        acked.iter().all(|id| history.binary_search(id).is_ok()),
        "every acknowledged message is in history"
    );
    let extra = history.len() - acked.len();
    assert!(extra <= refused, "{extra} unacknowledged messages, {refused} refusals");
    let got = all_msgs(&mut member, "r", history.len()).await;
    assert_eq!(got, history, "the member got the room's messages once each, in order");
}

fn ready_status(node: &GatewayProcess) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(node.addr) else {
        return 0;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The longest each step of the Redis restart test may take.
const STEP: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_reads_only_its_own_rooms_shards() {
    let redis = RedisServer::start();
    set_hash_key(redis.port);
    let cluster = nodes(2, &single(&redis), &["--stream-shards", "16"]);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let rooms: Vec<String> = (0..40).map(|i| format!("room-{i}")).collect();
    let mut busy = guest(&a.url()).await;
    for r in &rooms {
        busy.join(r).await;
    }
    let late_room = "late";
    let mut late = guest(&b.url()).await;
    late.join(late_room).await;
    let shard = layout().stream_of(late_room);
    let a_shards: std::collections::HashSet<u32> = rooms.iter().map(|r| layout().stream_of(r)).collect();
    assert_eq!(a.metric("gateway_bus_shard_readers"), a_shards.len() as f64);
    assert_eq!(
        b.metric("gateway_bus_shard_readers"),
        1.0,
        "B reads only its one room's shard"
    );

    let read_before = b.metric("gateway_bus_entries_read_total");
    for r in &rooms {
        busy.send_msg(r, json!("hello")).await;
    }
    let in_b_shard = rooms.iter().filter(|r| layout().stream_of(r) == shard).count();
    late.send_msg(late_room, json!("mine")).await;
    late.next_msg(late_room).await;
    // B read its own message and the traffic of rooms sharing its shard,
    // nothing of the other shards.
    let read = b.metric("gateway_bus_entries_read_total") - read_before;
    assert_eq!(read, (in_b_shard + 1) as f64, "{in_b_shard} rooms share shard {shard}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_dead_nodes_users_leave_it() {
    let redis = RedisServer::start();
    let mut cluster = nodes(
        2,
        &single(&redis),
        &["--presence-ttl", "2s", "--jwt-secret", SECRET, "--allow-anonymous"],
    );
    let mut alice = Client::connect(&cluster.nodes[0].url(), Some(&token(valid_claims("alice")))).await;
    let mut bob = Client::connect(&cluster.nodes[1].url(), Some(&token(valid_claims("bob")))).await;
    alice.join("p").await;
    bob.join("p").await;
    let ev = alice.recv_matching(|v| v["op"] == "joined" && v["user"] == "bob").await;
    assert_eq!(ev["room"], "p");
    assert_eq!(
        alice.request(json!({"op":"presence","room":"p"})).await["users"],
        json!(["alice", "bob"])
    );
    bob.send(json!({"op":"typing","room":"p"})).await;
    assert_eq!(alice.recv_matching(|v| v["op"] == "typing").await["user"], "bob");

    cluster.nodes[1].kill9();
    Wait::new("bob, his node killed, to leave presence", Duration::from_secs(10))
        .every(Duration::from_millis(200))
        .until_async(async || {
            let users = alice.request(json!({"op":"presence","room":"p"})).await["users"].clone();
            if users == json!(["alice"]) {
                Ok(())
            } else {
                Err(format!("users {users}"))
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_older_than_the_stream_window_is_not_recovered() {
    let redis = RedisServer::start();
    let cluster = nodes(1, &single(&redis), &["--stream-maxlen", "100", "--stream-shards", "1"]);
    let url = cluster.nodes[0].url();
    let mut c = guest(&url).await;
    c.join("w").await;
    let first = c.send_msg("w", json!(0)).await;
    let mut last = first;
    for i in 1..600 {
        last = c.send_msg("w", json!(i)).await;
    }
    // The window was trimmed past `first`: replaying from it would leave a gap.
    let mut late = guest(&url).await;
    let r = late
        .request(json!({"op":"join","room":"w","since":first.to_string()}))
        .await;
    assert_eq!(r["recovered"], false, "{r}");
    // A gap inside the window is recovered.
    let mut recent = guest(&url).await;
    let h = recent.request(json!({"op":"history","room":"w","limit":3})).await;
    let since = msg_id(&h["messages"][0]);
    let r = recent
        .request(json!({"op":"join","room":"w","since":since.to_string()}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let replayed: Vec<u64> = recent.backlog.iter().filter(|v| v["op"] == "msg").map(msg_id).collect();
    assert_eq!(replayed.last(), Some(&last));
    assert_eq!(replayed.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_node_writes_a_random_hash_key_that_later_nodes_keep() {
    let redis = RedisServer::start();
    let key = || testkit::redis_command(redis.port, &["GET", "gw:hashkey"]).unwrap_or_default();
    // The node logs its address before it connects to Redis.
    let first = nodes(1, &single(&redis), &[]);
    let written = Wait::new("the first node's hash key in Redis", WAIT).until(|| {
        let written = key();
        // A bulk string of 32 hex digits: "$32\r\n<key>\r\n".
        let hex = written.lines().nth(1).unwrap_or_default().to_string();
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(written)
        } else {
            Err(format!("{written:?}"))
        }
    });
    assert!(!written.contains(HASH_KEY));
    let second = nodes(1, &single(&redis), &[]);
    Wait::new("the second node ready", WAIT).until(|| {
        let ready = second.nodes[0].metric("gateway_bus_ready");
        if ready == 1.0 {
            Ok(())
        } else {
            Err(format!("gateway_bus_ready {ready}"))
        }
    });
    assert_eq!(key(), written, "a later node keeps the cluster's key");
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_window_is_bounded_in_bytes_too() {
    // 200 bodies of 30 KB (6 MB) into one stream whose window is 1 MiB:
    // far under its entry count, the trimmer still cuts it by bytes.
    let redis = RedisServer::start();
    let cluster = nodes(
        1,
        &single(&redis),
        &[
            "--stream-shards",
            "1",
            "--stream-max-bytes",
            "1048576",
            "--stream-trim-interval",
            "1s",
        ],
    );
    let mut c = guest(&cluster.nodes[0].url()).await;
    c.join("bytes").await;
    let body = "z".repeat(30_000);
    let mut last = 0;
    for _ in 0..200 {
        last = c.send_msg("bytes", json!(body)).await;
        c.backlog.clear();
    }
    let used = Wait::new("the stream trimmed to about 1 MiB", Duration::from_secs(20))
        .every(Duration::from_millis(200))
        .until(|| {
            let used: u64 = testkit::redis_command(redis.port, &["MEMORY", "USAGE", "gw:{s0}"])
                .and_then(|v| v.trim().trim_start_matches(':').parse().ok())
                .unwrap_or(u64::MAX);
            if used < 2 << 20 {
                Ok(used)
            } else {
                Err(format!("{used} bytes"))
            }
        });
    assert!(used > 0);
    // The newest messages are still there.
    let h = c.request(json!({"op":"history","room":"bytes","limit":5})).await;
    assert_eq!(
        h["messages"].as_array().and_then(|m| m.last()).map(msg_id),
        Some(last),
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_keep_order_through_a_redis_cluster() {
    // The two rooms live in different shard streams (so different slots):
    // the batch becomes one pipeline per stream.
    assert_ne!(layout().stream_of("pipe-a"), layout().stream_of("pipe-b"));
    let redis = RedisCluster::start(3);
    set_hash_key(redis.ports[0]);
    let cluster = nodes(1, &cluster_flags(&redis), &[]);
    let mut c = guest(&cluster.nodes[0].url()).await;
    pipelined_sends_keep_order(&mut c).await;
}
