//! Presence across the cluster: per-room sets of `node|user`. A member
//! counts while its node's heartbeat key lives (see [`super::lease`]), so
//! a dead node's users disappear within the heartbeat's TTL; a read that
//! finds a dead node's entries removes them for everyone.

use std::collections::HashMap;

use super::conn::Pool;
use super::conn::redis_error;
use super::streams::StreamLayout;
use crate::BusError;

pub(crate) struct Presence {
    pub(crate) pool: Pool,
    pub(crate) layout: StreamLayout,
    pub(crate) node_id: String,
}

impl Presence {
    /// A user's presence in a room on this node began or ended.
    pub(crate) async fn set(&self, room: &str, user: &str, present: bool) -> Result<(), BusError> {
        let mut conn = self.pool.get().await?;
        let member = format!("{}|{user}", self.node_id);
        let cmd = if present { "SADD" } else { "SREM" };
        redis::cmd(cmd)
            .arg(self.layout.presence_key(room))
            .arg(member)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| redis_error(cmd, e))?;
        Ok(())
    }

    /// The users present in `room` on live nodes, sorted, each once.
    pub(crate) async fn members(&self, room: &str) -> Result<Vec<String>, BusError> {
        let key = self.layout.presence_key(room);
        let mut conn = self.pool.get().await?;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("SMEMBERS", e))?;
        let mut alive: HashMap<&str, bool> = HashMap::new();
        let mut users = Vec::new();
        let mut dead = Vec::new();
        for m in &members {
            let Some((node, user)) = m.split_once('|') else {
                continue;
            };
            let live = match alive.get(node) {
                Some(&l) => l,
                None => {
                    let l: bool = redis::cmd("EXISTS")
                        .arg(self.layout.node_key(node))
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| redis_error("EXISTS", e))?;
                    alive.insert(node, l);
                    l
                }
            };
            if live {
                users.push(user.to_string());
            } else {
                dead.push(m.clone());
            }
        }
        if !dead.is_empty() {
            // A dead node's entries: drop them for everyone.
            let _: Result<i64, _> = redis::cmd("SREM").arg(&key).arg(&dead).query_async(&mut conn).await;
        }
        users.sort();
        users.dedup();
        Ok(users)
    }
}
