//! Token lifetime (protocol 1.1): `expires_in` in the `auth` reply, a
//! connection closed 4001 once its token expired and the grace passed,
//! `refresh` moving the expiry, refusing another user's token, and taking
//! the connection out of rooms a refreshed `rooms` claim no longer grants.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn expiring(sub: &str, secs: u64, rooms: Option<&[&str]>) -> String {
    let mut claims = json!({"sub": sub, "exp": now_secs() + secs});
    if let Some(r) = rooms {
        claims["rooms"] = json!(r);
    }
    token(claims)
}

#[tokio::test]
async fn auth_reports_expires_in_and_guests_have_none() {
    let node = TestNode::start(&["--jwt-secret", SECRET, "--allow-anonymous"]).await;
    let mut c = node.client().await;
    let ok = c.request(json!({"op":"auth","token":expiring("u1", 600, None)})).await;
    let left = ok["expires_in"].as_u64().unwrap_or_else(|| panic!("{ok}"));
    assert!((590..=600).contains(&left), "{ok}");
    let mut g = node.client().await;
    let ok = g.request(json!({"op":"auth"})).await;
    assert_eq!(ok["op"], "ok");
    assert!(ok.get("expires_in").is_none(), "{ok}");
    node.stop().await;
}

#[tokio::test]
async fn an_expired_token_closes_4001_after_the_grace_unless_refreshed() {
    let node = TestNode::start(&["--jwt-secret", SECRET, "--token-expiry-grace", "1s"]).await;
    // Not refreshed: closed once exp (2 s) and the grace (1 s) have passed.
    let started = Instant::now();
    let mut stale = node.client().await;
    assert_eq!(
        stale
            .request(json!({"op":"auth","token":expiring("u1", 2, None)}))
            .await["op"],
        "ok"
    );
    let mut fresh = node.client().await;
    assert_eq!(
        fresh
            .request(json!({"op":"auth","token":expiring("u2", 2, None)}))
            .await["op"],
        "ok"
    );
    let r = fresh
        .request(json!({"op":"refresh","token":expiring("u2", 600, None)}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    assert!(r["expires_in"].as_u64().unwrap() > 500, "{r}");

    let (end, frames) = stale.until_closed().await;
    assert_eq!(end, Ended::Close(4001), "{frames:?}");
    let last = frames.last().expect("an error before the close");
    assert_eq!(last["code"], "unauthorized", "{last}");
    assert_eq!(last["message"], "token expired", "{last}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "closed after {took:?}, before exp + grace"
    );
    // The refreshed connection lives on past the old expiry.
    assert_eq!(fresh.request(json!({"op":"ping"})).await["op"], "pong");
    node.stop().await;
}

#[tokio::test]
async fn refresh_is_for_the_same_user_and_drops_rooms_no_longer_granted() {
    let node = TestNode::start(&["--jwt-secret", SECRET]).await;
    let mut c = node.client().await;
    let t = expiring("u1", 600, Some(&["team-1:*", "lobby"]));
    assert_eq!(c.request(json!({"op":"auth","token":t})).await["op"], "ok");
    c.join("team-1:general").await;
    c.join("lobby").await;

    let other = c
        .request(json!({"op":"refresh","token":expiring("u2", 600, None)}))
        .await;
    assert_eq!(other["code"], "forbidden", "{other}");
    let bad = c.request(json!({"op":"refresh","token":"not-a-token"})).await;
    assert_eq!(bad["code"], "unauthorized", "{bad}");

    // The new token no longer grants team-1:*.
    let r = c
        .request(json!({"op":"refresh","token":expiring("u1", 900, Some(&["lobby"]))}))
        .await;
    assert_eq!(r["op"], "ok", "{r}");
    let removed = c.recv_matching(|v| v["op"] == "removed").await;
    assert_eq!(
        removed,
        json!({"op":"removed","room":"team-1:general","reason":"access"})
    );
    let send = c.request(json!({"op":"send","room":"team-1:general","body":1})).await;
    assert_eq!(send["code"], "forbidden", "no longer a member: {send}");
    c.send_msg("lobby", json!(1)).await;
    let join = c.request(json!({"op":"join","room":"team-1:general"})).await;
    assert_eq!(join["code"], "forbidden", "{join}");

    // Before authenticating, refresh is not a way in.
    let mut anon = node.client().await;
    let r = anon
        .request(json!({"op":"refresh","token":expiring("u1", 600, None)}))
        .await;
    assert_eq!(r["code"], "unauthorized", "{r}");
    node.stop().await;
}
