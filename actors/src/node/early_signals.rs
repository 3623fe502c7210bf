//! Punch messages that arrive before the relayed connection they belong to: the offerer
//! adopted that connection first, so its `offer` — and the `ping` right behind it, which
//! is never repeated — reach this node before it knows the peer. They are kept, bounded
//! and for a short while, and replayed once the connection is adopted. Pure bookkeeping
//! with an explicit clock, so the rules are tested without actors or sockets; what a
//! message is (`T`: the supervisor keeps decoded punch messages) does not matter here.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use kizuna::PeerId;

/// How long early messages are kept: the responder adopts the relayed connection within
/// one relay round trip of the offerer; past this it is not coming.
pub(crate) const EARLY_SIGNAL_TTL: Duration = Duration::from_secs(5);
/// Peers with early messages kept at once.
pub(crate) const MAX_EARLY_PEERS: usize = 16;
/// Messages kept per peer (an offer, its ping, a retransmission or two).
pub(crate) const MAX_EARLY_SIGNALS: usize = 8;

/// Early punch messages per peer. See the module documentation.
#[derive(Debug)]
pub(crate) struct EarlySignals<T> {
    queues: HashMap<PeerId, (Instant, Vec<T>)>,
}

impl<T> Default for EarlySignals<T> {
    fn default() -> Self {
        Self { queues: HashMap::new() }
    }
}

impl<T> EarlySignals<T> {
    /// Keeps `payload` from `peer` if it is an `offer` (which starts a queue) or follows
    /// one; anything else, or beyond the bounds, is dropped. Returns whether it was kept.
    pub(crate) fn keep(&mut self, peer: PeerId, payload: T, is_offer: bool, now: Instant) -> bool {
        self.queues.retain(|_, (since, _)| now.saturating_duration_since(*since) < EARLY_SIGNAL_TTL);
        if let Some((_, q)) = self.queues.get_mut(&peer) {
            if q.len() < MAX_EARLY_SIGNALS {
                q.push(payload);
                return true;
            }
            return false;
        }
        if is_offer && self.queues.len() < MAX_EARLY_PEERS {
            self.queues.insert(peer, (now, vec![payload]));
            return true;
        }
        false
    }

    /// The messages kept for `peer`, in arrival order (empty if none, or expired).
    pub(crate) fn take(&mut self, peer: &PeerId, now: Instant) -> Vec<T> {
        match self.queues.remove(peer) {
            Some((since, q)) if now.saturating_duration_since(since) < EARLY_SIGNAL_TTL => q,
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn peer(n: u8) -> PeerId {
        kizuna::Keypair::from_seed([n; 32]).peer_id()
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// The regression the NAT lab found: the ping right behind an early offer must be
    /// kept too (it is never repeated; without it the punch failed with "no pong").
    #[test]
    fn an_early_offer_and_what_follows_it_are_replayed_in_order() {
        let (mut e, t0) = (EarlySignals::<Bytes>::default(), Instant::now());
        assert!(e.keep(peer(1), b("offer"), true, t0));
        assert!(e.keep(peer(1), b("ping"), false, t0));
        assert_eq!(e.take(&peer(1), t0), vec![b("offer"), b("ping")]);
        assert!(e.take(&peer(1), t0).is_empty(), "taken once");
    }

    #[test]
    fn only_an_offer_starts_a_queue() {
        let (mut e, t0) = (EarlySignals::<Bytes>::default(), Instant::now());
        assert!(!e.keep(peer(1), b("ping"), false, t0));
        assert!(e.take(&peer(1), t0).is_empty());
    }

    #[test]
    fn queues_expire_and_are_bounded() {
        let (mut e, t0) = (EarlySignals::<Bytes>::default(), Instant::now());
        assert!(e.keep(peer(1), b("offer"), true, t0));
        assert!(e.take(&peer(1), t0 + EARLY_SIGNAL_TTL).is_empty(), "expired");
        // Per peer.
        assert!(e.keep(peer(2), b("offer"), true, t0));
        for _ in 1..MAX_EARLY_SIGNALS {
            assert!(e.keep(peer(2), b("x"), false, t0));
        }
        assert!(!e.keep(peer(2), b("one too many"), false, t0));
        assert_eq!(e.take(&peer(2), t0).len(), MAX_EARLY_SIGNALS);
        // Peers.
        for n in 0..MAX_EARLY_PEERS as u8 {
            assert!(e.keep(peer(10 + n), b("offer"), true, t0));
        }
        assert!(!e.keep(peer(99), b("offer"), true, t0));
        // Expired queues make room.
        assert!(e.keep(peer(99), b("offer"), true, t0 + EARLY_SIGNAL_TTL));
    }
}
