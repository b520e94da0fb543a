//! [`End`]: how a connection ends. The one type both layers share: request
//! handlers decide an end ([`super::session`], [`super::ops`]), the socket
//! layer ([`super::socket`]) carries it out. A leaf, so neither layer
//! imports the other for it.

/// How a connection ends.
pub(super) enum End {
    /// Send this close frame, then close the socket.
    Close(u16, &'static str),
    /// Drop the socket: it is gone, broken, or silent.
    Drop(&'static str),
}
