//! NAT behaviour discovery over STUN: [RFC 4787] behaviours measured with the
//! [RFC 5780] tests, or by comparing two servers' answers when the server lacks RFC 5780.
//!
//! * [`classify`] — the sans-IO part: [`NatDiscovery`], a small machine that says which
//!   Binding request to send next and takes each answer, and [`classify()`], a pure
//!   function from the collected [`Observations`] to a [`NatReport`];
//! * [`probe`] — the I/O part: STUN Binding transactions (retransmission, transaction
//!   ids, decoding with `stun-rs`) on a caller's `tokio` UDP socket, and [`discover`],
//!   which drives the machine on that socket;
//! * [`gather`] — the sans-IO [`Gatherer`] that learns a shared socket's public mapping
//!   for hole punching;
//! * [`interfaces`] — the host's interface addresses, and the
//!   [`InterfaceWatcher`](interfaces::InterfaceWatcher) that wakes up when they may have
//!   changed (rtnetlink notifications on Linux, polling elsewhere).
//!
//! The socket is the caller's so the mapping that is measured is the one a hole punch or
//! a QUIC endpoint on the same socket will use. While [`discover`] runs it reads every
//! datagram arriving on the socket (non-STUN datagrams are dropped).
//!
//! ```no_run
//! # async fn f() -> Result<(), kizuna::nat::NatError> {
//! let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
//! let servers = ["203.0.113.10:3478".parse().unwrap()];
//! let report = kizuna::nat::discover(&socket, &servers, &kizuna::nat::ProbeConfig::default()).await?;
//! println!("{} (public address {:?})", report.nat_type, report.public_addr);
//! # Ok(()) }
//! ```
//!
//! [RFC 4787]: https://www.rfc-editor.org/rfc/rfc4787
//! [RFC 5780]: https://www.rfc-editor.org/rfc/rfc5780

pub mod classify;
pub mod gather;
pub mod interfaces;
pub mod probe;

use std::{io, net::SocketAddr};

pub use classify::{
    classify, BindingResponse, Filtering, Mapping, Method, NatDiscovery, NatReport, NatType, Observations,
    Outcome, Test, TestKind,
};
pub use gather::{Gathered, Gatherer};
pub use probe::{discover, ProbeConfig};

/// The most STUN servers one discovery takes. Each costs at most one Binding transaction
/// (a few seconds when it does not answer), so this bounds the run time; two are enough
/// for the two-server comparison and the rest are fallbacks.
pub const MAX_SERVERS: usize = 8;

/// An error of NAT discovery. A server that does not answer is not an error: it is an
/// [`Outcome::Timeout`], and no answer at all is [`NatType::UdpBlocked`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatError {
    /// No STUN server was given.
    #[error("no STUN server given")]
    NoServers,
    /// More STUN servers than [`MAX_SERVERS`] were given.
    #[error("{count} STUN servers given; at most {max} are used")]
    TooManyServers {
        /// Servers given.
        count: usize,
        /// The limit, [`MAX_SERVERS`].
        max: usize,
    },
    /// A STUN server's address family differs from the socket's.
    #[error("STUN server {server} cannot be reached from a socket bound to {local} (address family)")]
    AddressFamily {
        /// The server.
        server: SocketAddr,
        /// The socket's address.
        local: SocketAddr,
    },
    /// The UDP socket failed.
    #[error("UDP socket error: {0}")]
    Io(#[from] io::Error),
}
