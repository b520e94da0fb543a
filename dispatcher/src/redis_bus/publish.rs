//! Appending to the shard streams: `XADD` on one shared multiplexed
//! connection, so concurrent publishes pipeline on it, and one pipeline per
//! stream for a sender's batch. The id Redis gives an entry is the message
//! id (strictly increasing per stream, so every node sees one order).

use std::time::Duration;

use super::conn::redis_error;
use super::conn::{Conn, Target};
use super::streams::parse_entry_id;
use crate::BusError;

pub(crate) struct Publisher {
    target: Target,
    /// `Some(maxlen)`: trim on every append (no store behind the window);
    /// `None`: the trim task cuts only what the persister has stored.
    maxlen: Option<usize>,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl Publisher {
    /// Connects now, so a node that cannot publish does not start.
    pub(crate) async fn connect(target: Target, maxlen: Option<usize>) -> Result<Publisher, BusError> {
        let conn = target.connect(Duration::from_secs(5)).await?;
        Ok(Publisher {
            target,
            maxlen,
            conn: tokio::sync::Mutex::new(Some(conn)),
        })
    }

    async fn conn(&self) -> Result<Conn, BusError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.target.connect(Duration::from_secs(5)).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// After a failed command: reconnect on the next publish when the
    /// multiplexed connection may be dead.
    async fn failed(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            *self.conn.lock().await = None;
        }
    }

    fn xadd(&self, key: &str, fields: &[(&str, &str)]) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key);
        if let Some(maxlen) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd
    }

    /// Appends one entry; its id.
    pub(crate) async fn add(&self, key: &str, fields: &[(&str, &str)]) -> Result<u64, BusError> {
        let cmd = self.xadd(key, fields);
        let mut conn = self.conn().await?;
        match cmd.query_async::<String>(&mut conn).await {
            Ok(id) => parse_id(&id),
            Err(e) => {
                self.failed(&e).await;
                Err(redis_error("XADD", e))
            }
        }
    }

    /// Appends entries to one stream in one pipeline, in order; their ids.
    pub(crate) async fn add_all<'a>(
        &self,
        key: &str,
        entries: impl IntoIterator<Item = &'a [(&'a str, &'a str)]>,
    ) -> Result<Vec<u64>, BusError> {
        let mut pipe = redis::pipe();
        for fields in entries {
            pipe.add_command(self.xadd(key, fields));
        }
        let mut conn = self.conn().await?;
        match pipe.query_async::<Vec<String>>(&mut conn).await {
            Ok(ids) => ids.iter().map(|id| parse_id(id)).collect(),
            Err(e) => {
                self.failed(&e).await;
                Err(redis_error("XADD pipeline", e))
            }
        }
    }
}

fn parse_id(id: &str) -> Result<u64, BusError> {
    parse_entry_id(id).ok_or_else(|| redis_error("XADD", format!("unexpected entry id {id:?}")))
}
