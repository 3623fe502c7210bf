//! quinn transport parameters derived from [`NodeConfig`], and UDP socket setup.

use std::{io, net::SocketAddr, sync::Arc};

use quinn::{
    congestion::{BbrConfig, CubicConfig, NewRenoConfig},
    IdleTimeout, TransportConfig, VarInt,
};
use socket2::{Domain, SockRef, Socket, Type};

use crate::{
    error::{Result, TransportError},
    node::{Congestion, NodeConfig},
};

/// Per-stream receive window. 8 MiB covers a 100 ms path at ~670 Mbit/s, or loopback at
/// quinn's measured ~3.8 Gbit/s with > 15 ms of slack, so one stream is never window-bound
/// on the paths Kizuna targets; quinn's default (1.25 MB) caps a 100 ms path at 100 Mbit/s.
const STREAM_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;
/// Connection-wide receive window: 32 MiB = four streams at full window. It is also the
/// most one connection can make this node buffer for an application that does not read.
const CONNECTION_RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;
/// Unacknowledged bytes this side keeps in flight per connection; matches the receive
/// window so a single fast peer is never limited by our sender.
const SEND_WINDOW: u64 = 32 * 1024 * 1024;
/// Concurrent bidirectional streams a peer may open: 256 (the primary stream plus
/// application streams). quinn's default is 100; 256 leaves headroom for parallel
/// transfers while bounding per-connection state.
const MAX_BIDI_STREAMS: u32 = 256;
/// Datagram buffers, each direction: 1 MiB (~800 full-size datagrams) absorbs bursts
/// without letting an unread datagram queue grow large; quinn drops the oldest beyond it.
const DATAGRAM_BUFFER: usize = 1024 * 1024;

/// The quinn transport configuration of a node.
pub(crate) fn transport_config(cfg: &NodeConfig) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(cfg.keep_alive_interval));
    // Only a timeout above 2^62 ms fails to convert; "never time out" is then its meaning.
    t.max_idle_timeout(IdleTimeout::try_from(cfg.idle_timeout).ok());
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS));
    // Kizuna uses bidirectional streams only.
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    match cfg.congestion {
        Congestion::Cubic => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
        Congestion::NewReno => t.congestion_controller_factory(Arc::new(NewRenoConfig::default())),
        Congestion::Bbr => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
    };
    Arc::new(t)
}

/// Sets the socket's send and receive buffers to `size` (best effort: the kernel caps
/// them at `net.core.{r,w}mem_max`, and a failure only costs throughput).
pub(crate) fn tune_socket(sock: SockRef<'_>, size: usize) {
    if let Err(e) = sock.set_recv_buffer_size(size) {
        tracing::warn!("cannot set UDP receive buffer to {size} bytes: {e}");
    }
    if let Err(e) = sock.set_send_buffer_size(size) {
        tracing::warn!("cannot set UDP send buffer to {size} bytes: {e}");
    }
}

/// A non-blocking UDP socket bound to `addr` with `buffer`-byte kernel buffers.
pub(crate) fn bind_udp(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket> {
    let ctx = |e: io::Error| TransportError::Io(io::Error::new(e.kind(), format!("UDP socket {addr}: {e}")));
    let sock =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(socket2::Protocol::UDP)).map_err(ctx)?;
    tune_socket(SockRef::from(&sock), buffer);
    sock.bind(&addr.into()).map_err(ctx)?;
    sock.set_nonblocking(true).map_err(ctx)?;
    Ok(sock.into())
}
