//! Redis connections for the bus, the same on one server and on a Redis
//! Cluster: [`Target`] says which, [`Conn`] is one multiplexed connection
//! (dedicated, for blocking reads and the publish pipeline), [`Pool`] the
//! shared connections for ordinary commands.
//!
//! The pool hands out clones of a few multiplexed connections that
//! reconnect by themselves after a failed command, taken in turn:
//! concurrent commands pipeline on them, and taking one costs no round
//! trip, but for a `PING` when that connection was last checked more than
//! [`CHECK_IDLE`] ago or before any Redis command of the node last failed
//! (so the first command after Redis restarted does not fail on the old
//! socket). deadpool-redis, which this replaced, checked every connection
//! it handed out with `UNWATCH` and `PING`: a round trip per use, 40% of
//! the commands a churning node sent; without it a node churns 2.4 times
//! the connections a second and serves 1.5 to 2 times the history pages
//! (benches/RESULTS.md, "Redis connections without a check per use").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
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

/// A connection of the [`Pool`]: a clone of one of its shared ones.
pub enum Pooled {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

delegate_connection_like!(Pooled, Single, Cluster);

/// A shared connection of the pool is checked with `PING` before use when
/// its last check is older than this.
const CHECK_IDLE: Duration = Duration::from_secs(1);

/// Redis commands of this process that failed (see [`redis_error`]): a
/// pooled connection checked before the latest failure is checked again.
static FAILURES: AtomicUsize = AtomicUsize::new(0);

/// One shared connection to one server, and when it last answered a check
/// (and [`FAILURES`] then).
struct Shared {
    conn: ConnectionManager,
    checked: parking_lot::Mutex<Option<(std::time::Instant, usize)>>,
}

/// Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct Pool(Shards);

#[derive(Clone)]
enum Shards {
    /// Connections to one server, each reconnecting after a failure.
    Single {
        conns: Arc<[Shared]>,
        next: Arc<AtomicUsize>,
    },
    /// One cluster connection (it keeps one multiplexed connection per
    /// node, and reconnects by itself), made at first use.
    Cluster {
        client: Arc<ClusterClient>,
        conn: Arc<tokio::sync::OnceCell<ClusterConnection>>,
    },
}

/// A failed Redis command or connection, as the bus reports it.
pub(crate) fn redis_error(what: &str, e: impl std::fmt::Display) -> BusError {
    FAILURES.fetch_add(1, Ordering::Relaxed);
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

    /// `size` shared connections to one server (one cluster connection on
    /// a cluster); none is made before it is first used. Never block on
    /// them: on one server commands time out after redis-rs's default
    /// 500 ms; the cluster connection keeps redis-rs's cluster defaults, as
    /// deadpool-redis's cluster pool did.
    pub fn pool(&self, size: usize) -> Result<Pool, BusError> {
        match self {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| redis_error(url, e))?;
                // One connection attempt per failure: while Redis is away a
                // command fails at once, and the next one tries again.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1);
                let conns = (0..size.max(1))
                    .map(|_| {
                        ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).map(|conn| Shared {
                            conn,
                            checked: parking_lot::Mutex::new(None),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| redis_error(url, e))?;
                Ok(Pool(Shards::Single {
                    conns: conns.into(),
                    next: Arc::default(),
                }))
            }
            Target::Cluster(urls) => {
                let client = ClusterClient::builder(urls.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .build()
                    .map_err(|e| redis_error("cluster", e))?;
                Ok(Pool(Shards::Cluster {
                    client: Arc::new(client),
                    conn: Arc::default(),
                }))
            }
        }
    }
}

impl Pool {
    pub async fn get(&self) -> Result<Pooled, BusError> {
        match &self.0 {
            Shards::Single { conns, next } => {
                let shared = &conns[next.fetch_add(1, Ordering::Relaxed) % conns.len()];
                let mut conn = shared.conn.clone();
                let failures = FAILURES.load(Ordering::Relaxed);
                let stale = shared
                    .checked
                    .lock()
                    .is_none_or(|(at, seen)| at.elapsed() > CHECK_IDLE || seen != failures);
                if stale {
                    // A failed PING makes the manager reconnect: the second
                    // one goes over the new connection.
                    let mut answer = redis::cmd("PING").query_async::<String>(&mut conn).await;
                    if answer.is_err() {
                        answer = redis::cmd("PING").query_async::<String>(&mut conn).await;
                    }
                    answer.map_err(|e| redis_error("PING", e))?;
                    *shared.checked.lock() = Some((std::time::Instant::now(), failures));
                }
                Ok(Pooled::Single(conn))
            }
            Shards::Cluster { client, conn } => conn
                .get_or_try_init(|| client.get_async_connection())
                .await
                .map(|c| Pooled::Cluster(c.clone()))
                .map_err(|e| redis_error("cluster", e)),
        }
    }
}
