//! History paging against the embedded store, over generated rooms: paging
//! a room backwards from the newest page with `Page::Before`, or forwards
//! from the start with `Page::After`, in pages of any sizes, visits every
//! message of the room exactly once, in order, and nothing of the rooms
//! beside it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use storage::{EmbeddedStore, HistoryStore, Page, StoredMessage};

/// Content that is a function of `(room, id)`, so a page can be checked
/// message by message.
fn message(room: &str, id: u64) -> StoredMessage {
    StoredMessage {
        room: room.into(),
        id,
        from: format!("u{}", id % 5),
        ts: id >> 22,
        body: format!("{{\"room\":\"{room}\",\"n\":\"{id}\"}}"),
        reply_to: None,
        ..Default::default()
    }
}

/// Ids of one room: clustered (as minted, one millisecond after another),
/// spread over all of `u64`, and at its ends. Paging forwards starts with
/// `After(0)` (exclusive), as a client's does, so ids start at 1; real ids
/// are `ms << 22 | seq`, never near 0.
fn ids() -> impl Strategy<Value = BTreeSet<u64>> {
    prop::collection::btree_set(
        prop_oneof![
            3 => 1u64..200,
            2 => any::<u64>().prop_map(|n| n.max(1)),
            1 => Just(1u64),
            1 => Just(u64::MAX),
            1 => (u64::MAX - 100)..=u64::MAX,
        ],
        0..150,
    )
}

/// One store for all the cases of a test; each case uses rooms of its own.
struct Fixture {
    rt: tokio::runtime::Runtime,
    store: EmbeddedStore,
    _dir: tempfile::TempDir,
    case: AtomicU64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            rt,
            store,
            _dir: dir,
            case: AtomicU64::new(0),
        }
    }

    /// Stores `ids` in a new room, and `neighbours` in rooms whose names
    /// extend it or that it extends (keys share a prefix), all in one
    /// shuffled batch; returns the room.
    fn room_with(&self, ids: &BTreeSet<u64>, neighbours: &BTreeSet<u64>, seed: u64) -> String {
        let n = self.case.fetch_add(1, Ordering::Relaxed);
        let room = format!("r{n}.x");
        let mut batch: Vec<StoredMessage> = ids.iter().map(|&id| message(&room, id)).collect();
        for other in [
            format!("r{n}."),
            format!("r{n}.x:"),
            format!("r{n}.x-1"),
            format!("r{n}.w"),
        ] {
            batch.extend(neighbours.iter().map(|&id| message(&other, id)));
        }
        // Any order within the batch (a deterministic shuffle from the seed).
        let len = batch.len() as u64;
        if len > 1 {
            for i in (1..len).rev() {
                let j = seed.wrapping_mul(6364136223846793005).wrapping_add(i) % (i + 1);
                batch.swap(i as usize, j as usize);
            }
        }
        self.rt.block_on(self.store.append(batch)).unwrap();
        room
    }

    fn page(&self, room: &str, page: Page, limit: usize) -> Vec<StoredMessage> {
        self.rt.block_on(self.store.page(room, page, limit)).unwrap()
    }
}

/// Checks one page: ascending, at most `limit`, each message as stored.
fn check_page(room: &str, page: &[StoredMessage], limit: usize) -> Result<(), TestCaseError> {
    prop_assert!(page.len() <= limit);
    prop_assert!(page.windows(2).all(|w| w[0].id < w[1].id), "page not ascending");
    for m in page {
        prop_assert_eq!(m, &message(room, m.id));
    }
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: 64,
        // A failure prints its input; proptest's seed file is not kept.
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// Messages of other rooms stored beside the one paged.
fn neighbours() -> impl Strategy<Value = BTreeSet<u64>> {
    prop::collection::btree_set(any::<u64>(), 0..20)
}

/// Page sizes, used in turn.
fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=25, 1..10)
}

#[test]
fn paging_backwards_visits_every_message_once_in_order() {
    let f = Fixture::new();
    let inputs = (ids(), neighbours(), sizes(), any::<u64>());
    runner()
        .run(&inputs, |(ids, neighbours, sizes, seed)| {
            let room = f.room_with(&ids, &neighbours, seed);
            let want: Vec<u64> = ids.iter().copied().collect();
            let mut seen: Vec<u64> = Vec::new();
            let mut cursor = Page::Newest;
            for i in 0.. {
                let limit = sizes[i % sizes.len()];
                let page = f.page(&room, cursor, limit);
                check_page(&room, &page, limit)?;
                // The newest of what is older than all seen so far: a page
                // is full unless it reaches the room's oldest message.
                let older = want.len() - seen.len();
                prop_assert_eq!(page.len(), limit.min(older), "page {} of {}", i, room);
                let Some(first) = page.first() else { break };
                if let Some(&oldest_seen) = seen.first() {
                    prop_assert!(page[page.len() - 1].id < oldest_seen);
                }
                cursor = Page::Before(first.id);
                seen.splice(0..0, page.iter().map(|m| m.id));
            }
            prop_assert_eq!(seen, want);
            Ok(())
        })
        .unwrap();
}

#[test]
fn paging_forwards_visits_every_message_once_in_order() {
    let f = Fixture::new();
    let inputs = (ids(), neighbours(), sizes(), any::<u64>());
    runner()
        .run(&inputs, |(ids, neighbours, sizes, seed)| {
            let room = f.room_with(&ids, &neighbours, seed);
            let want: Vec<u64> = ids.iter().copied().collect();
            let mut seen: Vec<u64> = Vec::new();
            let mut cursor = Page::After(0);
            for i in 0.. {
                let limit = sizes[i % sizes.len()];
                let page = f.page(&room, cursor, limit);
                check_page(&room, &page, limit)?;
                let newer = want.len() - seen.len();
                prop_assert_eq!(page.len(), limit.min(newer), "page {} of {}", i, room);
                let Some(last) = page.last() else { break };
                if let Some(&newest_seen) = seen.last() {
                    prop_assert!(page[0].id > newest_seen);
                }
                cursor = Page::After(last.id);
                seen.extend(page.iter().map(|m| m.id));
            }
            prop_assert_eq!(seen, want);
            Ok(())
        })
        .unwrap();
}

#[test]
fn newest_is_the_last_page_and_last_id_the_newest() {
    let f = Fixture::new();
    let inputs = (ids(), neighbours(), 1usize..=40, any::<u64>());
    runner()
        .run(&inputs, |(ids, neighbours, limit, seed)| {
            let room = f.room_with(&ids, &neighbours, seed);
            let want: Vec<u64> = ids.iter().copied().collect();
            let newest: Vec<u64> = f.page(&room, Page::Newest, limit).iter().map(|m| m.id).collect();
            prop_assert_eq!(&newest[..], &want[want.len().saturating_sub(limit)..]);
            let last = f.rt.block_on(f.store.last_id(&room)).unwrap();
            prop_assert_eq!(last, want.last().copied());
            Ok(())
        })
        .unwrap();
}
