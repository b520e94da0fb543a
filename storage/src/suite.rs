//! The conformance suite every [`HistoryStore`] passes. Each check uses its
//! own room names (prefixed by a per-run tag) so the suite can run against
//! a store that already holds data, such as a shared CQL server.

use std::ops::RangeInclusive;

use crate::{HistoryStore, Page, StoredMessage};

/// A message whose content is a function of `(room, id)`.
pub fn message(room: &str, id: u64) -> StoredMessage {
    StoredMessage {
        room: room.into(),
        id,
        from: format!("u{}", id % 7),
        ts: id / 1000,
        body: format!("{{\"n\":{id}}}"),
        reply_to: None,
    }
}

pub fn messages(room: &str, ids: RangeInclusive<u64>) -> Vec<StoredMessage> {
    ids.map(|id| message(room, id)).collect()
}

fn ids(page: &[StoredMessage]) -> Vec<u64> {
    page.iter().map(|m| m.id).collect()
}

/// Runs every check. Panics on the first failure.
pub async fn run_all(store: &dyn HistoryStore) {
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let room = |name: &str| format!("suite{tag}.{name}");
    empty_room(store, &room("empty")).await;
    ordering_and_paging(store, &room("paging"), &room("paging-neighbour")).await;
    idempotent_rewrites(store, &room("idem")).await;
    across_buckets(store, &room("buckets")).await;
    long_room(store, &room("long")).await;
    replies(store, &room("replies")).await;
}

/// (1.1) A message's `reply_to` is kept; messages without one read back
/// without one (including records written before 1.1).
pub async fn replies(store: &dyn HistoryStore, room: &str) {
    let mut batch = messages(room, 1..=3);
    batch[1].reply_to = Some(1);
    batch[2].reply_to = Some(u64::MAX >> 1);
    store.append(batch.clone()).await.unwrap();
    assert_eq!(store.page(room, Page::Newest, 10).await.unwrap(), batch);
}

pub async fn empty_room(store: &dyn HistoryStore, room: &str) {
    assert!(store.page(room, Page::Newest, 50).await.unwrap().is_empty());
    assert!(store.page(room, Page::Before(u64::MAX), 50).await.unwrap().is_empty());
    assert!(store.page(room, Page::After(0), 50).await.unwrap().is_empty());
    assert_eq!(store.last_id(room).await.unwrap(), None);
}

pub async fn ordering_and_paging(store: &dyn HistoryStore, room: &str, neighbour: &str) {
    // Appended out of order and interleaved with a room whose name extends
    // this one's: pages must still be this room's, ascending.
    let mut batch = messages(room, 1..=100);
    batch.reverse();
    batch.extend(messages(neighbour, 1..=10));
    store.append(batch).await.unwrap();

    assert_eq!(
        ids(&store.page(room, Page::Newest, 5).await.unwrap()),
        (96..=100).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&store.page(room, Page::Before(50), 3).await.unwrap()),
        vec![47, 48, 49]
    );
    assert_eq!(
        ids(&store.page(room, Page::After(50), 3).await.unwrap()),
        vec![51, 52, 53]
    );
    assert_eq!(ids(&store.page(room, Page::Before(3), 10).await.unwrap()), vec![1, 2]);
    assert_eq!(
        ids(&store.page(room, Page::After(98), 10).await.unwrap()),
        vec![99, 100]
    );
    assert!(store.page(room, Page::After(100), 10).await.unwrap().is_empty());
    assert!(store.page(room, Page::Before(1), 10).await.unwrap().is_empty());
    assert_eq!(store.last_id(room).await.unwrap(), Some(100));
    assert_eq!(store.page(room, Page::Newest, 1).await.unwrap()[0], message(room, 100));

    // Walking backwards page by page sees every message once.
    let mut seen = Vec::new();
    let mut cursor = Page::Newest;
    loop {
        let page = store.page(room, cursor, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        cursor = Page::Before(page[0].id);
        seen.splice(0..0, ids(&page));
    }
    assert_eq!(seen, (1..=100).collect::<Vec<_>>());
}

pub async fn idempotent_rewrites(store: &dyn HistoryStore, room: &str) {
    let first = store.append(messages(room, 1..=10)).await.unwrap();
    assert_eq!(first.written, 10);
    let again = store.append(messages(room, 5..=15)).await.unwrap();
    assert_eq!((again.written, again.duplicates), (5, 6));
    assert!(again.conflicts.is_empty());

    // The same id with other content is noticed, and the stored one kept.
    let mut forged = message(room, 3);
    forged.body = "\"other\"".into();
    let report = store.append(vec![forged]).await.unwrap();
    assert_eq!(report.conflicts, vec![(room.to_string(), 3)]);
    assert_eq!(report.written, 0);
    let page = store.page(room, Page::Newest, 100).await.unwrap();
    assert_eq!(page, messages(room, 1..=15));
}

pub async fn long_room(store: &dyn HistoryStore, room: &str) {
    const N: u64 = 20_000;
    for chunk in (1..=N).collect::<Vec<_>>().chunks(2_000) {
        store
            .append(messages(room, chunk[0]..=*chunk.last().unwrap()))
            .await
            .unwrap();
    }
    assert_eq!(
        ids(&store.page(room, Page::Newest, 500).await.unwrap()),
        (N - 499..=N).collect::<Vec<_>>()
    );
    assert_eq!(ids(&store.page(room, Page::After(0), 3).await.unwrap()), vec![1, 2, 3]);
    assert_eq!(
        ids(&store.page(room, Page::Before(10_001), 2).await.unwrap()),
        vec![9_999, 10_000]
    );
    assert_eq!(store.last_id(room).await.unwrap(), Some(N));
}

/// Messages days apart (so in different time buckets of a bucketed store),
/// with empty days between: every page direction crosses buckets.
pub async fn across_buckets(store: &dyn HistoryStore, room: &str) {
    const DAY: u64 = 86_400_000;
    let base = 1_700_000_000_000 / DAY * DAY;
    let mut ids = Vec::new();
    for day in [0u64, 1, 4, 5, 9] {
        for k in 0..3 {
            ids.push(((base + day * DAY + k * 1000) << 22) | k);
        }
    }
    let batch: Vec<StoredMessage> = ids.iter().map(|&id| message(room, id)).collect();
    store.append(batch).await.unwrap();
    assert_eq!(
        ids_of(&store.page(room, Page::Newest, 4).await.unwrap()),
        ids[11..].to_vec()
    );
    assert_eq!(
        ids_of(&store.page(room, Page::Before(ids[7]), 5).await.unwrap()),
        ids[2..7].to_vec()
    );
    assert_eq!(
        ids_of(&store.page(room, Page::After(ids[1]), 6).await.unwrap()),
        ids[2..8].to_vec()
    );
    assert_eq!(ids_of(&store.page(room, Page::After(0), 100).await.unwrap()), ids);
    assert_eq!(
        ids_of(&store.page(room, Page::Before(u64::MAX), 100).await.unwrap()),
        ids
    );
    assert!(store.page(room, Page::Before(ids[0]), 10).await.unwrap().is_empty());
    assert!(store.page(room, Page::After(ids[14]), 10).await.unwrap().is_empty());
    assert_eq!(store.last_id(room).await.unwrap(), Some(ids[14]));
}

fn ids_of(page: &[StoredMessage]) -> Vec<u64> {
    page.iter().map(|m| m.id).collect()
}
