//! Durability and drain: restart on the same data dir, kill -9 of the real
//! binary under load (every acknowledged message must survive), and
//! graceful drain on SIGTERM.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::{GatewayProcess, Wait};

/// The real `gateway` binary on `dir`.
fn proc_start(dir: &Path, args: &[&str]) -> GatewayProcess {
    GatewayProcess::start(env!("CARGO_BIN_EXE_gateway"), dir, args)
}

#[tokio::test]
async fn history_survives_a_restart_and_ids_keep_ascending() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--send-rate", "10000", "--send-burst", "10000"];
    let node = TestNode::start_in(tmp.path(), &args).await;
    let mut c = node.guest().await;
    c.join("keep").await;
    let mut sent = Vec::new();
    for i in 0..50 {
        sent.push(c.send_msg("keep", json!(i)).await);
    }
    drop(c);
    node.stop().await;

    let node = TestNode::start_in(tmp.path(), &args).await;
    let mut c = node.guest().await;
    assert_eq!(all_history(&mut c, "keep").await, sent);
    c.join("keep").await;
    let next = c.send_msg("keep", json!("after restart")).await;
    assert!(next > *sent.last().unwrap());
    // `since` across the restart replays exactly what came after.
    let mut late = node.guest().await;
    let r = late
        .request(json!({"op":"join","room":"keep","since":sent[47].to_string()}))
        .await;
    assert_eq!(r["recovered"], true);
    let replayed: Vec<u64> = late.backlog.iter().filter(|v| v["op"] == "msg").map(msg_id).collect();
    assert_eq!(replayed, vec![sent[48], sent[49], next]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--send-rate", "100000", "--send-burst", "100000"];
    let mut proc = proc_start(tmp.path(), &args);
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut senders = Vec::new();
    for s in 0..4 {
        let mut c = guest(&proc.url()).await;
        c.join("durable").await;
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            // Pipelined: several sends in flight, so the kill lands mid-batch.
            for i in 0..100_000u64 {
                let id = i + 1;
                if c.ws_send(json!({"op":"send","id":id,"room":"durable","body":{"s":s,"i":i}}))
                    .await
                    .is_err()
                {
                    return;
                }
                if i >= 8 {
                    match c.next_ack().await {
                        Some(msg) => acked.lock().unwrap().push(msg),
                        None => return,
                    }
                }
            }
        }));
    }
    // Kill once a good number of messages are acknowledged, with more in flight.
    Wait::new("400 acknowledged sends", WAIT)
        .every(Duration::from_millis(5))
        .until_async(async || {
            let n = acked.lock().unwrap().len();
            if n >= 400 {
                Ok(())
            } else {
                Err(format!("too slow: {n} acks"))
            }
        })
        .await;
    proc.kill9();
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let proc = proc_start(tmp.path(), &args);
    let mut c = guest(&proc.url()).await;
    let stored = all_history(&mut c, "durable").await;
    let missing: Vec<_> = acked.iter().filter(|id| stored.binary_search(id).is_err()).collect();
    eprintln!(
        "kill -9: {} acknowledged, {} stored after restart, {} missing",
        acked.len(),
        stored.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(
        stored.windows(2).all(|w| w[0] < w[1]),
        "stored ids ascend without duplicates"
    );
}

impl Client {
    async fn ws_send(&mut self, v: serde_json::Value) -> Result<(), ()> {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(v.to_string().into()))
            .await
            .map_err(|_| ())
    }

    /// The next send acknowledgement's id; None when the connection ends.
    async fn next_ack(&mut self) -> Option<u64> {
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.ok()?? {
                Ok(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["op"] == "ok" && v["msg"].is_string() {
                        return Some(msg_id(&v));
                    }
                    assert_ne!(v["op"], "error", "{v}");
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

#[tokio::test]
async fn sigterm_drains_with_1001_and_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut proc = proc_start(tmp.path(), &["--shutdown-grace", "5s"]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = guest(&proc.url()).await;
        c.join("d").await;
        clients.push(c);
    }
    // Every client sends at once, so the last deliveries are still on
    // their way through the hub when the drain begins.
    let sends = clients
        .iter_mut()
        .enumerate()
        .map(|(i, c)| async move { c.send_msg("d", json!(format!("before drain {i}"))).await });
    let mut ids = futures_util::future::join_all(sends).await;
    proc.signal(libc::SIGTERM);
    for c in &mut clients {
        let (end, frames) = c.until_closed().await;
        assert_eq!(end, Ended::Close(1001));
        // Queued deliveries were flushed before the close (presence events
        // of the others closing may come too).
        assert!(
            frames
                .iter()
                .all(|f| ["msg", "joined", "left"].contains(&f["op"].as_str().unwrap())),
            "{frames:?}"
        );
        // Every message acknowledged before the drain reached every member.
        assert_eq!(
            frames.iter().filter(|f| f["op"] == "msg").count(),
            ids.len(),
            "{frames:?}"
        );
    }
    let status = tokio::task::spawn_blocking(move || {
        Wait::new("the node to exit within the grace period", Duration::from_secs(10))
            .every(Duration::from_millis(20))
            .until(|| proc.child.try_wait().unwrap().ok_or("still running"))
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    // The message acknowledged before the drain is there after it.
    let proc = proc_start(tmp.path(), &[]);
    let mut c = guest(&proc.url()).await;
    ids.sort_unstable();
    assert_eq!(all_history(&mut c, "d").await, ids);
}

#[tokio::test]
async fn draining_node_is_not_ready_and_refuses_new_websockets() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start(&["--api-key", API_KEY]).await;
    // An in-flight request (its body still arriving) keeps the drain
    // waiting, so the draining node can be observed.
    let mut partial = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/x/messages HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {API_KEY}\r\ncontent-length: 100\r\n\r\n{{"
    );
    partial.write_all(head.as_bytes()).await.unwrap();
    let mut c = node.guest().await;
    c.join("x").await;
    assert_eq!(node.http("GET", "/readyz", &[], "").await.0, 200);
    node.begin_shutdown();
    assert_eq!(c.until_closed().await.0, Ended::Close(1001));
    assert_eq!(node.http("GET", "/readyz", &[], "").await.0, 503);
    assert_eq!(node.http("GET", "/healthz", &[], "").await.0, 200);
    let (status, _) = node
        .http("GET", "/ws", &ws_upgrade_headers(Some(WS_KEY), "13"), "")
        .await;
    assert_eq!(status, 503);
    drop(partial);
    node.stop().await;
}
