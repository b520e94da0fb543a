//! The load generator against real nodes: its scenarios work and its
//! accounting holds (a reconnect storm loses and duplicates nothing).

mod common;

use clap::Parser;
use common::*;
use testkit::{GatewayProcess, RedisServer};

fn args(urls: &[String], extra: &[&str]) -> loadtest::Args {
    let mut argv = vec!["loadtest".to_string(), "--quiet".into()];
    for u in urls {
        argv.push("--url".into());
        argv.push(u.clone());
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    loadtest::Args::try_parse_from(argv).unwrap()
}

fn assert_clean(args: &loadtest::Args, report: &loadtest::Report) {
    assert_eq!(loadtest::check(args, report), None, "{report:#}");
    assert!(report["delivered"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(report["delivered"], report["expected_deliveries"], "{report:#}");
}

/// 100 members in 5 rooms, 2 senders at 200 msg/s; halfway every member
/// drops and resumes with `since` on the next URL. Nothing may be lost or
/// duplicated, and every member must come back.
async fn reconnect_storm(urls: &[String], duration: &str) {
    let a = args(
        urls,
        &[
            "--scenario",
            "reconnect",
            "--connections",
            "100",
            "--rooms",
            "5",
            "--senders",
            "2",
            "--rate",
            "200",
            "--duration",
            duration,
            "--max-loss",
            "0",
        ],
    );
    let report = loadtest::run(a.clone()).await.unwrap();
    assert_clean(&a, &report);
    assert_eq!(report["reconnected"], 100, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_on_one_node_loses_and_duplicates_nothing() {
    let node = TestNode::start(&[
        "--send-rate",
        "100000",
        "--send-burst",
        "100000",
        "--request-burst",
        "100000",
    ])
    .await;
    reconnect_storm(&[node.url()], "3s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_across_nodes_resumes_on_the_other_node() {
    let redis = RedisServer::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let url = redis.url();
    let flags = [
        "--redis-url",
        &url,
        "--send-rate",
        "100000",
        "--send-burst",
        "100000",
        "--request-burst",
        "100000",
    ];
    let nodes: Vec<GatewayProcess> = dirs
        .iter()
        .map(|d| GatewayProcess::start(env!("CARGO_BIN_EXE_gateway"), d.path(), &flags))
        .collect();
    let urls: Vec<String> = nodes.iter().map(GatewayProcess::url).collect();
    reconnect_storm(&urls, "4s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_idle_scenarios_run_clean() {
    let node = TestNode::start(&["--request-burst", "100000", "--request-rate", "100000"]).await;
    let churn = args(
        &[node.url()],
        &[
            "--scenario",
            "churn",
            "--connections",
            "50",
            "--rooms",
            "5",
            "--churn-rate",
            "200",
            "--duration",
            "2s",
            "--max-loss",
            "0",
        ],
    );
    let report = loadtest::run(churn.clone()).await.unwrap();
    assert_eq!(loadtest::check(&churn, &report), None, "{report:#}");
    assert!(report["churned"].as_u64().unwrap() >= 300, "{report:#}");
    let idle = args(
        &[node.url()],
        &[
            "--scenario",
            "idle",
            "--connections",
            "200",
            "--rooms",
            "10",
            "--duration",
            "1s",
            "--max-loss",
            "0",
        ],
    );
    let report = loadtest::run(idle.clone()).await.unwrap();
    assert_eq!(loadtest::check(&idle, &report), None, "{report:#}");
    assert_eq!(report["connected"], 200);
}

/// (1.1) The `chat` scenario: sends mixed with edits, reactions and read
/// markers; every stored entry (message or event) reaches every member once,
/// and each op's acknowledgement is measured. On one node and across two
/// nodes over Redis.
async fn chat(urls: &[String]) {
    let a = args(
        urls,
        &[
            "--scenario",
            "chat",
            "--connections",
            "60",
            "--rooms",
            "3",
            "--senders",
            "6",
            "--rate",
            "120",
            "--duration",
            "2s",
            "--max-loss",
            "0",
        ],
    );
    let report = loadtest::run(a.clone()).await.unwrap();
    assert_clean(&a, &report);
    for op in ["ack", "ack_edit", "ack_react", "ack_read"] {
        assert!(
            report["latency_ms"][op]["count"].as_u64().unwrap() > 0,
            "{op}: {report:#}"
        );
    }
    assert!(
        report["acked_without_entry"].as_u64().unwrap() > 0,
        "read markers: {report:#}"
    );
    assert_eq!(report["unacknowledged"], 0, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_scenario_runs_clean_on_one_node_and_over_redis() {
    let node = TestNode::start(&[]).await;
    chat(&[node.url()]).await;
    let redis = RedisServer::start();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let url = redis.url();
    let nodes: Vec<GatewayProcess> = dirs
        .iter()
        .map(|d| GatewayProcess::start(env!("CARGO_BIN_EXE_gateway"), d.path(), &["--redis-url", &url]))
        .collect();
    let urls: Vec<String> = nodes.iter().map(GatewayProcess::url).collect();
    chat(&urls).await;
}
