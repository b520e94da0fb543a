//! [`Instrumented`]: any [`HistoryStore`] with its calls timed and its
//! failures counted, as the bus and the persister see them
//! (`gateway_storage_operation_duration_seconds{store,op}` and
//! `gateway_storage_errors_total{store,op}`). One wrapper for every store,
//! so the embedded and the CQL store are measured the same way; the
//! handles are resolved once, when the store is wrapped.

use std::time::Instant;

use async_trait::async_trait;
use metrics::{Counter, Histogram, counter, histogram};

use crate::metrics::{ERRORS, OP_DURATION};
use crate::{AppendReport, HistoryStore, Page, StorageError, StoredMessage};

/// The handles of one op of one store.
struct OpMetrics {
    seconds: Histogram,
    errors: Counter,
}

impl OpMetrics {
    fn new(store: &'static str, op: &'static str) -> OpMetrics {
        OpMetrics {
            seconds: histogram!(OP_DURATION, "store" => store, "op" => op),
            errors: counter!(ERRORS, "store" => store, "op" => op),
        }
    }

    fn record<T>(&self, started: Instant, result: &Result<T, StorageError>) {
        self.seconds.record(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors.increment(1);
        }
    }
}

/// A store whose calls are measured; it behaves exactly as the store inside.
pub struct Instrumented<S> {
    inner: S,
    write: OpMetrics,
    read: OpMetrics,
}

impl<S: HistoryStore> Instrumented<S> {
    /// Wraps `inner`; `store` names it in the metrics' `store` label
    /// (`cql` or `embedded`: a fixed set, never a room or a user).
    pub fn new(inner: S, store: &'static str) -> Instrumented<S> {
        Instrumented {
            inner,
            write: OpMetrics::new(store, "write"),
            read: OpMetrics::new(store, "read"),
        }
    }
}

#[async_trait]
impl<S: HistoryStore> HistoryStore for Instrumented<S> {
    async fn append(&self, messages: Vec<StoredMessage>) -> Result<AppendReport, StorageError> {
        let started = Instant::now();
        let r = self.inner.append(messages).await;
        self.write.record(started, &r);
        r
    }

    async fn page(&self, room: &str, page: Page, limit: usize) -> Result<Vec<StoredMessage>, StorageError> {
        let started = Instant::now();
        let r = self.inner.page(room, page, limit).await;
        self.read.record(started, &r);
        r
    }

    async fn last_id(&self, room: &str) -> Result<Option<u64>, StorageError> {
        let started = Instant::now();
        let r = self.inner.last_id(room).await;
        self.read.record(started, &r);
        r
    }

    async fn message(&self, room: &str, id: u64) -> Result<Option<StoredMessage>, StorageError> {
        let started = Instant::now();
        let r = self.inner.message(room, id).await;
        self.read.record(started, &r);
        r
    }

    async fn reactions_by(
        &self,
        room: &str,
        user: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        let started = Instant::now();
        let r = self.inner.reactions_by(room, user, from, to).await;
        self.read.record(started, &r);
        r
    }

    async fn entries_after(&self, room: &str, since: u64, limit: usize) -> Result<Vec<StoredMessage>, StorageError> {
        let started = Instant::now();
        let r = self.inner.entries_after(room, since, limit).await;
        self.read.record(started, &r);
        r
    }

    async fn mark_read(&self, room: &str, user: &str, msg: u64, at: u64) -> Result<bool, StorageError> {
        let started = Instant::now();
        let r = self.inner.mark_read(room, user, msg, at).await;
        self.write.record(started, &r);
        r
    }

    async fn read_marker(&self, room: &str, user: &str) -> Result<Option<u64>, StorageError> {
        let started = Instant::now();
        let r = self.inner.read_marker(room, user).await;
        self.read.record(started, &r);
        r
    }

    async fn read_markers(&self, room: &str, limit: usize) -> Result<Vec<(String, u64)>, StorageError> {
        let started = Instant::now();
        let r = self.inner.read_markers(room, limit).await;
        self.read.record(started, &r);
        r
    }

    async fn nonce(&self, hash: u128, now: u64) -> Result<Option<u64>, StorageError> {
        let started = Instant::now();
        let r = self.inner.nonce(hash, now).await;
        self.read.record(started, &r);
        r
    }

    fn nonce_key(&self) -> Option<(u64, u64)> {
        self.inner.nonce_key()
    }

    async fn set_ban(&self, room: &str, user: &str, until: u64) -> Result<(), StorageError> {
        let started = Instant::now();
        let r = self.inner.set_ban(room, user, until).await;
        self.write.record(started, &r);
        r
    }

    async fn ban(&self, room: &str, user: &str, now: u64) -> Result<Option<u64>, StorageError> {
        let started = Instant::now();
        let r = self.inner.ban(room, user, now).await;
        self.read.record(started, &r);
        r
    }

    async fn set_revoked(&self, user: &str, before: u64, keep_until: u64) -> Result<(), StorageError> {
        let started = Instant::now();
        let r = self.inner.set_revoked(user, before, keep_until).await;
        self.write.record(started, &r);
        r
    }

    async fn revoked(&self, user: &str, now: u64) -> Result<Option<u64>, StorageError> {
        let started = Instant::now();
        let r = self.inner.revoked(user, now).await;
        self.read.record(started, &r);
        r
    }
}
