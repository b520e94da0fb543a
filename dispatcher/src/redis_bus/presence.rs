//! Presence and room counts across the cluster: per room, a hash of
//! `node|user` -> that user's connections in the room on that node. A
//! member counts while its node's heartbeat key lives (see
//! [`super::lease`]), so a dead node's users disappear within the
//! heartbeat's TTL; a read that finds a dead node's entries removes them
//! for everyone.

use std::collections::{BTreeMap, HashMap};

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
    /// A user's connections in a room on this node are now `connections`.
    pub(crate) async fn set(&self, room: &str, user: &str, connections: u32) -> Result<(), BusError> {
        let mut conn = self.pool.get().await?;
        let field = format!("{}|{user}", self.node_id);
        let key = self.layout.members_key(room);
        let mut cmd = redis::cmd(if connections == 0 { "HDEL" } else { "HSET" });
        cmd.arg(&key).arg(field);
        if connections > 0 {
            cmd.arg(connections);
        }
        cmd.query_async::<i64>(&mut conn)
            .await
            .map_err(|e| redis_error("HSET members", e))?;
        Ok(())
    }

    /// Each user in `room` on live nodes, sorted, with their connections in
    /// it over all of them.
    pub(crate) async fn members(&self, room: &str) -> Result<Vec<(String, u32)>, BusError> {
        let key = self.layout.members_key(room);
        let mut conn = self.pool.get().await?;
        let entries: HashMap<String, u32> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("HGETALL members", e))?;
        let mut alive: HashMap<&str, bool> = HashMap::new();
        let mut users: BTreeMap<&str, u32> = BTreeMap::new();
        let mut dead = Vec::new();
        for (field, &count) in &entries {
            let Some((node, user)) = field.split_once('|') else {
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
                *users.entry(user).or_default() += count;
            } else {
                dead.push(field.as_str());
            }
        }
        if !dead.is_empty() {
            // A dead node's entries: drop them for everyone.
            let _: Result<i64, _> = redis::cmd("HDEL").arg(&key).arg(&dead).query_async(&mut conn).await;
        }
        Ok(users.into_iter().map(|(u, n)| (u.to_string(), n)).collect())
    }
}
