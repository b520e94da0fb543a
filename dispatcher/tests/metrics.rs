//! The standalone `dispatcher` serves its metrics (`--metrics-listen`):
//! what it persisted and how the store did, with help text that the real
//! `promtool check metrics` accepts. Real Redis, real Cassandra.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::{RedisServer, Wait, cql_nodes, free_port, fresh_keyspace, promtool_check, redis_command};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_metrics(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (_, body) = text.split_once("\r\n\r\n").ok_or("no body")?;
    Ok(body.to_string())
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn the_dispatcher_serves_its_persister_metrics() {
    let redis = RedisServer::start();
    let port = free_port(false);
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(["--redis-url", &redis.url(), "--scylla-nodes", &cql_nodes().join(",")])
        .args([
            "--scylla-keyspace",
            &fresh_keyspace("dispmetrics"),
            "--persister-wait",
            "20ms",
        ])
        .args(["--metrics-listen", &listen, "--consumer", "d1"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _child = Killed(child);
    Wait::new("the dispatcher's metrics listener", Duration::from_secs(60))
        .every(Duration::from_millis(100))
        .until(|| get_metrics(port));
    // Three messages appended as a gateway node would.
    for i in 0..3 {
        let body = format!("{{\"n\":{i}}}");
        let reply = redis_command(
            redis.port,
            &["XADD", "gw:{s0}", "*", "r", "room", "f", "u1", "k", "m", "b", &body],
        );
        assert!(reply.is_some_and(|r| r.starts_with('$')), "XADD");
    }
    let text = Wait::new("three entries persisted", Duration::from_secs(60))
        .every(Duration::from_millis(100))
        .until(|| {
            let text = get_metrics(port)?;
            match sample(&text, "gateway_persister_entries_total") {
                n if n >= 3.0 => Ok(text),
                n => Err(format!("{n} persisted")),
            }
        });
    assert!(text.contains("# HELP gateway_persister_entries_total"), "{text}");
    assert!(text.contains("gateway_storage_operation_duration_seconds"), "{text}");
    promtool_check(&text).unwrap();
}
