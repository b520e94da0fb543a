//! Limits that hold against clients that abuse a node (issue 10): a flood
//! that lets tokens trickle in is still closed 4029; clients that pipeline
//! requests and never read the replies pin at most their memory budget and
//! are closed 4008 once the socket takes nothing for the write timeout; a
//! page or replay larger than the budget is refused rather than queued.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The next text frame's JSON, or how the connection ended.
async fn next_or_end(c: &mut Client) -> Result<serde_json::Value, Ended> {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(f))) => return Err(Ended::Close(f.map(|f| u16::from(f.code)).unwrap_or(1005))),
            Some(Ok(_)) => continue,
            _ => return Err(Ended::Gone),
        }
    }
}

#[tokio::test]
async fn a_flood_that_lets_tokens_trickle_in_is_still_closed_4029() {
    // 20 sends a second are allowed; the client offers ten times that, so
    // every tenth or so is accepted and the rest refused: over the rate
    // all along. Before the fix, each accepted send restarted the grace.
    let node = TestNode::start(&["--send-rate", "20", "--send-burst", "5", "--rate-limit-grace", "1s"]).await;
    let mut c = node.guest().await;
    c.join("flood").await;
    let started = Instant::now();
    let (mut accepted, mut refused) = (0, 0);
    let end = 'flood: {
        for _ in 0..1500 {
            c.send(json!({"op":"send","room":"flood","body":1})).await;
            loop {
                match next_or_end(&mut c).await {
                    Ok(v) if v["op"] == "ok" => accepted += 1,
                    Ok(v) if v["code"] == "rate_limited" => refused += 1,
                    Ok(_) => continue, // its own message, delivered
                    Err(end) => break 'flood Some(end),
                }
                break;
            }
            // Paced, not a wait: about 200 offers a second.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    };
    assert_eq!(end, Some(Ended::Close(4029)), "accepted {accepted}, refused {refused}");
    assert!(accepted > 5, "tokens trickled in: {accepted} accepted");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "closed {took:?} after the flood began (grace 1s)"
    );
}

#[tokio::test]
async fn a_page_or_replay_larger_than_the_budget_is_refused_not_queued() {
    // A 1 MiB budget: one reply may take half of it.
    let node = TestNode::start(&[
        "--max-connection-bytes",
        "1048576",
        "--send-rate",
        "100000",
        "--send-burst",
        "100000",
    ])
    .await;
    let mut c = node.guest().await;
    c.join("r").await;
    let body = "y".repeat(30_000);
    let first = c.send_msg("r", json!(body)).await;
    for _ in 0..39 {
        c.send_msg("r", json!(body)).await;
    }
    // 40 x 30 KB = 1.2 MB: too large; 10 of them fit.
    let r = c.request(json!({"op":"history","room":"r","limit":40})).await;
    assert_eq!(r["code"], "too_large", "{r}");
    let r = c.request(json!({"op":"history","room":"r","limit":10})).await;
    assert_eq!(r["messages"].as_array().map(Vec::len), Some(10), "{r}");
    // A replay of 39 of them: not queued, page with history instead.
    let mut d = node.guest().await;
    let r = d
        .request(json!({"op":"join","room":"r","since":first.to_string()}))
        .await;
    assert_eq!(r["recovered"], false, "{r}");
    // Both connections are still open and served.
    assert_eq!(c.request(json!({"op":"ping"})).await["op"], "pong");
    assert_eq!(d.request(json!({"op":"ping"})).await["op"], "pong");
}
