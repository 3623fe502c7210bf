//! Keep-alive and round-trip-time estimation, as a sans-IO state machine.
//!
//! [`KeepAlive`] decides when a connection needs a ping, when it is dead, and smooths the
//! RTT samples its pongs yield per RFC 6298 §2 (`SRTT`/`RTTVAR`, α = 1/8, β = 1/4). It
//! owns no timer and never reads the clock: every input carries `now`, and the owner
//! sleeps until [`KeepAlive::poll_timeout`] and then calls [`KeepAlive::poll_ping`] and
//! [`KeepAlive::is_dead`].
//!
//! Liveness is judged on what is *received*: any inbound frame proves the peer alive. A
//! ping is due once nothing has been received for `interval`, whether or not this side
//! is sending. (Judging on "nothing sent or received" would never ping on a connection
//! that only sends, and such a connection would then be declared dead after
//! `idle_timeout` although the peer is fine.) At most one ping is outstanding; one
//! unanswered for a whole `interval` is abandoned and replaced, and its late pong gives
//! no RTT sample.

use std::time::{Duration, Instant};

/// Keep-alive and RTT state of one connection.
#[derive(Clone, Debug)]
pub struct KeepAlive {
    interval: Duration,
    idle_timeout: Duration,
    last_receive: Instant,
    /// The outstanding ping: nonce and when it was handed out.
    outstanding: Option<(u64, Instant)>,
    next_nonce: u64,
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl KeepAlive {
    /// A machine for a connection established at `now`: a ping is due after `interval`
    /// without inbound traffic; the connection is dead after `idle_timeout` without any.
    pub fn new(interval: Duration, idle_timeout: Duration, now: Instant) -> Self {
        Self {
            interval,
            idle_timeout,
            last_receive: now,
            outstanding: None,
            next_nonce: 1,
            srtt: None,
            rttvar: Duration::ZERO,
        }
    }

    /// Records that a frame (of any kind) arrived at `now`.
    pub fn on_receive(&mut self, now: Instant) {
        if now > self.last_receive {
            self.last_receive = now;
        }
    }

    /// Records a pong carrying `nonce` at `now`. Returns the RTT sample when the pong
    /// answers the outstanding ping; a stale or unknown nonce still counts as liveness
    /// but gives no sample.
    pub fn on_pong(&mut self, nonce: u64, now: Instant) -> Option<Duration> {
        self.on_receive(now);
        match self.outstanding {
            Some((n, sent)) if n == nonce => {
                self.outstanding = None;
                let sample = now.saturating_duration_since(sent);
                self.add_sample(sample);
                Some(sample)
            }
            _ => None,
        }
    }

    /// RFC 6298 §2.2/2.3 smoothing.
    fn add_sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = self.rttvar * 3 / 4 + diff / 4;
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
        }
    }

    /// When the next ping is due, ignoring deadness.
    fn ping_due(&self) -> Instant {
        match self.outstanding {
            Some((_, sent)) => sent + self.interval,
            None => self.last_receive + self.interval,
        }
    }

    /// If a ping is due at `now`, returns its nonce and marks it outstanding; the caller
    /// must send `Ping { nonce }`.
    pub fn poll_ping(&mut self, now: Instant) -> Option<u64> {
        if self.is_dead(now) || now < self.ping_due() {
            return None;
        }
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        self.outstanding = Some((nonce, now));
        Some(nonce)
    }

    /// The next instant at which [`poll_ping`](Self::poll_ping) or
    /// [`is_dead`](Self::is_dead) may change their answer.
    pub fn poll_timeout(&self) -> Instant {
        self.ping_due().min(self.dead_at())
    }

    fn dead_at(&self) -> Instant {
        self.last_receive + self.idle_timeout
    }

    /// Whether nothing has been received for `idle_timeout` as of `now`.
    pub fn is_dead(&self, now: Instant) -> bool {
        now >= self.dead_at()
    }

    /// The smoothed RTT, once a pong answered a ping.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The RTT variation estimate (zero until measured).
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The nonce of the outstanding ping, if any.
    pub fn outstanding(&self) -> Option<u64> {
        self.outstanding.map(|(n, _)| n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(15);
    const IDLE: Duration = Duration::from_secs(45);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_ping_before_interval() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, IDLE, t0);
        assert_eq!(ka.poll_timeout(), t0 + I);
        assert_eq!(ka.poll_ping(t0), None);
        assert_eq!(ka.poll_ping(t0 + I - ms(1)), None);
        assert!(!ka.is_dead(t0 + I));
    }

    #[test]
    fn ping_due_after_interval_and_only_one_outstanding() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, IDLE, t0);
        let n = ka.poll_ping(t0 + I).unwrap();
        assert_eq!(ka.outstanding(), Some(n));
        assert_eq!(ka.poll_ping(t0 + I), None);
        assert_eq!(ka.poll_ping(t0 + I + ms(10)), None);
        // The next deadline is the replacement ping, a full interval after this one.
        assert_eq!(ka.poll_timeout(), t0 + 2 * I);
    }

    #[test]
    fn receive_postpones_ping_and_death() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, IDLE, t0);
        ka.on_receive(t0 + ms(10_000));
        assert_eq!(ka.poll_ping(t0 + I), None);
        assert_eq!(ka.poll_timeout(), t0 + ms(10_000) + I);
        assert!(!ka.is_dead(t0 + IDLE));
        assert!(ka.is_dead(t0 + ms(10_000) + IDLE));
    }

    #[test]
    fn receive_in_the_past_is_ignored() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, IDLE, t0 + ms(100));
        ka.on_receive(t0);
        assert_eq!(ka.poll_timeout(), t0 + ms(100) + I);
    }

    #[test]
    fn pong_gives_rtt_and_clears_outstanding() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, IDLE, t0);
        assert_eq!(ka.srtt(), None);
        let n = ka.poll_ping(t0 + I).unwrap();
        assert_eq!(ka.on_pong(n, t0 + I + ms(40)), Some(ms(40)));
        assert_eq!(ka.srtt(), Some(ms(40)));
        assert_eq!(ka.rttvar(), ms(20));
        assert_eq!(ka.outstanding(), None);
        assert_eq!(ka.poll_timeout(), t0 + I + ms(40) + I);
    }

    #[test]
    fn rfc6298_smoothing() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(ms(100), IDLE, t0);
        let mut now = t0;
        let mut expect_srtt = 0f64;
        let mut expect_var = 0f64;
        for (i, r) in [100u64, 200, 50, 80, 300].into_iter().enumerate() {
            now += ms(100);
            let n = ka.poll_ping(now).unwrap();
            now += ms(r);
            assert_eq!(ka.on_pong(n, now), Some(ms(r)));
            let r = r as f64;
            if i == 0 {
                expect_srtt = r;
                expect_var = r / 2.0;
            } else {
                expect_var = 0.75 * expect_var + 0.25 * (expect_srtt - r).abs();
                expect_srtt = 0.875 * expect_srtt + 0.125 * r;
            }
            let srtt = ka.srtt().unwrap().as_secs_f64() * 1000.0;
            let var = ka.rttvar().as_secs_f64() * 1000.0;
            assert!((srtt - expect_srtt).abs() < 0.01, "srtt {srtt} vs {expect_srtt}");
            assert!((var - expect_var).abs() < 0.01, "rttvar {var} vs {expect_var}");
        }
    }

    #[test]
    fn wrong_or_stale_pong_gives_no_sample_but_counts_as_liveness() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, IDLE, t0);
        let n = ka.poll_ping(t0 + I).unwrap();
        assert_eq!(ka.on_pong(n + 7, t0 + I + ms(5)), None);
        assert_eq!(ka.outstanding(), Some(n));
        assert!(!ka.is_dead(t0 + I + ms(5) + IDLE - ms(1)));
        // Unanswered for a whole interval: replaced by a new ping; the old pong is stale.
        let m = ka.poll_ping(t0 + 2 * I).unwrap();
        assert_ne!(m, n);
        assert_eq!(ka.on_pong(n, t0 + 2 * I + ms(1)), None);
        assert_eq!(ka.srtt(), None);
        assert_eq!(ka.on_pong(m, t0 + 2 * I + ms(3)), Some(ms(3)));
    }

    #[test]
    fn dead_after_idle_timeout_without_traffic() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, IDLE, t0);
        let mut now = t0;
        let mut pings = 0;
        while !ka.is_dead(now) {
            if ka.poll_ping(now).is_some() {
                pings += 1;
            }
            let next = ka.poll_timeout();
            assert!(next > now || ka.is_dead(next), "timer must advance");
            now = next;
        }
        assert_eq!(now, t0 + IDLE);
        // Pings at 15 s and 30 s; at 45 s the connection is dead and no ping is sent.
        assert_eq!(pings, 2);
        assert_eq!(ka.poll_ping(now), None);
    }

    #[test]
    fn idle_timeout_shorter_than_interval() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, ms(5_000), t0);
        assert_eq!(ka.poll_timeout(), t0 + ms(5_000));
        assert!(ka.is_dead(t0 + ms(5_000)));
        assert_eq!(ka.poll_ping(t0 + I), None);
    }

    #[test]
    fn steady_pongs_keep_alive_forever() {
        let t0 = Instant::now();
        let mut ka = KeepAlive::new(I, IDLE, t0);
        let mut now = t0;
        for _ in 0..100 {
            now = ka.poll_timeout();
            assert!(!ka.is_dead(now));
            let n = ka.poll_ping(now).unwrap();
            now += ms(20);
            ka.on_pong(n, now);
        }
        assert_eq!(ka.srtt(), Some(ms(20)));
        assert!(ka.rttvar() < ms(1), "variation decays with identical samples");
        assert!(now > t0 + 100 * I);
    }
}
