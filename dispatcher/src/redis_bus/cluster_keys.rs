//! What every node (and standalone persister) settles with the cluster in
//! Redis before it reads or writes a stream: the hash key rooms are mapped
//! to streams with, and which keys the shard streams have (with the event
//! feed on they are the feed's). The first to start writes both; the
//! others take the hash key and must agree on the keys.

use redis::aio::ConnectionLike;

use super::conn::redis_error;
use super::streams::StreamLayout;
use crate::BusError;

/// Reads the cluster's hash key, writing a random one first if there is
/// none (the first node of a cluster to start).
pub(crate) async fn load_hash_key(conn: &mut impl ConnectionLike, layout: &StreamLayout) -> Result<String, BusError> {
    let name = layout.hash_key_name();
    let fresh = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    set_once(conn, &name, &fresh).await
}

/// (1.1) Checks that the cluster's shard streams have the keys `layout`
/// gives them (recording them if this is the first node): a node with the
/// feed on and one with it off would write to different streams, and
/// neither would see the other's messages.
pub async fn agree_stream_keys(conn: &mut impl ConnectionLike, layout: &StreamLayout) -> Result<(), BusError> {
    let name = layout.stream_keys_name();
    let mine = if layout.feed() { "feed" } else { "plain" };
    let cluster = set_once(conn, &name, mine).await?;
    if cluster == mine {
        return Ok(());
    }
    let (theirs, here) = match cluster.as_str() {
        "feed" => ("on", "off"),
        "plain" => ("off", "on"),
        other => return Err(BusError::Config(format!("{name} holds {other:?}, not feed or plain"))),
    };
    Err(BusError::Config(format!(
        "the event feed is {theirs} in this cluster ({name} = {cluster}) and {here} here: every node and persister \
         must set GATEWAY_FEED alike (switching it: docs/FEED.md)"
    )))
}

/// Sets `name` to `value` unless it is set, and returns what it holds.
async fn set_once(conn: &mut impl ConnectionLike, name: &str, value: &str) -> Result<String, BusError> {
    let _: Option<String> = redis::cmd("SET")
        .arg(name)
        .arg(value)
        .arg("NX")
        .query_async(conn)
        .await
        .map_err(|e| redis_error("SET NX", e))?;
    let held: Option<String> = redis::cmd("GET")
        .arg(name)
        .query_async(conn)
        .await
        .map_err(|e| redis_error("GET", e))?;
    held.ok_or_else(|| BusError::Unavailable(format!("redis: {name} vanished after it was set")))
}
