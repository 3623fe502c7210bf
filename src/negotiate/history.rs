//! What this node measured of its past dials (sans-IO): per peer and transport, the
//! outcomes of attempts, the connect time and the RTT, bounded in memory.
//!
//! The runtime records every dial's outcome ([`DialHistory::record_success`],
//! [`DialHistory::record_failure`]) and RTTs once a path has them
//! ([`DialHistory::record_rtt`]); [`DialHistory::rank`] orders the next dial by them (the
//! rules are in the [module docs](super)). There is no clock here: every call that needs
//! the time takes `now`.
//!
//! Records are keyed by peer and [`Protocol`], not by address: a peer's two TCP addresses
//! share one record. Relay routes ([`TransportAddr::Relay`]) are not recorded: they are
//! always dialed last, and their outcome says more about the relay than about the peer
//! (recording them as WebSocket would blame the peer's direct WebSocket address).
//!
//! Memory is bounded: at most [`MAX_PEERS`] peers (or the capacity given to
//! [`DialHistory::with_capacity`]), each with at most one record per protocol. Recording
//! for a new peer when full evicts the peer recorded least recently.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    address::{PeerAddress, Protocol, TransportAddr},
    identity::PeerId,
};

/// Peers a [`DialHistory::new`] remembers. 1024: a node reconnects to far fewer peers
/// than that (the dial history matters for peers it dials again), and the worst case
/// stays small — one peer costs about 450 bytes with a record for every protocol (the
/// `memory_bound_is_documented` test prints it), so a full history is 448 KiB plus the
/// hash map's spare slots: about half a MiB.
pub const MAX_PEERS: usize = 1024;

/// Weight of one connect-time sample in the smoothed connect time: the new sample
/// counts 1/`CONNECT_SMOOTHING`. 4: a connect is rare (one per connection, not one per
/// packet like an RTT sample), so the estimate must follow a changed network within a
/// handful of connects; 1/4 still halves the effect of one outlier within three more.
const CONNECT_SMOOTHING: u32 = 4;

/// Weight of one RTT sample: 1/8, RFC 6298's α, as the keep-alive's smoothed RTT.
const RTT_SMOOTHING: u32 = 8;

/// What this node measured dialing one peer over one protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DialStats {
    /// Attempts whose outcome was recorded (successes and failures).
    pub attempts: u64,
    /// Attempts that ended in an authenticated connection.
    pub successes: u64,
    /// Failures since the last success (0 after a success).
    pub consecutive_failures: u32,
    /// When the last success was recorded.
    pub last_success: Option<Instant>,
    /// When the last failure was recorded.
    pub last_failure: Option<Instant>,
    /// Smoothed time from starting a dial to the authenticated connection (weight 1/4 per
    /// sample); `None` until an attempt succeeded.
    pub connect_time: Option<Duration>,
    /// Smoothed round-trip time of paths over this protocol (RFC 6298, α = 1/8); `None`
    /// until the runtime reported one.
    pub rtt: Option<Duration>,
}

/// One peer's records, with the logical time it was last recorded for (for eviction).
#[derive(Debug, Default)]
struct PeerRecord {
    used: u64,
    protocols: Vec<(Protocol, DialStats)>,
}

/// The dial history of one node: [`DialStats`] per peer and protocol, bounded to
/// [`MAX_PEERS`] peers (or [`with_capacity`](Self::with_capacity)'s), the least recently
/// recorded evicted first. Records are per protocol, not per address; relay routes are
/// not recorded.
#[derive(Debug)]
pub struct DialHistory {
    peers: HashMap<PeerId, PeerRecord>,
    capacity: usize,
    /// Logical clock of recordings: the least recently recorded peer has the lowest.
    tick: u64,
}

impl Default for DialHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl DialHistory {
    /// An empty history holding at most [`MAX_PEERS`] peers.
    pub fn new() -> Self {
        Self::with_capacity(MAX_PEERS)
    }

    /// An empty history holding at most `max_peers` peers (at least one).
    pub fn with_capacity(max_peers: usize) -> Self {
        Self { peers: HashMap::new(), capacity: max_peers.max(1), tick: 0 }
    }

    /// The most peers this history holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Peers held now.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// A dial of `addr` at `peer` ended in an authenticated connection at `now`,
    /// `connect_time` after it started. Resets the consecutive failures.
    pub fn record_success(
        &mut self,
        now: Instant,
        peer: PeerId,
        addr: &TransportAddr,
        connect_time: Duration,
    ) {
        if let Some(s) = self.entry(peer, addr) {
            s.attempts += 1;
            s.successes += 1;
            s.consecutive_failures = 0;
            s.last_success = Some(now);
            s.connect_time = Some(smooth(s.connect_time, connect_time, CONNECT_SMOOTHING));
        }
    }

    /// A dial of `addr` at `peer` failed (refused, timed out, wrong identity) at `now`.
    pub fn record_failure(&mut self, now: Instant, peer: PeerId, addr: &TransportAddr) {
        if let Some(s) = self.entry(peer, addr) {
            s.attempts += 1;
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.last_failure = Some(now);
        }
    }

    /// A path to `peer` over `addr`'s protocol measured `rtt` (reported by the runtime
    /// whenever a path has a measurement; a dial need not have preceded it).
    pub fn record_rtt(&mut self, peer: PeerId, addr: &TransportAddr, rtt: Duration) {
        if let Some(s) = self.entry(peer, addr) {
            s.rtt = Some(smooth(s.rtt, rtt, RTT_SMOOTHING));
        }
    }

    /// What was measured for `peer` over `protocol`, if anything.
    pub fn stats(&self, peer: &PeerId, protocol: Protocol) -> Option<&DialStats> {
        self.peers.get(peer)?.protocols.iter().find(|(p, _)| *p == protocol).map(|(_, s)| s)
    }

    /// Everything measured for `peer`, one entry per protocol (for diagnostics).
    pub fn peer(&self, peer: &PeerId) -> impl Iterator<Item = (Protocol, &DialStats)> + '_ {
        self.peers.get(peer).into_iter().flat_map(|r| r.protocols.iter().map(|(p, s)| (*p, s)))
    }

    /// Everything measured, one entry per peer and protocol, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (PeerId, Protocol, &DialStats)> + '_ {
        self.peers.iter().flat_map(|(id, r)| r.protocols.iter().map(move |(p, s)| (*id, *p, s)))
    }

    /// Orders `peer`'s addresses for dialing at `now`: [`plan`](super::plan)'s order,
    /// refined by what was measured for this peer (rules in the [module docs](super)).
    pub fn rank(
        &self,
        now: Instant,
        peer: &PeerAddress,
        priority: impl Fn(&TransportAddr) -> Option<u8>,
    ) -> Vec<TransportAddr> {
        super::rank::order(peer, priority, Some((self, now)))
    }

    /// The record to update for `addr` at `peer`, created (evicting if full) when new;
    /// `None` for relay routes, which are not recorded.
    fn entry(&mut self, peer: PeerId, addr: &TransportAddr) -> Option<&mut DialStats> {
        let protocol = recorded_protocol(addr)?;
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.capacity {
            self.evict_one();
        }
        self.tick += 1;
        let record = self.peers.entry(peer).or_default();
        record.used = self.tick;
        let i = match record.protocols.iter().position(|(p, _)| *p == protocol) {
            Some(i) => i,
            None => {
                record.protocols.push((protocol, DialStats::default()));
                record.protocols.len() - 1
            }
        };
        record.protocols.get_mut(i).map(|(_, s)| s)
    }

    /// Drops the least recently recorded peer. A linear scan: it runs only when a new
    /// peer arrives at a full history, and the history is small.
    fn evict_one(&mut self) {
        if let Some(oldest) = self.peers.iter().min_by_key(|(_, r)| r.used).map(|(id, _)| *id) {
            self.peers.remove(&oldest);
        }
    }
}

/// The protocol `addr`'s outcomes are recorded under; `None` for relay routes.
pub(super) fn recorded_protocol(addr: &TransportAddr) -> Option<Protocol> {
    match addr {
        TransportAddr::Relay(_) => None,
        other => Some(other.protocol()),
    }
}

/// An exponentially weighted average: the sample counts `1/weight`. Never overflows: the
/// result lies between the old value and the sample.
fn smooth(old: Option<Duration>, sample: Duration, weight: u32) -> Duration {
    match old {
        None => sample,
        Some(old) => (old - old / weight).saturating_add(sample / weight),
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
