//! `--workers`: the binary split over worker processes against a real node
//! reports the same accounting as one process would (every member of every
//! worker counted in the expected deliveries, histograms merged).

use std::process::Command;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_merge_into_one_lossless_report() {
    let dir = tempfile::tempdir().unwrap();
    let argv = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--send-rate",
        "100000",
        "--send-burst",
        "100000",
        "--request-burst",
        "100000",
    ];
    let settings = gateway::Config::load(argv).unwrap().validate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let node = tokio::spawn(gateway::run(listener, settings, shutdown.clone()));

    let report_path = dir.path().join("report.json");
    let ready_path = dir.path().join("ready");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.args(["--url", &url, "--workers", "3", "--connections", "300", "--rooms", "5"])
        .args([
            "--senders",
            "4",
            "--rate",
            "200",
            "--duration",
            "2s",
            "--quiet",
            "--max-loss",
            "0",
        ])
        .arg("--report")
        .arg(&report_path)
        .arg("--ready-file")
        .arg(&ready_path);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();

    // Every worker's members, and the 4 senders in their rooms.
    assert_eq!(report["workers"], 3, "{report:#}");
    assert_eq!(report["connected"], 300, "{report:#}");
    assert_eq!(std::fs::read_to_string(&ready_path).unwrap().trim(), "300");
    let acked = report["acked"].as_u64().unwrap();
    assert!(acked >= 300, "{report:#}");
    // 5 rooms of 60 members (20 on each worker) plus the one sender that
    // sends to each room (sender 0 sends to rooms 0 and 4): every message is
    // expected 61 times; a worker counting only its own members would say 21.
    let expected = report["expected_deliveries"].as_u64().unwrap();
    assert_eq!(expected, acked * 61, "{report:#}");
    assert_eq!(report["delivered"].as_u64().unwrap(), expected, "{report:#}");
    assert_eq!(
        report["latency_ms"]["delivery"]["count"].as_u64().unwrap(),
        expected,
        "{report:#}"
    );
    assert_eq!(report["duplicates"], 0);

    shutdown.cancel();
    node.await.unwrap().unwrap();
}
