//! Negotiation policy (sans-IO): which of a peer's addresses to try in which order
//! ([`plan`], [`DialHistory::rank`]), and which of two connections to the same peer
//! survives ([`resolve_duplicate`]; paths that are replaced or idle are retired by the
//! [`PathManager`](crate::peer::PathManager)).
//!
//! # Dial order
//!
//! [`DialHistory::rank`] orders a peer's addresses by what this node can dial, by what
//! the peer prefers, and by what this node measured dialing that peer before (its
//! [`DialHistory`]: per peer and protocol, successes, failures, smoothed connect time and
//! RTT). [`plan`] is the same order without a history. The rules, in order:
//!
//! 1. **Capabilities.** An address no local transport can dial (`priority` gives `None`)
//!    is dropped; duplicates are dropped.
//! 2. **Classes**, first to last: WebRTC for a peer that lists `webrtc=1` first (a browser,
//!    [`prefers_webrtc`]), whatever its history; direct addresses whose transport did not
//!    fail recently for this peer; those whose transport did (a failure with no success
//!    since, less than [`FAILURE_DECAY`] ago — older failures no longer count, so a fixed
//!    network gets its transport back); relay routes ([`TransportAddr::Relay`]), always
//!    last.
//! 3. **Static order** within a class: higher local priority first, then the peer's own
//!    order (its hints). Without a history this is the whole order.
//! 4. **Measurements** within a class: the transports with a measured connect time are
//!    reordered among the positions they hold, a lower expected time-to-useful first —
//!    the smoothed connect time, then (for comparable connect times) the RTT. A measured
//!    transport goes ahead of one the static order puts before it only if it is faster
//!    by more than [`FASTER_MARGIN_PERCENT`] and at least [`FASTER_MIN`] (hysteresis: noise
//!    never reorders). Unmeasured transports keep their static positions, so a
//!    transport never tried is still tried where its priority says.
//!
//! Happy eyeballs (RFC 8305 §4) asks for the same: use what was measured of past
//! connections (RTT) to sort destinations, and avoid those that recently failed
//! (RFC 6724 §6 rule 1, "avoid unusable destinations").

use std::time::Duration;

use crate::{
    address::{PathKind, PeerAddress, TransportAddr},
    identity::PeerId,
};

mod history;
mod rank;

pub use history::{DialHistory, DialStats, MAX_PEERS};
pub use rank::{FAILURE_DECAY, FASTER_MARGIN_PERCENT, FASTER_MIN};

/// Delay before starting the next attempt while the previous one is still pending
/// (happy eyeballs). 250 ms: RFC 8305's recommended Connection Attempt Delay.
pub const ATTEMPT_STAGGER: Duration = Duration::from_millis(250);

/// Two connections to one peer established within this window are treated as a
/// simultaneous dial and tie-broken deterministically. 5 s: comfortably above a connect
/// (10 s bound, but typically milliseconds) racing the other side's.
pub const SIMULTANEOUS_WINDOW: Duration = Duration::from_secs(5);

/// Orders the peer's addresses for dialing, without a history: the static order of the
/// [module docs](self) (what [`DialHistory::rank`] gives for a peer it has no record of).
///
/// `priority` gives this node's preference for an address (`None`: no transport of this
/// node can dial it, and it is dropped). Higher priority first; among equals, the peer's
/// own order (its hints). Duplicates are removed. Relay routes come last.
///
/// One exception to the local preference: a peer whose ticket lists `webrtc=1` first is
/// a browser (or says it prefers WebRTC like one), and WebRTC is tried first for it.
pub fn plan(peer: &PeerAddress, priority: impl Fn(&TransportAddr) -> Option<u8>) -> Vec<TransportAddr> {
    rank::order(peer, priority, None)
}

/// Whether `peer` prefers WebRTC: its first address is `webrtc=1`, as a browser's ticket
/// is (a browser can only be reached over WebRTC, signaled through a relay).
pub fn prefers_webrtc(peer: &PeerAddress) -> bool {
    peer.addrs.first() == Some(&TransportAddr::WebRtc)
}

/// One side of a duplicate-connection decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Whether the local node dialed this connection.
    pub dialed_locally: bool,
    /// How long ago it was established.
    pub age: Duration,
    /// Direct or through a relay.
    pub path: PathKind,
}

/// Which connection survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Keep the existing connection, close the new one.
    Existing,
    /// Keep the new connection, close the existing one.
    New,
}

/// Decides between an existing and a new connection to the same peer.
///
/// A direct path beats a relayed one. Otherwise a simultaneous dial (both young, opposite
/// directions) keeps the connection dialed by
/// the smaller peer id — both nodes compute the same answer without talking. Otherwise
/// the newer connection wins: the peer evidently wanted a fresh one (its view of the old
/// one may be dead).
pub fn resolve_duplicate(local: PeerId, remote: PeerId, existing: Candidate, new: Candidate) -> Keep {
    // A direct path always beats a relayed one (the upgrade hook), whichever came first.
    match (existing.path, new.path) {
        (PathKind::Relayed, PathKind::Direct) => return Keep::New,
        (PathKind::Direct, PathKind::Relayed) => return Keep::Existing,
        _ => {}
    }
    let simultaneous = existing.age < SIMULTANEOUS_WINDOW && existing.dialed_locally != new.dialed_locally;
    if !simultaneous {
        return Keep::New;
    }
    let local_is_smaller = local < remote;
    // The surviving connection is the one whose dialer is the smaller id.
    let keep_locally_dialed = local_is_smaller;
    if existing.dialed_locally == keep_locally_dialed {
        Keep::Existing
    } else {
        Keep::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{address::Protocol, identity::Keypair};

    #[test]
    fn plan_orders_by_local_priority_then_peer_order() {
        let id = Keypair::from_seed([1; 32]).peer_id();
        let peer: PeerAddress =
            format!("{id}@tcp=127.0.0.1:1,ws=ws://h:2,quic=127.0.0.1:3,tcp=127.0.0.1:4,tcp=127.0.0.1:1")
                .parse()
                .unwrap();
        let local = |a: &TransportAddr| match a.protocol() {
            Protocol::Quic => Some(200),
            Protocol::Tcp => Some(100),
            _ => None,
        };
        let p = plan(&peer, local);
        let s: Vec<String> = p.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, vec!["quic=127.0.0.1:3", "tcp=127.0.0.1:1", "tcp=127.0.0.1:4"]);
        assert!(plan(&peer, |_| None).is_empty());
    }

    #[test]
    fn webrtc_first_when_the_peer_lists_it_first() {
        let id = crate::identity::Keypair::from_seed([1; 32]).peer_id();
        let prio = |a: &TransportAddr| match a {
            TransportAddr::Quic(_) => Some(200),
            TransportAddr::WebRtc => Some(30),
            TransportAddr::Relay(_) => Some(10),
            _ => None,
        };
        let node: PeerAddress = format!("{id}@quic=127.0.0.1:1,webrtc=1,relay=ws://r:1").parse().unwrap();
        assert!(!prefers_webrtc(&node));
        assert_eq!(plan(&node, prio)[0], "quic=127.0.0.1:1".parse().unwrap());
        let browser: PeerAddress = format!("{id}@webrtc=1,quic=127.0.0.1:1,relay=ws://r:1").parse().unwrap();
        assert!(prefers_webrtc(&browser));
        assert_eq!(plan(&browser, prio)[0], TransportAddr::WebRtc);
    }

    #[test]
    fn simultaneous_dial_both_sides_agree() {
        let a = Keypair::from_seed([1; 32]).peer_id();
        let b = Keypair::from_seed([2; 32]).peer_id();
        let young = Duration::from_millis(10);
        for existing_local in [true, false] {
            // At A: existing dialed by A iff existing_local; at B the same connection is
            // dialed remotely.
            let at_a = resolve_duplicate(
                a,
                b,
                Candidate { dialed_locally: existing_local, age: young, path: PathKind::Direct },
                Candidate { dialed_locally: !existing_local, age: Duration::ZERO, path: PathKind::Direct },
            );
            let at_b = resolve_duplicate(
                b,
                a,
                Candidate { dialed_locally: !existing_local, age: young, path: PathKind::Direct },
                Candidate { dialed_locally: existing_local, age: Duration::ZERO, path: PathKind::Direct },
            );
            // Same physical connection survives on both sides: the one dialed by min(a, b).
            let survivor_dialed_by_a = match at_a {
                Keep::Existing => existing_local,
                Keep::New => !existing_local,
            };
            let survivor_dialed_by_a_at_b = match at_b {
                Keep::Existing => existing_local,
                Keep::New => !existing_local,
            };
            assert_eq!(survivor_dialed_by_a, survivor_dialed_by_a_at_b);
            assert_eq!(survivor_dialed_by_a, a < b);
        }
    }

    #[test]
    fn newer_wins_when_not_simultaneous() {
        let a = Keypair::from_seed([1; 32]).peer_id();
        let b = Keypair::from_seed([2; 32]).peer_id();
        let old = Candidate { dialed_locally: true, age: Duration::from_secs(60), path: PathKind::Direct };
        assert_eq!(
            resolve_duplicate(
                a,
                b,
                old,
                Candidate { dialed_locally: false, age: Duration::ZERO, path: PathKind::Direct }
            ),
            Keep::New
        );
        let young_same_dir =
            Candidate { dialed_locally: true, age: Duration::from_millis(1), path: PathKind::Direct };
        assert_eq!(
            resolve_duplicate(
                a,
                b,
                young_same_dir,
                Candidate { dialed_locally: true, age: Duration::ZERO, path: PathKind::Direct }
            ),
            Keep::New
        );
    }

    #[test]
    fn direct_beats_relayed() {
        let a = Keypair::from_seed([1; 32]).peer_id();
        let b = Keypair::from_seed([2; 32]).peer_id();
        let relayed =
            Candidate { dialed_locally: true, age: Duration::from_millis(1), path: PathKind::Relayed };
        let direct = Candidate { dialed_locally: false, age: Duration::ZERO, path: PathKind::Direct };
        assert_eq!(resolve_duplicate(a, b, relayed, direct), Keep::New);
        assert_eq!(resolve_duplicate(b, a, relayed, direct), Keep::New);
        assert_eq!(resolve_duplicate(a, b, direct, relayed), Keep::Existing);
    }
}
