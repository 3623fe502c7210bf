//! The path manager (sans-IO): which of a peer's paths carries its traffic, when a path
//! is dead, when to probe, re-dial, punch or retire.
//!
//! One [`PathManager`] per remote peer follows the quinn-proto contract: inputs are
//! `handle_*(now, ..)` calls (a path came up or went down, a probe was answered, traffic
//! was heard or sent, a timer fired, a dial or punch finished); after **every** input the
//! owner drains [`poll_output`](PathManager::poll_output) until `None` and sleeps until
//! [`poll_timeout`](PathManager::poll_timeout). It owns no socket and reads no clock.
//!
//! **Health.** Every live path is probed: idle ones every [`PROBE_INTERVAL`]; the active
//! one, while traffic flows on it and nothing has been heard for [`ACTIVE_PROBE`], at that
//! pace. A path is *dead* when traffic was sent on it and nothing at all was heard for
//! [`ACTIVE_SILENCE`] since, or when a probe goes unanswered for [`PROBE_TIMEOUT`] with
//! nothing heard since it was sent. The side that only answers learns it from the peer:
//! the peer's traffic arriving on another path while the active one is silent makes the
//! active one dead unless it answers within [`FOLLOW_GRACE`]. A dead path is still probed
//! while its connection lives: an answer, or anything heard on it, *recovers* it.
//!
//! **Ranking.** Direct beats relayed. Within a tier the lower [`PathHealth::cost`] wins
//! (median RTT, penalized by loss), but only by more than [`SWITCH_MARGIN`] and with at
//! least [`MIN_SAMPLES`] samples on both: two similar paths never flap. A better tier
//! takes the traffic as soon as it is alive (a new direct path at once: an *upgrade*).
//!
//! **Switching.** The active path changes for a reason ([`ChangeReason`]): `upgrade` (a
//! new path of a better tier), `better` (measurements), `failover` (the active path died
//! or went down) or `recovered` (a path that was dead answers again and is the best).
//! With no live path left, a wanted peer is re-dialed ([`Output::Dial`]) with backoff.
//!
//! **Upkeep.** The initiator of a relayed path asks for hole punches while the traffic is
//! relayed ([`Output::StartPunch`]; again after [`PUNCH_RETRY`], at once on a network
//! change). Besides the active path, the best path of the other tier stays as a standby
//! (for failover); other idle paths are retired after [`STANDBY_LINGER`], dead ones after
//! [`DEAD_LINGER`] ([`Output::Retire`]: close after draining).

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    time::{Duration, Instant},
};

use super::health::PathHealth;
use crate::address::{PathKind, Protocol};

/// How often an idle path is probed. 5 s: a 9-byte probe and its answer per path every 5 s
/// cost nothing, keep NAT mappings (UDP timeouts are 30 s and more) and relay circuits
/// warm, and bound how long a recovered path waits before it takes traffic back.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// A probe unanswered this long is lost, and the path dead. 3 s: many times any round trip
/// a usable path has (a reliable transport retransmits a lost probe within about a second),
/// so an idle path that stopped answering is declared dead within one interval plus this.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Traffic sent on a path with nothing heard back for this long: the path is dead. 2 s:
/// the bound the runtime promises for a path that dies silently under traffic; with probes
/// every [`ACTIVE_PROBE`] it is several unanswered probes, not one unlucky one.
pub const ACTIVE_SILENCE: Duration = Duration::from_secs(2);

/// While traffic flows on the active path and nothing was heard for this long, it is
/// probed. 250 ms: a one-way transfer still gets answers, at most 8 probes per 2 s silence.
pub const ACTIVE_PROBE: Duration = Duration::from_millis(250);

/// A dead path is probed this often, a new probe replacing one still unanswered. 1 s: a
/// path that answers again (a lifted blackhole, a NAT that came back) is recovered within
/// a second plus its round trip, and a transport that backs off its retransmissions while
/// the path was dark still gets fresh probes; one 9-byte probe a second per dead path,
/// retired after [`DEAD_LINGER`].
pub const DEAD_PROBE: Duration = Duration::from_secs(1);

/// When the peer's traffic arrives on another path while the active one has been silent
/// for [`ACTIVE_PROBE`], the peer has given up on the active path (it saw the same silence
/// from its side, usually first): the active path is probed at once and is dead unless
/// heard within this (or 4 round trips, if longer). 150 ms: several round trips of an
/// interactive path (4 of a longer one are waited for), so the side that only answers
/// follows the peer a moment after it moved instead of waiting out its own
/// [`ACTIVE_SILENCE`]. A healthy path whose answer is late only makes this side follow
/// the peer to the path it chose, which the peer's own hysteresis keeps stable.
pub const FOLLOW_GRACE: Duration = Duration::from_millis(150);

/// A path must be this much cheaper than the active one of its tier to take over. 20 %: the
/// median of 8 samples with ±10 % jitter moves by a few percent, so similar paths never
/// swap, while a clearly better one (a third faster and more) does.
pub const SWITCH_MARGIN: f64 = 0.2;

/// RTT samples a path needs before measurements can make it take over within its tier. 3:
/// the median of three already ignores one outlier.
pub const MIN_SAMPLES: usize = 3;

/// A probe answered later than this many times the path's lowest RTT counts as lost (it
/// waited for a retransmission). With a floor of [`LOSS_FLOOR`].
const LOSS_RTT_FACTOR: u32 = 4;

/// The lowest lateness that counts as loss. 100 ms: scheduling noise on a loaded host is
/// tens of milliseconds; a retransmission timeout is at least 200 ms.
const LOSS_FLOOR: Duration = Duration::from_millis(100);

/// How long after a failed hole punch the initiator tries again. 60 s: NAT state may have
/// changed by then, and an impossible pair costs one short burst of probes a minute.
pub const PUNCH_RETRY: Duration = Duration::from_secs(60);

/// First re-dial delay once no path is left; doubles per failure up to [`REDIAL_MAX`]. 250
/// ms: a path that just died is rarely back at once, and a dial is bounded by 10 s anyway.
pub const REDIAL_FIRST: Duration = Duration::from_millis(250);

/// Longest re-dial delay. 10 s: a peer that comes back is found within the connect bound.
pub const REDIAL_MAX: Duration = Duration::from_secs(10);

/// An idle path that is neither active nor the standby is retired after this long. 30 s:
/// long enough to be a failover target through a short disturbance, short enough not to
/// hold relay circuits and sockets for paths nothing uses.
pub const STANDBY_LINGER: Duration = Duration::from_secs(30);

/// A dead path is retired after this long without recovering. 60 s: covers a blackhole of
/// a minute (a Wi-Fi roam, a restarting NAT); longer ones are re-established by punching.
pub const DEAD_LINGER: Duration = Duration::from_secs(60);

/// A path's loss estimate at or above this marks it degraded. 10 %: TCP throughput at 10 %
/// loss is a fraction of a percent of the clean path's.
pub const DEGRADED_LOSS: f64 = 0.10;

/// A path's smoothed RTT at or above this many times its lowest, and at least
/// [`DEGRADED_RTT_MIN_EXTRA`] more, marks it degraded. 3×: queueing far beyond the path's
/// own delay (bufferbloat, a congested relay).
pub const DEGRADED_RTT_FACTOR: u32 = 3;

/// …and at least this much above the lowest RTT. 100 ms: below it, even tripled RTTs
/// are within what interactive use tolerates.
pub const DEGRADED_RTT_MIN_EXTRA: Duration = Duration::from_millis(100);

/// The runtime's id of one path (one connection) to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u64);

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path{}", self.0)
    }
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathDesc {
    /// Direct or through a relay.
    pub kind: PathKind,
    /// The transport.
    pub protocol: Protocol,
    /// Whether this node dialed it (the dialer of a relayed path initiates hole punches).
    pub dialed_locally: bool,
    /// Whether it may carry the peer's traffic. A path that may not is kept for signaling
    /// only (e.g. to set up the WebRTC path an application insists on): it is probed and
    /// kept alive, but never chosen.
    pub carries: bool,
}

/// Why the active path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeReason {
    /// A new path of a better tier (a direct path replacing a relayed one).
    Upgrade,
    /// Measurements: a clearly cheaper path of the same tier.
    Better,
    /// The active path died or went down.
    Failover,
    /// A path that was dead answers again and is the best.
    Recovered,
}

impl ChangeReason {
    /// `"upgrade"`, `"better"`, `"failover"` or `"recovered"`.
    pub fn name(self) -> &'static str {
        match self {
            ChangeReason::Upgrade => "upgrade",
            ChangeReason::Better => "better",
            ChangeReason::Failover => "failover",
            ChangeReason::Recovered => "recovered",
        }
    }
}

/// Something the owner reports (events), as decided by the manager.
#[derive(Clone, Debug, PartialEq)]
pub enum PathEvent {
    /// The traffic moved from `from` to `to` (not reported for a first path, nor for a
    /// path after [`PathEvent::Lost`]).
    Changed {
        /// The previous active path.
        from: Option<PathId>,
        /// The new one.
        to: PathId,
        /// Why.
        reason: ChangeReason,
    },
    /// A path's loss or RTT crossed its threshold ([`DEGRADED_LOSS`], [`DEGRADED_RTT_FACTOR`]).
    Degraded {
        /// The path.
        path: PathId,
        /// Its smoothed RTT.
        rtt: Option<Duration>,
        /// Its loss estimate.
        loss: f64,
    },
    /// A path stopped answering.
    Dead {
        /// The path.
        path: PathId,
    },
    /// No live path is left.
    Lost,
}

/// What the owner must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send a probe with `nonce` on `path`.
    Probe {
        /// The path.
        path: PathId,
        /// Its nonce (echoed by the answer).
        nonce: u64,
    },
    /// Carry the traffic on `path` from now on (resending what is unacknowledged).
    Carry {
        /// The path.
        path: PathId,
    },
    /// Close `path` once its streams have finished.
    Retire {
        /// The path.
        path: PathId,
    },
    /// Dial the peer (every known address, relays included).
    Dial,
    /// Start a hole punch (this node initiates it, the traffic is relayed).
    StartPunch,
    /// Report this.
    Event(PathEvent),
}

/// Timing constants of a [`PathManager`] (defaults above; tests shorten them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathConfig {
    /// See [`PROBE_INTERVAL`].
    pub probe_interval: Duration,
    /// See [`PROBE_TIMEOUT`].
    pub probe_timeout: Duration,
    /// See [`ACTIVE_SILENCE`].
    pub active_silence: Duration,
    /// See [`ACTIVE_PROBE`].
    pub active_probe: Duration,
    /// See [`DEAD_PROBE`].
    pub dead_probe: Duration,
    /// See [`SWITCH_MARGIN`].
    pub switch_margin: f64,
    /// See [`PUNCH_RETRY`].
    pub punch_retry: Duration,
    /// See [`STANDBY_LINGER`].
    pub standby_linger: Duration,
    /// See [`DEAD_LINGER`].
    pub dead_linger: Duration,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            probe_interval: PROBE_INTERVAL,
            probe_timeout: PROBE_TIMEOUT,
            active_silence: ACTIVE_SILENCE,
            active_probe: ACTIVE_PROBE,
            dead_probe: DEAD_PROBE,
            switch_margin: SWITCH_MARGIN,
            punch_retry: PUNCH_RETRY,
            standby_linger: STANDBY_LINGER,
            dead_linger: DEAD_LINGER,
        }
    }
}

#[derive(Debug)]
struct PathState {
    desc: PathDesc,
    health: PathHealth,
    alive: bool,
    /// When it died (for [`DEAD_LINGER`]).
    dead_since: Option<Instant>,
    /// Answered a probe after being dead, not yet carrying traffic.
    recovered: bool,
    last_heard: Instant,
    /// The first send since `last_heard` (traffic waiting for any sign of life).
    awaiting_since: Option<Instant>,
    /// The outstanding probe: nonce, when sent.
    probe: Option<(u64, Instant)>,
    /// Dead unless heard by then: the peer moved its traffic elsewhere
    /// ([`PathManager::handle_remote_traffic`]).
    suspect_until: Option<Instant>,
    next_probe: Instant,
    /// Last time it was active (or came up).
    last_active: Instant,
    degraded: bool,
    retired: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dial {
    Idle,
    Dialing,
    Backoff { until: Instant, delay: Duration },
}

/// The paths of one peer (see the module docs).
#[derive(Debug)]
pub struct PathManager {
    cfg: PathConfig,
    paths: BTreeMap<PathId, PathState>,
    active: Option<PathId>,
    out: VecDeque<Output>,
    next_nonce: u64,
    wanted: bool,
    dial: Dial,
    next_delay: Duration,
    punching: bool,
    punch_after: Option<Instant>,
    switches: u64,
}

impl PathManager {
    /// A manager with no paths; `wanted`: the peer is to be kept connected (re-dialed).
    pub fn new(cfg: PathConfig, wanted: bool) -> Self {
        Self {
            cfg,
            paths: BTreeMap::new(),
            active: None,
            out: VecDeque::new(),
            next_nonce: 1,
            wanted,
            dial: Dial::Idle,
            next_delay: REDIAL_FIRST,
            punching: false,
            punch_after: None,
            switches: 0,
        }
    }

    /// The path carrying the traffic.
    pub fn active(&self) -> Option<PathId> {
        self.active
    }

    /// How often the active path changed (the first path not counted).
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// Paths known, alive or dead.
    pub fn paths(&self) -> impl Iterator<Item = (PathId, &PathDesc, &PathHealth, bool)> {
        self.paths.iter().map(|(id, p)| (*id, &p.desc, &p.health, p.alive))
    }

    /// Whether a live path exists.
    pub fn is_connected(&self) -> bool {
        self.paths.values().any(|p| p.alive)
    }

    /// The next output; drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for (id, p) in &self.paths {
            if p.retired {
                continue;
            }
            at(p.next_probe);
            if let Some((_, sent)) = p.probe {
                at(sent + self.cfg.probe_timeout);
            }
            if let Some(until) = p.suspect_until.filter(|_| Some(*id) == self.active && p.alive) {
                at(until);
                if p.probe.is_none() {
                    at(p.last_heard + self.cfg.active_probe);
                }
            }
            if let Some(since) = p.awaiting_since {
                if Some(*id) == self.active && p.alive {
                    at(since + self.cfg.active_silence);
                    if p.probe.is_none() {
                        at(p.last_heard.max(since) + self.cfg.active_probe);
                    }
                }
            }
            if let Some(d) = p.dead_since {
                at(d + self.cfg.dead_linger);
            } else if Some(*id) != self.active {
                at(p.last_active + self.cfg.standby_linger);
            }
        }
        if let Dial::Backoff { until, .. } = self.dial {
            at(until);
        }
        if let Some(p) = self.punch_after {
            at(p);
        }
        t
    }

    /// Whether the peer is to be kept connected. Turning it on with no live path dials.
    pub fn set_wanted(&mut self, now: Instant, wanted: bool) {
        self.wanted = wanted;
        if wanted && !self.is_connected() && self.dial == Dial::Idle {
            self.start_dial(now);
        }
    }

    /// A path came up at `now`.
    pub fn handle_path_up(&mut self, now: Instant, id: PathId, desc: PathDesc) {
        let state = PathState {
            desc,
            health: PathHealth::new(),
            alive: true,
            dead_since: None,
            recovered: false,
            last_heard: now,
            awaiting_since: None,
            probe: None,
            suspect_until: None,
            next_probe: now,
            last_active: now,
            degraded: false,
            retired: false,
        };
        self.paths.insert(id, state);
        self.dial = Dial::Idle;
        self.next_delay = REDIAL_FIRST;
        self.probe(id, now);
        self.evaluate(now);
        self.consider_punch(now);
    }

    /// A path went down (its connection closed).
    pub fn handle_path_down(&mut self, now: Instant, id: PathId) {
        if self.paths.remove(&id).is_none() {
            return;
        }
        if self.active == Some(id) {
            self.active = None;
            self.failover(now, Some(id));
        }
        self.consider_punch(now);
    }

    /// The answer to probe `nonce` arrived on `id`.
    pub fn handle_probe_reply(&mut self, now: Instant, id: PathId, nonce: u64) {
        let Some(p) = self.paths.get_mut(&id) else { return };
        if let Some((n, sent)) = p.probe {
            if n == nonce {
                let rtt = now.saturating_duration_since(sent);
                let late = p
                    .health
                    .min_rtt()
                    .map_or(self.cfg.probe_timeout, |m| (m * LOSS_RTT_FACTOR).max(LOSS_FLOOR));
                p.health.on_rtt(rtt);
                p.health.on_probe_outcome(rtt > late);
                p.probe = None;
                self.check_degraded(id);
            }
        }
        self.handle_heard(now, id);
    }

    /// Something arrived on `id` (data, an acknowledgement, a probe): it is alive.
    pub fn handle_heard(&mut self, now: Instant, id: PathId) {
        let Some(p) = self.paths.get_mut(&id) else { return };
        p.last_heard = now;
        p.awaiting_since = None;
        p.suspect_until = None;
        if !p.alive {
            p.alive = true;
            p.dead_since = None;
            p.recovered = true;
            p.next_probe = now;
        }
        self.evaluate(now);
        self.consider_punch(now);
    }

    /// The peer's own traffic (its session data, not probes or answers) arrived on `id`.
    /// On a path other than the active one, while the active one has been silent for
    /// [`ACTIVE_PROBE`], the peer gave up on the active path: it is probed at once and dead
    /// unless heard within [`FOLLOW_GRACE`] (see there). Report it with the sample that
    /// saw it ([`handle_heard`](Self::handle_heard) for `id` as usual).
    pub fn handle_remote_traffic(&mut self, now: Instant, id: PathId) {
        let Some(active) = self.active.filter(|a| *a != id) else { return };
        if !self.paths.get(&id).is_some_and(|p| p.alive && !p.retired) {
            return;
        }
        let cfg = self.cfg;
        let Some(a) = self.paths.get_mut(&active) else { return };
        if !a.alive || a.suspect_until.is_some() || now < a.last_heard + cfg.active_probe {
            return;
        }
        // The median, not the smoothed RTT: one probe answered late after an outage must
        // not stretch the grace.
        let grace = a.health.median_rtt().map_or(FOLLOW_GRACE, |rtt| (rtt * 4).max(FOLLOW_GRACE));
        a.suspect_until = Some(now + grace);
        if a.probe.is_none() {
            self.probe(active, now);
        }
    }

    /// Traffic was sent on `id` at `now` (the owner reports it at most once per few hundred
    /// milliseconds of sending): from now on, silence counts.
    pub fn handle_sent(&mut self, now: Instant, id: PathId) {
        if let Some(p) = self.paths.get_mut(&id) {
            p.awaiting_since.get_or_insert(now);
        }
    }

    /// `bytes` were carried on `id` (either way) since the last sample.
    pub fn handle_traffic(&mut self, now: Instant, id: PathId, bytes: u64) {
        if let Some(p) = self.paths.get_mut(&id) {
            p.health.on_traffic(bytes, now);
        }
    }

    /// A dial (from [`Output::Dial`]) failed; a success arrives as a path coming up.
    pub fn handle_dial_failed(&mut self, now: Instant) {
        if self.is_connected() || !self.wanted {
            self.dial = Dial::Idle;
            return;
        }
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(REDIAL_MAX);
        self.dial = Dial::Backoff { until: now + delay, delay };
    }

    /// A hole punch (from [`Output::StartPunch`], or one the peer started) ended. Report
    /// the path it established ([`handle_path_up`](Self::handle_path_up)) first: with no
    /// direct path alive, a relayed initiator asks for the next punch at once.
    pub fn handle_punch_finished(&mut self, now: Instant, succeeded: bool) {
        self.punching = false;
        if !succeeded {
            self.punch_after = Some(now + self.cfg.punch_retry);
        }
        self.consider_punch(now);
    }

    /// The local network changed (addresses, routes): punch again at once.
    pub fn handle_network_change(&mut self, now: Instant) {
        self.punch_after = None;
        self.consider_punch(now);
    }

    /// Timers: probes due, probes lost, silent paths, re-dials, punches, retirement.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<PathId> = self.paths.keys().copied().collect();
        for id in ids {
            self.path_timers(now, id);
        }
        if let Dial::Backoff { until, .. } = self.dial {
            if until <= now && self.wanted && !self.is_connected() {
                self.start_dial(now);
            }
        }
        if self.punch_after.is_some_and(|t| t <= now) {
            self.punch_after = None;
            self.consider_punch(now);
        }
    }

    fn path_timers(&mut self, now: Instant, id: PathId) {
        let active = self.active == Some(id);
        let cfg = self.cfg;
        let Some(p) = self.paths.get_mut(&id) else { return };
        if p.retired {
            return;
        }
        let mut dies = false;
        if let Some((_, sent)) = p.probe {
            if now >= sent + cfg.probe_timeout {
                p.probe = None;
                p.health.on_probe_outcome(true);
                // A lost probe kills a path only if nothing at all was heard on it since
                // (a path that recovered while an old probe was out is alive).
                dies = p.alive && p.last_heard <= sent;
            }
        }
        if active && p.alive && p.awaiting_since.is_some_and(|s| now >= s + cfg.active_silence) {
            dies = true;
        }
        if active && p.alive && p.suspect_until.is_some_and(|u| now >= u) {
            dies = true;
        }
        if dies {
            p.alive = false;
            p.dead_since = Some(now);
            p.next_probe = p.next_probe.min(now + cfg.dead_probe);
            p.awaiting_since = None;
            p.suspect_until = None;
            p.recovered = false;
            self.out.push_back(Output::Event(PathEvent::Dead { path: id }));
            if active {
                self.failover(now, Some(id));
            }
            self.consider_punch(now);
        }
        let Some(p) = self.paths.get_mut(&id) else { return };
        let traffic_probe = active
            && p.alive
            && p.probe.is_none()
            && (p.awaiting_since.is_some_and(|s| now >= p.last_heard.max(s) + cfg.active_probe)
                || p.suspect_until.is_some() && now >= p.last_heard + cfg.active_probe);
        if (now >= p.next_probe && (p.probe.is_none() || !p.alive)) || traffic_probe {
            self.probe(id, now);
        }
        let standby = self.standby();
        let Some(p) = self.paths.get_mut(&id) else { return };
        let linger_done = match p.dead_since {
            Some(d) => now >= d + cfg.dead_linger,
            None => {
                self.active != Some(id) && standby != Some(id) && now >= p.last_active + cfg.standby_linger
            }
        };
        if linger_done && !p.retired {
            p.retired = true;
            self.out.push_back(Output::Retire { path: id });
        }
    }

    fn probe(&mut self, id: PathId, now: Instant) {
        let Some(p) = self.paths.get_mut(&id) else { return };
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        p.probe = Some((nonce, now));
        p.next_probe = now + if p.alive { self.cfg.probe_interval } else { self.cfg.dead_probe };
        self.out.push_back(Output::Probe { path: id, nonce });
    }

    /// The best live path: better tier first, then cost (unmeasured last), then the lower id.
    fn best(&self, except: Option<PathId>) -> Option<PathId> {
        self.paths
            .iter()
            .filter(|(id, p)| p.alive && !p.retired && p.desc.carries && Some(**id) != except)
            .min_by(|(a_id, a), (b_id, b)| {
                tier(a.desc.kind)
                    .cmp(&tier(b.desc.kind))
                    .then_with(|| {
                        let (x, y) = (a.health.cost(), b.health.cost());
                        match (x, y) {
                            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                            (Some(_), None) => std::cmp::Ordering::Less,
                            (None, Some(_)) => std::cmp::Ordering::Greater,
                            (None, None) => std::cmp::Ordering::Equal,
                        }
                    })
                    .then(a_id.cmp(b_id))
            })
            .map(|(id, _)| *id)
    }

    /// The standby: the best live path of the other tier than the active one.
    fn standby(&self) -> Option<PathId> {
        let active_kind = self.active.and_then(|a| self.paths.get(&a)).map(|p| p.desc.kind)?;
        self.paths
            .iter()
            .filter(|(_, p)| p.alive && !p.retired && p.desc.carries && p.desc.kind != active_kind)
            .min_by(|(a_id, a), (b_id, b)| {
                let (x, y) = (a.health.cost().unwrap_or(f64::MAX), b.health.cost().unwrap_or(f64::MAX));
                x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal).then(a_id.cmp(b_id))
            })
            .map(|(id, _)| *id)
    }

    /// Whether `cand` should take the traffic from `cur`.
    fn should_switch(&self, cand: &PathState, cur: &PathState) -> bool {
        match tier(cand.desc.kind).cmp(&tier(cur.desc.kind)) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                if cand.health.sample_count() < MIN_SAMPLES || cur.health.sample_count() < MIN_SAMPLES {
                    return false;
                }
                match (cand.health.cost(), cur.health.cost()) {
                    (Some(c), Some(k)) => c < k * (1.0 - self.cfg.switch_margin),
                    _ => false,
                }
            }
        }
    }

    /// Re-ranks and switches if the best path should take over.
    fn evaluate(&mut self, now: Instant) {
        let Some(best) = self.best(None) else { return };
        let Some(cur_id) = self.active else {
            self.carry(now, None, best, ChangeReason::Failover);
            return;
        };
        if best == cur_id {
            return;
        }
        let (Some(cand), Some(cur)) = (self.paths.get(&best), self.paths.get(&cur_id)) else { return };
        if !self.should_switch(cand, cur) {
            return;
        }
        let reason = if cand.recovered {
            ChangeReason::Recovered
        } else if tier(cand.desc.kind) < tier(cur.desc.kind) {
            ChangeReason::Upgrade
        } else {
            ChangeReason::Better
        };
        self.carry(now, Some(cur_id), best, reason);
    }

    /// The active path `from` died or went down: the best live path takes over, or the
    /// peer is lost (and re-dialed if wanted).
    fn failover(&mut self, now: Instant, from: Option<PathId>) {
        match self.best(from) {
            Some(to) => {
                let reason = if self.paths.get(&to).is_some_and(|p| p.recovered) {
                    ChangeReason::Recovered
                } else {
                    ChangeReason::Failover
                };
                self.carry(now, from, to, reason);
            }
            None => {
                self.active = None;
                self.out.push_back(Output::Event(PathEvent::Lost));
                if self.wanted && self.dial == Dial::Idle {
                    self.start_dial(now);
                }
            }
        }
    }

    fn carry(&mut self, now: Instant, from: Option<PathId>, to: PathId, reason: ChangeReason) {
        if let Some(f) = self.active.and_then(|a| self.paths.get_mut(&a)) {
            f.last_active = now;
            f.suspect_until = None;
        }
        self.active = Some(to);
        if let Some(p) = self.paths.get_mut(&to) {
            p.recovered = false;
            p.last_active = now;
        }
        self.out.push_back(Output::Carry { path: to });
        if from.is_some() {
            self.switches += 1;
            self.out.push_back(Output::Event(PathEvent::Changed { from, to, reason }));
        }
    }

    fn start_dial(&mut self, _now: Instant) {
        self.dial = Dial::Dialing;
        self.out.push_back(Output::Dial);
    }

    /// Asks for a punch when this node initiates hole punches for the relayed traffic and
    /// no direct path is alive.
    fn consider_punch(&mut self, now: Instant) {
        if self.punching || self.punch_after.is_some_and(|t| t > now) {
            return;
        }
        let Some(active) = self.active.and_then(|a| self.paths.get(&a)) else { return };
        let relayed_initiator = active.desc.kind == PathKind::Relayed && active.desc.dialed_locally;
        let direct_alive = self.paths.values().any(|p| p.alive && p.desc.kind == PathKind::Direct);
        if relayed_initiator && !direct_alive {
            self.punching = true;
            self.punch_after = None;
            self.out.push_back(Output::StartPunch);
        }
    }

    fn check_degraded(&mut self, id: PathId) {
        let Some(p) = self.paths.get_mut(&id) else { return };
        let h = &p.health;
        let rtt_bad = match (h.srtt(), h.min_rtt()) {
            (Some(s), Some(m)) => s >= m * DEGRADED_RTT_FACTOR && s >= m + DEGRADED_RTT_MIN_EXTRA,
            _ => false,
        };
        let bad = h.loss() >= DEGRADED_LOSS || rtt_bad;
        let good = h.loss() < DEGRADED_LOSS / 2.0 && !rtt_bad;
        if bad && !p.degraded {
            p.degraded = true;
            let (rtt, loss) = (h.srtt(), h.loss());
            self.out.push_back(Output::Event(PathEvent::Degraded { path: id, rtt, loss }));
        } else if good {
            p.degraded = false;
        }
    }
}

fn tier(kind: PathKind) -> u8 {
    match kind {
        PathKind::Direct => 0,
        PathKind::Relayed => 1,
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
