//! Protocol v1 against a real node over real sockets: every op, event,
//! error code and close code.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use testkit::Wait;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

#[tokio::test]
async fn anonymous_auth_join_send_and_receive() {
    let node = TestNode::start(&[]).await;
    let mut a = node.client().await;
    let ok = a.request(json!({"op":"auth"})).await;
    assert_eq!(ok["op"], "ok");
    assert_eq!(ok["node"], "gw-0");
    let user = ok["user"].as_str().unwrap().to_string();
    assert!(user.starts_with("guest-"), "{user}");

    let mut b = node.guest().await;
    let joined = a.join("r1").await;
    assert_eq!(joined["room"], "r1");
    assert_eq!(joined["recovered"], true);
    b.join("r1").await;

    let r = a
        .request(json!({"op":"send","room":"r1","body":{"text":"hi","n":[1,2]}}))
        .await;
    assert_eq!(r["op"], "ok");
    assert_eq!(r["room"], "r1");
    let id: u64 = r["msg"].as_str().expect("id is a decimal string").parse().unwrap();
    assert!(r["ts"].as_u64().unwrap() > 1_600_000_000_000);

    for c in [&mut a, &mut b] {
        let m = c.next_msg("r1").await;
        assert_eq!(msg_id(&m), id);
        assert_eq!(m["from"], user.as_str());
        assert_eq!(m["body"], json!({"text":"hi","n":[1,2]}));
        assert_eq!(m["ts"], r["ts"]);
    }
}

#[tokio::test]
async fn ids_ascend_in_delivery_order_with_concurrent_senders() {
    let node = TestNode::start(&["--send-rate", "10000", "--send-burst", "10000"]).await;
    let mut reader = node.guest().await;
    reader.join("busy").await;
    let mut senders = Vec::new();
    for s in 0..4 {
        let mut c = node.guest().await;
        c.join("busy").await;
        senders.push(tokio::spawn(async move {
            for i in 0..50 {
                c.send_msg("busy", json!({"s": s, "i": i})).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let mut last = 0;
    for _ in 0..200 {
        let id = msg_id(&reader.next_msg("busy").await);
        assert!(id > last, "{id} after {last}");
        last = id;
    }
}

#[tokio::test]
async fn requests_before_auth_are_refused_and_the_connection_survives() {
    let node = TestNode::start(&[]).await;
    let mut c = node.client().await;
    let r = c.request(json!({"op":"join","room":"r1"})).await;
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str()),
        (Some("error"), Some("unauthorized"))
    );
    let ok = c.request(json!({"op":"auth"})).await;
    assert_eq!(ok["op"], "ok");
    let again = c.request(json!({"op":"auth"})).await;
    assert_eq!(again["code"], "bad_request");
    assert_eq!(c.request(json!({"op":"ping"})).await, json!({"op":"pong","id":4}));
}

#[tokio::test]
async fn auth_timeout_closes_4001() {
    let node = TestNode::start(&["--auth-timeout", "300ms"]).await;
    let mut c = node.client().await;
    let (end, _) = c.until_closed().await;
    assert_eq!(end, Ended::Close(4001));
}

#[tokio::test]
async fn leave_send_rules_and_not_found() {
    let node = TestNode::start(&[]).await;
    let mut c = node.guest().await;
    let r = c.request(json!({"op":"send","room":"r1","body":1})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = c.request(json!({"op":"leave","room":"r1"})).await;
    assert_eq!(r["code"], "not_found", "{r}");
    c.join("r1").await;
    let r = c.request(json!({"op":"leave","room":"r1"})).await;
    assert_eq!((r["op"].as_str(), r["room"].as_str()), (Some("ok"), Some("r1")));
    let r = c.request(json!({"op":"send","room":"r1","body":1})).await;
    assert_eq!(r["code"], "forbidden");
    let r = c.request(json!({"op":"typing","room":"r1"})).await;
    assert_eq!(r["code"], "forbidden");
}

#[tokio::test]
async fn history_pages_ascending_in_every_direction() {
    let node = TestNode::start(&["--send-rate", "10000", "--send-burst", "10000"]).await;
    let mut c = node.guest().await;
    c.join("h").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(c.send_msg("h", json!(i)).await);
    }
    let page = |v: &serde_json::Value| -> Vec<u64> { v["messages"].as_array().unwrap().iter().map(msg_id).collect() };
    let newest = c.request(json!({"op":"history","room":"h","limit":5})).await;
    assert_eq!(newest["op"], "history");
    assert_eq!(newest["room"], "h");
    assert_eq!(page(&newest), ids[25..].to_vec());
    assert_eq!(newest["messages"][4]["body"], json!(29));
    let before = c
        .request(json!({"op":"history","room":"h","before":ids[10].to_string(),"limit":3}))
        .await;
    assert_eq!(page(&before), ids[7..10].to_vec());
    let after = c
        .request(json!({"op":"history","room":"h","after":ids[10].to_string(),"limit":3}))
        .await;
    assert_eq!(page(&after), ids[11..14].to_vec());
    let all = c.request(json!({"op":"history","room":"h"})).await;
    assert_eq!(page(&all), ids);
    let empty = c.request(json!({"op":"history","room":"nobody-here"})).await;
    assert_eq!(empty["messages"], json!([]));
    for bad in [json!(0), json!(501), json!("x")] {
        let r = c.request(json!({"op":"history","room":"h","limit":bad})).await;
        assert_eq!(r["code"], "bad_request", "{r}");
    }
}

#[tokio::test]
async fn join_since_replays_the_gap_then_goes_live_without_duplicates() {
    let node = TestNode::start(&["--send-rate", "10000", "--send-burst", "10000"]).await;
    let mut sender = node.guest().await;
    sender.join("r").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(sender.send_msg("r", json!(i)).await);
    }
    // Keep sending while the late client joins with `since`.
    let mut background = node.guest().await;
    background.join("r").await;
    let live = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..50 {
            ids.push(background.send_msg("r", json!(100 + i)).await);
        }
        ids
    });
    let mut late = node.guest().await;
    late.send(json!({"op":"join","id":77,"room":"r","since":ids[4].to_string()}))
        .await;
    let live_ids = live.await.unwrap();
    let mut expected: Vec<u64> = ids[5..].to_vec();
    expected.extend(&live_ids);

    let mut got = Vec::new();
    let mut ok_at = None;
    while got.len() < expected.len() {
        let v = late.recv().await;
        match v["op"].as_str() {
            Some("msg") => got.push(msg_id(&v)),
            Some("ok") => {
                assert_eq!(v["id"], 77);
                assert_eq!(v["recovered"], true);
                ok_at = Some(got.len());
            }
            _ => {}
        }
    }
    assert_eq!(got, expected, "gap-free, duplicate-free, ascending");
    let ok_at = ok_at.expect("the join was answered");
    assert!(
        ok_at >= 15,
        "the 15 missed messages come before the ok (ok after {ok_at})"
    );
}

#[tokio::test]
async fn a_gap_beyond_the_recovery_limit_is_not_recovered() {
    let node = TestNode::start(&["--recovery-limit", "5", "--send-rate", "1000", "--send-burst", "1000"]).await;
    let mut c = node.guest().await;
    c.join("g").await;
    let first = c.send_msg("g", json!(0)).await;
    for i in 1..=6 {
        c.send_msg("g", json!(i)).await;
    }
    let mut late = node.guest().await;
    let r = late
        .request(json!({"op":"join","room":"g","since":first.to_string()}))
        .await;
    assert_eq!(r["op"], "ok");
    assert_eq!(r["recovered"], false);
    assert!(
        late.backlog.iter().all(|v| v["op"] != "msg"),
        "nothing replayed: {:?}",
        late.backlog
    );
    // Exactly at the limit: recovered.
    let mut at_limit = node.guest().await;
    let second: u64 = {
        let h = c.request(json!({"op":"history","room":"g","limit":7})).await;
        msg_id(&h["messages"][1])
    };
    let r = at_limit
        .request(json!({"op":"join","room":"g","since":second.to_string()}))
        .await;
    assert_eq!(r["recovered"], true);
    assert_eq!(at_limit.backlog.iter().filter(|v| v["op"] == "msg").count(), 5);
}

#[tokio::test]
async fn presence_joined_left_and_typing() {
    let node = TestNode::start(&["--jwt-secret", SECRET, "--allow-anonymous"]).await;
    let mut alice = Client::connect(&node.url(), Some(&token(valid_claims("alice")))).await;
    let mut bob = Client::connect(&node.url(), Some(&token(valid_claims("bob")))).await;
    alice.join("p").await;
    bob.join("p").await;
    let ev = alice.recv_matching(|v| v["op"] == "joined" && v["user"] == "bob").await;
    assert_eq!(ev, json!({"op":"joined","room":"p","user":"bob"}));

    let pres = alice.request(json!({"op":"presence","room":"p"})).await;
    assert_eq!(pres["users"], json!(["alice", "bob"]));
    assert_eq!(pres["room"], "p");

    bob.send(json!({"op":"typing","room":"p"})).await;
    let t = alice.recv_matching(|v| v["op"] == "typing").await;
    assert_eq!(t, json!({"op":"typing","room":"p","user":"bob"}));
    // Bob does not get his own typing: the next thing he sees is his pong.
    let pong = bob.request(json!({"op":"ping"})).await;
    assert_eq!(pong["op"], "pong");
    assert!(bob.backlog.iter().all(|v| v["op"] != "typing"), "{:?}", bob.backlog);

    drop(bob);
    let left = alice.recv_matching(|v| v["op"] == "left").await;
    assert_eq!(left, json!({"op":"left","room":"p","user":"bob"}));
    let pres = alice.request(json!({"op":"presence","room":"p"})).await;
    assert_eq!(pres["users"], json!(["alice"]));
}

#[tokio::test]
async fn ephemeral_messages_are_delivered_but_never_stored() {
    let node = TestNode::start(&[]).await;
    let mut a = node.guest().await;
    let mut b = node.guest().await;
    a.join("e").await;
    b.join("e").await;
    let r = a
        .request(json!({"op":"send","room":"e","body":"poof","ephemeral":true}))
        .await;
    assert_eq!(r["op"], "ok");
    let m = b.next_msg("e").await;
    assert_eq!(m["body"], "poof");
    let h = a.request(json!({"op":"history","room":"e"})).await;
    assert_eq!(h["messages"], json!([]));
}

#[tokio::test]
async fn malformed_and_invalid_frames_get_bad_request_and_the_connection_survives() {
    let node = TestNode::start(&[]).await;
    let mut c = node.guest().await;
    c.send_raw(Message::Text("{not json".into())).await;
    let e = c.recv().await;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    assert!(e["message"].as_str().unwrap().contains("malformed JSON"), "{e}");
    for (frame, needle) in [
        (json!({"op":"fly","id":3}), "unknown op"),
        (json!({"op":"join","id":3,"room":"no spaces"}), "invalid room"),
        (json!({"op":"join","id":3,"room":"x".repeat(129)}), "invalid room"),
        (json!({"op":"join","id":3}), "missing \"room\""),
        (json!({"op":"send","id":3,"room":"r"}), "missing \"body\""),
        (json!({"op":"join","id":3,"room":"r","since":"abc"}), "message id"),
    ] {
        c.send(frame.clone()).await;
        let e = c.recv().await;
        assert_eq!(e["code"], "bad_request", "{frame}: {e}");
        assert_eq!(e["id"], 3, "{frame}: {e}");
        assert!(e["message"].as_str().unwrap().contains(needle), "{frame}: {e}");
    }
    assert_eq!(c.request(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test]
async fn repeated_bad_frames_close_1008() {
    let node = TestNode::start(&["--max-bad-frames", "3"]).await;
    let mut c = node.guest().await;
    for _ in 0..4 {
        c.send_raw(Message::Text("nope".into())).await;
    }
    let (end, frames) = c.until_closed().await;
    assert_eq!(end, Ended::Close(1008));
    assert_eq!(frames.iter().filter(|f| f["code"] == "bad_request").count(), 4);
}

#[tokio::test]
async fn oversize_body_gets_too_large() {
    let node = TestNode::start(&["--max-body-bytes", "100"]).await;
    let mut c = node.guest().await;
    c.join("r").await;
    let r = c.request(json!({"op":"send","room":"r","body":"x".repeat(200)})).await;
    assert_eq!(r["code"], "too_large", "{r}");
    assert_eq!(c.request(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test]
async fn oversize_frame_closes_1009() {
    let node = TestNode::start(&["--max-frame-bytes", "4096", "--max-body-bytes", "1000"]).await;
    let mut c = node.guest().await;
    c.send_raw(Message::Text("x".repeat(5000).into())).await;
    assert_eq!(c.until_closed().await.0, Ended::Close(1009));
}

fn raw_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Message {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        ..FrameHeader::default()
    };
    Message::Frame(Frame::from_payload(header, payload.to_vec().into()))
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_and_bounded() {
    let node = TestNode::start(&["--max-frame-bytes", "4096", "--max-body-bytes", "1000"]).await;
    let mut c = node.guest().await;
    let text = json!({"op":"ping","id":42}).to_string();
    let (a, b) = text.as_bytes().split_at(5);
    c.send_raw(raw_frame(OpCode::Data(Data::Text), false, a)).await;
    c.send_raw(raw_frame(OpCode::Data(Data::Continue), true, b)).await;
    assert_eq!(c.recv().await, json!({"op":"pong","id":42}));

    // Each fragment is under the frame limit; together they are over it.
    let chunk = vec![b' '; 3000];
    c.send_raw(raw_frame(OpCode::Data(Data::Text), false, &chunk)).await;
    c.send_raw(raw_frame(OpCode::Data(Data::Continue), false, &chunk)).await;
    c.send_raw(raw_frame(OpCode::Data(Data::Continue), true, b"{}")).await;
    assert_eq!(c.until_closed().await.0, Ended::Close(1009));
}

#[tokio::test]
async fn binary_frames_close_1003() {
    let node = TestNode::start(&[]).await;
    let mut c = node.guest().await;
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(c.until_closed().await.0, Ended::Close(1003));
}

#[tokio::test]
async fn compressed_frames_close_1002() {
    // A frame with RSV1 set (permessage-deflate), which was never negotiated.
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start(&[]).await;
    let mut c = node.guest().await;
    let mut header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    header.rsv1 = true;
    header.mask = Some([1, 2, 3, 4]);
    let mut bytes = Vec::new();
    header.format(2, &mut bytes).unwrap();
    bytes.extend([b'{' ^ 1, b'}' ^ 2]);
    let tcp = match c.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(c.until_closed().await.0, Ended::Close(1002));
}

#[tokio::test]
async fn client_close_is_echoed() {
    let node = TestNode::start(&[]).await;
    let mut c = node.guest().await;
    c.ws.close(None).await.unwrap();
    // tungstenite reports the server's echo as the end of the stream.
    let (end, _) = c.until_closed().await;
    assert!(matches!(end, Ended::Close(_) | Ended::Gone), "{end:?}");
}

#[tokio::test]
async fn broken_upgrade_requests_get_http_errors() {
    let node = TestNode::start(&[]).await;
    let (status, _) = node.http("GET", "/ws", &[], "").await;
    assert_eq!(status, 426);
    // No key; then a version other than 13.
    let (status, body) = node.http("GET", "/ws", &ws_upgrade_headers(None, "13"), "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = node
        .http("GET", "/ws", &ws_upgrade_headers(Some(WS_KEY), "8"), "")
        .await;
    // RFC 6455 4.2.2 (tests/rfc.rs checks the Sec-WebSocket-Version header).
    assert_eq!(status, 426, "{body}");
    // Garbage instead of HTTP.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("closed in time");
    // The node is unharmed.
    let mut c = node.guest().await;
    assert_eq!(c.request(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test]
async fn rate_limits_answer_rate_limited_then_close_4029() {
    let node = TestNode::start(&["--send-rate", "1", "--send-burst", "2", "--rate-limit-grace", "300ms"]).await;
    let mut c = node.guest().await;
    c.join("r").await;
    c.send_msg("r", json!(1)).await;
    c.send_msg("r", json!(2)).await;
    let r = c.request(json!({"op":"send","room":"r","body":3})).await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    // Still over the rate: each typing gets a reply until the close.
    let end = Wait::new("the close while over the rate", WAIT)
        .every(std::time::Duration::ZERO)
        .until_async(async || {
            c.send(json!({"op":"typing","room":"r"})).await;
            c.until_closed_or_next().await.ok_or("a frame; still open")
        })
        .await;
    assert_eq!(end, Ended::Close(4029));
}

impl Client {
    /// The next frame, or how the connection ended.
    async fn until_closed_or_next(&mut self) -> Option<Ended> {
        loop {
            use futures_util::StreamExt;
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("in time") {
                Some(Ok(Message::Text(_))) => return None,
                Some(Ok(Message::Close(f))) => return Some(Ended::Close(f.map(|f| u16::from(f.code)).unwrap_or(1005))),
                Some(Ok(_)) => continue,
                _ => return Some(Ended::Gone),
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_4008_and_others_are_unaffected() {
    let node = TestNode::start(&[
        "--outbound-queue",
        "16",
        "--send-rate",
        "100000",
        "--send-burst",
        "100000",
    ])
    .await;
    // A tiny receive buffer so the kernel cannot absorb the backlog.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(node.url(), stream).await.unwrap();
    let mut slow = Client::from_stream(ws);
    assert_eq!(slow.request(json!({"op":"auth"})).await["op"], "ok");
    slow.join("flood").await;

    let mut fast = node.guest().await;
    fast.join("flood").await;
    // More than the kernel buffers hold (tcp_wmem max is 4 MiB here), sent
    // until the node reports the slow consumer.
    let body = "y".repeat(30_000);
    let mut sent = 0;
    loop {
        assert!(sent < 2_000, "no slow consumer detected after {sent} messages");
        for _ in 0..20 {
            fast.send_msg("flood", json!(body)).await;
            sent += 1;
        }
        let (_, metrics) = node.http("GET", "/metrics", &[], "").await;
        if metrics
            .lines()
            .any(|l| l.starts_with("gateway_slow_consumer_disconnects_total") && !l.ends_with(" 0"))
        {
            break;
        }
    }
    // Reading now, the slow client gets what fit in the buffers, then 4008.
    let (end, frames) = slow.until_closed().await;
    assert_eq!(end, Ended::Close(4008), "after {} frames", frames.len());
    assert!(frames.len() < sent);
    // The fast member got everything.
    for _ in 0..sent {
        fast.next_msg("flood").await;
    }
}

#[tokio::test]
async fn server_pings_and_drops_silent_clients() {
    use tokio::io::AsyncReadExt;
    let node = TestNode::start(&["--ping-interval", "200ms"]).await;
    // A raw socket that completes the handshake and then never answers.
    let mut c = node.guest().await;
    let tcp = match c.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    let mut seen_ping = false;
    let mut buf = vec![0u8; 1024];
    Wait::new("the node to drop a client that never answers its pings", WAIT)
        .every(std::time::Duration::ZERO)
        .until_async(async || {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .expect("in time")
                .unwrap_or(0);
            if n == 0 {
                return Ok(());
            }
            if buf[..n].windows(2).any(|w| w == [0x89, 0x00]) {
                seen_ping = true;
            }
            Err(format!("{n} more bytes, still connected"))
        })
        .await;
    assert!(seen_ping, "the server pinged before dropping");
    // A client that answers pings (tungstenite does) stays connected.
    let mut live = node.guest().await;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(800) {
        assert_eq!(live.request(json!({"op":"ping"})).await["op"], "pong");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_replay_larger_than_the_outbound_queue_is_not_a_slow_consumer() {
    use futures_util::SinkExt;
    let node = TestNode::start(&[
        "--outbound-queue",
        "16",
        "--recovery-limit",
        "100",
        "--send-rate",
        "1000",
        "--send-burst",
        "1000",
    ])
    .await;
    let mut sender = node.guest().await;
    sender.join("big").await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(sender.send_msg("big", json!(i)).await);
    }
    // join+since and a send in one write: the send's live delivery reaches
    // the queue while the 49 replayed messages are still in it.
    let mut late = node.guest().await;
    let join = json!({"op":"join","id":101,"room":"big","since":ids[0].to_string()});
    let send = json!({"op":"send","id":102,"room":"big","body":"live"});
    late.ws.feed(Message::Text(join.to_string().into())).await.unwrap();
    late.ws.feed(Message::Text(send.to_string().into())).await.unwrap();
    late.ws.flush().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 50 {
        let v = late.recv().await;
        if v["op"] == "msg" {
            got.push(msg_id(&v));
        }
    }
    assert_eq!(&got[..49], &ids[1..]);
    assert!(got[49] > ids[49]);
    assert_eq!(late.request(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test]
async fn garbage_after_the_upgrade_never_harms_the_node() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start(&[]).await;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..20 {
        let mut c = node.guest().await;
        let tcp = match c.ws.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
            _ => unreachable!(),
        };
        let junk: Vec<u8> = (0..64 + round * 37)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = tcp.write_all(&junk).await;
        // Whatever the junk parses as, the connection ends or answers; it
        // never hangs the node.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), c.until_closed()).await;
    }
    let mut ok = node.guest().await;
    ok.join("still-here").await;
    ok.send_msg("still-here", json!("fine")).await;
}

#[tokio::test]
async fn a_large_oversize_frame_still_gets_its_1009() {
    // Much more than one read: unread data must not turn the close into a reset.
    let node = TestNode::start(&["--max-frame-bytes", "4096", "--max-body-bytes", "1000"]).await;
    let mut c = node.guest().await;
    let _ = c.ws.send(Message::Text("x".repeat(300_000).into())).await;
    assert_eq!(c.until_closed().await.0, Ended::Close(1009));
}

#[tokio::test]
async fn since_from_the_future_is_refused_and_ephemeral_messages_keep_order() {
    let node = TestNode::start(&[]).await;
    let mut c = node.guest().await;
    let r = c
        .request(json!({"op":"join","room":"f","since":"18446744073709551615"}))
        .await;
    assert_eq!(r["code"], "bad_request", "{r}");
    // Stored and ephemeral messages share one ascending id order.
    c.join("f").await;
    let a = c.send_msg("f", json!("stored")).await;
    let e = c
        .request(json!({"op":"send","room":"f","body":"eph","ephemeral":true}))
        .await;
    let b = c.send_msg("f", json!("stored again")).await;
    let e: u64 = e["msg"].as_str().unwrap().parse().unwrap();
    assert!(a < e && e < b);
    let got: Vec<u64> = [c.next_msg("f").await, c.next_msg("f").await, c.next_msg("f").await]
        .iter()
        .map(msg_id)
        .collect();
    assert_eq!(got, vec![a, e, b]);
}

#[tokio::test]
async fn a_client_that_sends_but_never_reads_is_bounded() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start(&[
        "--send-rate",
        "10000",
        "--send-burst",
        "10000",
        "--request-rate",
        "100000",
        "--request-burst",
        "100000",
    ])
    .await;
    let mut writer = node.guest().await;
    writer.join("big").await;
    for _ in 0..40 {
        writer.send_msg("big", json!("z".repeat(30_000))).await;
    }
    // A reader with a tiny receive buffer asks for the 1.2 MB history page
    // over and over and never reads: the node stops reading its requests.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(node.url(), stream).await.unwrap();
    let mut greedy = Client::from_stream(ws);
    assert_eq!(greedy.request(json!({"op":"auth"})).await["op"], "ok");
    let tcp = match greedy.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    // Masked client frames (zero mask), written raw so nothing is read
    // back; padded to 60 KB so they outgrow the kernel's buffers (32 MiB).
    let mut req = br#"{"op":"history","room":"big","limit":500}"#.to_vec();
    req.resize(60_000, b' ');
    let mut frame = vec![0x81, 0x80 | 126];
    frame.extend_from_slice(&(req.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&req);
    let history_served = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with("gateway_ws_requests_total{op=\"history\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let before = history_served(&node.http("GET", "/metrics", &[], "").await.1);
    let mut written = 0usize;
    let write_all = async {
        for _ in 0..5_000 {
            tcp.write_all(&frame).await?;
            written += 1;
        }
        Ok::<_, std::io::Error>(())
    };
    // The writes stall (TCP backpressure) long before 5,000 requests (300 MB).
    let stalled = tokio::time::timeout(std::time::Duration::from_secs(5), write_all)
        .await
        .is_err();
    assert!(stalled, "all {written} requests were accepted");
    let served = history_served(&node.http("GET", "/metrics", &[], "").await.1) - before;
    // Each reply is 1.2 MB: the node served a handful, not all it received.
    assert!(served < 50.0, "served {served} of {written} history requests");
    // The node still serves others.
    assert_eq!(writer.request(json!({"op":"ping"})).await["op"], "pong");
}

#[tokio::test]
async fn pipelined_sends_are_answered_in_order() {
    let node = TestNode::start(&["--send-rate", "10000", "--send-burst", "10000"]).await;
    let mut c = node.guest().await;
    pipelined_sends_keep_order(&mut c).await;
}

/// A client frame arriving slowly (its header and a few bytes, the rest
/// later) must not hold back what the node has for that client: replies to
/// earlier requests and room messages still arrive while the frame is half
/// read, and the frame is served once it completes.
#[tokio::test]
async fn a_half_received_frame_does_not_hold_back_deliveries() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start(&[]).await;
    let mut slow = node.guest().await;
    slow.join("upload").await;
    let mut sender = node.guest().await;
    sender.join("upload").await;
    let tcp = match slow.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    // Masked client frames with a zero mask (payload unchanged).
    let masked = |payload: &[u8]| {
        let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    let later = masked(br#"{"op":"ping","id":2}"#);
    // One write, so the node reads both at once: a whole ping, then the
    // first 8 bytes of the next frame, whose rest does not come yet.
    let mut bytes = masked(br#"{"op":"ping","id":1}"#);
    bytes.extend_from_slice(&later[..8]);
    tcp.write_all(&bytes).await.unwrap();

    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut read_until = async |tcp: &mut tokio::net::TcpStream, what: &str| {
        let found = |seen: &[u8]| seen.windows(what.len()).any(|w| w == what.as_bytes());
        while !found(&seen) {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what} did not arrive: {}", String::from_utf8_lossy(&seen)))
                .unwrap();
            assert!(n > 0, "closed before {what}");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    // The reply to the whole frame, while the next one is half read.
    read_until(tcp, r#""id":1"#).await;
    // A room message, still while the frame is half read.
    sender.send_msg("upload", json!({"t": "while you upload"})).await;
    read_until(tcp, "while you upload").await;
    // The rest of the frame: it is served as usual.
    tcp.write_all(&later[8..]).await.unwrap();
    read_until(tcp, r#""id":2"#).await;
}
