//! # Kizuna core
//!
//! The protocol core of Kizuna, a peer-to-peer transport runtime: identity, addresses,
//! the secure channel, the wire format and the transports. It has no actor framework in
//! it; the `kizuna-actors` crate drives it from actix.
//!
//! Layers, bottom up:
//!
//! * [`identity`] — Ed25519 keys and [`PeerId`]s;
//! * [`address`] — [`PeerAddress`] tickets, capabilities, [`ConnectionInfo`];
//! * [`secure`] — TLS 1.3 bound to peer identities, over any byte stream and for QUIC;
//! * [`wire`] — the hello and frames spoken inside the secure channel;
//! * [`mux`] — streams multiplexed over one secure byte stream;
//! * [`transport`] — the [`Transport`] trait and the uniform [`Connection`], with
//!   [`transport::tcp`], [`transport::quic`] and [`transport::ws`] (WebSocket);
//! * [`relay`] — the relay protocol's sans-IO core: messages, admission, limits, the
//!   relay's and the client's state machines;
//! * [`nat`] — NAT behaviour discovery over STUN (RFC 4787 / RFC 5780), candidate
//!   gathering, interface addresses and their changes;
//! * [`punch`] — hole punching: the [`punch::PunchAttempt`] machine (gathering, the
//!   [`punch::PunchSession`] UDP punch, the TCP race), its messages, the signal tags,
//!   the side-channel router and a NAT simulator;
//! * [`health`], [`pool`] — keep-alive/RTT and per-peer connection reuse.

pub mod address;
pub mod error;
pub mod health;
pub mod identity;
pub mod mux;
pub mod nat;
pub mod negotiate;
pub mod node;
pub mod peer;
pub mod pool;
pub mod punch;
pub mod relay;
pub mod secure;
pub mod transport;
pub mod wire;

pub use address::{ConnectionInfo, PathKind, PeerAddress, Protocol, TransportAddr, TransportCapabilities};
pub use error::{Result, TransportError};
pub use identity::{Keypair, PeerId};
pub use node::{Congestion, LocalNode, NodeConfig};
pub use transport::{ByteStream, Connection, Incoming, Listener, StreamAbort, Transport};
