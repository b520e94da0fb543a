//! The server API's moderation (1.1) across real gateway processes on real
//! Redis (and real Cassandra for history): a kick with a ban reaches every node's connections within a
//! second and holds across a restart; a disconnect and a revocation close
//! every connection of the user with 4003 and refuse the old token
//! everywhere; a node cut off from Redis while a kick is issued applies it
//! when Redis comes back. Room counts are over the whole cluster.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{GatewayProcess, RedisServer, TcpProxy, Wait};

/// A node on `redis_url`, with history in the CQL server in `keyspace`.
fn flags(redis_url: &str, keyspace: &str) -> Vec<String> {
    let cql = testkit::cql_nodes().join(",");
    [
        "--redis-url",
        redis_url,
        "--scylla-nodes",
        &cql,
        "--scylla-keyspace",
        keyspace,
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--presence-ttl",
        "3s",
    ]
    .map(String::from)
    .to_vec()
}

fn start(dir: &std::path::Path, flags: &[String]) -> GatewayProcess {
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    GatewayProcess::start(env!("CARGO_BIN_EXE_gateway"), dir, &args)
}

/// Waits until the room's counts over the cluster, asked of `node`, are
/// (`members`, `users`).
async fn wait_counts(node: &GatewayProcess, room: &str, members: u64, users: u64) {
    let path = format!("/api/rooms/{room}");
    Wait::new(format!("{room}: {members} members, {users} users"), WAIT)
        .until_async(async || {
            let (_, v) = api(node.addr, "GET", &path, Value::Null).await;
            match (v["members"].as_u64(), v["users"].as_u64()) {
                (Some(m), Some(u)) if (m, u) == (members, users) => Ok(()),
                _ => Err(v.to_string()),
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_and_ban_across_three_nodes_hold_after_a_restart() {
    let redis = RedisServer::start();
    let flags = flags(&redis.url(), &testkit::fresh_keyspace("kick"));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<GatewayProcess> = dirs.iter().map(|d| start(d.path(), &flags)).collect();
    let alice = token(claims_issued("alice", -10));
    let mut alices = Vec::new();
    for n in &nodes {
        let mut c = authed(&n.url(), &alice).await;
        c.join("hall").await;
        alices.push(c);
    }
    let mut bob = authed(&nodes[0].url(), &token(claims_issued("bob", -10))).await;
    bob.join("hall").await;
    wait_counts(&nodes[2], "hall", 4, 2).await;
    let (_, v) = api(nodes[1].addr, "GET", "/api/rooms/hall/presence", Value::Null).await;
    assert_eq!(v["users"], json!(["alice", "bob"]), "{v}");

    // Kicked and banned for 6 s through node 1: every one of alice's
    // connections, on every node, is out within a second.
    let issued = Instant::now();
    let (status, v) = api(
        nodes[1].addr,
        "POST",
        "/api/rooms/hall/kick",
        json!({"user":"alice","ban_seconds":6}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for c in &mut alices {
        let r = c.recv_matching(|v| v["op"] == "removed").await;
        assert_eq!(
            (r["room"].as_str(), r["reason"].as_str()),
            (Some("hall"), Some("banned")),
            "{r}"
        );
    }
    let took = issued.elapsed();
    assert!(took < Duration::from_secs(1), "removed everywhere in {took:?}");
    wait_counts(&nodes[0], "hall", 1, 1).await;
    for c in &mut alices {
        let r = c.request(json!({"op":"join","room":"hall"})).await;
        assert_eq!(r["code"], "forbidden", "{r}");
    }

    // Node 2 restarted (kill -9): the ban holds there too.
    nodes[2].kill9();
    nodes[2] = start(dirs[2].path(), &flags);
    let mut again = authed(&nodes[2].url(), &alice).await;
    let r = again.request(json!({"op":"join","room":"hall"})).await;
    assert_eq!(r["code"], "forbidden", "after a restart: {r}");
    // Other rooms are open to her, and bob was never touched.
    again.join("lobby").await;
    let kept = bob.send_msg("hall", json!("still here")).await;
    // Room info over the cluster names it last; a moderator's deletion
    // through node 2 reaches bob on node 0.
    let (_, v) = api(nodes[2].addr, "GET", "/api/rooms/hall", Value::Null).await;
    assert_eq!(v["last_msg"], kept.to_string(), "{v}");
    let path = format!("/api/rooms/hall/messages/{kept}");
    let (status, v) = api(nodes[2].addr, "DELETE", &path, Value::Null).await;
    assert_eq!(status, 200, "{v}");
    let d = bob.recv_matching(|v| v["op"] == "delete").await;
    assert_eq!(
        (d["target"].clone(), d["from"].clone()),
        (json!(kept.to_string()), json!("system")),
        "{d}"
    );

    // The ban ends: she may join again.
    Wait::new("the ban to end", Duration::from_secs(15))
        .every(Duration::from_millis(250))
        .until_async(async || {
            let r = again.request(json!({"op":"join","room":"hall"})).await;
            if r["op"] == "ok" { Ok(()) } else { Err(r.to_string()) }
        })
        .await;
    let waited = issued.elapsed();
    assert!(waited >= Duration::from_secs(5), "the ban ended after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_revoke_close_every_connection_of_the_user() {
    let redis = RedisServer::start();
    let flags = flags(&redis.url(), &testkit::fresh_keyspace("revoke"));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<GatewayProcess> = dirs.iter().map(|d| start(d.path(), &flags)).collect();
    let old = token(claims_issued("carol", -10));

    // Disconnect: every connection of carol closed 4003; dave stays.
    let mut carols = Vec::new();
    for n in &nodes {
        carols.push(authed(&n.url(), &old).await);
    }
    let mut dave = authed(&nodes[2].url(), &token(claims_issued("dave", -10))).await;
    let (status, v) = api(
        nodes[0].addr,
        "POST",
        "/api/users/carol/disconnect",
        json!({"reason":"abuse"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for c in &mut carols {
        assert_eq!(c.until_closed().await.0, Ended::Close(4003));
    }
    assert_eq!(dave.request(json!({"op":"ping"})).await["op"], "pong");

    // She comes back (a disconnect is no revocation); then her tokens are
    // revoked through node 1: every connection closes 4003, the old token
    // is refused on every node (frame or header), a newer one accepted.
    let mut carols = Vec::new();
    for n in &nodes {
        carols.push(authed(&n.url(), &old).await);
    }
    let (status, v) = api(nodes[1].addr, "POST", "/api/users/carol/revoke", Value::Null).await;
    assert_eq!(status, 200, "{v}");
    for c in &mut carols {
        assert_eq!(c.until_closed().await.0, Ended::Close(4003));
    }
    let newer = token(claims_issued("carol", 1));
    for n in &nodes {
        let mut c = Client::connect(&n.url(), None).await;
        let r = c.request(json!({"op":"auth","token":old})).await;
        assert_eq!(r["message"], "token revoked", "{r}");
        assert_eq!(c.until_closed().await.0, Ended::Close(4003));
        let mut c = Client::connect(&n.url(), Some(&old)).await;
        assert_eq!(c.until_closed().await.0, Ended::Close(4003));
        let mut c = authed(&n.url(), &newer).await;
        c.join("back").await;
    }
    assert_eq!(dave.request(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_applies_a_kick_when_it_returns() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ks = testkit::fresh_keyspace("cutoff");
    let a = start(da.path(), &flags(&proxy.redis_url(), &ks));
    let b = start(db.path(), &flags(&redis.url(), &ks));
    let mut erin = authed(&a.url(), &token(claims_issued("erin", -10))).await;
    erin.join("hall").await;
    wait_counts(&b, "hall", 1, 1).await;

    proxy.cut();
    let (status, v) = api(b.addr, "POST", "/api/rooms/hall/kick", json!({"user":"erin"})).await;
    assert_eq!(status, 200, "{v}");
    // Cut off, node a cannot have heard of it: erin is still in the room.
    assert_eq!(erin.request(json!({"op":"ping"})).await["op"], "pong");
    assert!(!erin.backlog.iter().any(|v| v["op"] == "removed"), "{:?}", erin.backlog);
    proxy.restore();
    let r = erin.recv_matching(|v| v["op"] == "removed").await;
    assert_eq!(
        (r["room"].as_str(), r["reason"].as_str()),
        (Some("hall"), Some("kicked")),
        "{r}"
    );
}

/// On a three-master Redis Cluster: a ban, a revocation and the feed work
/// across slots (the control stream, ban and revocation keys, and the
/// shard streams under the feed's names, each in its hash slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_and_the_feed_on_a_redis_cluster() {
    let cluster = testkit::RedisCluster::start(3);
    let nodes_flag = cluster.urls().join(",");
    let args = [
        "--redis-cluster-nodes",
        &nodes_flag,
        "--stream-shards",
        "4",
        "--feed",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
    ];
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<GatewayProcess> = dirs
        .iter()
        .map(|d| GatewayProcess::start(env!("CARGO_BIN_EXE_gateway"), d.path(), &args))
        .collect();
    let old = token(claims_issued("fay", -10));
    let mut fay = authed(&nodes[0].url(), &old).await;
    let mut gus = authed(&nodes[1].url(), &token(claims_issued("gus", -10))).await;
    fay.join("hall").await;
    gus.join("hall").await;
    let mut sent = 0;
    for i in 0..10 {
        fay.send_msg("hall", json!({"i": i})).await;
        gus.send_msg("hall", json!({"i": i})).await;
        sent += 2;
    }
    wait_counts(&nodes[1], "hall", 2, 2).await;

    let (status, v) = api(
        nodes[1].addr,
        "POST",
        "/api/rooms/hall/kick",
        json!({"user":"fay","ban_seconds":600}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let r = fay.recv_matching(|v| v["op"] == "removed").await;
    assert_eq!(r["reason"], "banned", "{r}");
    let r = fay.request(json!({"op":"join","room":"hall"})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let (status, v) = api(nodes[0].addr, "POST", "/api/users/fay/revoke", Value::Null).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(fay.until_closed().await.0, Ended::Close(4003));
    let mut again = Client::connect(&nodes[1].url(), None).await;
    let r = again.request(json!({"op":"auth","token":old})).await;
    assert_eq!(r["message"], "token revoked", "{r}");

    // Every message is in the feed stream of its room (with the feed on,
    // its shard stream): an entry of kind `m`, written once.
    let port = cluster.ports[0].to_string();
    let feed_messages = || {
        (0..4)
            .map(|s| {
                let out = std::process::Command::new("redis-cli")
                    .args(["-c", "-p", &port, "XRANGE", &format!("gw:feed:{{s{s}}}"), "-", "+"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                lines.windows(2).filter(|w| w[0] == "k" && w[1] == "m").count()
            })
            .sum::<usize>()
    };
    assert_eq!(feed_messages(), sent);
    assert_eq!(gus.request(json!({"op":"ping"})).await["op"], "pong");
}
