//! Redis connections for the bus, the same on one server and on a Redis
//! Cluster: [`Target`] says which, [`Conn`] is one multiplexed connection
//! (dedicated, for blocking reads and the publish pipeline), [`Pool`] is the
//! deadpool of connections for ordinary commands.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

use crate::BusError;

/// Where Redis is.
#[derive(Debug, Clone)]
pub enum Target {
    /// One server: `redis://host:port[/db]`.
    Single(String),
    /// A Redis Cluster, given by some of its nodes' URLs.
    Cluster(Vec<String>),
}

pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Clone for Conn {
    fn clone(&self) -> Self {
        match self {
            Conn::Single(c) => Conn::Single(c.clone()),
            Conn::Cluster(c) => Conn::Cluster(c.clone()),
        }
    }
}

/// Forwards `ConnectionLike` to whichever connection an enum holds.
macro_rules! delegate_connection_like {
    ($ty:ty, $($variant:ident),+) => {
        impl ConnectionLike for $ty {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self { $(Self::$variant(c) => c.req_packed_command(cmd),)+ }
            }
            fn req_packed_commands<'a>(&'a mut self, p: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
                match self { $(Self::$variant(c) => c.req_packed_commands(p, offset, count),)+ }
            }
            fn get_db(&self) -> i64 {
                match self { $(Self::$variant(c) => c.get_db(),)+ }
            }
        }
    };
}

delegate_connection_like!(Conn, Single, Cluster);

pub enum Pooled {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

delegate_connection_like!(Pooled, Single, Cluster);

/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A failed Redis command or connection, as the bus reports it.
pub(crate) fn redis_error(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("redis {what}: {e}"))
}

impl Target {
    /// A dedicated connection whose replies may take up to
    /// `response_timeout` (blocking reads need more than redis-rs's 500 ms
    /// default: DEPENDENCIES.md trap 5).
    pub async fn connect(&self, response_timeout: Duration) -> Result<Conn, BusError> {
        let connect_timeout = Duration::from_secs(2);
        match self {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| redis_error(url, e))?;
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(connect_timeout));
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| redis_error(url, e))?;
                Ok(Conn::Single(conn))
            }
            Target::Cluster(urls) => {
                let client = ClusterClient::builder(urls.clone())
                    .response_timeout(response_timeout)
                    .connection_timeout(connect_timeout)
                    .build()
                    .map_err(|e| redis_error("cluster", e))?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| redis_error("cluster", e))?;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    pub fn pool(&self, size: usize) -> Result<Pool, BusError> {
        let runtime = Some(deadpool_redis::Runtime::Tokio1);
        match self {
            Target::Single(url) => {
                let mut cfg = deadpool_redis::Config::from_url(url.clone());
                cfg.pool = Some(deadpool_redis::PoolConfig::new(size));
                Ok(Pool::Single(cfg.create_pool(runtime).map_err(|e| redis_error(url, e))?))
            }
            Target::Cluster(urls) => {
                let mut cfg = deadpool_redis::cluster::Config::from_urls(urls.clone());
                cfg.pool = Some(deadpool_redis::PoolConfig::new(size));
                Ok(Pool::Cluster(
                    cfg.create_pool(runtime).map_err(|e| redis_error("cluster", e))?,
                ))
            }
        }
    }
}

impl Pool {
    pub async fn get(&self) -> Result<Pooled, BusError> {
        match self {
            Pool::Single(p) => p.get().await.map(Pooled::Single).map_err(|e| redis_error("pool", e)),
            Pool::Cluster(p) => p
                .get()
                .await
                .map(Pooled::Cluster)
                .map_err(|e| redis_error("cluster pool", e)),
        }
    }
}
