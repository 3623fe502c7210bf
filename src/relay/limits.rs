//! Relay limits, the token bucket that shapes circuits, and the fair share of the total
//! bandwidth.
//!
//! Bandwidth model (the choice, and why):
//!
//! * Each circuit has **one** bucket counting the bytes of both directions together; the
//!   circuit limit and the total limit therefore bound what the relay *forwards* (its
//!   egress equals its ingress for relayed data).
//! * The total is shared **equally between open circuits**: each circuit's rate is
//!   `min(circuit_bandwidth, total_bandwidth / open_circuits)`, recomputed whenever a
//!   circuit opens or closes (the relay emits
//!   [`Output::RateChanged`](super::server::Output::RateChanged) for every open
//!   circuit). This is a static partition, not max-min fairness: an idle circuit's share
//!   is not lent to busy ones. It needs no coordination between forwarders (each owns
//!   its bucket), cannot be gamed by opening bursts, and the sum of all rates never
//!   exceeds the total. Redistributing idle shares would need demand reports from every
//!   forwarder; that is left for later (see `docs/relay.md`).
//! * A message larger than the bucket is let through when the bucket is full and drives
//!   it into debt, so large WebSocket messages never stall forever and the long-run rate
//!   still holds.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::RelayConfigError;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The limits a relay enforces. Every field has a documented default; `kizuna relay`
/// exposes each as a flag (issue 4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelayLimits {
    /// Reservations held at once. Default 1024: a reservation costs the relay one idle
    /// WebSocket; 1024 covers a small deployment while bounding an abusive one.
    pub max_reservations: usize,
    /// Circuits (pending + open) at once. Default 1024: each open circuit holds two
    /// WebSockets and their buffers (tens of KiB); 1024 is the concurrency the relay is
    /// benchmarked at.
    pub max_circuits: usize,
    /// Circuits (pending + open) one peer takes part in, as dialer or target. Default 64:
    /// enough for a node serving many relayed clients, small enough that one peer cannot
    /// take the whole relay.
    pub max_circuits_per_peer: usize,
    /// Bytes per second one circuit may carry (both directions together). Default
    /// 16 MiB/s (~134 Mbit/s): a relayed path is a fallback, and direct upgrades are
    /// attempted; bulk users should raise it.
    pub circuit_bandwidth: u64,
    /// Bytes per second all circuits together may carry, shared equally between open
    /// circuits. Default 128 MiB/s (~1 Gbit/s), a typical server NIC.
    pub total_bandwidth: u64,
    /// Longest life of a circuit. Default 1 h: long enough for real sessions (the relay
    /// is the path of last resort, unlike libp2p's 2-minute upgrade-only relays), short
    /// enough that forgotten circuits are reclaimed; clients re-dial when it ends.
    pub max_circuit_duration: Duration,
    /// Bytes one circuit may carry in total (both directions). Default 1 GiB.
    pub max_circuit_bytes: u64,
    /// Longest reservation TTL granted; longer requests are shortened. Default 1 h, as
    /// libp2p circuit relay v2; clients renew at half the granted TTL.
    pub reservation_ttl_max: Duration,
    /// Time the target has to accept or refuse a circuit. Default 10 s: the target opens a
    /// new WebSocket and authenticates (two round trips plus TLS), with margin.
    pub pending_timeout: Duration,
    /// Time an open circuit has to carry the three flights of an end-to-end handshake
    /// before it is closed ([`unconfirmed`](super::unconfirmed)). Default 5 s: the ends'
    /// TLS 1.3 handshake is two round trips through the relay, so this is many round trips
    /// even on a slow link, and a circuit dialed only to occupy the target is gone well
    /// before the target's own 10 s handshake bound.
    pub circuit_handshake_timeout: Duration,
    /// Unconfirmed circuits (pending, or open without a handshake) one key may have
    /// initiated at once. Default 8: a node dials each peer once at a time, so 8 covers
    /// dialing several peers at once while a key cannot hold many slots.
    pub max_unconfirmed_per_initiator: usize,
    /// Unconfirmed circuits initiated from one address (an IPv4 address or an IPv6 /64)
    /// at once. Default 16: keys are free, addresses are not; 16 serves a NAT with a few
    /// busy users while a crowd of throwaway keys from one host stays small.
    pub max_unconfirmed_per_address: usize,
    /// Unconfirmed circuits to one target at once, shared fairly between initiating
    /// addresses (one address at most half). Default 16, a quarter of
    /// `max_circuits_per_peer`: initiators that never complete a handshake can never take
    /// the target's capacity, and a newcomer from another address always finds room.
    pub max_unconfirmed_per_target: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 1024,
            max_circuits: 1024,
            max_circuits_per_peer: 64,
            circuit_bandwidth: 16 * MIB,
            total_bandwidth: 128 * MIB,
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: GIB,
            reservation_ttl_max: Duration::from_secs(3600),
            pending_timeout: Duration::from_secs(10),
            circuit_handshake_timeout: Duration::from_secs(5),
            max_unconfirmed_per_initiator: 8,
            max_unconfirmed_per_address: 16,
            max_unconfirmed_per_target: 16,
        }
    }
}

impl RelayLimits {
    /// Checks that every limit admits at least some use.
    pub fn validate(&self) -> Result<(), RelayConfigError> {
        let bad = |name, value: u64| RelayConfigError::BadLimit { name, value, reason: "must be at least 1" };
        let counts = [
            ("max_reservations", self.max_reservations as u64),
            ("max_circuits", self.max_circuits as u64),
            ("max_circuits_per_peer", self.max_circuits_per_peer as u64),
            ("circuit_bandwidth", self.circuit_bandwidth),
            ("total_bandwidth", self.total_bandwidth),
            ("max_circuit_bytes", self.max_circuit_bytes),
            ("max_unconfirmed_per_initiator", self.max_unconfirmed_per_initiator as u64),
            ("max_unconfirmed_per_address", self.max_unconfirmed_per_address as u64),
            ("max_unconfirmed_per_target", self.max_unconfirmed_per_target as u64),
        ];
        for (name, v) in counts {
            if v == 0 {
                return Err(bad(name, v));
            }
        }
        let secs = [
            ("max_circuit_duration", self.max_circuit_duration),
            ("reservation_ttl_max", self.reservation_ttl_max),
            ("pending_timeout", self.pending_timeout),
            ("circuit_handshake_timeout", self.circuit_handshake_timeout),
        ];
        for (name, d) in secs {
            if d < Duration::from_secs(1) {
                return Err(RelayConfigError::BadLimit {
                    name,
                    value: d.as_secs(),
                    reason: "must be at least 1 second",
                });
            }
        }
        Ok(())
    }

    /// A circuit's rate when `open` circuits share the total: `min(circuit_bandwidth,
    /// total_bandwidth / open)`, at least 1 byte/s.
    pub fn fair_share(&self, open: usize) -> u64 {
        let share = self.total_bandwidth / (open.max(1) as u64);
        share.min(self.circuit_bandwidth).max(1)
    }
}

/// The bucket size used for a rate: a quarter second of traffic, at least
/// [`MIN_BURST`]. A quarter second smooths scheduling jitter of the forwarder without
/// letting a circuit exceed its rate noticeably over any window of a few seconds.
pub fn burst_for(rate: u64) -> u64 {
    (rate / 4).max(MIN_BURST)
}

/// Smallest bucket: 64 KiB, one maximal relay control message or four TLS records, so
/// ordinary messages never need to go into debt.
pub const MIN_BURST: u64 = 64 * KIB;

/// Nanobytes per byte: the bucket counts in 10⁻⁹ bytes so that refills over any interval
/// are exact integer arithmetic (no float drift, no lost fractions).
const NANO: i128 = 1_000_000_000;

/// A token bucket of bytes with a synthetic clock: `rate` bytes per second, up to `burst`
/// bytes saved up. Starts full.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens in nanobytes; negative while in debt after an oversized message.
    level: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (`rate` and `burst` are raised to at least 1).
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1);
        Self { rate: rate.max(1), burst, level: i128::from(burst) * NANO, last: now }
    }

    /// A full bucket with the burst of [`burst_for`].
    pub fn with_rate(rate: u64, now: Instant) -> Self {
        Self::new(rate, burst_for(rate), now)
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Bucket size in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.last {
            return;
        }
        let dt = i128::try_from(now.duration_since(self.last).as_nanos()).unwrap_or(i128::MAX);
        let cap = i128::from(self.burst) * NANO;
        self.level = self.level.saturating_add(i128::from(self.rate).saturating_mul(dt)).min(cap);
        self.last = now;
    }

    /// Changes the rate from `now` on (time before `now` is credited at the old rate) and
    /// the burst to [`burst_for`] the new rate.
    pub fn set_rate(&mut self, now: Instant, rate: u64) {
        self.refill(now);
        self.rate = rate.max(1);
        self.burst = burst_for(self.rate);
        self.level = self.level.min(i128::from(self.burst) * NANO);
    }

    /// Whole bytes available at `now` (0 while in debt).
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        u64::try_from((self.level / NANO).max(0)).unwrap_or(u64::MAX)
    }

    /// Takes `n` bytes at `now`, or says how long to wait before trying again.
    ///
    /// `n` larger than the burst is admitted once the bucket is full, leaving it in debt.
    /// A caller that gets `Err(wait)` takes nothing and retries after `wait`.
    pub fn take(&mut self, now: Instant, n: u64) -> Result<(), Duration> {
        self.refill(now);
        let need = i128::from(n) * NANO;
        let full = i128::from(self.burst) * NANO;
        if self.level >= need || (n > self.burst && self.level >= full) {
            self.level -= need;
            return Ok(());
        }
        let target = i128::from(n.min(self.burst)) * NANO;
        let missing = target - self.level; // > 0 here
        let rate = i128::from(self.rate);
        let nanos = (missing + rate - 1) / rate; // ceil
        Err(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Sends `msg`-byte messages as fast as the bucket allows for `span`; returns bytes sent.
    fn saturate(b: &mut TokenBucket, t0: Instant, span: Duration, msg: u64) -> (u64, Instant) {
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + span {
            match b.take(now, msg) {
                Ok(()) => sent += msg,
                Err(wait) => now += wait,
            }
        }
        (sent, now)
    }

    #[test]
    fn rate_is_enforced_over_simulated_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        // Burst first, then exactly the rate: 100 + 1000/s × 10 s.
        let (sent, _) = saturate(&mut b, t0, secs(10.0), 10);
        assert!((10_090..=10_110).contains(&sent), "sent {sent}");
    }

    #[test]
    fn take_reports_exact_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1000, t0);
        assert_eq!(b.take(t0, 1000), Ok(()));
        assert_eq!(b.take(t0, 1), Err(Duration::from_millis(1)));
        assert_eq!(b.take(t0, 500), Err(Duration::from_millis(500)));
        assert_eq!(b.available(t0 + secs(0.25)), 250);
        assert_eq!(b.take(t0 + secs(0.5), 500), Ok(()));
        assert_eq!(b.available(t0 + secs(0.5)), 0);
        // Never above the burst.
        assert_eq!(b.available(t0 + secs(100.0)), 1000);
    }

    #[test]
    fn oversized_messages_go_into_debt_and_keep_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert_eq!(b.take(t0, 500), Ok(())); // full bucket admits it, debt of 400
        assert_eq!(b.available(t0), 0);
        // Back to full after the debt (400) and a full bucket (100) are earned: 0.5 s.
        assert_eq!(b.take(t0, 500), Err(Duration::from_millis(500)));
        let (sent, _) = saturate(&mut b, t0, secs(10.0), 500);
        assert!((9_500..=10_500).contains(&sent), "sent {sent}");
    }

    #[test]
    fn set_rate_credits_the_past_at_the_old_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1_000_000, t0);
        assert_eq!(b.take(t0, 1_000_000), Ok(()));
        b.set_rate(t0 + secs(1.0), 2000);
        assert_eq!(b.available(t0 + secs(1.0)), 1000);
        assert_eq!(b.available(t0 + secs(2.0)), 3000);
        assert_eq!(b.burst(), MIN_BURST);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(u64::MAX, u64::MAX, t0);
        assert_eq!(b.take(t0 + secs(1e6), u64::MAX), Ok(()));
        // Rate and burst are raised to 1: a full bucket admits an oversized take once.
        let mut z = TokenBucket::new(0, 0, t0);
        assert_eq!(z.take(t0, 2), Ok(()));
        assert_eq!(z.take(t0, u64::MAX), Err(Duration::from_secs(2)));
        assert_eq!(z.take(t0 + secs(2.0), u64::MAX), Ok(()));
    }

    #[test]
    fn two_circuits_get_equal_shares_of_the_total() {
        let limits = RelayLimits { circuit_bandwidth: 10_000, total_bandwidth: 8_000, ..Default::default() };
        assert_eq!(limits.fair_share(1), 8_000);
        let rate = limits.fair_share(2);
        assert_eq!(rate, 4_000);
        let t0 = Instant::now();
        let mut a = TokenBucket::new(rate, 100, t0);
        let mut b = TokenBucket::new(rate, 100, t0);
        let (sa, _) = saturate(&mut a, t0, secs(20.0), 50);
        let (sb, _) = saturate(&mut b, t0, secs(20.0), 25);
        assert!(sa.abs_diff(sb) <= 100, "{sa} vs {sb}");
        assert!(sa + sb <= 2 * 100 + 8_000 * 20 + 100);
        // The circuit limit caps the share when few circuits are open.
        let l = RelayLimits { circuit_bandwidth: 1_000, total_bandwidth: 8_000, ..Default::default() };
        assert_eq!(l.fair_share(1), 1_000);
        assert_eq!(l.fair_share(16), 500);
        assert_eq!(l.fair_share(0), 1_000);
        assert_eq!(RelayLimits { total_bandwidth: 3, ..l }.fair_share(16), 1);
    }

    #[test]
    fn default_limits_are_valid_and_zeros_are_not() {
        assert_eq!(RelayLimits::default().validate(), Ok(()));
        let e = RelayLimits { max_circuits: 0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("max_circuits"), "{e}");
        let e = RelayLimits { pending_timeout: Duration::ZERO, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("pending_timeout"), "{e}");
    }
}
