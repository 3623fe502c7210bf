//! The last step every byte-stream transport shares: a secured, hello'd byte stream
//! becomes a multiplexed [`Connection`].

use std::{net::SocketAddr, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{ConnStats, Connection, ConnectionParts};
use crate::{
    address::{PathKind, TransportAddr},
    identity::PeerId,
    mux::{Mux, MuxConfig},
    node::LocalNode,
    wire::Hello,
};

/// Who is at the other end of a byte-stream connection being built.
pub(crate) struct StreamEnd {
    /// The authenticated peer.
    pub(crate) peer: PeerId,
    /// Its address (the protocol follows from it).
    pub(crate) remote_addr: TransportAddr,
    /// Names the remote in errors and logs.
    pub(crate) label: String,
    /// The local socket address, if any.
    pub(crate) local: Option<SocketAddr>,
    /// Whether this side dialed (and so opens odd stream ids).
    pub(crate) dialer: bool,
    /// Direct or through a relay.
    pub(crate) path: PathKind,
}

/// Wraps `io` (secure channel up, hellos exchanged) in the stream multiplexer.
pub(crate) fn muxed_connection<S>(node: &LocalNode, io: S, end: StreamEnd, remote_hello: Hello) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let stats = Arc::new(ConnStats::default());
    let mux =
        Mux::new(io, end.dialer, MuxConfig::from_node(node.config()), end.label, end.local, stats.clone());
    let parts = ConnectionParts {
        peer: end.peer,
        protocol: end.remote_addr.protocol(),
        remote_addr: end.remote_addr,
        path: end.path,
        remote_hello,
        dialer: end.dialer,
    };
    Connection::new(parts, Arc::new(mux), stats)
}
