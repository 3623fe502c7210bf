//! A virtual-clock simulation of one peer's paths for the [`PathManager`] tests: each path
//! has a round-trip time, jitter, loss and a schedule of failures; the peer answers probes
//! and, while the application sends, acknowledges traffic on the active path.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::manager::{Output, PathDesc, PathEvent, PathId, PathManager};

/// SplitMix64: a tiny deterministic generator for jitter and loss.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// How one simulated path behaves.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) rtt: Duration,
    /// Each sample is `rtt × (1 ± jitter)`, uniform.
    pub(crate) jitter: f64,
    /// Share of answers lost (each delayed by a retransmission instead: the path is a
    /// reliable transport).
    pub(crate) loss: f64,
    /// While set, nothing gets through (a blackhole).
    pub(crate) blackholed: bool,
}

impl Link {
    pub(crate) fn new(rtt_ms: u64) -> Self {
        Self { rtt: Duration::from_millis(rtt_ms), jitter: 0.0, loss: 0.0, blackholed: false }
    }
}

/// A pending delivery to the manager.
#[derive(Debug, Clone)]
enum Arrival {
    Reply(u64),
    Heard,
}

/// The simulation: a manager, its links, a clock and what it output.
pub(crate) struct Sim {
    pub(crate) m: PathManager,
    pub(crate) now: Instant,
    pub(crate) t0: Instant,
    pub(crate) links: BTreeMap<PathId, Link>,
    /// Deliveries scheduled for the future (time, path, what).
    pending: Vec<(Instant, PathId, Arrival)>,
    rng: SplitMix64,
    /// Whether the application is sending (traffic on the active path).
    pub(crate) sending: bool,
    next_send: Instant,
    pub(crate) events: Vec<(Duration, PathEvent)>,
    pub(crate) outputs: Vec<(Duration, Output)>,
}

/// How often the simulated application reports traffic while sending.
const SEND_EVERY: Duration = Duration::from_millis(50);

impl Sim {
    pub(crate) fn new(m: PathManager, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            m,
            now,
            t0: now,
            links: BTreeMap::new(),
            pending: Vec::new(),
            rng: SplitMix64::new(seed),
            sending: false,
            next_send: now,
            events: Vec::new(),
            outputs: Vec::new(),
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    pub(crate) fn add(&mut self, id: u64, desc: PathDesc, link: Link) -> PathId {
        let id = PathId(id);
        self.links.insert(id, link);
        let now = self.now;
        self.m.handle_path_up(now, id, desc);
        self.drain();
        id
    }

    pub(crate) fn down(&mut self, id: PathId) {
        self.links.remove(&id);
        self.pending.retain(|(_, p, _)| *p != id);
        let now = self.now;
        self.m.handle_path_down(now, id);
        self.drain();
    }

    /// The peer's data arrives on `id` now (unless it is blackholed).
    pub(crate) fn remote_traffic(&mut self, id: PathId) {
        if self.links.get(&id).is_none_or(|l| l.blackholed) {
            return;
        }
        let now = self.now;
        self.m.handle_heard(now, id);
        self.m.handle_remote_traffic(now, id);
        self.drain();
    }

    fn sample_rtt(&mut self, l: &Link) -> Option<Duration> {
        if l.blackholed {
            return None;
        }
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let f = 1.0 + l.jitter * (2.0 * u - 1.0);
        let mut d = l.rtt.mul_f64(f.max(0.01));
        let v = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if v < l.loss {
            // Lost once and retransmitted after a timeout of 200 ms + 2 RTT.
            d += Duration::from_millis(200) + l.rtt * 2;
        }
        Some(d)
    }

    /// Performs the manager's outputs: probes are answered after the link's RTT.
    pub(crate) fn drain(&mut self) {
        while let Some(o) = self.m.poll_output() {
            let at = self.elapsed();
            match &o {
                Output::Probe { path, nonce } => {
                    if let Some(l) = self.links.get(path).cloned() {
                        if let Some(d) = self.sample_rtt(&l) {
                            self.pending.push((self.now + d, *path, Arrival::Reply(*nonce)));
                        }
                    }
                }
                Output::Event(e) => self.events.push((at, e.clone())),
                _ => {}
            }
            self.outputs.push((at, o));
        }
    }

    /// Runs the clock to `until` (from the start), in steps of at most 10 ms.
    pub(crate) fn run_until(&mut self, until: Duration) {
        let end = self.t0 + until;
        while self.now < end {
            let mut next = (self.now + Duration::from_millis(10)).min(end);
            if let Some(t) = self.m.poll_timeout() {
                if t > self.now {
                    next = next.min(t);
                }
            }
            for (t, _, _) in &self.pending {
                if *t > self.now {
                    next = next.min(*t);
                }
            }
            self.now = next;
            self.step();
        }
    }

    pub(crate) fn run_for(&mut self, d: Duration) {
        let until = self.elapsed() + d;
        self.run_until(until);
    }

    fn step(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(t, _, _)| *t <= now);
        self.pending = later;
        for (_, path, a) in due {
            if self.links.get(&path).is_some_and(|l| l.blackholed) {
                continue;
            }
            match a {
                Arrival::Reply(n) => self.m.handle_probe_reply(now, path, n),
                Arrival::Heard => self.m.handle_heard(now, path),
            }
            self.drain();
        }
        if self.sending && now >= self.next_send {
            self.next_send = now + SEND_EVERY;
            if let Some(a) = self.m.active() {
                self.m.handle_sent(now, a);
                if let Some(l) = self.links.get(&a).cloned() {
                    if let Some(d) = self.sample_rtt(&l) {
                        self.pending.push((now + d, a, Arrival::Heard));
                    }
                }
            }
        }
        self.m.handle_timeout(now);
        self.drain();
    }

    /// The path-change events so far, with their times.
    pub(crate) fn changes(&self) -> Vec<(Duration, PathEvent)> {
        self.events.iter().filter(|(_, e)| matches!(e, PathEvent::Changed { .. })).cloned().collect()
    }

    /// Outputs of one kind so far.
    pub(crate) fn count(&self, f: impl Fn(&Output) -> bool) -> usize {
        self.outputs.iter().filter(|(_, o)| f(o)).count()
    }
}
