//! One client connection: a single task, small while idle, in layers
//! that depend one way (socket -> frames -> ops -> session -> end):
//!
//! - [`socket`]: the transport. The task's wait (socket readiness, queue
//!   signal, one timer, shutdown), read bursts of WebSocket frames, writes
//!   of the outbound queue, the close handshake. It knows frames, not
//!   requests.
//! - [`frames`]: frames in: control frames, reassembly, text messages
//!   parsed into requests and handed to the op table.
//! - [`ops`]: the handlers, one file per op family (`auth`, `rooms`,
//!   `send`, `history`, `presence`), and the dispatch table. Adding an op
//!   touches the `protocol` parser, its arm in the table, and its family's
//!   file (plus tests). The send family's pipeline is the one the socket
//!   layer also calls: sends are batched per read burst.
//! - [`session`]: the connection's state and how it answers (replies and
//!   errors queued on its `hub::ConnHandle`); it never sees the socket.
//! - [`end`]: [`end::End`], how a connection ends: decided by handlers,
//!   carried out by the socket layer.
//!
//! [`serve`] ties them together for one upgraded connection.

mod end;
mod frames;
mod ops;
mod session;
mod socket;

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use self::session::Session;
use crate::Node;
use crate::auth::{AuthError, Identity};
use crate::metrics;

/// Serves one upgraded connection until it ends. `prefix` holds bytes
/// hyper read past the upgrade request; `header_auth` is the result of an
/// `Authorization` header, if there was one.
pub async fn serve(
    node: Arc<Node>,
    tcp: TcpStream,
    prefix: Bytes,
    header_auth: Option<Box<Result<Identity, AuthError>>>,
) {
    let m = metrics::get();
    m.connections_active.increment(1.0);
    m.connections_opened.increment(1);
    let mut s = Session::new(node);
    if let Some(h) = header_auth {
        // Boxed: its state (the identity, the per-user admission) must not
        // be part of every idle task.
        Box::pin(s.header_auth(*h)).await;
    }
    // Each step awaited here, not wrapped in one more async fn: this future
    // lives as long as the connection, and a wrapper that owned the socket
    // would keep a second copy of it (checked by the test below).
    let mut tcp = tcp;
    let mut prefix = prefix;
    let end = socket::run(&mut tcp, &mut prefix, &mut s).await;
    socket::close(&mut tcp, &s, end).await;
    s.leave_all().await;
    s.forget_identity();
    s.handle().close();
    m.connections_active.decrement(1.0);
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_future_stays_small() {
        // The whole connection task future is allocated for the
        // connection's life; the read burst is boxed so it is not part of it.
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let (tx, _) = tokio::sync::oneshot::channel::<()>();
        drop(tx);
        let settings = crate::Config::load(["gateway"]).unwrap().validate().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("conn-size-{}", std::process::id()));
            let store: std::sync::Arc<dyn storage::HistoryStore> =
                std::sync::Arc::new(storage::EmbeddedStore::open(&dir).unwrap());
            let hub = crate::hub::Hub::new(
                1,
                crate::hub::QueueLimits {
                    deliveries: 16,
                    bytes: 1 << 20,
                },
            );
            let bus = std::sync::Arc::new(dispatcher::inprocess::InProcessBus::new(
                store,
                std::sync::Arc::new(crate::hub::Router { hub: hub.clone() }),
            ));
            let admission = crate::admission::Admission::new(&settings, None);
            let node = std::sync::Arc::new(crate::Node {
                node_id: "gw-0".into(),
                auth: crate::auth::Authenticator::new(&settings),
                settings,
                hub,
                bus,
                shutdown: Default::default(),
                closing: Default::default(),
                tracker: Default::default(),
                prometheus: crate::metrics::install(),
                admission,
                heavy_reads: tokio::sync::Semaphore::new(1),
                read_events: Default::default(),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let fut = super::serve(node, tcp, bytes::Bytes::new(), None);
            let n = size(&fut);
            eprintln!("connection future: {n} bytes");
            eprintln!("conn handle: {} bytes", std::mem::size_of::<crate::hub::ConnHandle>());
            assert!(n < 2048, "connection future is {n} bytes");
            // The task spawned per connection wraps it (the upgrade's wait
            // and the admission slot): measured without calling it.
            fn returned<F, A, B, C, D, Fut>(_: F) -> usize
            where
                F: FnOnce(A, B, C, D) -> Fut,
            {
                std::mem::size_of::<Fut>()
            }
            let task = returned(crate::http::connection_task);
            eprintln!("connection task future: {task} bytes");
            assert!(task < 2048, "connection task future is {task} bytes");
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
