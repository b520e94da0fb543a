//! Opens N WebSocket connections to a gateway, authenticates each (as a
//! guest), joins one of `rooms` rooms, prints `ready <n>` and holds them
//! idle until stdin closes. Source addresses spread over 127.0.0.x so one
//! address's ports are not the limit. A stand-in until the `loadtest`
//! crate exists; used by `benches/idle_memory.sh`.
//!
//! Usage: idle_clients <ws-url> <connections> [rooms]

use std::net::{Ipv4Addr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .expect("usage: idle_clients <ws-url> <connections> [rooms]")
        .clone();
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).expect("connections");
    let rooms: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let target: SocketAddr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .expect("ws://ip:port/ws");

    let mut held = Vec::with_capacity(n);
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut started = 0;
    while held.len() < n {
        while started < n && pending.len() < 256 {
            let url = url.clone();
            let i = started;
            started += 1;
            pending.push(async move {
                let socket = TcpSocket::new_v4().unwrap();
                let src = Ipv4Addr::new(127, 0, 1 + (i / 20_000) as u8, 1 + ((i / 250) % 250) as u8);
                socket.bind(SocketAddr::new(src.into(), 0)).unwrap();
                let stream = socket.connect(target).await.expect("connect");
                let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("handshake");
                for frame in [
                    r#"{"op":"auth","id":1}"#.to_string(),
                    format!(r#"{{"op":"join","id":2,"room":"idle-{}"}}"#, i % rooms),
                ] {
                    ws.send(Message::Text(frame.into())).await.unwrap();
                }
                // Wait for both replies (presence events may come between).
                let mut oks = 0;
                while oks < 2 {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains(r#""op":"ok""#) => oks += 1,
                        Some(Ok(Message::Text(t))) if t.contains(r#""op":"error""#) => panic!("{t}"),
                        Some(Ok(_)) => {}
                        other => panic!("connection {i} ended: {other:?}"),
                    }
                }
                ws
            });
        }
        if let Some(ws) = pending.next().await {
            held.push(ws);
        }
    }
    println!("ready {}", held.len());
    // Hold them, answering pings, until stdin closes.
    let keep = tokio::spawn(async move {
        let mut all = futures_util::stream::select_all(held.into_iter().map(|ws| ws.split().1));
        while all.next().await.is_some() {}
    });
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    keep.abort();
}
