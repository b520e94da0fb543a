//! The client listener's accept loop step: connections from an address
//! over its connection rate are closed before tokio ever registers them.
//!
//! A refused connection then costs an `accept` and a `close`, not also an
//! `epoll_ctl` add and delete and a task wake: under a connection storm
//! from one address (thousands a second) those were a third of the node's
//! time spent on it.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct Acceptor {
    listener: AsyncFd<std::net::TcpListener>,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener) -> io::Result<Acceptor> {
        // Stays non-blocking (tokio's listeners are).
        let listener = listener.into_std()?;
        // Deprecated because a `T` could close its descriptor while it is
        // registered; a `std::net::TcpListener` owns its descriptor for as
        // long as the `AsyncFd` holds it, which is the sound case (the
        // replacement, `register`, is `unsafe`, which this crate forbids).
        #[allow(deprecated)]
        let listener = AsyncFd::with_interest(listener, tokio::io::Interest::READABLE)?;
        Ok(Acceptor { listener })
    }

    /// The next connection `admit` lets in; the others are closed at once
    /// and `refused` is called for each.
    pub(crate) async fn accept(
        &self,
        admit: impl Fn(IpAddr) -> bool,
        refused: impl Fn(),
    ) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.listener.readable().await?;
            match ready.try_io(|l| l.get_ref().accept()) {
                Ok(Ok((stream, peer))) => {
                    if !admit(peer.ip()) {
                        refused();
                        drop(stream);
                        continue;
                    }
                    stream.set_nonblocking(true)?;
                    return Ok((TcpStream::from_std(stream)?, peer));
                }
                Ok(Err(e)) => return Err(e),
                // Nothing left to accept: wait for readiness again.
                Err(_would_block) => continue,
            }
        }
    }
}
