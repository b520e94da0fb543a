//! Per-user limits over the whole cluster, through real Redis (one server
//! and a three-master Redis Cluster) and real gateway processes: a user's
//! connections on every node count against one cap, places come back when
//! connections end and when a node is killed (-9), and a user's send rate
//! is shared by all their connections on all nodes.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;
use testkit::{GatewayProcess, RedisCluster, RedisServer, Wait, redis_command};

/// Two gateway processes on one bus, with `extra` flags.
fn two_nodes(bus: &[String], extra: &[&str]) -> Processes {
    let mut args = vec!["--jwt-secret", SECRET, "--presence-ttl", "2s"];
    args.extend_from_slice(extra);
    processes(2, bus, &args)
}

/// A connection of `user` on `node` that authenticated, or the refusal.
async fn connect_as(node: &GatewayProcess, user: &str) -> Result<Client, serde_json::Value> {
    let mut c = Client::connect(&node.url(), None).await;
    let r = c.request(json!({"op":"auth","token":token(valid_claims(user))})).await;
    if r["op"] == "ok" { Ok(c) } else { Err(r) }
}

/// Connects `user` to `node` and expects the per-user refusal.
async fn refused(node: &GatewayProcess, user: &str) {
    let mut c = Client::connect(&node.url(), None).await;
    let r = c.request(json!({"op":"auth","token":token(valid_claims(user))})).await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    assert_eq!(r["message"], "too many connections for this user", "{r}");
    assert_eq!(c.until_closed().await.0, Ended::Close(4029));
}

async fn user_cap_spans_the_cluster(bus: Vec<String>) {
    let mut cluster = two_nodes(&bus, &["--max-connections-per-user", "3"]);
    let nodes = &mut cluster.nodes;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = vec![
        connect_as(a, "alice").await.unwrap(),
        connect_as(a, "alice").await.unwrap(),
    ];
    let _b1 = connect_as(b, "alice").await.unwrap();
    // Three in all: the fourth is refused on either node.
    refused(b, "alice").await;
    refused(a, "alice").await;
    // Another user has places of their own.
    let _bob = connect_as(b, "bob").await.unwrap();

    // A connection that ends on A gives its place back to the cluster.
    let mut gone = on_a.pop().unwrap();
    gone.ws.close(None).await.unwrap();
    let _ = gone.until_closed().await;
    let _b2 = Wait::new("alice's place freed on A, taken on B", WAIT)
        .every(Duration::from_millis(50))
        .until_async(async || connect_as(b, "alice").await.map_err(|r| r.to_string()))
        .await;
    refused(b, "alice").await;

    // A killed node's connections stop counting once its lease expires.
    nodes[0].kill9();
    let b = &nodes[1];
    let _b3 = Wait::new("alice's place on the killed node A freed", WAIT)
        .every(Duration::from_millis(200))
        .until_async(async || connect_as(b, "alice").await.map_err(|r| r.to_string()))
        .await;
    refused(b, "alice").await;
    drop(on_a);
}

#[tokio::test]
async fn user_cap_spans_a_single_redis_cluster() {
    let redis = RedisServer::start();
    user_cap_spans_the_cluster(vec!["--redis-url".into(), redis.url()]).await;
}

#[tokio::test]
async fn user_cap_spans_a_redis_cluster() {
    let redis = RedisCluster::start(3);
    user_cap_spans_the_cluster(vec!["--redis-cluster-nodes".into(), redis.urls().join(",")]).await;
}

#[tokio::test]
async fn node_scope_counts_each_node_alone() {
    let redis = RedisServer::start();
    let bus = vec!["--redis-url".into(), redis.url()];
    let cluster = two_nodes(&bus, &["--max-connections-per-user", "1", "--user-limit-scope", "node"]);
    let nodes = &cluster.nodes;
    let _a = connect_as(&nodes[0], "alice").await.unwrap();
    let _b = connect_as(&nodes[1], "alice").await.unwrap();
    refused(&nodes[1], "alice").await;
}

fn window_and_offset() -> (u64, u64) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    (secs / 10, secs % 10)
}

/// The cluster's count of sends in the current window, as Redis holds it
/// (the test's only user).
fn cluster_sends(port: u16, window: u64) -> u64 {
    // Raw RESP replies: the key and the number are lines of their own.
    let keys = redis_command(port, &["KEYS", &format!("gw:user:*:sends:{window}")]).unwrap_or_default();
    let Some(key) = keys.lines().find(|l| l.starts_with("gw:user:")) else {
        return 0;
    };
    let value = redis_command(port, &["GET", key]).unwrap_or_default();
    value.lines().find_map(|l| l.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn user_send_rate_is_shared_by_every_node() {
    let redis = RedisServer::start();
    let bus = vec!["--redis-url".into(), redis.url()];
    // 1 message/s: 10 per 10-second window, for all of alice's connections.
    let cluster = two_nodes(&bus, &["--user-send-rate", "1", "--rate-limit-grace", "60s"]);
    let nodes = &cluster.nodes;
    let mut a = connect_as(&nodes[0], "alice").await.unwrap();
    let mut b = connect_as(&nodes[1], "alice").await.unwrap();
    a.join("r").await;
    b.join("r").await;
    // Start early in a window, so the whole exchange (a few hundred ms)
    // stays in it.
    let (window, _) = Wait::new("the start of a 10-second window", Duration::from_secs(11))
        .every(Duration::from_millis(20))
        .until(|| {
            let (w, offset) = window_and_offset();
            if offset < 5 {
                Ok((w, offset))
            } else {
                Err(format!("{offset} s into it"))
            }
        });
    let send = async |c: &mut Client| c.request(json!({"op":"send","room":"r","body":{"n":1}})).await;
    for _ in 0..6 {
        assert_eq!(send(&mut a).await["op"], "ok");
    }
    Wait::new("A's six sends in Redis", WAIT).until(|| match cluster_sends(redis.port, window) {
        6 => Ok(()),
        n => Err(format!("{n}")),
    });
    assert_eq!(send(&mut b).await["op"], "ok", "B has not heard of A's sends yet");
    Wait::new("B's send added to A's", WAIT).until(|| match cluster_sends(redis.port, window) {
        7 => Ok(()),
        n => Err(format!("{n}")),
    });
    // B now knows of 7: three more fit, then B refuses. (A send that
    // races B's reading of the total may slip through: the overshoot a
    // node may take before its sync lands.)
    let mut more = 0;
    loop {
        let r = send(&mut b).await;
        if r["op"] != "ok" {
            assert_eq!(r["code"], "rate_limited", "{r}");
            break;
        }
        more += 1;
        assert!(more <= 5, "B took {more} more after the cluster had 7 of 10");
    }
    assert!(more >= 3, "B refused at {} of 10", 7 + more);
    // A hears of B's sends at its next sync after a send of its own: what
    // it takes before then is the overshoot the limit allows.
    let mut extra = 0;
    loop {
        let r = send(&mut a).await;
        if r["op"] != "ok" {
            assert_eq!(r["code"], "rate_limited", "{r}");
            break;
        }
        extra += 1;
        assert!(extra <= 4, "A took {extra} past the cluster's budget");
    }
    let total = 7 + more + extra;
    assert!((10..=14).contains(&total), "the cluster let {total} of 10 through");
    Wait::new("every accepted send counted in Redis", WAIT).until(|| match cluster_sends(redis.port, window) {
        n if n == total => Ok(()),
        n => Err(format!("{n} of {total}")),
    });
    assert_eq!(
        window_and_offset().0,
        window,
        "the exchange crossed a window: too slow to conclude"
    );
}
