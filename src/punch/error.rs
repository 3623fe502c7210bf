//! Errors of the hole-punching layer, one enum per stage: decoding a relayed message
//! ([`PunchDecodeError`]), a peer breaking the punch protocol ([`PunchProtocolError`]),
//! and why a session ended without a path ([`FailReason`]).

use std::{net::SocketAddr, time::Duration};

/// Why a relayed punch message (or a punch datagram) did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PunchDecodeError {
    /// The message is longer than [`MAX_PUNCH_MESSAGE_LEN`](super::MAX_PUNCH_MESSAGE_LEN).
    #[error("punch message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a well-formed MessagePack map with a string `type`, or a field of the wrong
    /// shape.
    #[error("malformed punch message: {0}")]
    Malformed(String),
    /// An offer or answer lists more candidates than a session accepts.
    #[error("{count} candidates offered; at most {max} are accepted")]
    TooManyCandidates {
        /// Candidates in the message.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// A candidate or address no session may send packets to (port 0, unspecified,
    /// multicast or broadcast).
    #[error("unusable address {0} in a punch message")]
    UnusableAddress(SocketAddr),
}

/// A peer broke the punch protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PunchProtocolError {
    /// A relayed message did not decode.
    #[error("undecodable message from the peer: {0}")]
    Decode(#[from] PunchDecodeError),
    /// A message arrived that this role or state does not accept.
    #[error("unexpected {message} message while {state}")]
    Unexpected {
        /// The message's type.
        message: &'static str,
        /// The session's state.
        state: &'static str,
    },
    /// The initiator nominated an address this responder never received a probe from.
    #[error("the initiator nominated {0}, which never sent this node a valid probe")]
    BadNomination(SocketAddr),
}

/// Why a [`PunchSession`](super::PunchSession) ended without a direct path. The relayed
/// connection is untouched by any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailReason {
    /// Every round ran to its end and no candidate pair answered (for example, both NATs
    /// map per destination and filter per port, or UDP is blocked).
    #[error("no direct path after {rounds} punching rounds")]
    NoPath {
        /// Rounds run.
        rounds: u8,
    },
    /// The peer did not answer over the relay in time.
    #[error("peer did not send {waiting_for} within {waited:?}")]
    PeerUnresponsive {
        /// What was expected.
        waiting_for: &'static str,
        /// How long this side waited.
        waited: Duration,
    },
    /// The session's total deadline passed.
    #[error("hole punching deadline of {0:?} exceeded")]
    DeadlineExceeded(Duration),
    /// The peer's session failed and told this one.
    #[error("peer gave up: {0}")]
    PeerFailed(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] PunchProtocolError),
    /// Neither side has a single candidate to punch.
    #[error("no candidates on either side")]
    NoCandidates,
    /// The session was closed locally.
    #[error("cancelled")]
    Cancelled,
}

/// Why a [`PunchAttempt`](super::PunchAttempt) — gathering, the UDP punch and TCP
/// simultaneous open together — ended without a direct path. The relayed connection is
/// untouched by any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptError {
    /// The UDP punch failed, and no TCP attempt ran.
    #[error(transparent)]
    Udp(#[from] FailReason),
    /// The UDP punch failed, and TCP simultaneous open found no path either.
    #[error("{0}; TCP simultaneous open found no path either")]
    UdpAndTcp(FailReason),
    /// Signaling through the relay failed, so the attempt cannot go on.
    #[error("relay signaling failed: {0}")]
    Signaling(String),
    /// The attempt was closed locally.
    #[error("cancelled")]
    Cancelled,
}
