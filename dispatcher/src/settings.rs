//! The settings both binaries share, and how every setting is loaded.
//!
//! Each setting is a `--flag`, a `GATEWAY_*` environment variable, and a
//! key of the optional TOML file given by `--config`, in that order of
//! precedence ([`load`]). The cluster's settings ([`ClusterArgs`]: Redis,
//! the shard streams, the CQL store, the persister) and logging
//! ([`LogArgs`]) are declared once here and flattened into the gateway's
//! `Config` and the `dispatcher` binary's, so both accept the same names
//! and validate them the same way. A bad setting is a [`SettingsError`]
//! naming it; the binaries exit with [`EXIT_CONFIG`] (64) on one.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use storage::{CqlConfig, Replication};

use crate::persister::PersisterConfig;
use crate::redis_bus::{RedisBusConfig, StreamLayout, Target};

/// The exit status for bad configuration (BSD `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// From clap; `help` for `--help`/`--version`, which are not errors.
    #[error("{message}")]
    Cli { message: String, help: bool },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("{setting}: {message}")]
    Invalid { setting: &'static str, message: String },
}

/// A bad value of `setting`.
pub fn invalid(setting: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        message: message.into(),
    }
}

/// Parses flags and environment into `C`, then fills what they leave unset
/// from the TOML file named by `C`'s `config` argument (keys are the flag
/// names, with `_` or `-`). Unknown keys in the file are errors.
pub fn load<C, I, T>(args: I) -> Result<C, SettingsError>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = C::command().try_get_matches_from(&args).map_err(cli_error)?;
    let file = first.try_get_one::<PathBuf>("config").ok().flatten().cloned();
    let mut cmd = C::command();
    if let Some(path) = file {
        let shown = path.display().to_string();
        let file_error = |message: String| SettingsError::File {
            path: shown.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(e.to_string()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
        let known: Vec<String> = cmd.get_arguments().map(|a| a.get_id().to_string()).collect();
        for (key, value) in table {
            let id = key.replace('-', "_");
            if !known.contains(&id) || id == "config" || id == "check_config" {
                return Err(file_error(format!("unknown setting {key:?}")));
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            // The file's value becomes the default: flags and env still win.
            cmd = cmd.mut_arg(id, |a| a.default_value(text));
        }
    }
    let matches = cmd.try_get_matches_from(&args).map_err(cli_error)?;
    C::from_arg_matches(&matches).map_err(cli_error)
}

fn cli_error(e: clap::Error) -> SettingsError {
    use clap::error::ErrorKind;
    let help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    SettingsError::Cli {
        message: e.render().to_string(),
        help,
    }
}

/// Where the cluster's shared state lives: Redis and its shard streams,
/// the CQL history store, and how the persister drains one into the other.
/// Every node and dispatcher of a cluster must agree on these.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// One Redis server for the cluster bus (`redis://host:port`). Unset
    /// (and no cluster nodes): the in-process bus of a single node.
    #[arg(long, env = "GATEWAY_REDIS_URL")]
    pub redis_url: Option<String>,

    /// A Redis Cluster instead: some of its nodes (comma-separated URLs).
    #[arg(long, env = "GATEWAY_REDIS_CLUSTER_NODES", value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,

    /// Prefix of every Redis key, so deployments can share a Redis.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "gw")]
    pub redis_prefix: String,

    /// Shard streams rooms are hashed onto. Every node must agree.
    #[arg(long, env = "GATEWAY_STREAM_SHARDS", default_value_t = 16)]
    pub stream_shards: u32,

    /// Approximate entries each shard stream keeps (the recovery window).
    #[arg(long, env = "GATEWAY_STREAM_MAXLEN", default_value_t = 100_000)]
    pub stream_maxlen: usize,

    /// Approximate bytes each shard stream keeps, as Redis counts them
    /// (`MEMORY USAGE`); the window is cut to whichever of this,
    /// `stream_maxlen` and `stream_max_age` is smaller. 0: no byte bound.
    #[arg(long, env = "GATEWAY_STREAM_MAX_BYTES", default_value_t = 64 << 20)]
    pub stream_max_bytes: u64,

    /// (1.1) How long a `send`'s nonce is remembered: a repeat within it is
    /// answered with the first message's id and not stored again. In Redis
    /// (a key per nonce beside the room's stream) with the Redis bus; in
    /// the node's memory on a single node.
    #[arg(long, env = "GATEWAY_DEDUPE_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub dedupe_window: Duration,

    /// (1.1) The event feed for backends: connect, disconnect, join, leave
    /// and every stored room event in `<prefix>:feed:{sN}` (docs/FEED.md):
    /// the shard streams take those names and carry the connection events
    /// too. Every node and persister must agree. Needs Redis.
    #[arg(long, env = "GATEWAY_FEED", default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub feed: bool,

    /// (1.1) With the feed on, the shard (feed) streams keep at least
    /// about this many entries (the larger of this and `stream_maxlen`;
    /// `stream_max_age` and `stream_max_bytes` still bound them): how far
    /// behind a backend's consumer group may fall before entries it has not
    /// read are trimmed.
    #[arg(long, env = "GATEWAY_FEED_MAXLEN", default_value_t = 100_000)]
    pub feed_maxlen: usize,

    /// Stream entries older than this are trimmed; 0 keeps by count only.
    #[arg(long, env = "GATEWAY_STREAM_MAX_AGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub stream_max_age: Duration,

    /// How often shard streams are trimmed to the window.
    #[arg(long, env = "GATEWAY_STREAM_TRIM_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stream_trim_interval: Duration,

    /// A node's Redis heartbeat lives this long: a dead node's users leave
    /// presence, and its leased node id frees, within it.
    #[arg(long, env = "GATEWAY_PRESENCE_TTL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,

    /// ScyllaDB (or Cassandra) contact points, `host:port`, comma-separated.
    /// Unset: the embedded store (one node), or the stream window only.
    #[arg(long, env = "GATEWAY_SCYLLA_NODES", value_delimiter = ',')]
    pub scylla_nodes: Vec<String>,

    /// Keyspace of the history tables.
    #[arg(long, env = "GATEWAY_SCYLLA_KEYSPACE", default_value = "chat")]
    pub scylla_keyspace: String,

    /// Keyspace replication: `simple:<factor>` or `nts:<dc>=<factor>,...`.
    #[arg(long, env = "GATEWAY_SCYLLA_REPLICATION", default_value = "simple:1")]
    pub scylla_replication: String,

    /// Time one history partition of a room covers.
    #[arg(long, env = "GATEWAY_SCYLLA_BUCKET", default_value = "1day", value_parser = humantime::parse_duration)]
    pub scylla_bucket: Duration,

    /// Most entries the persister writes in one batch.
    #[arg(long, env = "GATEWAY_PERSISTER_BATCH", default_value_t = 512)]
    pub persister_batch: usize,

    /// Longest the persister waits to fill a batch.
    #[arg(long, env = "GATEWAY_PERSISTER_WAIT", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub persister_wait: Duration,

    /// Entries a stopped persister left pending this long are taken over.
    #[arg(long, env = "GATEWAY_PERSISTER_CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub persister_claim_idle: Duration,
}

/// The cluster settings, checked.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub args: ClusterArgs,
    /// The bus's Redis, when configured.
    pub redis: Option<Target>,
    pub streams: StreamLayout,
    /// The CQL history store, when configured.
    pub scylla: Option<CqlConfig>,
}

fn check_redis_url(setting: &'static str, url: &str) -> Result<String, SettingsError> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(url.to_string())
    } else {
        Err(invalid(setting, format!("{url:?} is not a redis:// URL")))
    }
}

impl ClusterArgs {
    /// Checks every cluster setting, naming the first bad one.
    pub fn validate(&self) -> Result<Cluster, SettingsError> {
        let c = self;
        let redis = match (&c.redis_url, c.redis_cluster_nodes.is_empty()) {
            (Some(_), false) => {
                return Err(invalid("redis_url", "set redis_url or redis_cluster_nodes, not both"));
            }
            (Some(url), true) => Some(Target::Single(check_redis_url("redis_url", url)?)),
            (None, false) => Some(Target::Cluster(
                c.redis_cluster_nodes
                    .iter()
                    .map(|u| check_redis_url("redis_cluster_nodes", u))
                    .collect::<Result<_, _>>()?,
            )),
            (None, true) => None,
        };
        if !(1..=1024).contains(&c.stream_shards) {
            return Err(invalid("stream_shards", "must be from 1 to 1024"));
        }
        let scylla = if c.scylla_nodes.is_empty() {
            None
        } else {
            let replication =
                Replication::parse(&c.scylla_replication).map_err(|e| invalid("scylla_replication", e))?;
            if c.scylla_keyspace.is_empty()
                || !c
                    .scylla_keyspace
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(invalid("scylla_keyspace", "use letters, digits and _"));
            }
            if c.scylla_bucket < Duration::from_secs(60) {
                return Err(invalid("scylla_bucket", "must be at least 1m"));
            }
            Some(CqlConfig {
                nodes: c.scylla_nodes.clone(),
                keyspace: c.scylla_keyspace.clone(),
                replication,
                bucket: c.scylla_bucket,
            })
        };
        if c.persister_batch == 0 || c.persister_wait.is_zero() || c.persister_claim_idle < Duration::from_secs(1) {
            return Err(invalid(
                "persister_batch",
                "persister_batch and persister_wait must be more than 0, persister_claim_idle at least 1s",
            ));
        }
        if c.stream_trim_interval < Duration::from_secs(1) {
            return Err(invalid("stream_trim_interval", "must be at least 1s"));
        }
        if c.presence_ttl < Duration::from_secs(2) {
            return Err(invalid(
                "presence_ttl",
                "must be at least 2s (the heartbeat is every second)",
            ));
        }
        if c.feed && redis.is_none() {
            return Err(invalid(
                "feed",
                "the event feed needs Redis (redis_url or redis_cluster_nodes)",
            ));
        }
        if c.feed_maxlen < 100 {
            return Err(invalid("feed_maxlen", "must be at least 100"));
        }
        if c.stream_maxlen < 100 {
            return Err(invalid("stream_maxlen", "must be at least 100"));
        }
        if c.stream_max_bytes != 0 && c.stream_max_bytes < 1 << 20 {
            return Err(invalid(
                "stream_max_bytes",
                "must be 0 (no byte bound) or at least 1 MiB",
            ));
        }
        if c.redis_prefix.is_empty() || c.redis_prefix.contains(['{', '}', ' ']) {
            return Err(invalid("redis_prefix", "must be non-empty, without braces or spaces"));
        }
        Ok(Cluster {
            args: self.clone(),
            redis,
            streams: StreamLayout::new(c.redis_prefix.clone(), c.stream_shards).with_feed(c.feed),
            scylla,
        })
    }
}

impl Cluster {
    /// The Redis bus's configuration, when Redis is configured.
    pub fn bus_config(&self, node_id: Option<String>) -> Option<RedisBusConfig> {
        Some(RedisBusConfig {
            target: self.redis.clone()?,
            streams: self.streams.clone(),
            // (1.1) The feed is the shard streams: they keep what it must.
            maxlen: if self.args.feed {
                self.args.stream_maxlen.max(self.args.feed_maxlen)
            } else {
                self.args.stream_maxlen
            },
            max_age: self.args.stream_max_age,
            max_bytes: self.args.stream_max_bytes,
            node_id,
            read_count: 512,
            block: Duration::from_secs(5),
            trim_every: self.args.stream_trim_interval,
            node_ttl: self.args.presence_ttl,
            dedupe_window: self.args.dedupe_window,
        })
    }

    /// A persister's configuration, when Redis is configured.
    pub fn persister_config(&self, consumer: String) -> Option<PersisterConfig> {
        Some(PersisterConfig {
            target: self.redis.clone()?,
            streams: self.streams.clone(),
            consumer,
            batch_max: self.args.persister_batch,
            batch_wait: self.args.persister_wait,
            claim_idle: self.args.persister_claim_idle,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// How a binary logs.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Log filter (tracing-subscriber syntax); RUST_LOG wins when set.
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    pub log: String,
}

impl LogArgs {
    /// Installs the global tracing subscriber.
    pub fn init(&self) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&self.log))
            .unwrap_or_else(|_| EnvFilter::new("info"));
        match self.log_format {
            LogFormat::Human => tracing_subscriber::fmt().with_env_filter(filter).init(),
            LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        log: LogArgs,
    }

    fn probe(args: &[&str]) -> Result<Cluster, SettingsError> {
        let mut all = vec!["probe"];
        all.extend_from_slice(args);
        load::<Probe, _, _>(all)?.cluster.validate()
    }

    #[test]
    fn names_the_bad_cluster_setting() {
        for (args, setting) in [
            (vec!["--stream-shards", "0"], "stream_shards"),
            (vec!["--redis-url", "http://x"], "redis_url"),
            (
                vec!["--redis-url", "redis://a", "--redis-cluster-nodes", "redis://b"],
                "redis_url",
            ),
            (
                vec!["--scylla-nodes", "h:1", "--scylla-replication", "bogus"],
                "scylla_replication",
            ),
            (vec!["--persister-batch", "0"], "persister_batch"),
            (vec!["--redis-prefix", "a{b}"], "redis_prefix"),
            (vec!["--presence-ttl", "1s"], "presence_ttl"),
        ] {
            let err = probe(&args).unwrap_err().to_string();
            assert!(err.starts_with(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn derives_the_bus_and_persister_configs() {
        assert!(probe(&[]).unwrap().bus_config(None).is_none(), "no Redis: no bus");
        let c = probe(&["--redis-url", "redis://127.0.0.1:1", "--stream-shards", "4"]).unwrap();
        let bus = c.bus_config(Some("n".into())).unwrap();
        assert_eq!(bus.streams, StreamLayout::new("gw", 4));
        assert_eq!(bus.maxlen, 100_000);
        let p = c.persister_config("p".into()).unwrap();
        assert_eq!((p.streams.count(), p.batch_max), (4, 512));
    }
}
