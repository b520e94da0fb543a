//! The `dispatcher` binary's command line: it loads and validates the
//! settings it shares with the gateway the same way, and exits 64 naming
//! the bad one (before touching Redis or the CQL store), or the one that
//! disagrees with the cluster in Redis.

use std::process::Command;

fn dispatcher(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(args)
        .env_remove("GATEWAY_REDIS_URL")
        .env_remove("GATEWAY_REDIS_CLUSTER_NODES")
        .env_remove("GATEWAY_SCYLLA_NODES")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const SERVICES: [&str; 4] = ["--redis-url", "redis://127.0.0.1:1", "--scylla-nodes", "127.0.0.1:1"];

#[test]
fn bad_configuration_exits_64_naming_the_setting() {
    for (extra, needle) in [
        (vec!["--stream-shards", "0"], "stream_shards"),
        (vec!["--persister-batch", "0"], "persister_batch"),
        (vec!["--scylla-replication", "everywhere"], "scylla_replication"),
        (vec!["--persister-wait", "soon"], "persister-wait"),
        (
            vec!["--config", "/nonexistent/dispatcher.toml"],
            "/nonexistent/dispatcher.toml",
        ),
    ] {
        let args: Vec<&str> = SERVICES.iter().copied().chain(extra.iter().copied()).collect();
        let (code, _, err) = dispatcher(&args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, _, err) = dispatcher(&["--redis-url", "redis://127.0.0.1:1"]);
    assert_eq!(code, 64, "no CQL store: {err}");
    assert!(err.contains("scylla_nodes"), "{err}");
    let (code, _, err) = dispatcher(&["--scylla-nodes", "127.0.0.1:1"]);
    assert_eq!(code, 64, "no Redis: {err}");
    assert!(err.contains("redis_url"), "{err}");
}

#[test]
fn reads_the_gateways_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(
        &path,
        "redis_url = \"redis://127.0.0.1:1\"\nscylla_nodes = [\"127.0.0.1:1\"]\nstream_shards = 5\n",
    )
    .unwrap();
    let (code, out, err) = dispatcher(&["--config", path.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("count: 5"), "{out}");
    let (code, out, _) = dispatcher(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("GATEWAY_STREAM_SHARDS"), "{out}");
}

/// (1.1) A persister whose `GATEWAY_FEED` differs from the cluster's would
/// read streams no node writes: it exits 64 before it reads anything.
#[test]
fn a_persister_that_disagrees_on_the_feed_exits_64() {
    let redis = testkit::RedisServer::start();
    let url = redis.url();
    testkit::redis_command(redis.port, &["SET", "gw:streamkeys", "feed"]).unwrap();
    let (code, out, err) = dispatcher(&["--redis-url", &url, "--scylla-nodes", "127.0.0.1:1"]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(out.contains("GATEWAY_FEED"), "{out}");
    // Agreeing, it goes on to the store (unreachable here: exit 1).
    let (code, out, err) = dispatcher(&["--redis-url", &url, "--scylla-nodes", "127.0.0.1:1", "--feed"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("CQL store"), "{out}");
}
