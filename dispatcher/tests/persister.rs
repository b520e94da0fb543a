//! The standalone persister against real Redis and a real CQL server:
//! killed with -9 in the middle of its work, another takes over its
//! pending entries, and every message is stored exactly once.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dispatcher::redis_bus::{RedisBus, RedisBusConfig, StreamLayout, Target};
use dispatcher::{Bus, Delivery, NewMessage, Sink};
use storage::{CqlConfig, CqlStore, HistoryStore, Page, Replication};
use testkit::{RedisServer, Wait, cql_nodes, fresh_keyspace, redis_command};

struct Ignore;
impl Sink for Ignore {
    fn deliver(&self, _: Vec<Delivery>) {}
}

/// A `dispatcher` process, killed and reaped when dropped.
struct Persister(Child);

impl Persister {
    fn kill9(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn dispatcher(redis: &RedisServer, keyspace: &str, consumer: &str) -> Persister {
    let child = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args([
            "--redis-url",
            &redis.url(),
            "--scylla-keyspace",
            keyspace,
            "--consumer",
            consumer,
        ])
        .args([
            "--stream-shards",
            "4",
            "--persister-batch",
            "50",
            "--persister-wait",
            "200ms",
            "--persister-claim-idle",
            "1s",
        ])
        .env("GATEWAY_SCYLLA_NODES", cql_nodes().join(","))
        .env_remove("GATEWAY_REDIS_CLUSTER_NODES")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Persister(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_persister_is_taken_over_without_loss_or_duplicates() {
    let redis = RedisServer::start();
    let ks = fresh_keyspace("persist");
    let cfg = RedisBusConfig {
        target: Target::Single(redis.url()),
        streams: StreamLayout::new("gw", 4),
        maxlen: 100_000,
        max_age: Duration::ZERO,
        max_bytes: 0,
        node_id: Some("test".into()),
        read_count: 100,
        block: Duration::from_secs(1),
        trim_every: Duration::from_secs(3600),
        node_ttl: Duration::from_secs(5),
        dedupe_window: Duration::from_secs(600),
    };
    let store = Arc::new(
        CqlStore::connect(&CqlConfig {
            nodes: cql_nodes(),
            keyspace: ks.clone(),
            replication: Replication::Simple(1),
            bucket: Duration::from_secs(86_400),
        })
        .await
        .unwrap(),
    );
    let bus = RedisBus::connect(cfg, Arc::new(Ignore), Some(store.clone()))
        .await
        .unwrap();
    let mut first = dispatcher(&redis, &ks, "first");
    // Publish while the first persister works, then kill it mid-stream.
    let rooms = ["p0", "p1", "p2", "p3", "p4", "p5"];
    let mut acked: Vec<(String, u64)> = Vec::new();
    for i in 0..3000 {
        let room = rooms[i % rooms.len()];
        let msg = NewMessage {
            room: room.into(),
            from: "u".into(),
            body: format!("{i}"),
            ephemeral: false,
            nonce: None,
            reply_to: None,
            change: None,
            moderator: false,
        };
        acked.push((room.to_string(), bus.publish(msg).await.unwrap().id));
        if i == 1500 {
            first.kill9(); // mid-batch
        }
    }
    // The killed consumer left entries read but not acknowledged: the
    // takeover below has real work.
    let left_pending: u64 = (0..4)
        .map(|s| {
            let reply = redis_command(
                redis.port,
                &[
                    "XPENDING",
                    &format!("gw:{{s{s}}}"),
                    "persister",
                    "-",
                    "+",
                    "1000",
                    "first",
                ],
            )
            .unwrap_or_default();
            reply.matches("first").count() as u64
        })
        .sum();
    assert!(left_pending > 0, "the first persister had nothing pending when killed");
    let _second = dispatcher(&redis, &ks, "second");
    Wait::new("every message stored after the takeover", Duration::from_secs(60))
        .every(Duration::from_millis(200))
        .until_async(async || {
            let mut missing = 0;
            for room in rooms {
                let stored: Vec<u64> = store
                    .page(room, Page::After(0), 10_000)
                    .await
                    .unwrap()
                    .iter()
                    .map(|m| m.id)
                    .collect();
                let want: Vec<u64> = acked.iter().filter(|(r, _)| r == room).map(|(_, id)| *id).collect();
                assert!(
                    stored.windows(2).all(|w| w[0] < w[1]),
                    "{room}: no duplicates, ascending"
                );
                assert!(
                    stored.iter().all(|id| want.contains(id)),
                    "{room}: nothing that was not sent"
                );
                missing += want.len() - stored.len();
            }
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} messages not stored"))
            }
        })
        .await;
    eprintln!(
        "persister kill -9: {} published, {left_pending} left pending by the killed one, all stored exactly once after takeover",
        acked.len()
    );
}
