//! (1.1) What edits and reactions cost a history page: the newest page of
//! 50 from a room of 100,000 plain messages against one of 100,000
//! entries of which 90% are edits and reactions (10,000 messages), on the
//! embedded store. A page reads its messages and their state rows, never
//! the events, so the two should cost about the same (issue 12 asks for
//! at most 2x).
//!
//! `cargo bench -p benches --bench history_pages`; set
//! `CHAT_BENCH_CQL_NODES` to run the same against a CQL server, with rooms
//! of `CHAT_BENCH_CQL_ENTRIES` entries (default 10,000: filling them folds
//! one event at a time, with reads, which takes minutes at 100,000).

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use storage::{Change, ChangeKind, CqlConfig, CqlStore, EmbeddedStore, HistoryStore, Page, Replication, StoredMessage};

/// `n` plain messages.
fn plain(room: &str, n: u64) -> Vec<StoredMessage> {
    (1..=n)
        .map(|id| StoredMessage::new(room, id, format!("u{}", id % 50), id, format!("{{\"n\":{id}}}")))
        .collect()
}

/// `n` entries: every tenth a message, the other nine edits (one in
/// three by the author) and reactions (one user each, 5 keys, some
/// given back) on the last few messages.
fn busy(room: &str, n: u64) -> Vec<StoredMessage> {
    let mut out = Vec::with_capacity(n as usize);
    let mut last_msg = 0;
    for id in 1..=n {
        if id % 10 == 1 {
            last_msg = id;
            out.push(StoredMessage::new(
                room,
                id,
                format!("u{}", id % 50),
                id,
                format!("{{\"n\":{id}}}"),
            ));
            continue;
        }
        let target = last_msg.saturating_sub((id % 3) * 10).max(1);
        let author = format!("u{}", target % 50);
        let (from, kind, body) = match id % 10 {
            2 | 5 => (author, ChangeKind::Edit, format!("{{\"edit\":{id}}}")),
            9 => (
                format!("r{}", id % 97),
                ChangeKind::Unreact(format!("k{}", id % 5)),
                String::new(),
            ),
            _ => (
                format!("r{}", id % 97),
                ChangeKind::React(format!("k{}", id % 5)),
                String::new(),
            ),
        };
        out.push(StoredMessage {
            change: Some(Change { target, kind }),
            ..StoredMessage::new(room, id, from, id, body)
        });
    }
    out
}

async fn fill(store: &dyn HistoryStore, entries: Vec<StoredMessage>) {
    for chunk in entries.chunks(1000) {
        store.append(chunk.to_vec()).await.unwrap();
    }
}

fn pages(c: &mut Criterion, name: &str, store: &dyn HistoryStore, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group(format!("history_page/{name}"));
    g.measurement_time(Duration::from_secs(5));
    for room in ["plain", "busy"] {
        g.bench_function(format!("{room}/newest_50"), |b| {
            b.iter(|| black_box(rt.block_on(store.page(room, Page::Newest, 50)).unwrap()))
        });
    }
    g.finish();
}

fn embedded(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    rt.block_on(async {
        fill(&store, plain("plain", 100_000)).await;
        fill(&store, busy("busy", 100_000)).await;
        let page = store.page("busy", Page::Newest, 50).await.unwrap();
        assert!(page.iter().all(|m| m.change.is_none()), "messages only");
        assert!(
            page.iter()
                .any(|m| !m.state.reactions.is_empty() && m.state.edited.is_some())
        );
    });
    pages(c, "embedded", &store, &rt);
}

fn cql(c: &mut Criterion) {
    let Some(nodes) = std::env::var("CHAT_BENCH_CQL_NODES").ok().filter(|n| !n.is_empty()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(async {
        let store = CqlStore::connect(&CqlConfig {
            nodes: nodes.split(',').map(str::to_string).collect(),
            keyspace: format!("bench_pages_{}", std::process::id()),
            replication: Replication::Simple(1),
            bucket: Duration::from_secs(86_400),
        })
        .await
        .unwrap();
        let n = std::env::var("CHAT_BENCH_CQL_ENTRIES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        fill(&store, plain("plain", n)).await;
        fill(&store, busy("busy", n)).await;
        store
    });
    pages(c, "cql", &store, &rt);
}

criterion_group!(benches, embedded, cql);
criterion_main!(benches);
