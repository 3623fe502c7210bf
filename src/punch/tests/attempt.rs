//! The whole attempt, without sockets or clocks: two [`PunchAttempt`]s on a small
//! virtual-time network (full-cone mappings, a STUN server, a relay path, a TCP model),
//! each behind its own [`DatagramRouter`] fed from [`PunchAttempt::route_keys`] exactly as
//! the actor does — so gathering, the UDP punch, the TCP race and routing by key are
//! checked together. (The NAT matrix of the UDP punch itself is `matrix.rs`, through the
//! NAT simulator.)

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use proptest::prelude::*;
use stun_rs::{attributes::stun::XorMappedAddress, MessageClass};

use super::{addr, proto::message, t0};
use crate::{
    nat::probe::tests::response,
    punch::{
        attempt::{AttemptConfig, Finish, LocalEnv, Output, PunchAttempt, MAX_EARLY},
        candidates::{CandidateKind, MappingHint},
        router::DatagramRouter,
        AttemptError, FailReason, PunchDecodeError, PunchMessage, PunchProtocolError, Role,
    },
};

const STUN: &str = "192.0.2.1:3478";

/// One host: its socket's local address, the public mapping the network gives it, and
/// what its network lets through.
#[derive(Clone, Copy, Debug)]
struct HostNet {
    local: SocketAddr,
    public: SocketAddr,
    /// STUN servers answer it.
    stun_answers: bool,
    /// Punch datagrams reach it and leave it.
    udp_open: bool,
    /// It offers TCP candidates (the shell reserved a port).
    tcp: bool,
}

/// A host behind a full-cone NAT: its local address leads nowhere, its mapping does.
fn host(i: u8) -> HostNet {
    HostNet {
        local: SocketAddr::from(([10, 0, i, 2], 5000)),
        public: SocketAddr::from(([203, 0, 113, 10 + i], 6000 + u16::from(i))),
        stun_answers: true,
        udp_open: true,
        tcp: false,
    }
}

/// A host on a public address (its host candidate is its mapping).
fn public_host(i: u8) -> HostNet {
    let h = host(i);
    HostNet { local: h.public, ..h }
}

/// What TCP simultaneous open does once both sides started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpModel {
    /// The initiator finds a stream this long after starting; the responder hands the
    /// connection over when the initiator uses it.
    Works(Duration),
    /// Nothing is found; both report the end after the window.
    Fails,
    /// The shell never reports anything (the attempt's own bound must end it).
    Silent,
}

#[derive(Debug)]
enum Delivery {
    Datagram { from: SocketAddr, bytes: Vec<u8> },
    Signal(Result<PunchMessage, PunchDecodeError>),
    TcpFound,
    TcpEnded(bool),
}

/// Two attempts on a virtual network. Host 0 initiates, host 1 responds.
struct Net {
    now: Instant,
    nets: [HostNet; 2],
    link: Duration,
    tcp: TcpModel,
    attempts: [PunchAttempt; 2],
    routers: [DatagramRouter<usize>; 2],
    queue: Vec<(Instant, usize, Delivery)>,
    finished: [Option<(Duration, Finish)>; 2],
    outputs_after_finish: usize,
    tcp_started: [Option<Vec<SocketAddr>>; 2],
    /// Signals delivered to each side while it was still gathering.
    early_signals: [usize; 2],
    /// Datagrams each router dropped.
    transmits: [Vec<(SocketAddr, Vec<u8>)>; 2],
}

fn env(h: HostNet, tcp_port: u16) -> LocalEnv {
    LocalEnv {
        udp: Some(h.local),
        stun: vec![addr(STUN)],
        interfaces: vec![h.local.ip()],
        relay_observed: Some(h.public.ip()),
        tcp: h.tcp.then(|| SocketAddr::new(h.local.ip(), tcp_port)),
    }
}

impl Net {
    fn new(nets: [HostNet; 2], tcp: TcpModel, cfg: &AttemptConfig) -> Self {
        Self::with_envs(nets, tcp, cfg, [env(nets[0], 7000), env(nets[1], 7001)])
    }

    fn with_envs(nets: [HostNet; 2], tcp: TcpModel, cfg: &AttemptConfig, envs: [LocalEnv; 2]) -> Self {
        let now = t0();
        let [e0, e1] = envs;
        let attempts = [
            PunchAttempt::new(Role::Initiator, now, cfg.clone(), e0, [1; 32]),
            PunchAttempt::new(Role::Responder, now, cfg.clone(), e1, [2; 32]),
        ];
        let mut n = Self {
            now,
            nets,
            link: Duration::from_millis(10),
            tcp,
            attempts,
            routers: [DatagramRouter::new(), DatagramRouter::new()],
            queue: Vec::new(),
            finished: [None, None],
            outputs_after_finish: 0,
            tcp_started: [None, None],
            early_signals: [0, 0],
            transmits: [Vec::new(), Vec::new()],
        };
        n.drain(0);
        n.drain(1);
        n
    }

    fn at(&mut self, after: Duration, to: usize, d: Delivery) {
        self.queue.push((self.now + after, to, d));
    }

    /// What the actor does after every input: routes first, then the outputs.
    fn drain(&mut self, i: usize) {
        let keys = self.attempts[i].route_keys();
        self.routers[i].set_keys(i, keys).unwrap();
        while let Some(out) = self.attempts[i].poll_output() {
            if self.finished[i].is_some() {
                self.outputs_after_finish += 1;
            }
            match out {
                Output::Transmit { to, bytes } => self.transmit(i, to, bytes),
                Output::Signal(m) => {
                    // The relay path: reliable, in order, both links plus 20 ms; the
                    // message is encoded and decoded as it is on the wire.
                    let d = Delivery::Signal(PunchMessage::decode(&m.encode()));
                    self.at(self.link * 2 + Duration::from_millis(20), 1 - i, d);
                }
                Output::StartTcp { remotes, window } => {
                    self.tcp_started[i] = Some(remotes);
                    match (self.tcp, i) {
                        (TcpModel::Works(after), 0) => self.at(after, 0, Delivery::TcpFound),
                        (TcpModel::Works(_), _) => self.at(window, i, Delivery::TcpEnded(false)),
                        (TcpModel::Fails, _) => self.at(window, i, Delivery::TcpEnded(false)),
                        (TcpModel::Silent, _) => {}
                    }
                }
                Output::Finished(f) => {
                    if let (Finish::UseTcp { .. }, TcpModel::Works(_)) = (&f, self.tcp) {
                        // The initiator's handshake on the held stream: the responder hands
                        // that connection over.
                        self.at(Duration::from_millis(30), 1, Delivery::TcpEnded(true));
                    }
                    assert!(self.finished[i].is_none(), "a second Finished: {f:?}");
                    self.finished[i] = Some((self.now - t0(), f));
                }
            }
        }
    }

    fn transmit(&mut self, i: usize, to: SocketAddr, bytes: Vec<u8>) {
        self.transmits[i].push((to, bytes.clone()));
        let me = self.nets[i];
        if to == addr(STUN) {
            if me.stun_answers {
                let tid: [u8; 12] = bytes[8..20].try_into().unwrap();
                let answer = response(
                    tid,
                    MessageClass::SuccessResponse,
                    vec![XorMappedAddress::from(me.public).into()],
                );
                self.at(self.link * 2, i, Delivery::Datagram { from: to, bytes: answer });
            }
            return;
        }
        let Some(j) = (0..2).find(|&j| self.nets[j].public == to) else { return };
        if me.udp_open && self.nets[j].udp_open {
            self.at(self.link * 2, j, Delivery::Datagram { from: me.public, bytes });
        }
    }

    /// Runs until both finished or `limit` of virtual time passed.
    fn run(&mut self, limit: Duration) {
        let end = t0() + limit;
        while self.finished.iter().any(Option::is_none) {
            let timers = self.attempts.iter().filter_map(PunchAttempt::poll_timeout);
            let next = timers.chain(self.queue.iter().map(|(t, ..)| *t)).min();
            let Some(next) = next.filter(|t| *t <= end) else { return };
            self.now = self.now.max(next);
            let now = self.now;
            let due: Vec<_> = {
                let (due, rest) = std::mem::take(&mut self.queue).into_iter().partition(|(t, ..)| *t <= now);
                self.queue = rest;
                due
            };
            for (_, to, d) in due {
                self.deliver(to, d);
            }
            for i in 0..2 {
                if self.attempts[i].poll_timeout().is_some_and(|t| t <= now) {
                    self.attempts[i].handle_timeout(now);
                    self.drain(i);
                }
            }
        }
    }

    fn deliver(&mut self, i: usize, d: Delivery) {
        let now = self.now;
        match d {
            Delivery::Datagram { from, bytes } => {
                // The side reader: only datagrams routed to this attempt reach it.
                if self.routers[i].route(&bytes) == Some(i) {
                    self.attempts[i].handle_datagram(now, from, &bytes);
                }
            }
            Delivery::Signal(m) => {
                if self.attempts[i].session().is_none() {
                    self.early_signals[i] += 1;
                }
                self.attempts[i].handle_signal(now, m);
            }
            Delivery::TcpFound => self.attempts[i].handle_tcp_found(now),
            Delivery::TcpEnded(connected) => self.attempts[i].handle_tcp_ended(now, connected),
        }
        self.drain(i);
    }

    fn finish(&self, i: usize) -> &Finish {
        &self.finished[i].as_ref().unwrap_or_else(|| panic!("side {i} did not finish")).1
    }

    fn took(&self, i: usize) -> Duration {
        self.finished[i].as_ref().unwrap().0
    }

    fn check_ended_cleanly(&self) {
        assert_eq!(self.outputs_after_finish, 0, "outputs after Finished");
        for a in &self.attempts {
            assert!(a.is_finished());
            assert_eq!(a.poll_timeout(), None);
            assert_eq!(a.route_keys(), Default::default());
        }
    }
}

fn cfg() -> AttemptConfig {
    AttemptConfig::default()
}

#[test]
fn gathers_then_punches_over_udp() {
    let mut n = Net::new([host(0), host(1)], TcpModel::Fails, &cfg());
    n.run(Duration::from_secs(30));
    // Each side learned its mapping through STUN and offered it.
    for i in 0..2 {
        let g = n.attempts[i].gathered().unwrap();
        assert_eq!(g.reflexive, vec![n.nets[i].public]);
        let srflx = n.attempts[i]
            .session()
            .unwrap()
            .local_candidates()
            .iter()
            .any(|c| c.kind == CandidateKind::ServerReflexive && c.addr == n.nets[i].public);
        assert!(srflx, "side {i} offered its server-reflexive address");
    }
    assert_eq!(n.finish(0), &Finish::DialQuic { remote: n.nets[1].public });
    assert_eq!(n.finish(1), &Finish::AcceptQuic { remote: n.nets[0].public });
    assert!(n.took(0) < Duration::from_millis(500), "{:?}", n.took(0));
    // Every STUN answer and punch datagram reached its attempt through the router; only
    // the responder's last probes, which arrive after the initiator finished, are dropped.
    for r in &n.routers {
        let s = r.stats();
        assert!(s.routed > 0 && s.unknown_transaction == 0 && s.unrecognised == 0, "{s:?}");
    }
    n.check_ended_cleanly();
}

#[test]
fn route_keys_follow_the_stages() {
    let n = Net::new([host(0), host(1)], TcpModel::Fails, &cfg());
    // Gathering: the pending STUN transaction, no token.
    let keys = n.attempts[0].route_keys();
    let sent: Vec<[u8; 12]> = n.transmits[0].iter().map(|(_, b)| b[8..20].try_into().unwrap()).collect();
    assert_eq!((keys.token, keys.transactions), (None, sent));
    // Punching: the token only.
    let mut n = n;
    n.run(Duration::from_millis(50));
    let s = n.attempts[0].session().expect("gathering over");
    assert_eq!(n.attempts[0].route_keys().token, s.token());
    assert!(s.token().is_some() && n.attempts[0].route_keys().transactions.is_empty());
}

#[test]
fn without_stun_servers_the_session_starts_at_once() {
    let envs = [LocalEnv { stun: vec![], ..env(host(0), 0) }, LocalEnv { stun: vec![], ..env(host(1), 0) }];
    let mut n = Net::with_envs([host(0), host(1)], TcpModel::Fails, &cfg(), envs);
    assert!(n.attempts[0].session().is_some(), "nothing to gather");
    assert_eq!(n.attempts[0].gathered().unwrap().mapping, MappingHint::Unknown);
    n.run(Duration::from_secs(30));
    // Host candidates are private here and the relay-observed one has the wrong port:
    // only peer-reflexive adoption could save it, and nothing arrives. It fails cleanly.
    assert!(matches!(n.finish(0), Finish::Failed(AttemptError::Udp(FailReason::NoPath { rounds: 3 }))));
    n.check_ended_cleanly();
}

#[test]
fn an_offer_that_arrives_while_gathering_is_replayed() {
    // The responder's STUN server is slow: it is still gathering when the offer and the
    // ping behind it arrive (the initiator has no server to ask).
    let (a, mut b) = (public_host(0), public_host(1));
    b.stun_answers = false; // gives up after 1 s
    let envs = [LocalEnv { stun: vec![], ..env(a, 0) }, env(b, 0)];
    let mut n = Net::with_envs([a, b], TcpModel::Fails, &cfg(), envs);
    n.run(Duration::from_secs(30));
    assert!(n.early_signals[1] >= 2, "offer and ping kept: {}", n.early_signals[1]);
    assert!(matches!(n.finish(1), Finish::AcceptQuic { .. }), "{:?}", n.finish(1));
    assert!(matches!(n.finish(0), Finish::DialQuic { .. }), "{:?}", n.finish(0));
    // It started once gathering gave up: a bit over 1 s.
    assert!(n.took(0) > Duration::from_secs(1) && n.took(0) < Duration::from_secs(2), "{:?}", n.took(0));
    n.check_ended_cleanly();
}

#[test]
fn early_messages_are_bounded() {
    let mut a = PunchAttempt::new(Role::Responder, t0(), cfg(), env(host(1), 0), [3; 32]);
    for seq in 0..(MAX_EARLY as u32 + 5) {
        a.handle_signal(t0(), Ok(PunchMessage::Ping { seq, sent_us: 0 }));
    }
    while a.poll_output().is_some() {}
    // Gathering gives up at 1 s; the session then answers the kept pings only.
    a.handle_timeout(t0() + Duration::from_secs(2));
    let pongs = std::iter::from_fn(|| a.poll_output())
        .filter(|o| matches!(o, Output::Signal(PunchMessage::Pong { .. })))
        .count();
    assert_eq!(pongs, MAX_EARLY);
}

#[test]
fn blocked_udp_hands_over_to_tcp_at_once() {
    let (mut a, mut b) = (host(0), host(1));
    (a.tcp, b.tcp) = (true, true);
    b.stun_answers = false;
    b.udp_open = false;
    let mut n = Net::new([a, b], TcpModel::Works(Duration::from_millis(300)), &cfg());
    n.run(Duration::from_secs(60));
    assert!(n.tcp_started.iter().all(Option::is_some));
    assert_eq!(
        n.tcp_started[0].as_deref(),
        Some(&[SocketAddr::new(b.local.ip(), 7001), SocketAddr::new(b.public.ip(), 7001)][..])
    );
    assert_eq!(n.attempts[1].gathered().unwrap().mapping, MappingHint::UdpBlocked);
    // The UDP session was closed as soon as the stream was there: no waiting for rounds.
    assert_eq!(n.finish(0), &Finish::UseTcp { udp_reason: FailReason::Cancelled });
    assert!(n.took(0) < Duration::from_millis(1600), "{:?}", n.took(0));
    assert_eq!(n.finish(1), &Finish::TcpHandedOver);
    n.check_ended_cleanly();
}

#[test]
fn a_held_tcp_stream_is_used_only_once_the_udp_punch_failed() {
    let (mut a, mut b) = (host(0), host(1));
    (a.tcp, b.tcp) = (true, true);
    // STUN works (no shortcut), but punch datagrams never get through.
    a.udp_open = false;
    let mut n = Net::new([a, b], TcpModel::Works(Duration::from_millis(100)), &cfg());
    n.run(Duration::from_secs(60));
    assert_eq!(n.finish(0), &Finish::UseTcp { udp_reason: FailReason::NoPath { rounds: 3 } });
    assert!(n.took(0) > Duration::from_secs(5), "waited for the UDP rounds: {:?}", n.took(0));
    assert_eq!(n.finish(1), &Finish::TcpHandedOver);
    n.check_ended_cleanly();
}

#[test]
fn udp_success_wins_over_tcp() {
    let (mut a, mut b) = (host(0), host(1));
    (a.tcp, b.tcp) = (true, true);
    let mut n = Net::new([a, b], TcpModel::Works(Duration::from_millis(1)), &cfg());
    n.run(Duration::from_secs(60));
    assert!(matches!(n.finish(0), Finish::DialQuic { .. }), "{:?}", n.finish(0));
    assert!(matches!(n.finish(1), Finish::AcceptQuic { .. }), "{:?}", n.finish(1));
}

#[test]
fn both_paths_failing_reports_both() {
    let (mut a, mut b) = (host(0), host(1));
    (a.tcp, b.tcp, a.udp_open) = (true, true, false);
    let mut n = Net::new([a, b], TcpModel::Fails, &cfg());
    n.run(Duration::from_secs(60));
    assert_eq!(n.finish(0), &Finish::Failed(AttemptError::UdpAndTcp(FailReason::NoPath { rounds: 3 })));
    let Finish::Failed(AttemptError::UdpAndTcp(FailReason::PeerFailed(_))) = n.finish(1) else {
        panic!("{:?}", n.finish(1))
    };
    let Finish::Failed(e) = n.finish(0) else { unreachable!() };
    assert!(e.to_string().ends_with("TCP simultaneous open found no path either"), "{e}");
    n.check_ended_cleanly();
}

#[test]
fn a_tcp_attempt_that_never_reports_is_bounded() {
    let (mut a, mut b) = (host(0), host(1));
    (a.tcp, b.tcp, a.udp_open) = (true, true, false);
    let c = cfg();
    let mut n = Net::new([a, b], TcpModel::Silent, &c);
    n.run(Duration::from_secs(120));
    assert!(matches!(n.finish(0), Finish::Failed(AttemptError::UdpAndTcp(_))));
    let bound = c.tcp_window + c.tcp_grace + Duration::from_secs(1);
    assert!(n.took(0) <= bound && n.took(1) <= bound, "{:?} {:?}", n.took(0), n.took(1));
    n.check_ended_cleanly();
}

#[test]
fn signaling_failure_ends_the_attempt_without_signaling() {
    for gathering in [true, false] {
        let mut a = PunchAttempt::new(Role::Initiator, t0(), cfg(), env(host(0), 0), [4; 32]);
        while a.poll_output().is_some() {}
        if !gathering {
            a.handle_timeout(t0() + Duration::from_secs(2));
            while a.poll_output().is_some() {}
            assert!(a.session().is_some());
        }
        a.handle_signaling_failed(t0() + Duration::from_secs(2), "relay gone".into());
        let out: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
        assert_eq!(out, vec![Output::Finished(Finish::Failed(AttemptError::Signaling("relay gone".into())))]);
        assert!(a.is_finished() && a.poll_timeout().is_none());
    }
}

#[test]
fn an_undecodable_message_fails_the_session_and_tells_the_peer() {
    let mut a = PunchAttempt::new(Role::Responder, t0(), cfg(), env(host(1), 0), [5; 32]);
    a.handle_timeout(t0() + Duration::from_secs(2)); // gathering gives up
    while a.poll_output().is_some() {}
    let e = PunchDecodeError::Malformed("x".into());
    a.handle_signal(t0() + Duration::from_secs(2), Err(e.clone()));
    let out: Vec<Output> = std::iter::from_fn(|| a.poll_output()).collect();
    let reason = FailReason::Protocol(PunchProtocolError::Decode(e));
    assert_eq!(
        out,
        vec![
            Output::Signal(PunchMessage::Failure { reason: reason.to_string() }),
            Output::Finished(Finish::Failed(AttemptError::Udp(reason))),
        ]
    );
}

#[test]
fn close_tells_the_peer_and_finishes_cancelled() {
    let mut n = Net::new([host(0), host(1)], TcpModel::Fails, &cfg());
    n.run(Duration::from_millis(60));
    assert!(n.attempts[0].session().is_some() && !n.attempts[0].is_finished());
    n.attempts[0].close(n.now);
    let out: Vec<Output> = std::iter::from_fn(|| n.attempts[0].poll_output()).collect();
    assert!(
        matches!(
            &out[..],
            [
                Output::Signal(PunchMessage::Failure { .. }),
                Output::Finished(Finish::Failed(AttemptError::Cancelled))
            ]
        ),
        "{out:?}"
    );
    n.attempts[0].close(n.now);
    assert_eq!(n.attempts[0].poll_output(), None, "once");
}

#[derive(Clone, Debug)]
enum Input {
    Message(PunchMessage),
    Undecodable,
    Datagram(Vec<u8>),
    TcpFound,
    TcpEnded(bool),
    SignalingFailed,
    Advance(u16),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => message().prop_map(Input::Message),
        1 => Just(Input::Undecodable),
        2 => proptest::collection::vec(any::<u8>(), 0..60).prop_map(Input::Datagram),
        1 => Just(Input::TcpFound),
        1 => any::<bool>().prop_map(Input::TcpEnded),
        1 => Just(Input::SignalingFailed),
        4 => (0..4000u16).prop_map(Input::Advance),
    ]
}

/// Drains `a`, checking that nothing follows its one `Finished`.
fn drain_checked(a: &mut PunchAttempt, finished: &mut usize) -> Result<(), TestCaseError> {
    while let Some(o) = a.poll_output() {
        prop_assert_eq!(*finished, 0, "output after Finished: {:?}", o);
        if matches!(o, Output::Finished(_)) {
            *finished += 1;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary inputs in any order never panic an attempt, it emits at most one
    /// `Finished` and nothing after it, and, with its timer honoured, it always ends by
    /// its bound: the UDP session's deadline (responder: plus the message timeout) or the
    /// TCP attempt's, whichever is later.
    #[test]
    fn any_inputs_end_the_attempt_by_its_bound(
        initiator in any::<bool>(),
        tcp in any::<bool>(),
        inputs in proptest::collection::vec(input(), 0..40),
    ) {
        let role = if initiator { Role::Initiator } else { Role::Responder };
        let mut h = host(0);
        h.tcp = tcp;
        let c = cfg();
        let mut a = PunchAttempt::new(role, t0(), c.clone(), env(h, 7000), [9; 32]);
        let mut now = t0();
        let mut finished = 0;
        drain_checked(&mut a, &mut finished)?;
        for i in inputs {
            match i {
                Input::Message(m) => a.handle_signal(now, Ok(m)),
                Input::Undecodable => a.handle_signal(now, Err(PunchDecodeError::Malformed("p".into()))),
                Input::Datagram(d) => { a.handle_datagram(now, addr("192.0.2.9:1"), &d); }
                Input::TcpFound => a.handle_tcp_found(now),
                Input::TcpEnded(c) => a.handle_tcp_ended(now, c),
                Input::SignalingFailed => a.handle_signaling_failed(now, "x".into()),
                Input::Advance(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    if a.poll_timeout().is_some_and(|t| t <= now) {
                        a.handle_timeout(now);
                    }
                }
            }
            drain_checked(&mut a, &mut finished)?;
        }
        // Honour the timer from here on: the attempt ends within its bound (a TCP attempt
        // only starts while the session runs, so by its deadline).
        let session_end = match a.session() {
            Some(s) => s.deadline(),
            None => now + c.gather.deadline() + c.punch.deadline + c.punch.message_timeout,
        };
        let bound = session_end + c.tcp_window + c.tcp_grace;
        let mut steps = 0;
        while let Some(t) = a.poll_timeout() {
            prop_assert!(t <= bound, "timer past the bound");
            now = now.max(t);
            a.handle_timeout(now);
            drain_checked(&mut a, &mut finished)?;
            steps += 1;
            prop_assert!(steps < 10_000, "timer never settles");
        }
        prop_assert!(a.is_finished());
        prop_assert_eq!(finished, 1);
    }
}
