//! A deterministic network simulator for [`PunchSession`]s: two hosts, each behind a site
//! ([`SiteKind`]: public, a [`NatBox`], or UDP blocked) on an access link with a one-way
//! delay and a loss rate; a STUN server on the public network; and a relay path carrying
//! the sessions' messages (reliable and ordered, like the relayed connection).
//!
//! Time is virtual: [`Sim::run`] jumps from event to event (datagram and message
//! deliveries, session timers), so a 15 s scenario runs in microseconds. Every random
//! choice (loss, NAT ports) comes from the seed in [`SimConfig`], so a run is a pure
//! function of its configuration.
//!
//! Addresses: host A (index 0) sits behind public IP 203.0.113.10 (private 10.0.1.2), host
//! B (index 1) behind 198.51.100.20 (private 10.0.2.2); both use UDP port 5000; the STUN
//! server is 192.0.2.1:3478 (documentation ranges, RFC 5737). A datagram to an address
//! that is neither public host IP is unroutable and dropped (so offered private host
//! candidates lead nowhere, as across the internet); hairpinning is not modelled.

mod nat;

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

pub use nat::{FilteringBehavior, MappingBehavior, NatBox, NatConfig, PortAllocation, Profile, SiteKind};

use super::{
    candidates::{Candidate, CandidateKind, MappingHint},
    session::{Event, Output, PunchConfig, PunchSession, Role},
};

/// The STUN server both hosts ask for their server-reflexive address.
pub const STUN_SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 3478);
/// The UDP port of each host's one socket.
pub const HOST_PORT: u16 = 5000;

/// One host's access link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way delay between the host's site and the internet.
    pub delay: Duration,
    /// Probability that a datagram crossing the link is lost (0.0–1.0).
    pub loss: f64,
}

impl Default for LinkConfig {
    /// 10 ms, lossless.
    fn default() -> Self {
        Self { delay: Duration::from_millis(10), loss: 0.0 }
    }
}

/// A scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The sites of host A (the initiator) and host B (the responder).
    pub sites: [SiteKind; 2],
    /// Their access links.
    pub links: [LinkConfig; 2],
    /// Delay the relay adds on top of both links' delays (relay messages cross both).
    pub relay_extra: Duration,
    /// Seed of loss and NAT port allocation.
    pub seed: u64,
}

impl SimConfig {
    /// Two sites of the given profiles on default links.
    pub fn profiles(a: Profile, b: Profile, seed: u64) -> Self {
        Self {
            sites: [a.site(), b.site()],
            links: [LinkConfig::default(); 2],
            relay_extra: Duration::from_millis(20),
            seed,
        }
    }
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams the sessions sent.
    pub datagrams_sent: u64,
    /// Datagrams handed to a session.
    pub datagrams_delivered: u64,
    /// Datagrams dropped by a NAT (unsolicited or filtered) or a UDP-blocking firewall.
    pub dropped_by_site: u64,
    /// Datagrams lost on a link.
    pub lost: u64,
    /// Datagrams to an unroutable address.
    pub unroutable: u64,
    /// Relay messages delivered.
    pub messages: u64,
}

/// How one side's session ended, as seen by the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideReport {
    /// The session's event, if it ended within the run.
    pub event: Option<Event>,
    /// When it ended, since the session started.
    pub after: Option<Duration>,
    /// The last round the session reached.
    pub round: u8,
    /// When its first punch datagram left, since the session started.
    pub first_datagram: Option<Duration>,
}

impl SideReport {
    /// The remote address if the side succeeded.
    pub fn succeeded(&self) -> Option<SocketAddr> {
        match self.event {
            Some(Event::Succeeded { remote }) => Some(remote),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Delivery {
    Datagram { to: usize, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8> },
    Message { to: usize, bytes: Vec<u8> },
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    what: Delivery,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Debug)]
struct Host {
    site: SiteKind,
    link: LinkConfig,
    local: SocketAddr,
    public_ip: IpAddr,
    nat: Option<NatBox>,
    session: Option<PunchSession>,
    started: Option<Instant>,
    event: Option<(Instant, Event)>,
    first_datagram: Option<Instant>,
}

/// The simulated network (see the module docs).
#[derive(Debug)]
pub struct Sim {
    now: Instant,
    hosts: [Host; 2],
    relay_extra: Duration,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: u64,
    stats: SimStats,
}

impl Sim {
    /// A network at virtual time `start` (any instant: only differences matter).
    pub fn new(start: Instant, cfg: SimConfig) -> Self {
        let publics =
            [IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20))];
        let privates = [IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2)), IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))];
        let mut rng = cfg.seed ^ 0x005e_ed0f_5100_u64;
        let host = |i: usize, rng: &mut u64| {
            let site = cfg.sites[i];
            let (local, nat) = match site {
                SiteKind::Public => (SocketAddr::new(publics[i], HOST_PORT), None),
                SiteKind::Nat(c) => (
                    SocketAddr::new(privates[i], HOST_PORT),
                    Some(NatBox::new(publics[i], c, nat::splitmix(rng))),
                ),
                SiteKind::UdpBlocked => (SocketAddr::new(privates[i], HOST_PORT), None),
            };
            Host {
                site,
                link: cfg.links[i],
                local,
                public_ip: publics[i],
                nat,
                session: None,
                started: None,
                event: None,
                first_datagram: None,
            }
        };
        let hosts = [host(0, &mut rng), host(1, &mut rng)];
        Self {
            now: start,
            hosts,
            relay_extra: cfg.relay_extra,
            queue: BinaryHeap::new(),
            seq: 0,
            rng,
            stats: SimStats::default(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Moves the clock forward with nothing happening (for example, to let mappings
    /// expire). Sessions' timers are not run: call before [`start`](Self::start).
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Host `i`'s address on its own network (its socket's address).
    pub fn local_addr(&self, i: usize) -> SocketAddr {
        self.hosts[i % 2].local
    }

    /// Live NAT mappings at host `i`'s site (0 without a NAT).
    pub fn nat_mappings(&mut self, i: usize) -> usize {
        let now = self.now;
        self.hosts[i % 2].nat.as_mut().map_or(0, |n| n.mapping_count(now))
    }

    /// Gathers host `i`'s candidates now, as the node would: its socket's address, the
    /// mapping a STUN request through its site gets (none if UDP is blocked), and the
    /// address the relay sees its TCP connection from (its public IP, port 40000 + i).
    /// Returns them with the mapping hint its NAT detection would report.
    pub fn gather(&mut self, i: usize) -> (Vec<Candidate>, MappingHint) {
        let now = self.now;
        let h = &mut self.hosts[i % 2];
        let mut c = vec![Candidate::new(CandidateKind::Host, h.local, 0)];
        let reflexive = match (&h.site, h.nat.as_mut()) {
            (SiteKind::Public, _) => Some(h.local),
            (SiteKind::Nat(_), Some(nat)) => {
                let mapped = nat.outbound(now, h.local, STUN_SERVER);
                // The STUN answer comes back from where the request went: it always passes.
                nat.inbound(now, STUN_SERVER, mapped.port()).map(|_| mapped)
            }
            _ => None,
        };
        if let Some(r) = reflexive.filter(|r| *r != h.local) {
            c.push(Candidate::new(CandidateKind::ServerReflexive, r, 0));
        }
        let observed_port = 40_000 + u16::try_from(i % 2).unwrap_or(0);
        c.push(Candidate::new(CandidateKind::RelayObserved, SocketAddr::new(h.public_ip, observed_port), 0));
        (c, h.site.mapping_hint())
    }

    /// Gathers both hosts' candidates and starts the two sessions now: A initiates, B
    /// responds, each with its own seed.
    pub fn start(&mut self, cfg: &PunchConfig, seeds: [[u8; 32]; 2]) {
        let gathered = [self.gather(0), self.gather(1)];
        self.start_with(cfg, seeds, gathered);
    }

    /// Starts the two sessions now with candidates gathered earlier (possibly stale).
    pub fn start_with(
        &mut self,
        cfg: &PunchConfig,
        seeds: [[u8; 32]; 2],
        gathered: [(Vec<Candidate>, MappingHint); 2],
    ) {
        let roles = [Role::Initiator, Role::Responder];
        for (i, (cands, hint)) in gathered.into_iter().enumerate() {
            let s = PunchSession::new(roles[i], self.now, cfg.clone(), cands, hint, seeds[i]);
            self.hosts[i].session = Some(s);
            self.hosts[i].started = Some(self.now);
        }
        self.drain();
    }

    /// Sends one datagram from host `i`'s socket to `dst` instantly and losslessly through
    /// both sites (as QUIC would over the punched path): returns the source address the
    /// other host sees, or `None` if a site drops it or `dst` is unroutable.
    pub fn path_check(&mut self, i: usize, dst: SocketAddr) -> Option<SocketAddr> {
        let now = self.now;
        let (i, j) = (i % 2, 1 - i % 2);
        if self.hosts[j].public_ip != dst.ip() {
            return None;
        }
        let h = &mut self.hosts[i];
        let src = match (&h.site, h.nat.as_mut()) {
            (SiteKind::Public, _) => h.local,
            (SiteKind::Nat(_), Some(nat)) => nat.outbound(now, h.local, dst),
            _ => return None,
        };
        let h = &mut self.hosts[j];
        let admitted = match (&h.site, h.nat.as_mut()) {
            (SiteKind::Public, _) => dst == h.local,
            (SiteKind::Nat(_), Some(nat)) => nat.inbound(now, src, dst.port()) == Some(h.local),
            _ => false,
        };
        admitted.then_some(src)
    }

    /// Host `i`'s session, once started.
    pub fn session(&self, i: usize) -> Option<&PunchSession> {
        self.hosts[i % 2].session.as_ref()
    }

    /// Hands host `i`'s session a datagram from `from` now, as if it had just arrived
    /// (forged or stray packets), and performs its outputs.
    pub fn inject_datagram(&mut self, i: usize, from: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        if let Some(s) = self.hosts[i % 2].session.as_mut() {
            s.handle_datagram(now, from, bytes);
        }
        self.drain();
    }

    /// Hands host `i`'s session relay-message bytes now (garbage tests) and performs its
    /// outputs.
    pub fn inject_message(&mut self, i: usize, bytes: &[u8]) {
        let now = self.now;
        if let Some(s) = self.hosts[i % 2].session.as_mut() {
            let _ = s.handle_message_bytes(now, bytes);
        }
        self.drain();
    }

    /// Runs until both sessions ended or nothing is left to happen before `until`.
    pub fn run(&mut self, until: Instant) {
        loop {
            if self.hosts.iter().all(|h| h.session.as_ref().is_none_or(PunchSession::is_finished)) {
                return;
            }
            let timers = self.hosts.iter().filter_map(|h| h.session.as_ref()?.poll_timeout());
            let next = timers.chain(self.queue.peek().map(|Reverse(s)| s.at)).min();
            let Some(next) = next.filter(|t| *t <= until) else { return };
            self.now = self.now.max(next);
            let now = self.now;
            while self.queue.peek().is_some_and(|Reverse(s)| s.at <= now) {
                if let Some(Reverse(s)) = self.queue.pop() {
                    self.deliver(s.what);
                }
            }
            for h in &mut self.hosts {
                if let Some(s) = h.session.as_mut() {
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                }
            }
            self.drain();
        }
    }

    /// Runs for at most `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run(until);
    }

    /// How host `i`'s session ended (or not yet).
    pub fn report(&self, i: usize) -> SideReport {
        let h = &self.hosts[i % 2];
        let since = |t: Instant| h.started.map(|s| t.saturating_duration_since(s));
        SideReport {
            event: h.event.as_ref().map(|(_, e)| e.clone()),
            after: h.event.as_ref().and_then(|(t, _)| since(*t)),
            round: h.session.as_ref().map_or(0, PunchSession::round),
            first_datagram: h.first_datagram.and_then(since),
        }
    }

    fn deliver(&mut self, what: Delivery) {
        let now = self.now;
        match what {
            Delivery::Message { to, bytes } => {
                self.stats.messages += 1;
                if let Some(s) = self.hosts[to].session.as_mut() {
                    let _ = s.handle_message_bytes(now, &bytes);
                }
            }
            Delivery::Datagram { to, src, dst, bytes } => {
                let h = &mut self.hosts[to];
                let admitted = match (&h.site, h.nat.as_mut()) {
                    (SiteKind::Public, _) => dst == h.local,
                    (SiteKind::Nat(_), Some(nat)) => nat.inbound(now, src, dst.port()) == Some(h.local),
                    _ => false,
                };
                if !admitted {
                    self.stats.dropped_by_site += 1;
                    return;
                }
                self.stats.datagrams_delivered += 1;
                if let Some(s) = h.session.as_mut() {
                    s.handle_datagram(now, src, &bytes);
                }
            }
        }
    }

    /// Performs every queued output of both sessions (outputs only schedule future
    /// deliveries, so one pass per session suffices).
    fn drain(&mut self) {
        for i in 0..2 {
            while let Some(out) = self.hosts[i].session.as_mut().and_then(PunchSession::poll_output) {
                match out {
                    Output::SendMessage(msg) => {
                        let at =
                            self.now + self.hosts[0].link.delay + self.hosts[1].link.delay + self.relay_extra;
                        self.schedule(at, Delivery::Message { to: 1 - i, bytes: msg.encode() });
                    }
                    Output::SendDatagram { to, bytes } => self.send_datagram(i, to, bytes),
                    Output::Event(e) => {
                        if self.hosts[i].event.is_none() {
                            self.hosts[i].event = Some((self.now, e));
                        }
                    }
                }
            }
        }
    }

    fn send_datagram(&mut self, i: usize, dst: SocketAddr, bytes: Vec<u8>) {
        let now = self.now;
        self.stats.datagrams_sent += 1;
        let h = &mut self.hosts[i];
        h.first_datagram.get_or_insert(now);
        let src = match (&h.site, h.nat.as_mut()) {
            (SiteKind::Public, _) => h.local,
            (SiteKind::Nat(_), Some(nat)) => nat.outbound(now, h.local, dst),
            _ => {
                self.stats.dropped_by_site += 1;
                return;
            }
        };
        let delay_out = h.link.delay;
        if self.lost(self.hosts[i].link.loss) {
            self.stats.lost += 1;
            return;
        }
        let Some(j) = (0..2).find(|&j| j != i && self.hosts[j].public_ip == dst.ip()) else {
            self.stats.unroutable += 1;
            return;
        };
        if self.lost(self.hosts[j].link.loss) {
            self.stats.lost += 1;
            return;
        }
        let at = now + delay_out + self.hosts[j].link.delay;
        self.schedule(at, Delivery::Datagram { to: j, src, dst, bytes });
    }

    fn lost(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        // 53 random bits as a uniform value in [0, 1).
        let x = (nat::splitmix(&mut self.rng) >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }

    fn schedule(&mut self, at: Instant, what: Delivery) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq: self.seq, what }));
    }
}
