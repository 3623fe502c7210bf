//! The dial order: the rules of the [module docs](super), as one function that
//! [`plan`](super::plan) calls without a history and [`DialHistory::rank`] with one.

use std::time::{Duration, Instant};

use super::{
    history::{recorded_protocol, DialHistory, DialStats},
    prefers_webrtc,
};
use crate::address::{PeerAddress, TransportAddr};

/// A failure older than this no longer moves a transport back, so a network that was
/// fixed (a firewall opened, UDP unblocked) gets its better transport back. 5 min: a
/// flapping episode (reconnects with 100 ms–5 s backoff) stays within it, so a broken
/// transport is not retried first on every reconnect; once it has passed, retrying a
/// transport that is still broken costs at most one [`ATTEMPT_STAGGER`](super::ATTEMPT_STAGGER)
/// (250 ms) per peer, at most once per 5 min.
pub const FAILURE_DECAY: Duration = Duration::from_secs(5 * 60);

/// A measured transport goes before one the static order puts ahead of it only if its
/// smoothed connect time (or, with comparable connect times, its RTT) is lower by more
/// than this many percent. 25 %: an average of samples with ±10 % jitter stays within ±10 %
/// of its mean, so two equal transports differ by at most 1.1 / 0.9 ≈ 22 % and never
/// swap; a clearly better one (a quarter faster and more: a UDP path that retransmits
/// its handshake, a slow TLS-over-WebSocket proxy) does.
pub const FASTER_MARGIN_PERCENT: u32 = 25;

/// …and by at least this much time. 10 ms: on loopback and LANs connects take a few
/// milliseconds and differ by scheduling noise, and winning less than 10 ms once per
/// connection (4 % of the 250 ms attempt stagger) is not worth leaving the static order.
pub const FASTER_MIN: Duration = Duration::from_millis(10);

/// Where an address goes in the dial order, first to last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// WebRTC for a peer that prefers it (a browser).
    Preferred,
    /// A direct address whose transport did not fail recently for this peer.
    Direct,
    /// A direct address whose transport failed recently for this peer.
    Failed,
    /// A relay route.
    Relay,
}

struct Slot<'h> {
    addr: TransportAddr,
    class: Class,
    priority: u8,
    /// Position in the peer's own list (its preference).
    index: usize,
    stats: Option<&'h DialStats>,
}

/// Orders `peer`'s addresses: classes first, static priority within a class, then
/// measured transports reordered among their own positions (see the module docs).
pub(super) fn order(
    peer: &PeerAddress,
    priority: impl Fn(&TransportAddr) -> Option<u8>,
    history: Option<(&DialHistory, Instant)>,
) -> Vec<TransportAddr> {
    let browser = prefers_webrtc(peer);
    let mut slots: Vec<Slot<'_>> = Vec::new();
    for (index, addr) in peer.addrs.iter().enumerate() {
        let Some(p) = priority(addr) else { continue };
        if slots.iter().any(|s| s.addr == *addr) {
            continue;
        }
        let stats = history.and_then(|(h, _)| h.stats(&peer.peer_id, recorded_protocol(addr)?));
        let class = match addr {
            TransportAddr::WebRtc if browser => Class::Preferred,
            TransportAddr::Relay(_) => Class::Relay,
            _ if history.zip(stats).is_some_and(|((_, now), s)| failed_recently(s, now)) => Class::Failed,
            _ => Class::Direct,
        };
        slots.push(Slot { addr: addr.clone(), class, priority: p, index, stats });
    }
    slots.sort_by(|x, y| x.class.cmp(&y.class).then(y.priority.cmp(&x.priority)).then(x.index.cmp(&y.index)));
    for run in slots.chunk_by_mut(|x, y| x.class == y.class) {
        promote_measured(run);
    }
    slots.into_iter().map(|s| s.addr).collect()
}

/// Whether `s` failed for its peer within [`FAILURE_DECAY`] before `now`, with no
/// success since.
fn failed_recently(s: &DialStats, now: Instant) -> bool {
    s.consecutive_failures > 0
        && s.last_failure.is_some_and(|t| now.saturating_duration_since(t) < FAILURE_DECAY)
}

/// Reorders the measured slots of one class among the positions they hold, by an
/// insertion sort in which a slot moves ahead of the measured one before it only if it
/// [`beats`] it. Unmeasured slots keep their positions. The margin makes [`beats`]
/// intransitive, which `sort_by` must not be given; insertion needs only that it is
/// asymmetric, and leaves no measured slot beating the measured one just ahead of it.
fn promote_measured(run: &mut [Slot<'_>]) {
    let measured: Vec<usize> = run
        .iter()
        .enumerate()
        .filter(|(_, s)| s.stats.is_some_and(|s| s.connect_time.is_some()))
        .map(|(i, _)| i)
        .collect();
    for k in 1..measured.len() {
        let mut j = k;
        while j > 0 && slot_beats(run, measured[j], measured[j - 1]) {
            run.swap(measured[j], measured[j - 1]);
            j -= 1;
        }
    }
}

/// Whether the slot at `a` [`beats`] the one at `b` (both measured).
fn slot_beats(run: &[Slot<'_>], a: usize, b: usize) -> bool {
    match (run.get(a).and_then(|s| s.stats), run.get(b).and_then(|s| s.stats)) {
        (Some(a), Some(b)) => beats(a, b),
        _ => false,
    }
}

/// Whether a transport measured as `a` should be dialed before one measured as `b`:
/// its connect time is clearly lower, or the connect times are comparable and its RTT is
/// clearly lower ("clearly": by [`FASTER_MARGIN_PERCENT`] and [`FASTER_MIN`]). Asymmetric: `a`
/// and `b` never beat each other.
fn beats(a: &DialStats, b: &DialStats) -> bool {
    let (Some(ca), Some(cb)) = (a.connect_time, b.connect_time) else { return false };
    if clearly_below(ca, cb) {
        return true;
    }
    if clearly_below(cb, ca) {
        return false;
    }
    matches!((a.rtt, b.rtt), (Some(ra), Some(rb)) if clearly_below(ra, rb))
}

/// `a` is below `b` by more than [`FASTER_MARGIN_PERCENT`] and by at least [`FASTER_MIN`].
/// Exact (integer nanoseconds; `u128` cannot overflow for any `Duration`).
fn clearly_below(a: Duration, b: Duration) -> bool {
    let percent = u128::from(FASTER_MARGIN_PERCENT);
    b.saturating_sub(a) >= FASTER_MIN && a.as_nanos() * (100 + percent) < b.as_nanos() * 100
}

#[cfg(test)]
#[path = "rank_tests.rs"]
mod tests;
