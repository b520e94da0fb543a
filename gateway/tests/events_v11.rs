//! Edits, deletions, reactions and read markers (protocol 1.1): each op
//! live, its error cases, `history` (and the HTTP history API) in the
//! messages' current state with `me`, and `join` with `since` replaying
//! the events among the messages (the client's fold equals `history`); on
//! the embedded single node, on two nodes over Redis, and on two nodes
//! over Redis with the CQL store. Read markers and `read` events on the
//! same three (markers in the embedded store, in Redis, in Cassandra).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};
use storage::{CqlConfig, CqlStore, HistoryStore, Page, Replication};
use testkit::{RedisServer, Wait, cql_nodes, fresh_keyspace, redis_command};

async fn user_at(addr: SocketAddr, claims: Value) -> Client {
    let mut c = Client::connect(&format!("ws://{addr}/ws"), None).await;
    let r = c.request(json!({"op":"auth","token":token(claims)})).await;
    assert_eq!(r["op"], "ok", "{r}");
    c
}

async fn user(node: &TestNode, claims: Value) -> Client {
    user_at(node.addr, claims).await
}

fn claims(sub: &str) -> Value {
    valid_claims(sub)
}

/// Sends `req` and expects an error with `code`.
async fn refused(c: &mut Client, req: Value, code: &str) {
    let r = c.request(req.clone()).await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some(code)),
        "{req} -> {r}"
    );
}

async fn ok(c: &mut Client, req: Value) -> Value {
    let r = c.request(req.clone()).await;
    assert_eq!(r["op"], "ok", "{req} -> {r}");
    r
}

/// What a client makes of `msg` entries and events, in order: the
/// messages by id with their body (None: deleted) and reactions
/// (key -> users).
#[derive(Default, Debug, PartialEq)]
struct Fold(BTreeMap<String, (Option<Value>, BTreeMap<String, u64>)>);

impl Fold {
    fn apply(&mut self, e: &Value) {
        let target = || e["target"].as_str().unwrap().to_string();
        match e["op"].as_str().unwrap() {
            "msg" => {
                let body = if e["deleted"] == true {
                    None
                } else {
                    Some(e["body"].clone())
                };
                let reactions = e["reactions"]
                    .as_object()
                    .map(|r| {
                        r.iter()
                            .map(|(k, v)| (k.clone(), v["count"].as_u64().unwrap()))
                            .collect()
                    })
                    .unwrap_or_default();
                self.0.insert(e["msg"].as_str().unwrap().to_string(), (body, reactions));
            }
            "edit" => self.0.get_mut(&target()).unwrap().0 = Some(e["body"].clone()),
            "delete" => {
                let m = self.0.get_mut(&target()).unwrap();
                *m = (None, BTreeMap::new());
            }
            "react" => {
                *self
                    .0
                    .get_mut(&target())
                    .unwrap()
                    .1
                    .entry(e["key"].as_str().unwrap().into())
                    .or_default() += 1
            }
            "unreact" => {
                let r = &mut self.0.get_mut(&target()).unwrap().1;
                let k = e["key"].as_str().unwrap().to_string();
                *r.get_mut(&k).unwrap() -= 1;
                if r[&k] == 0 {
                    r.remove(&k);
                }
            }
            other => panic!("unexpected {other}: {e}"),
        }
    }
}

async fn history(c: &mut Client, room: &str) -> Vec<Value> {
    let h = c.request(json!({"op":"history","room":room,"limit":500})).await;
    assert_eq!(h["op"], "history", "{h}");
    h["messages"].as_array().unwrap().clone()
}

#[tokio::test]
async fn edits_deletions_and_reactions_on_one_node() {
    let node = TestNode::start(&["--jwt-secret", SECRET, "--api-key", API_KEY]).await;
    scenario(&[node.addr]).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletions_and_reactions_on_two_nodes_over_redis() {
    let redis = RedisServer::start();
    let bus = vec!["--redis-url".to_string(), redis.url()];
    let cluster = processes(2, &bus, &["--jwt-secret", SECRET, "--api-key", API_KEY]);
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
    scenario(&addrs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletions_and_reactions_on_two_nodes_over_redis_and_cql() {
    let redis = RedisServer::start();
    let keyspace = fresh_keyspace("events");
    let bus = vec![
        "--redis-url".to_string(),
        redis.url(),
        "--scylla-nodes".to_string(),
        cql_nodes().join(","),
        "--scylla-keyspace".to_string(),
        keyspace.clone(),
        "--persister-wait".to_string(),
        "20ms".to_string(),
    ];
    let cluster = processes(2, &bus, &["--jwt-secret", SECRET, "--api-key", API_KEY]);
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
    let [m1, m2, m3] = scenario(&addrs).await;

    // The persister folds the changes from the streams into the store.
    let store = CqlStore::connect(&CqlConfig {
        nodes: cql_nodes(),
        keyspace,
        replication: Replication::Simple(1),
        bucket: std::time::Duration::from_secs(86_400),
    })
    .await
    .unwrap();
    let id = |m: &str| m.parse::<u64>().unwrap();
    Wait::new("the changes folded into the store", std::time::Duration::from_secs(60))
        .every(std::time::Duration::from_millis(100))
        .until_async(async || {
            let page = store.page("r", Page::Newest, 10).await.map_err(|e| e.to_string())?;
            let counts = |i: usize| page[i].state.reactions.iter().map(|r| r.count).sum::<u32>();
            match page.as_slice() {
                [a, b, c]
                    if (a.id, b.id, c.id) == (id(&m1), id(&m2), id(&m3))
                        && a.state.edited.is_some()
                        && counts(0) == 2
                        && counts(1) == 20
                        && c.state.deleted =>
                {
                    Ok(())
                }
                _ => Err(format!("{page:?}")),
            }
        })
        .await;

    // Redis forgets the state (as after its TTL): the next changes are
    // judged from the store's state and holders.
    let forget = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 1";
    for pattern in ["*:st:r:*", "*:rh:r:*"] {
        redis_command(redis.port, &["EVAL", forget, "0", pattern]).unwrap();
    }
    let mut bob = user_at(addrs[0], claims("bob")).await;
    let mut ann = user_at(addrs[1], claims("ann")).await;
    bob.join("r").await;
    ann.join("r").await;
    let held = ok(&mut bob, json!({"op":"react","room":"r","msg":m1,"key":"👍"})).await;
    assert!(held.get("msg").is_none(), "the store says bob holds it: {held}");
    ok(&mut ann, json!({"op":"react","room":"r","msg":m1,"key":"👍"})).await;
    refused(
        &mut ann,
        json!({"op":"react","room":"r","msg":m2,"key":"one-more"}),
        "forbidden",
    )
    .await;
    refused(&mut ann, json!({"op":"edit","room":"r","msg":m3,"body":1}), "not_found").await;
    let page = history(&mut bob, "r").await;
    assert_eq!(page[0]["reactions"], json!({"👍":{"count":3,"me":true}}));

    // Read markers, kept in the store.
    let marker = read_scenario(&addrs).await;
    assert_eq!(
        store.read_marker("r", "ann").await.unwrap(),
        Some(marker),
        "in Cassandra"
    );
}

/// Users connect round-robin over `addrs` (ann, bob, mia, then the late
/// reader), so on two nodes every event crosses the bus.
/// Returns the ids of its three messages: edited and reacted, reacted (20
/// keys), deleted.
async fn scenario(addrs: &[SocketAddr]) -> [String; 3] {
    let at = |i: usize| addrs[i % addrs.len()];
    let mut ann = user_at(at(0), claims("ann")).await;
    let mut bob = user_at(at(1), claims("bob")).await;
    let mut mia = user_at(at(2), json!({"sub":"mia","exp":now_secs() + 3600,"mod":["r*"]})).await;
    for c in [&mut ann, &mut bob, &mut mia] {
        c.join("r").await;
    }
    let m1 = ann.send_msg("r", json!({"t":"one"})).await.to_string();
    let m2 = ann.send_msg("r", json!({"t":"two"})).await.to_string();
    let m3 = bob.send_msg("r", json!({"t":"three"})).await.to_string();

    // Edit: the author only; the event reaches the room with its own id.
    refused(
        &mut bob,
        json!({"op":"edit","room":"r","msg":m1,"body":{"t":"x"}}),
        "forbidden",
    )
    .await;
    refused(
        &mut mia,
        json!({"op":"edit","room":"r","msg":m1,"body":{"t":"x"}}),
        "forbidden",
    )
    .await;
    let edit = ok(
        &mut ann,
        json!({"op":"edit","room":"r","msg":m1,"body":{"t":"ONE", "n": 1.50}}),
    )
    .await;
    assert!(
        msg_id(&edit) > m3.parse().unwrap(),
        "an event's id comes after the messages before it"
    );
    let seen = bob.recv_matching(|v| v["op"] == "edit").await;
    assert_eq!(
        (&seen["msg"], seen["target"].as_str(), &seen["from"], &seen["body"]),
        (
            &edit["msg"],
            Some(m1.as_str()),
            &json!("ann"),
            &json!({"t":"ONE","n":1.50})
        )
    );

    // Reactions: once per user and key; `ok` without an id the second time.
    let r1 = ok(&mut bob, json!({"op":"react","room":"r","msg":m1,"key":"👍"})).await;
    assert!(r1.get("msg").is_some());
    let again = ok(&mut bob, json!({"op":"react","room":"r","msg":m1,"key":"👍"})).await;
    assert!(again.get("msg").is_none(), "{again}");
    ok(&mut mia, json!({"op":"react","room":"r","msg":m1,"key":"👍"})).await;
    ok(&mut mia, json!({"op":"react","room":"r","msg":m1,"key":"🎉"})).await;
    ok(&mut mia, json!({"op":"unreact","room":"r","msg":m1,"key":"🎉"})).await;
    let none = ok(&mut mia, json!({"op":"unreact","room":"r","msg":m1,"key":"🎉"})).await;
    assert!(none.get("msg").is_none(), "{none}");
    for i in 0..19 {
        ok(
            &mut ann,
            json!({"op":"react","room":"r","msg":m2,"key":format!("k{i}")}),
        )
        .await;
    }
    ok(&mut bob, json!({"op":"react","room":"r","msg":m2,"key":"k20"})).await;
    refused(
        &mut bob,
        json!({"op":"react","room":"r","msg":m2,"key":"k21"}),
        "forbidden",
    )
    .await;

    // Delete: the author or a moderator; then it is gone for every op.
    refused(&mut ann, json!({"op":"delete","room":"r","msg":m3}), "forbidden").await;
    ok(&mut mia, json!({"op":"delete","room":"r","msg":m3})).await;
    refused(&mut bob, json!({"op":"edit","room":"r","msg":m3,"body":1}), "not_found").await;
    refused(&mut bob, json!({"op":"delete","room":"r","msg":m3}), "not_found").await;
    refused(
        &mut bob,
        json!({"op":"react","room":"r","msg":m3,"key":"x"}),
        "not_found",
    )
    .await;
    // Not a message: a missing id, an event's id, another room's message.
    refused(
        &mut bob,
        json!({"op":"react","room":"r","msg":"12345","key":"x"}),
        "not_found",
    )
    .await;
    refused(
        &mut ann,
        json!({"op":"edit","room":"r","msg":edit["msg"],"body":1}),
        "not_found",
    )
    .await;
    ann.join("other").await;
    refused(
        &mut ann,
        json!({"op":"edit","room":"other","msg":m1,"body":1}),
        "not_found",
    )
    .await;
    // Validation and membership.
    refused(
        &mut bob,
        json!({"op":"react","room":"r","msg":m1,"key":""}),
        "bad_request",
    )
    .await;
    refused(&mut bob, json!({"op":"edit","room":"r","msg":m1}), "bad_request").await;
    refused(
        &mut bob,
        json!({"op":"react","room":"nope","msg":m1,"key":"x"}),
        "forbidden",
    )
    .await;

    // History: current state, no events, `me` for the reader.
    let page = history(&mut bob, "r").await;
    assert_eq!(page.len(), 3, "{page:?}");
    assert_eq!(page[0]["body"], json!({"t":"ONE","n":1.50}));
    assert!(page[0]["edited"].as_u64().is_some());
    assert_eq!(page[0]["reactions"], json!({"👍":{"count":2,"me":true}}));
    assert_eq!(page[1]["reactions"].as_object().unwrap().len(), 20);
    assert_eq!(page[1]["reactions"]["k0"], json!({"count":1,"me":false}));
    assert_eq!(page[1]["reactions"]["k20"], json!({"count":1,"me":true}));
    assert_eq!(page[2]["deleted"], true);
    assert!(page[2].get("body").is_none(), "a tombstone has no body: {}", page[2]);
    // The HTTP history API shows the same state.
    let (status, text) = http_request(
        at(1),
        "GET",
        "/api/rooms/r/messages",
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let api: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(api["messages"][0]["reactions"]["👍"]["count"], 2);
    assert_eq!(api["messages"][2]["deleted"], true);

    // A client that saw only the first message replays the rest, events
    // among messages, and its fold equals history.
    let mut late = user_at(at(3), claims("late")).await;
    let j = late.request(json!({"op":"join","room":"r","since":m1})).await;
    assert_eq!(j["recovered"], true, "{j}");
    let replayed: Vec<Value> = late.backlog.drain(..).collect();
    // What it saw: the first message as sent.
    let mut fold = Fold::default();
    fold.apply(&json!({"op":"msg","msg":m1,"body":{"t":"one"}}));
    let mut last = m1.parse::<u64>().unwrap();
    for e in &replayed {
        let id = msg_id(e);
        assert!(id > last, "ascending, no duplicate: {replayed:?}");
        last = id;
        fold.apply(e);
    }
    let mut expected = Fold::default();
    for m in &page {
        expected.apply(m);
    }
    assert_eq!(fold, expected);
    [m1, m2, m3]
}

#[tokio::test]
async fn read_markers_on_one_node_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_in(dir.path(), &["--jwt-secret", SECRET]).await;
    let m2 = read_scenario(&[node.addr]).await;
    // A new connection's join carries the user's marker; it survives a restart.
    node.stop().await;
    let node = TestNode::start_in(dir.path(), &["--jwt-secret", SECRET]).await;
    let mut ann = user(&node, claims("ann")).await;
    assert_eq!(ann.join("r").await["read"], m2.to_string());
    let mut carl = user(&node, claims("carl")).await;
    assert!(carl.join("r").await.get("read").is_none());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_markers_on_two_nodes_over_redis() {
    let redis = RedisServer::start();
    let bus = vec!["--redis-url".to_string(), redis.url()];
    let cluster = processes(2, &bus, &["--jwt-secret", SECRET]);
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
    let m2 = read_scenario(&addrs).await;
    let mut ann = user_at(addrs[1], claims("ann")).await;
    assert_eq!(ann.join("r").await["read"], m2.to_string());
}

/// Markers move forward only, `receipts` lists them, and other members see
/// `read` events: the first at once, then one a second with the latest.
/// Returns ann's marker.
async fn read_scenario(addrs: &[SocketAddr]) -> u64 {
    let at = |i: usize| addrs[i % addrs.len()];
    let mut ann = user_at(at(0), claims("ann")).await;
    let mut bob = user_at(at(1), claims("bob")).await;
    ann.join("r").await;
    refused(&mut bob, json!({"op":"read","room":"r","msg":"1"}), "forbidden").await;
    refused(&mut bob, json!({"op":"receipts","room":"r"}), "forbidden").await;
    bob.join("r").await;
    let m1 = ann.send_msg("r", json!(1)).await;
    let m2 = ann.send_msg("r", json!(2)).await;
    let m3 = ann.send_msg("r", json!(3)).await;
    ok(&mut ann, json!({"op":"read","room":"r","msg":m1.to_string()})).await;
    let first = bob.recv_matching(|v| v["op"] == "read").await;
    assert_eq!(first, json!({"op":"read","room":"r","user":"ann","msg":m1.to_string()}));
    // Within the second: coalesced, and the latest goes out after it.
    let sent = std::time::Instant::now();
    ok(&mut ann, json!({"op":"read","room":"r","msg":m2.to_string()})).await;
    ok(&mut ann, json!({"op":"read","room":"r","msg":m3.to_string()})).await;
    let next = bob.recv_matching(|v| v["op"] == "read").await;
    assert_eq!(next["msg"], m3.to_string(), "{next}");
    assert!(
        sent.elapsed() > std::time::Duration::from_millis(500),
        "held for its second"
    );
    // Never back.
    ok(&mut ann, json!({"op":"read","room":"r","msg":m2.to_string()})).await;
    ok(&mut bob, json!({"op":"read","room":"r","msg":m1.to_string()})).await;
    let far = (u64::MAX >> 1).to_string();
    refused(&mut bob, json!({"op":"read","room":"r","msg":far}), "bad_request").await;
    let r = bob.request(json!({"op":"receipts","room":"r"})).await;
    assert_eq!(r["op"], "receipts", "{r}");
    assert_eq!(r["read"], json!({"ann": m3.to_string(), "bob": m1.to_string()}));
    m3
}

/// Changes across a node kill: a reader on node A folds messages and
/// events live; A is killed (kill -9) while another user keeps sending,
/// editing, reacting and deleting through node B; the reader resumes on B
/// with `since` its last id. Its fold equals `history`'s view, with no
/// gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_fold_survives_a_node_kill() {
    let redis = RedisServer::start();
    let bus = vec!["--redis-url".to_string(), redis.url()];
    let mut cluster = processes(2, &bus, &["--jwt-secret", SECRET]);
    let (a, b) = (cluster.nodes[0].addr, cluster.nodes[1].addr);
    let mut reader = user_at(a, claims("reader")).await;
    reader.join("k").await;
    let mut writer = user_at(b, claims("writer")).await;
    writer.join("k").await;

    let mut fold = Fold::default();
    let mut last = 0u64;
    let seen = |fold: &mut Fold, e: &Value, last: &mut u64| {
        let id = msg_id(e);
        assert!(id > *last, "ascending, no duplicate: {e}");
        *last = id;
        fold.apply(e);
    };
    let is_entry = |v: &Value| ["msg", "edit", "delete", "react", "unreact"].contains(&v["op"].as_str().unwrap_or(""));
    // One round: a message, its edit, a reaction, and every third round a
    // deletion of the round's message.
    let round = async |writer: &mut Client, i: usize| {
        let m = writer.send_msg("k", json!({"i":i})).await.to_string();
        ok(writer, json!({"op":"edit","room":"k","msg":m,"body":{"i":i,"e":1}})).await;
        ok(
            writer,
            json!({"op":"react","room":"k","msg":m,"key":format!("k{}", i % 3)}),
        )
        .await;
        if i.is_multiple_of(3) {
            ok(writer, json!({"op":"delete","room":"k","msg":m})).await;
        }
    };
    for i in 0..10 {
        round(&mut writer, i).await;
    }
    // The reader takes in what it has been sent so far: 10 rounds.
    let mut entries = 0;
    while entries < 10 * 3 + 4 {
        let e = reader.recv_matching(is_entry).await;
        seen(&mut fold, &e, &mut last);
        entries += 1;
    }
    cluster.nodes[0].kill9();
    for i in 10..20 {
        round(&mut writer, i).await;
    }
    let mut reader = user_at(b, claims("reader")).await;
    let j = reader
        .request(json!({"op":"join","room":"k","since":last.to_string()}))
        .await;
    assert_eq!(j["recovered"], true, "{j}");
    let replayed: Vec<Value> = reader.backlog.drain(..).filter(|v| is_entry(v)).collect();
    assert!(!replayed.is_empty());
    for e in &replayed {
        seen(&mut fold, e, &mut last);
    }
    let page = history(&mut writer, "k").await;
    assert_eq!(page.len(), 20);
    let mut expected = Fold::default();
    for m in &page {
        expected.apply(m);
    }
    assert_eq!(fold, expected);
}
