//! Node configuration: every setting is a `--flag`, a `GATEWAY_*`
//! environment variable, and a key of the optional TOML file
//! (`--config`), in that order of precedence. The settings a node shares
//! with the `dispatcher` binary (Redis, streams, the CQL store, the
//! persister, logging) and the loading itself are `dispatcher::settings`;
//! this adds the node's own. [`Config::load`] parses and
//! [`Config::validate`] checks everything once, naming the bad setting;
//! the binary exits 64 on either error.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use dispatcher::settings::{Cluster, ClusterArgs, LogArgs, invalid};
pub use dispatcher::settings::{LogFormat, SettingsError as ConfigError};

pub use crate::jwt::JwtSettings;

/// A gateway node's settings. Defaults run one node on loopback with the
/// embedded store and anonymous guests.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about = "WebSocket chat gateway node")]
pub struct Config {
    /// TOML file with any of these settings; keys are the flag names
    /// (`listen = "0.0.0.0:8080"`, `ping_interval = "25s"`).
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// This node's id, unique in the cluster (presence, logs, replies).
    /// Unset: leased in Redis (`gw-<n>`), or `gw-0` without Redis.
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis, the shard streams, the CQL store, the persister: shared with
    /// the `dispatcher` binary.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Run the persister (Redis streams into ScyllaDB) inside this node.
    /// Off when standalone `dispatcher` processes do it.
    #[arg(long, env = "GATEWAY_PERSISTER", default_value_t = true, action = ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub persister: bool,

    /// Directory of the embedded history store. Never share it between nodes.
    #[arg(long, env = "GATEWAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// HS256 secret for client JWTs.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// RS256/ES256 public key for client JWTs: PEM text or a path to a PEM file.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,

    /// Pin the JWT algorithm (HS256, HS384, HS512, RS256, RS384, RS512,
    /// PS256, ES256, ES384). Default: HS256 with a secret, RS256 or ES256 by key type.
    #[arg(long, env = "GATEWAY_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,

    /// A JWK set (JSON `{"keys":[...]}`) instead of one key, from a file or
    /// an `http://`/`https://` URL: tokens name their key by `kid`; the set
    /// is checked every `jwt_jwks_refresh` and reloaded when it changed, so
    /// keys rotate without a restart. A URL's set is fetched after start;
    /// until it first loads, tokens are refused and `/readyz` is 503.
    #[arg(long, env = "GATEWAY_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,

    /// How often the JWK set's file or URL is checked for changes.
    #[arg(long, env = "GATEWAY_JWT_JWKS_REFRESH", default_value = "10s", value_parser = humantime::parse_duration)]
    pub jwt_jwks_refresh: Duration,

    /// Required `aud` claim.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Serve anonymous guests (`guest-<random>`). Default: on when no JWT key
    /// is configured and the listener is on loopback, else off.
    #[arg(long, env = "GATEWAY_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = ArgAction::Set)]
    pub allow_anonymous: Option<bool>,

    /// Bearer key for the server API (`/api/...`), named `default` in logs
    /// and metrics. With neither this nor `api_keys`, the API answers 401.
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// (1.1) More server API keys, comma-separated `name=key` (keys of at
    /// least 16 bytes): any of them is accepted, so a key rotates without
    /// downtime. The name goes to logs and metrics, never the key.
    #[arg(long, env = "GATEWAY_API_KEYS", hide_env_values = true, value_delimiter = ',')]
    pub api_keys: Vec<String>,

    /// Room patterns a user may join when the token has no `rooms` claim
    /// (comma-separated; `*`, exact names, or prefixes ending in `*`).
    #[arg(long, env = "GATEWAY_DEFAULT_ROOMS", default_value = "*", value_delimiter = ',')]
    pub default_rooms: Vec<String>,

    /// Connection shards in this node; 0 means one per CPU core (at most 64).
    #[arg(long, env = "GATEWAY_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Largest WebSocket frame or reassembled message; bigger closes with 1009.
    #[arg(long, env = "GATEWAY_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,

    /// Largest message `body` (as JSON text); bigger gets `too_large`.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 32768)]
    pub max_body_bytes: usize,

    /// Time a client has to authenticate after the upgrade (else 4001).
    #[arg(long, env = "GATEWAY_AUTH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub auth_timeout: Duration,

    /// Server ping period; a client silent for two periods is dropped.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Frames queued for one connection before it counts as a slow
    /// consumer and is closed with 4008.
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Memory one connection may pin in its outbound queue (replies,
    /// replays and deliveries not yet written); past it the connection is
    /// closed with 4008. A history page or replay larger than half of it
    /// is refused instead (`too_large`, `recovered: false`).
    #[arg(long, env = "GATEWAY_MAX_CONNECTION_BYTES", default_value_t = 4 << 20)]
    pub max_connection_bytes: usize,

    /// A connection whose queued output the socket takes none of for this
    /// long is closed with 4008 (a client that stopped reading).
    #[arg(long, env = "GATEWAY_WRITE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Most missed messages `join` with `since` replays; a larger gap
    /// answers `recovered: false`.
    #[arg(long, env = "GATEWAY_RECOVERY_LIMIT", default_value_t = 1000)]
    pub recovery_limit: usize,

    /// Rooms one connection may be in at once.
    #[arg(long, env = "GATEWAY_MAX_ROOMS_PER_CONNECTION", default_value_t = 256)]
    pub max_rooms_per_connection: usize,

    /// Sustained `send`/`typing` rate per connection, per second.
    #[arg(long, env = "GATEWAY_SEND_RATE", default_value_t = 50.0)]
    pub send_rate: f64,

    /// Burst of `send`/`typing` allowed above the sustained rate.
    #[arg(long, env = "GATEWAY_SEND_BURST", default_value_t = 100)]
    pub send_burst: u32,

    /// Sustained `join`/`leave`/`history`/`presence` rate per connection, per second.
    #[arg(long, env = "GATEWAY_REQUEST_RATE", default_value_t = 20.0)]
    pub request_rate: f64,

    /// Burst of `join`/`leave`/`history`/`presence` above the sustained rate
    /// (room joins at connect time count here).
    #[arg(long, env = "GATEWAY_REQUEST_BURST", default_value_t = 300)]
    pub request_burst: u32,

    /// A client that keeps exceeding the rate this long is closed with 4029.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rate_limit_grace: Duration,

    /// Malformed or invalid frames tolerated per minute before closing with 1008.
    #[arg(long, env = "GATEWAY_MAX_BAD_FRAMES", default_value_t = 20)]
    pub max_bad_frames: u32,

    /// Time a server API request's body may take to arrive; slower gets
    /// 408 and the connection closes.
    #[arg(long, env = "GATEWAY_HTTP_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_body_timeout: Duration,

    /// WebSocket connections this node holds at once; past it upgrades get
    /// 503 with `Retry-After`. 0: the open-file limit less a tenth of it
    /// (at least 256 descriptors kept for everything else).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// WebSocket connections one client IP may hold on this node (503 past
    /// it). 0: no cap. Behind a proxy, see `trusted_proxies`.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// New TCP connections per second one client address may open (IPv6:
    /// per /64); past it a connection is closed before a byte is read (or,
    /// behind a trusted proxy, its upgrade gets 503). 0: no rate.
    #[arg(long, env = "GATEWAY_CONNECTION_RATE_PER_IP", default_value_t = 0.0)]
    pub connection_rate_per_ip: f64,

    /// New connections one client address may open at once, above
    /// `connection_rate_per_ip`.
    #[arg(long, env = "GATEWAY_CONNECTION_BURST_PER_IP", default_value_t = 50)]
    pub connection_burst_per_ip: u32,

    /// Connections one authenticated user may hold (on every node of the
    /// cluster, or on this node: see `user_limit_scope`); the next is
    /// refused after `auth` (`rate_limited`, close 4029). 0: no cap.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub max_connections_per_user: u32,

    /// `send`s (and `typing`s, as `send_rate` counts them) per second one
    /// user may make over all their connections (on every node of the cluster, or on this node),
    /// counted in fixed 10-second windows; past it, sends get
    /// `rate_limited` and a user who stays over it for
    /// `rate_limit_grace` is closed 4029. 0: no per-user rate (each
    /// connection still has `send_rate`).
    #[arg(long, env = "GATEWAY_USER_SEND_RATE", default_value_t = 0.0)]
    pub user_send_rate: f64,

    /// Where the per-user limits count: `cluster` (all nodes, through
    /// Redis: one Redis round trip per `auth`, sends synced every 250 ms)
    /// or `node`. Without Redis, always `node`.
    #[arg(long, env = "GATEWAY_USER_LIMIT_SCOPE", default_value = "cluster")]
    pub user_limit_scope: UserLimitScope,

    /// Proxies whose `client_ip_header` is believed (comma-separated IPs or
    /// CIDRs). Other peers are the client themselves.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Header a trusted proxy puts the client's address in (e.g.
    /// `X-Forwarded-For`); its right-most untrusted entry is the client.
    /// Unset: no header is read.
    #[arg(long, env = "GATEWAY_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,

    /// Origins whose pages may open WebSockets (comma-separated
    /// `scheme://host[:port]`, or `*`); other browser upgrades get 403.
    /// Unset: any origin with JWT auth; with guests, only loopback pages.
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// A second listener for `/metrics`, `/healthz` and `/readyz` (e.g.
    /// `127.0.0.1:9090`); when set, `/metrics` leaves the client listener.
    #[arg(long, env = "GATEWAY_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,

    /// Resident memory (bytes) past which upgrades get 503. 0: 80% of the
    /// cgroup's memory limit, or of the machine's memory.
    #[arg(long, env = "GATEWAY_MAX_MEMORY", default_value_t = 0)]
    pub max_memory: u64,

    /// (1.1) How long a connection may outlive its token's `exp` without a
    /// `refresh`; then `unauthorized` ("token expired") and close 4001.
    #[arg(long, env = "GATEWAY_TOKEN_EXPIRY_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub token_expiry_grace: Duration,

    /// (1.1) The longest token lifetime accepted (`exp` - `iat`; `exp` -
    /// now without `iat`); longer ones are refused. A revocation is kept
    /// this long, after which every token it covers has expired.
    #[arg(long, env = "GATEWAY_TOKEN_MAX_LIFETIME", default_value = "7d", value_parser = humantime::parse_duration)]
    pub token_max_lifetime: Duration,

    /// The demo chat page at `/` (built on the TypeScript client,
    /// embedded in the binary; `clients/demo`). `false`: `/` is 404.
    #[arg(long, env = "GATEWAY_DEMO", default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: bool,

    /// Time allowed to drain on SIGTERM/SIGINT before exiting anyway.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub log: LogArgs,

    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// Where per-user limits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UserLimitScope {
    Cluster,
    Node,
}

/// A validated configuration: what `run` takes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub jwt: Option<JwtSettings>,
    /// Anonymous guests allowed (resolved from `allow_anonymous` and the listener).
    pub anonymous: bool,
    pub shards: usize,
    /// Redis, streams and the CQL store, checked.
    pub cluster: Cluster,
    /// Trusted proxies and allowed origins, parsed.
    pub admission: crate::admission::Policy,
    /// (1.1) The server API's keys, by name.
    pub api_keys: crate::api::keys::ApiKeys,
}

impl Config {
    /// Parses flags and environment, then fills what they leave unset from
    /// the `--config` file.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        dispatcher::settings::load(args)
    }

    /// A copy safe to print: secrets replaced.
    pub fn redacted(&self) -> Config {
        let hide = |v: &Option<String>| v.as_ref().map(|_| "<redacted>".to_string());
        Config {
            jwt_secret: hide(&self.jwt_secret),
            api_key: hide(&self.api_key),
            api_keys: self
                .api_keys
                .iter()
                .map(|k| format!("{}=<redacted>", k.split_once('=').map_or("?", |(n, _)| n)))
                .collect(),
            ..self.clone()
        }
    }

    /// Checks every setting and derives what `run` needs.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let c = &self;
        if let Some(id) = &c.node_id
            && (id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(invalid(
                "node_id",
                format!("{id:?} must be 1 to 64 characters of [A-Za-z0-9_.-]"),
            ));
        }
        let cluster = c.cluster.validate()?;
        if !(1024..=16 << 20).contains(&c.max_frame_bytes) {
            return Err(invalid("max_frame_bytes", "must be from 1024 to 16777216"));
        }
        if c.max_body_bytes == 0 || c.max_body_bytes > c.max_frame_bytes {
            return Err(invalid("max_body_bytes", "must be from 1 to max_frame_bytes"));
        }
        if c.shards > 64 {
            return Err(invalid("shards", "at most 64 (0 means one per core)"));
        }
        if c.ping_interval < Duration::from_millis(100) {
            return Err(invalid("ping_interval", "must be at least 100ms"));
        }
        if c.token_max_lifetime < Duration::from_secs(60) {
            return Err(invalid("token_max_lifetime", "must be at least 60s"));
        }
        if c.auth_timeout.is_zero() {
            return Err(invalid("auth_timeout", "must be more than 0"));
        }
        if c.http_body_timeout < Duration::from_millis(100) {
            return Err(invalid("http_body_timeout", "must be at least 100ms"));
        }
        if c.outbound_queue < 16 {
            return Err(invalid("outbound_queue", "must be at least 16"));
        }
        if c.max_connection_bytes < 4 * c.max_frame_bytes {
            return Err(invalid(
                "max_connection_bytes",
                "must be at least 4 x max_frame_bytes (a few full-size frames must fit)",
            ));
        }
        if c.write_timeout < Duration::from_secs(1) {
            return Err(invalid("write_timeout", "must be at least 1s"));
        }
        if c.recovery_limit == 0 {
            return Err(invalid("recovery_limit", "must be at least 1"));
        }
        if c.max_rooms_per_connection == 0 {
            return Err(invalid("max_rooms_per_connection", "must be at least 1"));
        }
        if !(c.send_rate.is_finite() && c.send_rate > 0.0) || c.send_burst == 0 {
            return Err(invalid("send_rate", "send_rate and send_burst must be more than 0"));
        }
        if !(c.request_rate.is_finite() && c.request_rate > 0.0) || c.request_burst == 0 {
            return Err(invalid(
                "request_rate",
                "request_rate and request_burst must be more than 0",
            ));
        }
        if !(c.connection_rate_per_ip.is_finite() && c.connection_rate_per_ip >= 0.0) {
            return Err(invalid("connection_rate_per_ip", "must be 0 (off) or more"));
        }
        if c.connection_burst_per_ip == 0 {
            return Err(invalid("connection_burst_per_ip", "must be at least 1"));
        }
        if !(c.user_send_rate.is_finite() && c.user_send_rate >= 0.0) {
            return Err(invalid("user_send_rate", "must be 0 (off) or more"));
        }
        if c.default_rooms.iter().any(|p| p.is_empty()) {
            return Err(invalid("default_rooms", "empty pattern"));
        }
        let jwt = JwtSettings::from_config(&self)?;
        let anonymous = match c.allow_anonymous {
            Some(a) => a,
            None => jwt.is_none() && c.listen.ip().is_loopback(),
        };
        if jwt.is_none() && !anonymous {
            let why = if c.listen.ip().is_loopback() {
                "anonymous access is off and no JWT key is configured, so no client could authenticate".to_string()
            } else {
                format!(
                    "refusing to serve {} without authentication: set GATEWAY_JWT_SECRET or GATEWAY_JWT_PUBLIC_KEY \
                     (or GATEWAY_ALLOW_ANONYMOUS=true to serve guests on purpose)",
                    c.listen
                )
            };
            return Err(invalid("jwt_secret", why));
        }
        if c.max_memory != 0 && c.max_memory < 1 << 20 {
            return Err(invalid("max_memory", "must be 0 (derived) or at least 1048576 bytes"));
        }
        if let Some(internal) = c.internal_listen
            && internal.port() != 0
            && internal.port() == c.listen.port()
            && (internal.ip() == c.listen.ip() || internal.ip().is_unspecified() || c.listen.ip().is_unspecified())
        {
            return Err(invalid(
                "internal_listen",
                format!("{internal} is the client listener's address"),
            ));
        }
        let admission = crate::admission::Policy::parse(
            &c.trusted_proxies,
            c.client_ip_header.as_deref(),
            c.allowed_origins.as_deref(),
            anonymous,
        )
        .map_err(|e| invalid(e.setting(), e.to_string()))?;
        let api_keys = crate::api::keys::ApiKeys::parse(c.api_key.as_deref(), &c.api_keys)
            .map_err(|e| invalid("api_keys", e.to_string()))?;
        let shards = if c.shards == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(64)
        } else {
            c.shards
        };
        Ok(Settings {
            config: self,
            jwt,
            anonymous,
            shards,
            cluster,
            admission,
            api_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        Config::load(all)?.validate()
    }

    #[test]
    fn defaults_serve_guests_on_loopback() {
        let s = load(&[]).unwrap();
        assert!(s.anonymous);
        assert!(s.jwt.is_none());
        assert_eq!(s.config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.config.ping_interval, Duration::from_secs(25));
    }

    #[test]
    fn refuses_a_public_address_without_auth() {
        let err = load(&["--listen", "0.0.0.0:9000"]).unwrap_err().to_string();
        assert!(err.contains("without authentication"), "{err}");
        assert!(load(&["--listen", "0.0.0.0:9000", "--jwt-secret", "0123456789abcdef"]).is_ok());
        assert!(
            load(&["--listen", "0.0.0.0:9000", "--allow-anonymous"])
                .unwrap()
                .anonymous
        );
    }

    #[test]
    fn names_the_bad_setting() {
        for (args, setting) in [
            (vec!["--max-body-bytes", "100000"], "max_body_bytes"),
            (vec!["--node-id", "has space"], "node_id"),
            (vec!["--jwt-secret", "short"], "jwt_secret"),
            (
                vec!["--jwt-algorithm", "RS256", "--jwt-secret", "0123456789abcdef"],
                "jwt_algorithm",
            ),
            (vec!["--jwt-public-key", "/nonexistent.pem"], "jwt_public_key"),
            (vec!["--allow-anonymous=false"], "jwt_secret"),
        ] {
            let err = load(&args).unwrap_err().to_string();
            assert!(err.starts_with(setting), "{args:?}: {err}");
        }
        assert!(matches!(
            load(&["--ping-interval", "soon"]),
            Err(ConfigError::Cli { help: false, .. })
        ));
    }

    #[test]
    fn file_values_are_defaults_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "node_id = \"gw-7\"\nping-interval = \"3s\"\ndefault_rooms = [\"a\", \"b:*\"]\nshards = 2\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = load(&["--config", p, "--shards", "3"]).unwrap();
        assert_eq!(s.config.node_id.as_deref(), Some("gw-7"));
        assert_eq!(s.config.ping_interval, Duration::from_secs(3));
        assert_eq!(s.config.default_rooms, vec!["a", "b:*"]);
        assert_eq!(s.shards, 3);

        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let err = load(&["--config", p]).unwrap_err().to_string();
        assert!(err.contains("unknown setting"), "{err}");
    }
}
