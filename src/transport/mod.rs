//! The transport contract: [`Transport`], [`Listener`], and the uniform [`Connection`] and
//! [`ByteStream`] every transport produces.
//!
//! An application never cares which transport carries it: every connection, whatever its
//! protocol, offers the same operations —
//!
//! * messages: [`Connection::send`] / [`Connection::recv`] (reliable, ordered, bounded by
//!   [`MAX_MESSAGE_LEN`](crate::wire::MAX_MESSAGE_LEN));
//! * byte streams: [`Connection::open_stream`] / [`Connection::accept_stream`] yield a
//!   [`ByteStream`], which is `AsyncRead + AsyncWrite` (read, write, flush, and close via
//!   `shutdown`), with per-stream flow control;
//! * unreliable datagrams where the transport has them;
//! * [`Connection::info`], [`Connection::is_connected`], [`Connection::close`].
//!
//! A `Connection` is returned only after the secure channel authenticated the peer and the
//! hello exchange completed.

pub mod accept;
pub mod admission;
mod backend;
mod connection;
mod muxed;
pub mod quic;
pub mod relay;
mod stream;
pub mod tcp;
pub mod tcp_punch;
pub mod webrtc;
pub mod ws;

use std::{future::Future, pin::Pin};

pub use backend::{ConnStats, ConnectionBackend};
pub use connection::{Connection, ConnectionParts};
pub use stream::{AsyncStream, ByteStream, StreamAbort};

use crate::{
    address::{Protocol, TransportAddr, TransportCapabilities},
    error::{Result, TransportError},
    identity::PeerId,
};

/// A boxed, `Send` future, as returned by the object-safe traits here.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One way of reaching peers (TCP, QUIC, ...).
///
/// Object safe, so a node can hold its transports as `Arc<dyn Transport>` and try them in
/// priority order.
pub trait Transport: Send + Sync + 'static {
    /// The protocol this transport speaks.
    fn protocol(&self) -> Protocol;

    /// What connections over this transport can do.
    fn capabilities(&self) -> TransportCapabilities {
        self.protocol().capabilities()
    }

    /// Preference among transports: higher is tried first when a peer offers several.
    fn priority(&self) -> u8;

    /// Whether the transport can be used on this host right now.
    fn is_available(&self) -> bool {
        true
    }

    /// Whether this transport dials `addr`. By default: addresses of its protocol, except
    /// relay routes (which the relay transport dials).
    fn handles(&self, addr: &TransportAddr) -> bool {
        addr.protocol() == self.protocol() && !matches!(addr, TransportAddr::Relay(_))
    }

    /// Dials `addr`, authenticates the remote as `expected`, exchanges hellos.
    ///
    /// Bounded by the node's connect timeout. Reaching anyone but `expected` fails with
    /// [`TransportError::AuthenticationFailed`].
    fn connect<'a>(&'a self, addr: &'a TransportAddr, expected: PeerId) -> BoxFuture<'a, Result<Connection>>;

    /// Starts listening on `addr` (port 0 picks a free port).
    fn listen<'a>(&'a self, addr: &'a TransportAddr) -> BoxFuture<'a, Result<Box<dyn Listener>>>;
}

/// What a listener yields.
#[derive(Debug)]
pub enum Incoming {
    /// A connection that completed the secure channel and the hello.
    Connection(Connection),
    /// An inbound attempt that failed its handshake; the socket was closed and the
    /// listener keeps serving.
    Rejected {
        /// Who tried.
        remote: String,
        /// Why it was refused.
        error: TransportError,
    },
}

/// A listening transport endpoint.
///
/// Handshakes run concurrently (bounded) inside the listener, so one slow or malicious
/// client never delays others.
pub trait Listener: Send {
    /// The address actually bound (with the OS-chosen port).
    fn local_addr(&self) -> TransportAddr;

    /// The next inbound connection or rejection; `None` once the listener is closed.
    ///
    /// Cancel safe: dropping the future loses nothing.
    fn accept(&mut self) -> BoxFuture<'_, Option<Incoming>>;

    /// Stops accepting; pending handshakes are abandoned.
    fn close(&mut self);
}
