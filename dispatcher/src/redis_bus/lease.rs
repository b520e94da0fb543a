//! Node ids and liveness: each node holds a heartbeat key
//! (`{prefix}:node:{id}`, a random token, a TTL). It is the node's id
//! lease (ids not given by configuration are leased as `gw-0`, `gw-1`,
//! ...), and presence counts a node's users only while it lives.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionLike;

use super::conn::redis_error;
use super::streams::StreamLayout;
use crate::BusError;

/// Leased ids are `gw-0` .. `gw-4095`.
const MAX_LEASED: u32 = 4096;

pub(crate) struct NodeLease {
    pub(crate) node_id: String,
    key: String,
    /// This process's value of the key, so it refreshes only its own.
    token: String,
    ttl_ms: u64,
    /// Extend if ours, take back if free, else report the clash.
    refresh_script: Script,
}

impl NodeLease {
    /// Takes the configured id (warning when another live node heartbeats
    /// with it), or leases the first free `gw-N`.
    pub(crate) async fn acquire(
        conn: &mut impl ConnectionLike,
        layout: &StreamLayout,
        configured: Option<&str>,
        ttl: Duration,
    ) -> Result<NodeLease, BusError> {
        let token = format!("{:016x}", rand::random::<u64>());
        let ttl_ms = ttl.as_millis() as u64;
        let lease = |node_id: String| NodeLease {
            key: layout.node_key(&node_id),
            node_id,
            token: token.clone(),
            ttl_ms,
            refresh_script: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
                 elseif redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 else return 0 end",
            ),
        };
        if let Some(id) = configured {
            let key = layout.node_key(id);
            let taken: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(conn)
                .await
                .map_err(|e| redis_error("GET", e))?;
            if taken.is_some() {
                tracing::warn!(node = %id, "another live node heartbeats with this node id; ids must be unique");
            }
            redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(conn)
                .await
                .map_err(|e| redis_error("SET", e))?;
            return Ok(lease(id.to_string()));
        }
        for n in 0..MAX_LEASED {
            let id = format!("gw-{n}");
            let ok: Option<String> = redis::cmd("SET")
                .arg(layout.node_key(&id))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(conn)
                .await
                .map_err(|e| redis_error("SET NX", e))?;
            if ok.is_some() {
                tracing::info!(node = %id, "leased node id");
                return Ok(lease(id));
            }
        }
        Err(BusError::Unavailable(format!(
            "no free node id among gw-0..gw-{}",
            MAX_LEASED - 1
        )))
    }

    /// This process's name in per-node records (`node|token`): a restarted
    /// node under the same id is a new incarnation, so what the old one
    /// recorded stops counting once its lease is gone.
    pub(crate) fn incarnation(&self) -> String {
        format!("{}|{}", self.node_id, self.token)
    }

    /// Extends the lease (or takes it back after it expired); false when
    /// another process holds this id now.
    pub(crate) async fn refresh(&self, conn: &mut impl ConnectionLike) -> Result<bool, BusError> {
        let r: i64 = self
            .refresh_script
            .key(&self.key)
            .arg(&self.token)
            .arg(self.ttl_ms)
            .invoke_async(conn)
            .await
            .map_err(|e| redis_error("heartbeat", e))?;
        Ok(r != 0)
    }

    /// Leaves at once (presence, the id) instead of waiting for the TTL.
    pub(crate) async fn release(&self, conn: &mut impl ConnectionLike) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(&self.key).query_async(conn).await;
    }
}
