//! Test fixtures that run real services on free loopback ports and stop
//! them when dropped (as nats.rs's test server does): [`RedisServer`],
//! [`RedisCluster`] (three masters, built with `redis-cli --cluster
//! create`), and [`GatewayProcess`] (the real `gateway` binary). Every wait
//! polls a condition with a bounded deadline ([`Wait`], [`wait_until`],
//! [`wait_until_async`]: the tests' waits too); nothing sleeps a fixed time.
//! [`TcpProxy`] cuts one process off from a service and restores it.

mod proxy;
pub use proxy::TcpProxy;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a service may take to answer after starting.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A bounded wait for a condition: what is awaited, how long at most, and
/// how often it is checked (every 20 ms unless told otherwise). A check
/// returns `Ok(value)` once the condition holds, and `Err(seen)` while it
/// does not; when the deadline passes, the wait panics saying what was
/// awaited, for how long, and what the last check saw.
///
/// ```no_run
/// # use std::time::Duration;
/// # let mut len = || 0u64;
/// let n = testkit::Wait::new("the stream trimmed below 400", Duration::from_secs(30))
///     .every(Duration::from_millis(100))
///     .until(|| {
///         let n = len();
///         if n < 400 { Ok(n) } else { Err(format!("length {n}")) }
///     });
/// ```
#[derive(Clone, Debug)]
pub struct Wait {
    what: String,
    deadline: Duration,
    every: Duration,
}

impl Wait {
    pub fn new(what: impl Into<String>, deadline: Duration) -> Wait {
        Wait {
            what: what.into(),
            deadline,
            every: Duration::from_millis(20),
        }
    }

    /// The pause between checks. Zero: none (each check waits by itself,
    /// e.g. for a reply; the async form still yields to the runtime).
    pub fn every(mut self, interval: Duration) -> Wait {
        self.every = interval;
        self
    }

    /// Checks `poll` (blocking the thread between checks) until it returns
    /// `Ok`, and returns that value.
    pub fn until<T, E: std::fmt::Display>(&self, mut poll: impl FnMut() -> Result<T, E>) -> T {
        let clock = Clock::start(self);
        loop {
            match poll() {
                Ok(v) => return v,
                Err(seen) => {
                    let pause = clock.pause_after(&seen);
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
            }
        }
    }

    /// As [`Wait::until`], with an async check and tokio's timer between
    /// checks (the runtime's thread is free meanwhile).
    pub async fn until_async<T, E: std::fmt::Display>(&self, mut poll: impl AsyncFnMut() -> Result<T, E>) -> T {
        let clock = Clock::start(self);
        loop {
            match poll().await {
                Ok(v) => return v,
                Err(seen) => {
                    let pause = clock.pause_after(&seen);
                    if pause.is_zero() {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }
}

/// The deadline of one [`Wait`], shared by its sync and async forms.
struct Clock<'a> {
    wait: &'a Wait,
    started: Instant,
}

impl Clock<'_> {
    fn start(wait: &Wait) -> Clock<'_> {
        Clock {
            wait,
            started: Instant::now(),
        }
    }

    /// After a check that saw `seen`: the pause before the next check (never
    /// past the deadline), or a panic once the deadline has passed.
    fn pause_after(&self, seen: &dyn std::fmt::Display) -> Duration {
        let Wait { what, deadline, every } = self.wait;
        let waited = self.started.elapsed();
        assert!(
            waited < *deadline,
            "waited {waited:.1?} (deadline {deadline:?}, checking every {every:?}) for {what}; the last check saw: {seen}"
        );
        (*every).min(*deadline - waited)
    }
}

/// Checks `ready` every 20 ms until it holds; panics after `deadline`
/// saying `what` was awaited.
pub fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    Wait::new(what, deadline).until(|| if ready() { Ok(()) } else { Err("false") })
}

/// The async form of [`wait_until`].
pub async fn wait_until_async(what: &str, deadline: Duration, mut ready: impl AsyncFnMut() -> bool) {
    Wait::new(what, deadline)
        .until_async(async || if ready().await { Ok(()) } else { Err("false") })
        .await
}

/// A loopback port nobody listens on now (and, for Redis Cluster, whose
/// bus port, +10000, is free too).
pub fn free_port(with_cluster_bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !with_cluster_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn redis_binary(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = format!("{dir}/{name}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} not found: run scripts/setup.sh (installs redis-server and redis-tools)");
}

/// One raw RESP command; the reply's first line.
pub fn redis_command(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).ok()?;
    let mut buf = [0u8; 8192];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).to_string())
}

fn spawn_redis(port: u16, dir: &Path, extra: &[&str]) -> Child {
    let mut args: Vec<String> = vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "always".into(),
        "--save".into(),
        "".into(),
        "--daemonize".into(),
        "no".into(),
        "--logfile".into(),
        dir.join(format!("redis-{port}.log")).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(redis_binary("redis-server"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for_pong(port: u16, child: &mut Child) {
    wait_until(&format!("redis on {port}"), START_DEADLINE, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("redis-server on {port} exited: {status}");
        }
        redis_command(port, &["PING"]).is_some_and(|r| r.starts_with("+PONG"))
    });
}

fn kill(child: &mut Child) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// One Redis server, with `appendonly yes` and `appendfsync always`.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(false);
        let mut child = spawn_redis(port, dir.path(), &[]);
        wait_for_pong(port, &mut child);
        RedisServer { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) without waiting for it to come back.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port and data (its append-only file).
    pub fn start_again(&mut self) {
        self.child = spawn_redis(self.port, self.dir.path(), &[]);
        wait_for_pong(self.port, &mut self.child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A Redis Cluster of `n` masters and no replicas.
pub struct RedisCluster {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..n {
            let port = free_port(true);
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut child = spawn_redis(
                port,
                &node_dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            );
            wait_for_pong(port, &mut child);
            ports.push(port);
            children.push(child);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas".into(), "0".into(), "--cluster-yes".into()]);
        let out = Command::new(redis_binary("redis-cli")).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for &port in &ports {
            wait_until(&format!("cluster state on {port}"), START_DEADLINE, || {
                redis_command(port, &["CLUSTER", "INFO"]).is_some_and(|r| r.contains("cluster_state:ok"))
            });
        }
        RedisCluster {
            children,
            ports,
            _dir: dir,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            kill(c);
        }
    }
}

/// The real `gateway` binary as a child process (pass
/// `env!("CARGO_BIN_EXE_gateway")`), killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The internal listener's address, when started with
    /// `--internal-listen`.
    pub internal: Option<SocketAddr>,
    pub data_dir: PathBuf,
}

impl GatewayProcess {
    pub fn start(binary: &str, data_dir: &Path, args: &[&str]) -> GatewayProcess {
        let mut cmd = Command::new(binary);
        // Configured by its flags alone, whatever GATEWAY_* the caller has.
        for (k, _) in std::env::vars() {
            if k.starts_with("GATEWAY_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
                data_dir.to_str().unwrap(),
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The node logs its bound addresses (the client listener's, and the
        // internal one's when asked for); read until then, then keep
        // draining stdout so the pipe never fills.
        let wants_internal = args.contains(&"--internal-listen");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut addr, mut internal) = (None, None);
        while addr.is_none() || (wants_internal && internal.is_none()) {
            let line = lines.next().expect("gateway exited before listening").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let logged = || v["fields"]["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap();
            match v["fields"]["message"].as_str() {
                Some("listening") => addr = Some(logged()),
                Some("internal listener") => internal = Some(logged()),
                _ => {}
            }
        }
        std::thread::spawn(move || for _ in lines {});
        GatewayProcess {
            child,
            addr: addr.unwrap(),
            internal,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn kill9(&mut self) {
        kill(&mut self.child);
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// The body of `GET /metrics` (the node answers with a length, never
    /// chunked).
    pub fn metrics_text(&self) -> String {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        match text.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_string(),
            None => String::new(),
        }
    }

    /// One `/metrics` sample (first series whose line starts with `name`).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The CQL server the tests use: `CHAT_TEST_CQL_NODES`, which
/// `scripts/test.sh` sets (from `scripts/services.sh up cassandra`, or from
/// a `GATEWAY_SCYLLA_NODES` given to it).
pub fn cql_nodes() -> Vec<String> {
    match std::env::var("CHAT_TEST_CQL_NODES") {
        Ok(n) if !n.is_empty() => n.split(',').map(str::to_string).collect(),
        _ => panic!("CHAT_TEST_CQL_NODES is not set: run the tests with scripts/test.sh, which starts a CQL server"),
    }
}

/// A keyspace name no other test run uses.
pub fn fresh_keyspace(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t_{tag}_{}", n % 1_000_000_000_000)
}

/// The real `promtool` (Debian's `prometheus` package).
fn promtool() -> &'static str {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("promtool not found: run scripts/setup.sh (installs Debian's prometheus package)");
}

/// `promtool check metrics` on `text`: its complaints, if any.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}: {said}", out.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_returns_the_value_once_the_check_holds() {
        let mut n = 0;
        let got = Wait::new("three checks", Duration::from_secs(5))
            .every(Duration::from_millis(1))
            .until(|| {
                n += 1;
                if n == 3 { Ok(n * 10) } else { Err(n) }
            });
        assert_eq!(got, 30);
    }

    #[test]
    fn a_wait_past_its_deadline_says_what_it_awaited_and_what_it_saw() {
        let panic = std::panic::catch_unwind(|| {
            wait_until("the impossible", Duration::from_millis(50), || false);
        })
        .unwrap_err();
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(msg.contains("for the impossible"), "{msg}");
        assert!(msg.contains("deadline 50ms"), "{msg}");
        assert!(msg.contains("the last check saw: false"), "{msg}");
    }

    #[tokio::test]
    async fn the_async_form_awaits_its_check_and_shares_the_deadline() {
        let mut checks = 0;
        wait_until_async("two checks", Duration::from_secs(5), async || {
            tokio::task::yield_now().await;
            checks += 1;
            checks == 2
        })
        .await;
        assert_eq!(checks, 2);
        let late = tokio::spawn(async {
            Wait::new("a reply", Duration::from_millis(50))
                .until_async(async || Err::<(), _>("no reply yet"))
                .await
        })
        .await
        .unwrap_err();
        let panic = late.into_panic();
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(msg.contains("for a reply") && msg.contains("no reply yet"), "{msg}");
    }
}
