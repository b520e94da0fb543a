//! The conformance suite every [`HistoryStore`] passes. Each check uses its
//! own room names (prefixed by a per-run tag) so the suite can run against
//! a store that already holds data, such as a shared CQL server.

use std::ops::RangeInclusive;

use crate::{Change, ChangeKind, HistoryStore, Page, StoredMessage};

/// A message whose content is a function of `(room, id)`.
pub fn message(room: &str, id: u64) -> StoredMessage {
    StoredMessage {
        room: room.into(),
        id,
        from: format!("u{}", id % 7),
        ts: id / 1000,
        body: format!("{{\"n\":{id}}}"),
        reply_to: None,
        ..Default::default()
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
    events_fold_into_history(store, &room("events")).await;
    read_markers(store, &room("reads")).await;
}

/// An event entry (1.1) by `from` on `target`.
pub fn event(room: &str, id: u64, from: &str, target: u64, kind: ChangeKind) -> StoredMessage {
    let body = if kind == ChangeKind::Edit {
        format!("{{\"edit\":{id}}}")
    } else {
        String::new()
    };
    StoredMessage {
        change: Some(Change { target, kind }),
        ..StoredMessage::new(room, id, from, id / 1000, body)
    }
}

/// (1.1) Edits, deletions and reactions: history shows messages in their
/// current state and never the events; replay gives both, in order;
/// a redelivered batch changes nothing.
pub async fn events_fold_into_history(store: &dyn HistoryStore, room: &str) {
    let react = |k: &str| ChangeKind::React(k.into());
    let mut batch = messages(room, 1..=5);
    batch.extend([
        event(room, 10, "u2", 2, ChangeKind::Edit),
        event(room, 11, "u3", 3, ChangeKind::Delete),
        event(room, 12, "a", 4, react("👍")),
        event(room, 13, "b", 4, react("👍")),
        event(room, 14, "a", 4, react("❤")),
        // Held already: nothing changes.
        event(room, 15, "a", 4, react("👍")),
        event(room, 16, "b", 4, ChangeKind::Unreact("👍".into())),
        // Not held: nothing changes.
        event(room, 17, "c", 4, ChangeKind::Unreact("❤".into())),
        event(room, 18, "a", 3, react("x")),
    ]);
    let first = store.append(batch.clone()).await.unwrap();
    assert_eq!((first.written, first.duplicates), (batch.len(), 0));

    let check = |page: Vec<StoredMessage>| {
        assert_eq!(ids(&page), vec![1, 2, 3, 4, 5], "history has messages only");
        assert_eq!(page[1].body, "{\"edit\":10}");
        assert_eq!(page[1].state.edited, Some(0));
        assert!(page[2].state.deleted && page[2].body.is_empty(), "{:?}", page[2]);
        assert!(page[2].state.reactions.is_empty(), "no reactions on a deleted message");
        let counts: Vec<(&str, u32)> = page[3]
            .state
            .reactions
            .iter()
            .map(|r| (r.key.as_str(), r.count))
            .collect();
        assert_eq!(counts, vec![("❤", 1), ("👍", 1)]);
        assert!(page[0].state.is_plain() && page[4].state.is_plain());
        assert_eq!(page[0], message(room, 1));
    };
    check(store.page(room, Page::Newest, 50).await.unwrap());
    assert_eq!(ids(&store.page(room, Page::Before(4), 2).await.unwrap()), vec![2, 3]);
    assert_eq!(
        store.reactions_by(room, "a", 1, 5).await.unwrap(),
        vec![(4, "❤".to_string()), (4, "👍".to_string())]
    );
    assert!(store.reactions_by(room, "a", 5, 9).await.unwrap().is_empty());
    assert!(store.reactions_by(room, "b", 1, 5).await.unwrap().is_empty());
    let three = store.message(room, 3).await.unwrap().unwrap();
    assert!(three.state.deleted);
    assert_eq!(store.message(room, 2).await.unwrap().unwrap().body, "{\"edit\":10}");
    assert_eq!(
        store.message(room, 12).await.unwrap(),
        None,
        "an event is not a message"
    );
    assert_eq!(store.message(room, 99).await.unwrap(), None);
    assert_eq!(store.last_id(room).await.unwrap(), Some(18));

    let replay = store.entries_after(room, 0, 100).await.unwrap();
    assert_eq!(ids(&replay), vec![1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17, 18]);
    assert!(replay[3].state.reactions.is_empty(), "react events carry the reactions");
    assert_eq!(replay[5], batch[5], "events as stored");
    assert_eq!(replay[13], batch[13]);
    assert_eq!(ids(&store.entries_after(room, 3, 4).await.unwrap()), vec![4, 5, 10, 11]);
    assert_eq!(
        ids(&store.entries_after(room, 14, 10).await.unwrap()),
        vec![15, 16, 17, 18]
    );

    // Redelivered: duplicates, and the state is as it was.
    let again = store.append(batch.clone()).await.unwrap();
    assert_eq!((again.written, again.duplicates), (0, batch.len()));
    check(store.page(room, Page::Newest, 50).await.unwrap());
}

/// (1.1) Read markers move forward only; the most recently moved first.
pub async fn read_markers(store: &dyn HistoryStore, room: &str) {
    assert_eq!(store.read_marker(room, "a").await.unwrap(), None);
    assert!(store.mark_read(room, "a", 5, 100).await.unwrap());
    assert!(!store.mark_read(room, "a", 3, 101).await.unwrap(), "never back");
    assert!(
        !store.mark_read(room, "a", 5, 102).await.unwrap(),
        "same place: not moved"
    );
    assert_eq!(store.read_marker(room, "a").await.unwrap(), Some(5));
    assert!(store.mark_read(room, "b", 2, 103).await.unwrap());
    assert_eq!(
        store.read_markers(room, 10).await.unwrap(),
        vec![("b".to_string(), 2), ("a".to_string(), 5)]
    );
    assert_eq!(store.read_markers(room, 1).await.unwrap(), vec![("b".to_string(), 2)]);
    assert!(store.mark_read(room, "a", u64::MAX, 104).await.unwrap());
    assert_eq!(store.read_marker(room, "a").await.unwrap(), Some(u64::MAX));
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
