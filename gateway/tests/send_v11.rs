//! Send nonces (protocol 1.1): a `send` repeating a (user, room, nonce)
//! within the dedupe window gets the first message's id with
//! `"duplicate":true`, and nothing is stored or delivered again: on one
//! node, over a reconnect, within one pipelined burst, and across the
//! nodes of a cluster on one Redis and on a Redis Cluster. And `reply_to`
//! (1.1), delivered and kept with the message.

mod common;

use common::*;
use serde_json::{Value, json};
use testkit::{GatewayProcess, RedisCluster, RedisServer};

async fn send(c: &mut Client, room: &str, body: Value, nonce: &str) -> Value {
    let r = c
        .request(json!({"op":"send","room":room,"body":body,"nonce":nonce}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    r
}

#[tokio::test]
async fn a_repeated_nonce_is_answered_with_the_first_message_on_one_node() {
    let node = TestNode::start(&[]).await;
    let mut a = node.guest().await;
    a.join("r").await;
    let mut watcher = node.guest().await;
    watcher.join("r").await;

    let first = send(&mut a, "r", json!({"n":1}), "n-1").await;
    assert!(first.get("duplicate").is_none(), "{first}");
    let again = send(&mut a, "r", json!({"n":1}), "n-1").await;
    assert_eq!((&again["msg"], &again["ts"]), (&first["msg"], &first["ts"]), "{again}");
    assert_eq!(again["duplicate"], true);

    // Within one pipelined burst too: one stored, both answered with it.
    for _ in 0..2 {
        a.send(json!({"op":"send","id":900,"room":"r","body":2,"nonce":"burst"}))
            .await;
    }
    let (b1, b2) = (
        a.recv_matching(|v| v["id"] == 900).await,
        a.recv_matching(|v| v["id"] == 900).await,
    );
    assert_eq!(b1["msg"], b2["msg"], "{b1} {b2}");
    assert_eq!(
        b1.get("duplicate").is_some() as u8 + b2.get("duplicate").is_some() as u8,
        1
    );

    // Another room, or no nonce, is another message.
    a.join("s").await;
    let other_room = send(&mut a, "s", json!({"n":1}), "n-1").await;
    assert!(other_room.get("duplicate").is_none(), "{other_room}");

    // Watchers saw each stored message once.
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(msg_id(&watcher.next_msg("r").await));
    }
    assert_eq!(seen, vec![msg_id(&first), msg_id(&b1)]);
    let history = all_history(&mut a, "r").await;
    assert_eq!(history, seen, "stored once each");
    node.stop().await;
}

#[tokio::test]
async fn nonces_are_per_user_and_survive_a_reconnect() {
    let node = TestNode::start(&["--jwt-secret", SECRET]).await;
    let connect = async |user: &str| {
        let mut c = node.client().await;
        assert_eq!(
            c.request(json!({"op":"auth","token":token(valid_claims(user))})).await["op"],
            "ok"
        );
        c.join("r").await;
        c
    };
    let mut u1 = connect("u1").await;
    let first = send(&mut u1, "r", json!(1), "same").await;
    drop(u1);
    let mut u1_again = connect("u1").await;
    let retry = send(&mut u1_again, "r", json!(1), "same").await;
    assert_eq!((&retry["msg"], &retry["duplicate"]), (&first["msg"], &json!(true)));
    let mut u2 = connect("u2").await;
    let theirs = send(&mut u2, "r", json!(1), "same").await;
    assert!(theirs.get("duplicate").is_none(), "another user's nonce: {theirs}");
    node.stop().await;
}

async fn across_nodes(bus: Vec<String>) {
    let cluster = processes(2, &bus, &["--jwt-secret", SECRET]);
    let nodes = &cluster.nodes;
    let connect = async |node: &GatewayProcess| {
        let mut c = Client::connect(&node.url(), None).await;
        assert_eq!(
            c.request(json!({"op":"auth","token":token(valid_claims("u1"))})).await["op"],
            "ok"
        );
        c
    };
    let mut a = connect(&nodes[0]).await;
    let mut b = connect(&nodes[1]).await;
    // Several rooms, so several shard streams (and Redis Cluster slots).
    for i in 0..6 {
        let room = format!("room-{i}");
        a.join(&room).await;
        b.join(&room).await;
        let first = send(&mut a, &room, json!({"i":i}), &format!("nonce-{i}")).await;
        // The reply was lost: the client retries through the other node.
        let retry = send(&mut b, &room, json!({"i":i}), &format!("nonce-{i}")).await;
        assert_eq!((&retry["msg"], &retry["ts"]), (&first["msg"], &first["ts"]), "{room}");
        assert_eq!(retry["duplicate"], true);
        assert_eq!(
            all_history(&mut b, &room).await,
            vec![msg_id(&first)],
            "{room}: stored once"
        );
    }
}

#[tokio::test]
async fn a_retry_on_another_node_is_a_duplicate_on_one_redis() {
    let redis = RedisServer::start();
    across_nodes(vec!["--redis-url".into(), redis.url()]).await;
}

/// The append and change scripts run by their hash: after Redis forgets
/// them (`SCRIPT FLUSH`, as after a failover), they are loaded again and
/// the send, the edit and the retry still work.
#[tokio::test]
async fn sends_and_changes_survive_a_script_flush() {
    let redis = RedisServer::start();
    let node = TestNode::start(&["--redis-url", &redis.url(), "--jwt-secret", SECRET]).await;
    let mut a = Client::connect(&node.url(), None).await;
    let ok = a.request(json!({"op":"auth","token":token(valid_claims("ann"))})).await;
    assert_eq!(ok["op"], "ok", "{ok}");
    a.join("r").await;
    let send = json!({"op":"send","room":"r","body":1,"nonce":"n-1"});
    let first = a.request(send.clone()).await;
    assert_eq!(first["op"], "ok", "{first}");
    assert_eq!(
        testkit::redis_command(redis.port, &["SCRIPT", "FLUSH"]).as_deref(),
        Some("+OK\r\n")
    );
    let again = a.request(send).await;
    assert_eq!(
        (again["msg"].clone(), again["duplicate"].clone()),
        (first["msg"].clone(), json!(true)),
        "{again}"
    );
    let edit = a
        .request(json!({"op":"edit","room":"r","msg":first["msg"],"body":2}))
        .await;
    assert_eq!(edit["op"], "ok", "{edit}");
    assert_eq!(
        testkit::redis_command(redis.port, &["SCRIPT", "FLUSH"]).as_deref(),
        Some("+OK\r\n")
    );
    let react = a
        .request(json!({"op":"react","room":"r","msg":first["msg"],"key":"+1"}))
        .await;
    assert_eq!(react["op"], "ok", "{react}");
    let next = a.request(json!({"op":"send","room":"r","body":3,"nonce":"n-2"})).await;
    assert_eq!(next["op"], "ok", "{next}");
    node.stop().await;
}

#[tokio::test]
async fn a_retry_on_another_node_is_a_duplicate_on_a_redis_cluster() {
    let redis = RedisCluster::start(3);
    across_nodes(vec!["--redis-cluster-nodes".into(), redis.urls().join(",")]).await;
}

#[tokio::test]
async fn reply_to_is_delivered_and_kept() {
    let node = TestNode::start(&["--api-key", API_KEY]).await;
    let mut a = node.guest().await;
    a.join("r").await;
    let first = a.send_msg("r", json!("question")).await;
    let r = a
        .request(json!({"op":"send","room":"r","body":"answer","reply_to":first.to_string()}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    let _ = a.next_msg("r").await;
    let live = a.next_msg("r").await;
    assert_eq!(live["reply_to"], first.to_string(), "{live}");
    let h = a.request(json!({"op":"history","room":"r"})).await;
    let msgs = h["messages"].as_array().unwrap();
    assert!(msgs[0].get("reply_to").is_none(), "{h}");
    assert_eq!(msgs[1]["reply_to"], first.to_string(), "{h}");
    let bad = a.request(json!({"op":"send","room":"r","body":1,"reply_to":"x"})).await;
    assert_eq!(bad["code"], "bad_request", "{bad}");

    // The server API takes one too.
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"body":"from the backend","reply_to":first.to_string()}).to_string();
    let (status, text) = node
        .http("POST", "/api/rooms/r/messages", &[("authorization", &auth)], &body)
        .await;
    assert_eq!(status, 200, "{text}");
    let live = a.next_msg("r").await;
    assert_eq!(
        (&live["from"], &live["reply_to"]),
        (&json!("system"), &json!(first.to_string())),
        "{live}"
    );
    let (status, text) = node
        .http(
            "POST",
            "/api/rooms/r/messages",
            &[("authorization", &auth)],
            r#"{"body":1,"reply_to":"-1"}"#,
        )
        .await;
    assert_eq!(status, 400, "{text}");
    node.stop().await;
}

/// Retry safety across the Redis restart fault: a client that resends each
/// message with the same nonce until it is acknowledged (through Redis
/// being killed and started again, replies lost with it) gets each nonce
/// stored exactly once, where without nonces a refused send may be stored
/// and then sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_sends_survive_a_redis_restart_exactly_once() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    let mut redis = RedisServer::start();
    let cluster = processes(
        1,
        &["--redis-url".to_string(), redis.url()],
        &["--send-rate", "100000", "--send-burst", "100000"],
    );
    let url = cluster.nodes[0].url();
    let mut sender = guest(&url).await;
    sender.join("r").await;
    const N: usize = 150;
    let acked = Arc::new(Mutex::new(0usize));
    let refused = Arc::new(Mutex::new(0usize));
    let sending = {
        let (acked, refused) = (acked.clone(), refused.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            for i in 0..N {
                let nonce = format!("n{i}");
                // The same nonce until it is acknowledged.
                loop {
                    assert!(started.elapsed() < Duration::from_secs(90), "sends never recovered");
                    let r = sender
                        .request(json!({"op":"send","room":"r","body":{"i":i},"nonce":nonce}))
                        .await;
                    if r["op"] == "ok" {
                        *acked.lock().unwrap() += 1;
                        break;
                    }
                    assert_eq!(r["code"], "unavailable", "{r}");
                    *refused.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            sender
        })
    };
    let step = Duration::from_secs(30);
    testkit::Wait::new("50 acks", step)
        .until_async(async || {
            if *acked.lock().unwrap() >= 50 {
                Ok(())
            } else {
                Err("fewer")
            }
        })
        .await;
    redis.kill();
    testkit::Wait::new("a refused send", step)
        .until_async(async || {
            if *refused.lock().unwrap() > 0 {
                Ok(())
            } else {
                Err("none yet")
            }
        })
        .await;
    redis.start_again();
    let mut sender = sending.await.unwrap();
    eprintln!(
        "retries across a redis restart: {} refused, retried",
        refused.lock().unwrap()
    );
    // Every nonce once in history: no message lost, none stored twice.
    let h = sender.request(json!({"op":"history","room":"r","limit":500})).await;
    let mut seen: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"]["i"].as_u64().unwrap())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..N as u64).collect::<Vec<_>>(),
        "each nonce stored exactly once"
    );
}

/// On one node the embedded store keeps the nonces (in the write that
/// stores the message, hashed with a key kept in the file): a retry after
/// the node restarted is still answered with the first message.
#[tokio::test]
async fn nonces_survive_a_restart_of_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let connect = async |node: &TestNode| {
        let mut c = node.client().await;
        assert_eq!(
            c.request(json!({"op":"auth","token":token(valid_claims("u1"))})).await["op"],
            "ok"
        );
        c.join("r").await;
        c
    };
    let node = TestNode::start_in(dir.path(), &["--jwt-secret", SECRET]).await;
    let mut c = connect(&node).await;
    let first = send(&mut c, "r", json!({"n":1}), "kept").await;
    node.stop().await;
    let node = TestNode::start_in(dir.path(), &["--jwt-secret", SECRET]).await;
    let mut c = connect(&node).await;
    let again = send(&mut c, "r", json!({"n":1}), "kept").await;
    assert_eq!(
        (&again["msg"], &again["duplicate"]),
        (&first["msg"], &json!(true)),
        "{again}"
    );
    let other = send(&mut c, "r", json!({"n":2}), "another").await;
    assert!(other.get("duplicate").is_none(), "{other}");
    assert_eq!(all_history(&mut c, "r").await, vec![msg_id(&first), msg_id(&other)]);
    node.stop().await;
}
