//! The relay (sans-IO): protocol messages, authentication and admission, limits, and the
//! decision cores of the relay server and of its clients.
//!
//! Specification: `docs/protocol.md`, "Relay protocol"; operations: `docs/relay.md`.
//! Design references: libp2p circuit relay v2 (reservations and per-circuit limits,
//! <https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md>) and the TURN REST
//! API credential scheme for expiring tokens
//! (<https://datatracker.ietf.org/doc/html/draft-uberti-behave-turn-rest-00>).
//!
//! Clients reach a relay over WebSocket (subprotocol `kizuna`). Every WebSocket
//! connection starts with a challenge/response authentication, then declares its
//! purpose: `control` (the long-lived connection holding a reservation and carrying
//! signaling), `dial` (asking for a circuit to a reserved peer) or `accept` (answering
//! such a request). Once both ends of a circuit are connected the relay splices the two
//! WebSocket connections and forwards their binary messages opaquely: the peers run
//! their own end-to-end TLS through it.
//!
//! Nothing here owns a socket or reads a clock. The shells in `kizuna-actors` feed:
//!
//! * [`auth::ServerHandshake`] — one per fresh WebSocket connection, until it yields the
//!   authenticated peer and its purpose;
//! * [`server::RelayState`] — one per relay: reservations, circuits, limits, metrics;
//! * [`limits::TokenBucket`] — one per spliced circuit, in its forwarder;
//! * [`client::RelayClientState`] — one per node using relays: reservation upkeep,
//!   failover and reconnect backoff.
//!
//! Each machine takes `handle_*` inputs with the current `Instant` and is drained through
//! `poll_*` until empty after every input.

pub mod auth;
pub mod client;
mod error;
pub mod limits;
pub mod metrics;
pub mod proto;
pub mod server;
#[cfg(test)]
mod tests;
pub mod unconfirmed;

pub use error::{AuthError, ForwardError, RelayConfigError, TokenError};
pub use proto::{CircuitId, ErrorCode, Purpose, RelayMessage};

/// Largest relay control message (one WebSocket binary message), in bytes.
///
/// The same bound as the wire protocol's control frames: control messages are small
/// MessagePack maps, and the largest legitimate one (a signal with its 16 KiB payload)
/// fits with ample room.
pub const MAX_RELAY_MESSAGE_LEN: usize = MAX_CONTROL_LEN;

/// Largest signaling payload the relay forwards between two reserved peers, in bytes.
///
/// 16 KiB holds an SDP offer with many ICE candidates (typically 2–6 KiB) or a list of
/// hole-punching candidates several times over, and keeps the relay's per-message work
/// small.
pub const MAX_SIGNAL_LEN: usize = 16 * 1024;

/// The WebSocket subprotocol a relay client must offer.
pub const WS_SUBPROTOCOL: &str = "kizuna";

/// Offset added to an [`ErrorCode`] to form the WebSocket close code (RFC 6455 §7.4.2
/// reserves 4000–4999 for private use).
pub const WS_CLOSE_CODE_BASE: u16 = 4000;

use crate::wire::MAX_CONTROL_LEN;
