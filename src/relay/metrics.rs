//! Usage metrics of the relay: counters, per-peer and per-circuit usage, limit hits.
//!
//! [`RelayMetrics`] is the snapshot
//! [`RelayState::metrics`](super::server::RelayState::metrics) returns; it serializes with
//! serde (peer ids in their text form) for the JSON stats endpoint or a periodic log line.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::{identity::PeerId, transport::admission::HandshakeStats};

/// Which limit was hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LimitKind {
    /// `max_reservations`.
    Reservations,
    /// `max_circuits`.
    CircuitsTotal,
    /// `max_circuits_per_peer`.
    CircuitsPerPeer,
    /// A forwarder had to wait for its bucket (throttling, not an error).
    Bandwidth,
    /// `max_circuit_duration`.
    Duration,
    /// `max_circuit_bytes`.
    DataCap,
    /// `pending_timeout`.
    PendingTimeout,
    /// `circuit_handshake_timeout`.
    CircuitHandshakeTimeout,
    /// `max_unconfirmed_per_initiator`, `_per_address` or `_per_target` (refusals and
    /// evictions).
    UnconfirmedCircuits,
}

fn ser_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Usage of one peer (JSON: peer ids in text form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerUsage {
    /// The peer.
    #[serde(serialize_with = "ser_display")]
    pub peer: PeerId,
    /// Authenticated connections open now.
    pub connections: usize,
    /// Milliseconds since its first connection of the current presence (the record is
    /// dropped when its last connection closes).
    pub connected_ms: u64,
    /// Whether it holds a live reservation.
    pub reserved: bool,
    /// Circuits (pending or open) it takes part in now.
    pub circuits: usize,
    /// Circuits it took part in that opened, since its first connection.
    pub circuits_opened: u64,
    /// Bytes it sent into circuits.
    pub bytes_sent: u64,
    /// Bytes circuits delivered to it.
    pub bytes_received: u64,
}

/// Usage of one circuit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CircuitUsage {
    /// The circuit id.
    pub circuit: u64,
    /// The dialer.
    #[serde(serialize_with = "ser_display")]
    pub src: PeerId,
    /// The target.
    #[serde(serialize_with = "ser_display")]
    pub dst: PeerId,
    /// `"pending"` or `"open"`.
    pub state: &'static str,
    /// Bytes from dialer to target.
    pub bytes_a_to_b: u64,
    /// Bytes from target to dialer.
    pub bytes_b_to_a: u64,
    /// Milliseconds since it opened (0 while pending).
    pub duration_ms: u64,
    /// Current rate in bytes per second (0 while pending).
    pub rate: u64,
}

/// Counters since the relay started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RelayTotals {
    /// Connections that authenticated and declared a purpose.
    pub connections: u64,
    /// Reservations granted (renewals included).
    pub reservations_granted: u64,
    /// Circuits requested and announced to their target.
    pub circuits_requested: u64,
    /// Circuits opened.
    pub circuits_opened: u64,
    /// Circuits refused by their target.
    pub circuits_refused: u64,
    /// Open circuits that closed.
    pub circuits_closed: u64,
    /// Bytes forwarded through circuits (both directions).
    pub bytes_forwarded: u64,
    /// Signals forwarded.
    pub signals_forwarded: u64,
    /// Connections closed for protocol violations.
    pub protocol_violations: u64,
}

/// How often each limit was hit since the relay started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LimitHits {
    /// Reservation refused: `max_reservations`.
    pub reservations: u64,
    /// Dial refused: `max_circuits`.
    pub circuits_total: u64,
    /// Dial refused: `max_circuits_per_peer`.
    pub circuits_per_peer: u64,
    /// Forwarder waits reported by [`RelayState::record_throttled`](super::server::RelayState::record_throttled).
    pub bandwidth: u64,
    /// Circuits closed at `max_circuit_duration`.
    pub duration: u64,
    /// Circuits closed at `max_circuit_bytes`.
    pub data_cap: u64,
    /// Circuits the target did not answer in time.
    pub pending_timeout: u64,
    /// Open circuits closed for not carrying an end-to-end handshake in time.
    pub circuit_handshake_timeout: u64,
    /// Dials refused by an unconfirmed-circuit limit (per key, address or target).
    pub unconfirmed_refused: u64,
    /// Unconfirmed circuits closed to make room for a dial from another address.
    pub unconfirmed_evicted: u64,
}

/// A snapshot of the relay's state and counters, serializable as JSON for `--stats-addr`
/// or a periodic log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelayMetrics {
    /// Authenticated connections open now.
    pub connections: usize,
    /// Live reservations.
    pub reservations: usize,
    /// Circuits waiting for their target.
    pub circuits_pending: usize,
    /// Open circuits.
    pub circuits_open: usize,
    /// Circuits (pending or open) whose ends have not completed an end-to-end handshake.
    pub circuits_unconfirmed: usize,
    /// Rate each open circuit gets now (bytes per second).
    pub circuit_rate: u64,
    /// Counters.
    pub totals: RelayTotals,
    /// Limit hits.
    pub limit_hits: LimitHits,
    /// What happened to connections before they authenticated (admission, deadlines,
    /// handshake-time violations), on the WebSocket listener and the stats endpoint.
    /// Counted by the shell, which fills this in; [`RelayState::metrics`](super::server::RelayState::metrics)
    /// leaves it zero.
    pub handshakes: HandshakeStats,
    /// Per-peer usage, sorted by peer id.
    pub peers: Vec<PeerUsage>,
    /// Per-circuit usage, sorted by circuit id.
    pub circuits: Vec<CircuitUsage>,
}
