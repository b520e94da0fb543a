//! Per-user counts over the whole cluster, for the gateway's per-user
//! limits: the connections a user holds on all nodes, and the messages
//! they sent in the current window. Each node records only its own share;
//! a connection share counts while the node incarnation that wrote it
//! lives (its lease, see `lease`), so a node that dies takes its users'
//! places with it, as presence does.
//!
//! Connections: `{prefix}:user:{hash}:conns` is a hash of `node|token` ->
//! connections there. Taking a place is one round trip on one key
//! (`HINCRBY`, `PEXPIRE`, `HGETALL` pipelined): if the live shares now sum
//! past the limit, the place is given back and refused. Two nodes taking
//! the last place at once may both refuse; neither admits past the limit.
//! Places are given back in batches by a background task, off the
//! connection's path. The key lives [`CONNS_TTL`] past its user's last
//! connect or disconnect, so a user whose connections all outlive that is
//! under-counted (the limit errs towards admitting).
//!
//! Sends: each node adds its users' local counts to
//! `{prefix}:user:{hash}:sends:{window}` (`INCRBY`, `PEXPIRE`) and reads
//! back the cluster's total; the gateway decides what to refuse.
//!
//! Commands are sent one key at a time on a Redis Cluster (a pipeline there
//! must stay in one slot) and pipelined on one server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Cmd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{Pool, Pooled, redis_error};
use super::streams::StreamLayout;
use crate::BusError;

/// A user's connection record outlives their last connect or disconnect
/// by this much.
pub const CONNS_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a node's liveness, once read, is believed.
const LIVENESS_TTL: Duration = Duration::from_secs(2);

/// Places given back in one batch at most.
const GIVE_BACK_BATCH: usize = 256;

/// Decrements a share and removes it at zero, so a record holds only
/// incarnations with connections (and never a negative count).
const GIVE_BACK: &str = "local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1) \
     if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end \
     redis.call('PEXPIRE', KEYS[1], ARGV[2]) return n";

/// This node's handle on the cluster's per-user counts.
pub struct UserCounts {
    pool: Pool,
    layout: StreamLayout,
    /// This node's field: `node|token`.
    me: String,
    give_back: mpsc::UnboundedSender<u64>,
    /// `node|token` -> (alive, when read).
    liveness: Mutex<HashMap<String, (bool, Instant)>>,
}

impl UserCounts {
    pub(crate) fn start(
        pool: Pool,
        layout: StreamLayout,
        me: String,
        closed: CancellationToken,
        tasks: &TaskTracker,
    ) -> std::sync::Arc<UserCounts> {
        let (tx, rx) = mpsc::unbounded_channel();
        let counts = std::sync::Arc::new(UserCounts {
            pool,
            layout,
            me,
            give_back: tx,
            liveness: Mutex::new(HashMap::new()),
        });
        tasks.spawn(give_back_task(counts.clone(), rx, closed));
        counts
    }

    /// The cluster-wide key of `user` (a keyed hash, the same on every
    /// node).
    pub fn user_hash(&self, user: &str) -> u64 {
        self.layout.user_hash(user)
    }

    /// Takes a place for one more connection of `user`: `Ok(false)` when
    /// their connections on live nodes would pass `limit`.
    pub async fn take(&self, user: u64, limit: u32) -> Result<bool, BusError> {
        let key = self.layout.user_connections_key(user);
        let mut conn = self.pool.get().await?;
        // Once the increment is sent, any failure gives the place back (if
        // it never reached Redis, the give-back removes nothing), so an
        // error never leaves a place taken without a connection holding it.
        let total = match self.count_with_one_more(&mut conn, &key).await {
            Ok(total) => total,
            Err(e) => {
                self.give_back(user);
                return Err(e);
            }
        };
        if total > i64::from(limit) {
            self.give_back(user);
            return Ok(false);
        }
        Ok(true)
    }

    /// Adds one to this node's share of `key` and sums the live shares.
    async fn count_with_one_more(&self, conn: &mut Pooled, key: &str) -> Result<i64, BusError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HINCRBY")
            .arg(key)
            .arg(&self.me)
            .arg(1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(key)
            .arg(CONNS_TTL.as_millis() as u64)
            .ignore()
            .cmd("HGETALL")
            .arg(key);
        let (shares,): (HashMap<String, i64>,) = pipe
            .query_async(conn)
            .await
            .map_err(|e| redis_error("HGETALL user connections", e))?;
        let mut total = 0i64;
        let mut dead = Vec::new();
        for (field, n) in &shares {
            if field == &self.me || self.alive(conn, field).await? {
                total += n.max(&0);
            } else {
                dead.push(field.as_str());
            }
        }
        if !dead.is_empty() {
            // A dead incarnation's share: drop it for everyone.
            let _: Result<i64, _> = redis::cmd("HDEL").arg(key).arg(&dead).query_async(conn).await;
        }
        Ok(total)
    }

    /// Gives a place back (a connection of `user` ended), soon and in a
    /// batch.
    pub fn give_back(&self, user: u64) {
        // Closed only when the bus is: the node's lease goes with it, and
        // every share of this incarnation stops counting.
        let _ = self.give_back.send(user);
    }

    /// Adds this node's sends per user in window number `window` (each
    /// window `window_len` long) and returns the cluster's totals, in the
    /// order given.
    pub async fn add_sends(
        &self,
        window: u64,
        window_len: Duration,
        counts: &[(u64, u32)],
    ) -> Result<Vec<u64>, BusError> {
        // The record outlives its window by one more, for late adders.
        let ttl = 2 * window_len.as_millis() as u64;
        let mut conn = self.pool.get().await?;
        let add = |pipe: &mut redis::Pipeline, user: u64, n: u32| {
            let key = self.layout.user_sends_key(user, window);
            pipe.cmd("INCRBY")
                .arg(&key)
                .arg(n)
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore();
        };
        let mut totals = Vec::with_capacity(counts.len());
        if matches!(conn, Pooled::Cluster(_)) {
            for &(user, n) in counts {
                let mut pipe = redis::pipe();
                add(&mut pipe, user, n);
                let (t,): (u64,) = pipe
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| redis_error("INCRBY user sends", e))?;
                totals.push(t);
            }
        } else {
            let mut pipe = redis::pipe();
            for &(user, n) in counts {
                add(&mut pipe, user, n);
            }
            totals = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error("INCRBY user sends", e))?;
        }
        Ok(totals)
    }

    /// Whether `field`'s incarnation holds its node's lease, read at most
    /// every [`LIVENESS_TTL`] per incarnation.
    async fn alive(&self, conn: &mut Pooled, field: &str) -> Result<bool, BusError> {
        if let Some(&(alive, at)) = self.liveness.lock().get(field)
            && at.elapsed() < LIVENESS_TTL
        {
            return Ok(alive);
        }
        let Some((node, token)) = field.split_once('|') else {
            return Ok(false);
        };
        let held: Option<String> = redis::cmd("GET")
            .arg(self.layout.node_key(node))
            .query_async(conn)
            .await
            .map_err(|e| redis_error("GET node lease", e))?;
        let alive = held.as_deref() == Some(token);
        let mut liveness = self.liveness.lock();
        // Bounded by the incarnations seen lately: forget the stale.
        if liveness.len() > 4096 {
            liveness.retain(|_, (_, at)| at.elapsed() < LIVENESS_TTL);
        }
        liveness.insert(field.to_string(), (alive, Instant::now()));
        Ok(alive)
    }

    fn give_back_cmd(&self, user: u64) -> Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GIVE_BACK)
            .arg(1)
            .arg(self.layout.user_connections_key(user))
            .arg(&self.me)
            .arg(CONNS_TTL.as_millis() as u64);
        cmd
    }

    async fn give_back_batch(&self, users: &[u64]) -> Result<(), BusError> {
        let mut conn = self.pool.get().await?;
        if matches!(conn, Pooled::Cluster(_)) {
            for &user in users {
                self.give_back_cmd(user)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| redis_error("give back a user connection", e))?;
            }
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &user in users {
            pipe.add_command(self.give_back_cmd(user)).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error("give back user connections", e))
    }
}

/// Gives places back in batches until the bus closes. A batch that fails
/// is retried a few times; after that its places stay taken until this
/// incarnation's lease ends (the limit errs towards refusing, for a while,
/// only users whose connections ended during a Redis outage).
async fn give_back_task(
    counts: std::sync::Arc<UserCounts>,
    mut rx: mpsc::UnboundedReceiver<u64>,
    closed: CancellationToken,
) {
    let mut batch = Vec::with_capacity(GIVE_BACK_BATCH);
    loop {
        batch.clear();
        let n = tokio::select! {
            _ = closed.cancelled() => return,
            n = rx.recv_many(&mut batch, GIVE_BACK_BATCH) => n,
        };
        if n == 0 {
            return;
        }
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        for attempt in 1..=5 {
            match counts.give_back_batch(&batch).await {
                Ok(()) => break,
                Err(e) if attempt == 5 => {
                    tracing::warn!(error = %e, users = batch.len(), "giving user connection places back failed");
                }
                Err(_) => {
                    tokio::select! {
                        _ = closed.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }
}
