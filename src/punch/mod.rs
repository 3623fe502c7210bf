//! Hole punching (sans-IO): the DCUtR-style [`PunchSession`] machine, its messages, its
//! datagrams, and a deterministic network simulator with NAT boxes to test it.
//!
//! Two peers that already share a relayed connection use it to exchange candidates
//! (host, STUN server-reflexive and relay-observed addresses), measure the relayed RTT,
//! and then punch simultaneously from the node's one UDP socket, with retries and
//! backoff. Success yields the peer's address on the punched path, to run QUIC over;
//! failure leaves the relayed connection as it is.
//!
//! Design references (ideas, not code): libp2p DCUtR
//! (<https://github.com/libp2p/specs/blob/master/relay/DCUtR.md>) for the RTT-synchronised
//! simultaneous start; ICE (RFC 8445) for candidate kinds, priorities, peer-reflexive
//! adoption, triggered checks and the controlling side's nomination; RFC 4787 for the NAT
//! behaviours the simulator implements. `docs/punch.md` describes the protocol, its
//! timing and the tested NAT matrix.
//!
//! * [`attempt`] — [`PunchAttempt`], one whole attempt as the node runs it: gathering the
//!   candidates over STUN, the UDP punch and TCP simultaneous open racing it, behind one
//!   `handle_*(now, …)` / `poll_output` / `poll_timeout` contract (what the
//!   `HolePunchActor` drives);
//! * [`session`] — [`PunchSession`], the UDP punch machine (driven the same way);
//! * [`proto`] — [`PunchMessage`], exchanged over the relayed connection (MessagePack);
//! * [`signal`] — the tag byte of every signal kind peers exchange (punch, WebRTC) and
//!   the one decoder, [`Signal::decode`], that tells them apart;
//! * [`packet`] — the punch datagrams (probe / ack) sent through the NATs;
//! * [`router`] — [`DatagramRouter`], which attempt a datagram of the shared socket
//!   belongs to (by punch token or STUN transaction id);
//! * [`candidates`] — candidate kinds, priorities, port prediction;
//! * [`sim`] — a virtual-time network of two hosts behind configurable NAT boxes, a STUN
//!   server and a relay path, for this crate's tests and the actors' tests.

pub mod attempt;
pub mod candidates;
mod error;
pub mod packet;
pub mod proto;
mod race;
mod rng;
pub mod router;
pub mod session;
pub mod signal;
pub mod sim;
#[cfg(test)]
mod tests;

pub use attempt::{AttemptConfig, Finish, LocalEnv, PunchAttempt};
pub use candidates::{Candidate, CandidateKind, MappingHint};
pub use error::{AttemptError, FailReason, PunchDecodeError, PunchProtocolError};
pub use proto::PunchMessage;
pub use router::{DatagramRouter, RouteError, RouteKeys, RouterStats};
pub use session::{Event, Output, Phase, PunchConfig, PunchSession, PunchStats, Role};
pub use signal::{Signal, SignalError, PUNCH_SIGNAL_TAG, WEBRTC_SIGNAL_TAG};

/// Largest encoded punch message, in bytes. An offer with [`MAX_CANDIDATES`] candidates
/// takes under 1 KiB; 4 KiB leaves room for fields newer versions may add.
pub const MAX_PUNCH_MESSAGE_LEN: usize = 4 * 1024;

/// Most candidates in one offer or answer. 16: a multi-homed host with IPv4 and IPv6 on
/// a few interfaces, plus reflexive and relay-observed addresses, stays well below (ICE
/// agents typically gather fewer than 10).
pub const MAX_CANDIDATES: usize = 16;

/// Longest failure reason carried in a `failure` message, in bytes (it is for humans).
pub const MAX_REASON_LEN: usize = 256;

/// Most peer-reflexive addresses one session adopts. 8: a symmetric NAT shows one new
/// mapping per destination, and the peer has at most a few destinations that work; the
/// bound keeps a peer that knows the token from growing the target list.
pub const MAX_PEER_REFLEXIVE: usize = 8;

/// Most distinct source addresses whose probes are acked. 16: twice the peer-reflexive
/// bound (probes may also come from offered addresses); beyond it probes are ignored.
pub const MAX_SEEN: usize = 16;

/// Most addresses one session probes: offered, predicted and peer-reflexive together.
pub const MAX_TARGETS: usize = MAX_CANDIDATES + candidates::MAX_PREDICTED + MAX_PEER_REFLEXIVE;

/// Probes remembered while awaiting their acks. 256 covers a whole round of probes to
/// [`MAX_TARGETS`] targets with the default five probes each (200); the oldest are
/// forgotten first, so their late acks are ignored.
pub const MAX_OUTSTANDING_PROBES: usize = 256;
