//! (1.1) Read markers of a cluster without a store: one hash per room,
//! `{prefix}:reads:{room}`, user -> `<id, 20 digits>:<ms>`. The id is
//! zero-padded so the script compares it as text (Lua numbers lose
//! precision past 2^53); one script moves a marker only forward. With a
//! store, markers live there instead (durable, beside the history).

use super::conn::{Pool, redis_error};
use super::streams::StreamLayout;
use crate::BusError;

/// KEYS: the room's hash. ARGV: user, padded id, now (ms). 1 if moved.
const MOVE: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, 20) >= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
return 1
"#;

pub(crate) struct Reads {
    pub(crate) pool: Pool,
    pub(crate) layout: StreamLayout,
}

fn parse(v: &str) -> Option<(u64, u64)> {
    let (msg, at) = v.split_once(':')?;
    Some((msg.parse().ok()?, at.parse().ok()?))
}

impl Reads {
    pub(crate) async fn mark(&self, room: &str, user: &str, msg: u64, at: u64) -> Result<bool, BusError> {
        let mut conn = self.pool.get().await?;
        let moved: i64 = redis::cmd("EVAL")
            .arg(MOVE)
            .arg(1)
            .arg(self.layout.reads_key(room))
            .arg(user)
            .arg(format!("{msg:020}"))
            .arg(at)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("EVAL (read marker)", e))?;
        Ok(moved == 1)
    }

    pub(crate) async fn marker(&self, room: &str, user: &str) -> Result<Option<u64>, BusError> {
        let mut conn = self.pool.get().await?;
        let v: Option<String> = redis::cmd("HGET")
            .arg(self.layout.reads_key(room))
            .arg(user)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("HGET (read marker)", e))?;
        Ok(v.as_deref().and_then(parse).map(|(m, _)| m))
    }

    /// The room's markers, the `limit` most recently moved first.
    pub(crate) async fn markers(&self, room: &str, limit: usize) -> Result<Vec<(String, u64)>, BusError> {
        let mut conn = self.pool.get().await?;
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.layout.reads_key(room))
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("HGETALL (read markers)", e))?;
        let all = all
            .into_iter()
            .filter_map(|(user, v)| parse(&v).map(|(m, at)| (user, m, at)))
            .collect();
        Ok(storage::most_recent_markers(all, limit))
    }
}
