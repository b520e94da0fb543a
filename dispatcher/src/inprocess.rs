//! The in-process bus: one node, no Redis.
//!
//! One sequencer task takes every publish in arrival order, in batches. For
//! each batch it mints ids (per room, strictly ascending: `protocol::id`),
//! writes the stored messages to the history store in one durable append,
//! then hands the batch to the sink and answers the publishers. So a message
//! is delivered and acknowledged only after it is durable, and every room's
//! deliveries are in id order.
//!
//! (1.1) Edits, deletions and reactions are judged ([`crate::changes`])
//! in the sequencer, against the store's state of their target and the
//! events before them in the batch, so two racing ones are judged in
//! order; the store folds the ones that pass into the target's state in
//! the same commit that stores them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use storage::HistoryStore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::changes::{Refusal, Target};
use crate::dedupe::{Recent, nonce_hash};
use crate::{
    Bus, BusError, Change, Control, Delivery, EventKind, NewMessage, Page, Published, Replay, Sink, StoredMessage,
};

/// Publishes the sequencer folds into one store append.
const MAX_BATCH: usize = 1024;
/// Rooms whose last id the sequencer remembers before it starts over (it
/// reads a forgotten room's last id back from the store).
const MAX_CACHED_ROOMS: usize = 100_000;

type Reply = oneshot::Sender<Result<Published, BusError>>;

pub struct InProcessBus {
    store: Arc<dyn HistoryStore>,
    sink: Arc<dyn Sink>,
    tx: Mutex<Option<mpsc::Sender<(NewMessage, Reply)>>>,
    sequencer: Mutex<Option<JoinHandle<()>>>,
}

impl InProcessBus {
    pub fn new(store: Arc<dyn HistoryStore>, sink: Arc<dyn Sink>) -> Self {
        Self::with_dedupe_window(store, sink, crate::dedupe::DEFAULT_WINDOW)
    }

    /// A bus whose send nonces are remembered for `window`.
    pub fn with_dedupe_window(store: Arc<dyn HistoryStore>, sink: Arc<dyn Sink>, window: Duration) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 8);
        let seq = Sequencer {
            store: store.clone(),
            sink: sink.clone(),
            last: HashMap::new(),
            forgotten_floor: 0,
            nonces: Recent::new(window),
            // The store's key when it keeps nonces (so a restart still
            // knows them), else one of this process's own.
            nonce_key: store.nonce_key().unwrap_or_else(|| (rand::random(), rand::random())),
            window,
        };
        let handle = tokio::spawn(seq.run(rx));
        // Nothing outside the process to lose: ready while it runs.
        crate::metrics::get().ready.set(1.0);
        InProcessBus {
            store,
            sink,
            tx: Mutex::new(Some(tx)),
            sequencer: Mutex::new(Some(handle)),
        }
    }
}

struct Sequencer {
    store: Arc<dyn HistoryStore>,
    sink: Arc<dyn Sink>,
    last: HashMap<Arc<str>, u64>,
    /// The highest id issued when `last` was last cleared: a forgotten
    /// room's next id stays above it, even if its newest id was ephemeral
    /// (never stored).
    forgotten_floor: u64,
    /// Send nonces of the dedupe window, in memory; the store keeps them
    /// too when it can (the embedded one), for after a restart.
    nonces: Recent,
    nonce_key: (u64, u64),
    window: Duration,
}

impl Sequencer {
    async fn run(mut self, mut rx: mpsc::Receiver<(NewMessage, Reply)>) {
        let m = crate::metrics::get();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let started = Instant::now();
            m.batch_messages.record(batch.len() as f64);
            self.process(std::mem::take(&mut batch)).await;
            let took = started.elapsed().as_secs_f64();
            m.sequence_seconds.record(took);
            // A publish's round trip here is its sequencer batch.
            m.publish_seconds.record(took);
        }
    }

    async fn last_id(&mut self, room: &Arc<str>) -> Result<u64, BusError> {
        if let Some(&id) = self.last.get(room) {
            return Ok(id);
        }
        if self.last.len() >= MAX_CACHED_ROOMS {
            self.forgotten_floor = self.last.values().copied().max().unwrap_or(0).max(self.forgotten_floor);
            self.last.clear();
        }
        let id = self.store.last_id(room).await?.unwrap_or(0).max(self.forgotten_floor);
        self.last.insert(room.clone(), id);
        Ok(id)
    }

    /// Judges an event against its target as the store and this batch
    /// have it (loading the target, and the user's hold on a reaction key,
    /// the first time the batch needs them).
    async fn judge(
        &self,
        targets: &mut HashMap<(Arc<str>, u64), Option<Target>>,
        msg: &NewMessage,
        change: &Change,
    ) -> Result<(), BusError> {
        let slot = (msg.room.clone(), change.target);
        if !targets.contains_key(&slot) {
            let found = self.store.message(&msg.room, change.target).await?;
            targets.insert(slot.clone(), found.as_ref().map(Target::new));
        }
        let Some(target) = targets.get_mut(&slot).and_then(Option::as_mut) else {
            return Err(BusError::Refused(Refusal::NotFound));
        };
        if let Some(key) = change.kind.key()
            && !target.knows(&msg.from, key)
        {
            let held = self
                .store
                .reactions_by(&msg.room, &msg.from, change.target, change.target)
                .await?
                .iter()
                .any(|(_, k)| k == key);
            target.set_held(&msg.from, key, held);
        }
        target
            .check(&change.kind, &msg.from, msg.moderator)
            .map_err(BusError::Refused)
    }

    async fn process(&mut self, batch: Vec<(NewMessage, Reply)>) {
        let m = crate::metrics::get();
        let now = protocol::id::now_ms();
        let mut minted = Vec::with_capacity(batch.len());
        let mut targets = HashMap::new();
        // Nonces first seen in this batch: a repeat within it is answered
        // once the first is durable.
        let mut fresh: HashMap<u128, u64> = HashMap::new();
        let mut repeats = Vec::new();
        let clock = Instant::now();
        for (msg, reply) in batch {
            let nonce = match (&msg.nonce, msg.ephemeral) {
                (Some(n), false) => Some(nonce_hash(self.nonce_key, &msg.from, &msg.room, n)),
                _ => None,
            };
            if let Some(n) = nonce {
                let mut seen = self.nonces.get(n, clock).or_else(|| fresh.get(&n).copied());
                if seen.is_none() {
                    // Not in memory: sent before this process started?
                    match self.store.nonce(n, now).await {
                        Ok(id) => seen = id,
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                            continue;
                        }
                    }
                }
                if let Some(id) = seen {
                    repeats.push((reply, id));
                    continue;
                }
            }
            if let Some(change) = &msg.change
                && let Err(e) = self.judge(&mut targets, &msg, change).await
            {
                let _ = reply.send(Err(e));
                continue;
            }
            match self.last_id(&msg.room).await {
                Ok(last) => {
                    let id = protocol::id::next_after(last, now);
                    self.last.insert(msg.room.clone(), id);
                    if let Some(n) = nonce {
                        fresh.insert(n, id);
                    }
                    let stored = StoredMessage {
                        room: msg.room.to_string(),
                        id,
                        from: msg.from.to_string(),
                        ts: now,
                        body: msg.body,
                        reply_to: msg.reply_to,
                        change: msg.change,
                        nonce: nonce.map(|n| (n, now + self.window.as_millis() as u64)),
                        ..Default::default()
                    };
                    minted.push((Arc::new(stored), msg.ephemeral, reply));
                }
                Err(e) => {
                    m.publish_failures.increment(1);
                    let _ = reply.send(Err(e));
                }
            }
        }
        let durable: Vec<StoredMessage> = minted
            .iter()
            .filter(|(_, eph, _)| !eph)
            .map(|(s, _, _)| (**s).clone())
            .collect();
        let appended = match self.store.append(durable).await {
            // One sequencer mints every id, so a conflict means the store was
            // written by someone else: refuse rather than acknowledge it.
            Ok(report) if !report.conflicts.is_empty() => Err(storage::StorageError::IdConflicts(report.conflicts)),
            other => other,
        };
        if let Err(e) = appended {
            // Not durable: nobody gets it and nobody is told it was sent.
            tracing::error!(error = %e, "history append failed; publishes refused");
            m.publish_failures.increment(minted.len() as u64);
            for (_, _, reply) in minted {
                let _ = reply.send(Err(BusError::Unavailable(e.to_string())));
            }
            for (reply, _) in repeats {
                let _ = reply.send(Err(BusError::Unavailable(e.to_string())));
            }
            return;
        }
        for (n, id) in fresh {
            self.nonces.insert(n, id, clock);
        }
        m.published.increment(minted.len() as u64);
        let mut deliveries = Vec::with_capacity(minted.len());
        let mut replies = Vec::with_capacity(minted.len());
        for (msg, ephemeral, reply) in minted {
            replies.push((
                reply,
                Published {
                    id: msg.id,
                    ts: msg.ts,
                    duplicate: false,
                },
            ));
            deliveries.push(Delivery::Message { msg, ephemeral });
        }
        self.sink.deliver(deliveries);
        for (reply, published) in replies {
            let _ = reply.send(Ok(published));
        }
        for (reply, id) in repeats {
            let _ = reply.send(Ok(Published {
                id,
                ts: protocol::id::millis(id),
                duplicate: true,
            }));
        }
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, msg: NewMessage) -> Result<Published, BusError> {
        let tx = self.tx.lock().clone().ok_or(BusError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send((msg, reply)).await.map_err(|_| BusError::Closed)?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    async fn publish_batch(&self, msgs: Vec<NewMessage>) -> Vec<Result<Published, BusError>> {
        // Queue them all in order first, so one sequencer batch takes them.
        let Some(tx) = self.tx.lock().clone() else {
            return msgs.iter().map(|_| Err(BusError::Closed)).collect();
        };
        let mut waits = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let (reply, rx) = oneshot::channel();
            waits.push(match tx.send((msg, reply)).await {
                Ok(()) => Some(rx),
                Err(_) => None,
            });
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(match w {
                Some(rx) => rx.await.unwrap_or(Err(BusError::Closed)),
                None => Err(BusError::Closed),
            });
        }
        out
    }

    async fn publish_event(
        &self,
        room: Arc<str>,
        kind: EventKind,
        user: Arc<str>,
        origin: Option<u64>,
    ) -> Result<(), BusError> {
        self.sink.deliver(vec![Delivery::Event {
            room,
            kind,
            user,
            origin,
        }]);
        Ok(())
    }

    async fn replay(&self, room: &str, since: u64, limit: usize) -> Result<Replay, BusError> {
        let started = Instant::now();
        let read = self.store.entries_after(room, since, limit.saturating_add(1)).await;
        crate::metrics::get().replay.record(started, &read);
        let mut messages = read?;
        let complete = messages.len() <= limit;
        messages.truncate(limit);
        Ok(Replay { messages, complete })
    }

    async fn history(
        &self,
        room: &str,
        page: Page,
        limit: usize,
        viewer: Option<&str>,
    ) -> Result<Vec<StoredMessage>, BusError> {
        let started = Instant::now();
        let read = self.store.page(room, page, limit).await;
        crate::metrics::get().history.record(started, &read);
        let mut page = read?;
        if let Some(viewer) = viewer {
            crate::changes::mark_mine(Some(&*self.store), room, viewer, &mut page).await?;
        }
        Ok(page)
    }

    async fn mark_read(&self, room: &str, user: &str, msg: u64) -> Result<bool, BusError> {
        Ok(self.store.mark_read(room, user, msg, protocol::id::now_ms()).await?)
    }

    async fn read_marker(&self, room: &str, user: &str) -> Result<Option<u64>, BusError> {
        Ok(self.store.read_marker(room, user).await?)
    }

    async fn read_markers(&self, room: &str, limit: usize) -> Result<Vec<(String, u64)>, BusError> {
        Ok(self.store.read_markers(room, limit).await?)
    }

    async fn control(&self, action: Control) -> Result<(), BusError> {
        match &action {
            Control::Kick {
                room,
                user,
                ban_until: Some(until),
            } => self.store.set_ban(room, user, *until).await?,
            Control::Revoke {
                user,
                before,
                keep_until,
            } => self.store.set_revoked(user, *before, *keep_until).await?,
            _ => {}
        }
        self.sink.control(&action);
        Ok(())
    }

    async fn ban(&self, room: &str, user: &str) -> Result<Option<u64>, BusError> {
        Ok(self.store.ban(room, user, protocol::id::now_ms()).await?)
    }

    async fn revoked(&self, user: &str) -> Result<Option<u64>, BusError> {
        Ok(self.store.revoked(user, protocol::id::now_ms()).await?)
    }

    fn is_ready(&self) -> bool {
        self.tx.lock().is_some()
    }

    async fn close(&self) {
        drop(self.tx.lock().take());
        let handle = self.sequencer.lock().take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::EmbeddedStore;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Delivery>>);
    impl Sink for Collect {
        fn deliver(&self, batch: Vec<Delivery>) {
            self.0.lock().extend(batch);
        }
    }

    fn msg(room: &str, body: &str, ephemeral: bool) -> NewMessage {
        NewMessage {
            room: room.into(),
            from: "u1".into(),
            body: body.into(),
            ephemeral,
            nonce: None,
            reply_to: None,
            change: None,
            moderator: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishes_get_ascending_ids_in_delivery_order_and_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn HistoryStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let sink = Arc::new(Collect::default());
        let bus = Arc::new(InProcessBus::new(store.clone(), sink.clone()));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let bus = bus.clone();
                tokio::spawn(async move {
                    bus.publish(msg(if i % 2 == 0 { "a" } else { "b" }, &i.to_string(), i % 10 == 0))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let delivered = sink.0.lock().clone();
        assert_eq!(delivered.len(), 200);
        for room in ["a", "b"] {
            let ids: Vec<u64> = delivered
                .iter()
                .filter_map(|d| match d {
                    Delivery::Message { msg, .. } if &*msg.room == room => Some(msg.id),
                    _ => None,
                })
                .collect();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "room {room} delivered out of order"
            );
        }
        // Ephemeral messages (every tenth) are not stored.
        let stored = store.page("a", Page::Newest, 500).await.unwrap().len()
            + store.page("b", Page::Newest, 500).await.unwrap().len();
        assert_eq!(stored, 180);
        bus.close().await;
        assert!(matches!(bus.publish(msg("a", "1", false)).await, Err(BusError::Closed)));
    }

    #[tokio::test]
    async fn ids_continue_above_the_stored_ones_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn HistoryStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        // A stored id from the future: the bus must not mint below it.
        let future_id = protocol::id::pack(protocol::id::now_ms() + 60_000, 5);
        store
            .append(vec![StoredMessage {
                room: "r".into(),
                id: future_id,
                from: "x".into(),
                ts: 0,
                body: "1".into(),
                reply_to: None,
                ..Default::default()
            }])
            .await
            .unwrap();
        let bus = InProcessBus::new(store.clone(), Arc::new(Collect::default()));
        let p = bus.publish(msg("r", "2", false)).await.unwrap();
        assert_eq!(p.id, future_id + 1);

        let replay = bus.replay("r", 0, 1).await.unwrap();
        assert!(!replay.complete);
        let replay = bus.replay("r", future_id, 10).await.unwrap();
        assert!(replay.complete);
        assert_eq!(replay.messages.iter().map(|m| m.id).collect::<Vec<_>>(), vec![p.id]);
    }
}
