//! The health of one path (sans-IO): round-trip time, loss and recent throughput, from
//! probe answers and traffic samples.
//!
//! * **RTT**: every probe answer is a sample. The smoothed RTT follows RFC 6298 (α = 1/8)
//!   for reporting; ranking uses the median of the last [`RTT_WINDOW`] samples, which a
//!   single outlier cannot move (so jitter does not make two similar paths swap places).
//! * **Loss**: the share of probes not answered within their deadline (an exponentially
//!   weighted average, weight [`LOSS_WEIGHT`] per probe). Paths are reliable transports,
//!   so a "lost" probe is one that waited for retransmissions: it tracks real packet loss
//!   on the path.
//! * **Throughput**: bytes carried per second, averaged over the last few seconds of
//!   traffic samples.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// RTT samples the ranking median is taken over. 8: at one probe per interval this is the
/// last half minute of an idle path, or a fraction of a second of a busy one; the median
/// of 8 samples with ±10 % jitter moves by a few percent, far below the switch margin.
pub const RTT_WINDOW: usize = 8;

/// Weight of one probe's outcome in the loss average. 1/8: a path needs several lost
/// probes in a row to look lossy, and recovers over a dozen answered ones.
pub const LOSS_WEIGHT: f64 = 1.0 / 8.0;

/// Weight of one traffic sample in the throughput average. 1/4: with samples every few
/// hundred milliseconds the figure follows a transfer within about a second.
const THROUGHPUT_WEIGHT: f64 = 0.25;

/// Measurements of one path.
#[derive(Clone, Debug, Default)]
pub struct PathHealth {
    samples: VecDeque<Duration>,
    srtt: Option<Duration>,
    min_rtt: Option<Duration>,
    loss: f64,
    throughput: f64,
    last_sample: Option<Instant>,
}

impl PathHealth {
    /// A path with no measurements.
    pub fn new() -> Self {
        Self::default()
    }

    /// A probe answered after `rtt`.
    pub fn on_rtt(&mut self, rtt: Duration) {
        if self.samples.len() == RTT_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(rtt);
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
    }

    /// A probe's outcome for the loss average: `lost` when it was not answered in time.
    pub fn on_probe_outcome(&mut self, lost: bool) {
        let x = if lost { 1.0 } else { 0.0 };
        self.loss += (x - self.loss) * LOSS_WEIGHT;
    }

    /// `bytes` carried (either way) since the previous sample, at `now`.
    pub fn on_traffic(&mut self, bytes: u64, now: Instant) {
        if let Some(prev) = self.last_sample {
            let secs = now.saturating_duration_since(prev).as_secs_f64();
            if secs > 0.0 {
                let rate = bytes as f64 / secs;
                self.throughput += (rate - self.throughput) * THROUGHPUT_WEIGHT;
            }
        }
        self.last_sample = Some(now);
    }

    /// The smoothed RTT (RFC 6298), once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The lowest RTT seen.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The median of the recent samples: what paths are ranked by.
    pub fn median_rtt(&self) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = self.samples.iter().copied().collect();
        v.sort();
        Some(v[v.len() / 2])
    }

    /// RTT samples held (at most [`RTT_WINDOW`]).
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// The estimated share of probes lost, 0 to 1.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// Recent throughput, bytes per second.
    pub fn throughput(&self) -> f64 {
        self.throughput
    }

    /// The ranking cost within a tier: the median RTT, penalized by loss (each 10 % of loss
    /// counts like 40 % more delay, since lost packets cost retransmission timeouts).
    /// `None` until measured.
    pub fn cost(&self) -> Option<f64> {
        self.median_rtt().map(|r| r.as_secs_f64() * (1.0 + 4.0 * self.loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn median_resists_outliers_and_srtt_smooths() {
        let mut h = PathHealth::new();
        assert_eq!(h.median_rtt(), None);
        for r in [10, 11, 9, 10, 200, 10, 11, 9] {
            h.on_rtt(ms(r));
        }
        assert_eq!(h.median_rtt(), Some(ms(10)));
        assert_eq!(h.min_rtt(), Some(ms(9)));
        assert!(h.srtt().is_some_and(|s| s > ms(10) && s < ms(60)));
        // The window forgets old samples.
        for _ in 0..RTT_WINDOW {
            h.on_rtt(ms(50));
        }
        assert_eq!(h.median_rtt(), Some(ms(50)));
        assert_eq!(h.sample_count(), RTT_WINDOW);
    }

    #[test]
    fn loss_rises_with_lost_probes_and_decays() {
        let mut h = PathHealth::new();
        for _ in 0..4 {
            h.on_probe_outcome(true);
        }
        assert!(h.loss() > 0.35 && h.loss() < 0.45, "{}", h.loss());
        for _ in 0..24 {
            h.on_probe_outcome(false);
        }
        assert!(h.loss() < 0.05);
        h.on_rtt(ms(10));
        assert!(h.cost().is_some());
    }

    #[test]
    fn throughput_follows_traffic() {
        let t0 = Instant::now();
        let mut h = PathHealth::new();
        h.on_traffic(0, t0);
        for i in 1..=20 {
            h.on_traffic(1_000_000, t0 + ms(100 * i));
        }
        assert!((h.throughput() - 10e6).abs() < 1e6, "{}", h.throughput());
    }
}
