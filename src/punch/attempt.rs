//! [`PunchAttempt`]: one whole hole-punch attempt with one peer (sans-IO) — gathering
//! this node's candidates over STUN, the UDP punch ([`PunchSession`]) and TCP
//! simultaneous open racing it — behind one input/output/timeout contract.
//!
//! The shell (the `HolePunchActor`) owns the UDP socket's side channel, the TCP punch
//! port and its tasks, and one timer. It creates the attempt with the current `Instant`,
//! feeds it
//!
//! * [`handle_datagram`](PunchAttempt::handle_datagram) — a side-channel datagram routed
//!   to this attempt (a STUN answer while gathering, a punch datagram after;
//!   [`route_keys`](PunchAttempt::route_keys) says which to route here),
//! * [`handle_signal`](PunchAttempt::handle_signal) — the peer's punch message, decoded
//!   once where it arrived ([`super::signal::Signal::decode`]), or why it did not decode,
//! * [`handle_tcp_found`](PunchAttempt::handle_tcp_found) /
//!   [`handle_tcp_ended`](PunchAttempt::handle_tcp_ended) — what the TCP attempt
//!   started by [`Output::StartTcp`] did,
//! * [`handle_signaling_failed`](PunchAttempt::handle_signaling_failed) — a signal could
//!   not be sent,
//! * [`handle_timeout`](PunchAttempt::handle_timeout) — the timer fired,
//! * [`close`](PunchAttempt::close) — give up,
//!
//! and after construction and after **every** input drains
//! [`poll_output`](PunchAttempt::poll_output) until `None`, performing each [`Output`]
//! in order, then re-arms its one timer from [`poll_timeout`](PunchAttempt::poll_timeout).
//! Exactly one [`Output::Finished`] is ever emitted, as the attempt's last output; after
//! it every input is ignored and `poll_timeout` is `None`.
//!
//! ```rust,ignore
//! let mut a = PunchAttempt::new(role, now, AttemptConfig::default(), env, seed);
//! loop {
//!     router.set_keys(id, a.route_keys());           // before sending: answers may be quick
//!     while let Some(out) = a.poll_output() {
//!         match out {
//!             Output::Transmit { to, bytes } => side.send_to(&bytes, to),
//!             Output::Signal(m) => relay.signal(peer, encode_punch(&m)),
//!             Output::StartTcp { remotes, window } => tcp.open(&remotes, window),
//!             Output::Finished(f) => return f,            // DialQuic, UseTcp, AcceptQuic, ...
//!         }
//!     }
//!     timer.reset(a.poll_timeout());
//!     /* wait for the next input, feed it */
//! }
//! ```
//!
//! The stages:
//!
//! 1. **Gathering** (both roles): a [`Gatherer`] asks the STUN servers for the mapping of
//!    the very socket the punch and QUIC use (requests at 0, 200 and 600 ms, given up at
//!    1 s). Punch messages arriving meanwhile are kept (at most [`MAX_EARLY`]) and
//!    replayed in order when the session starts.
//! 2. **Punching**: the local candidates (host, server-reflexive, relay-observed, and TCP
//!    when the shell reserved a TCP port) go into a [`PunchSession`]; its messages become
//!    [`Output::Signal`], its datagrams [`Output::Transmit`]. As soon as the peer's TCP
//!    candidates are known, [`Output::StartTcp`] asks the shell for a simultaneous open.
//! 3. **The race**: UDP (then QUIC) is preferred. The initiator keeps a TCP stream it
//!    found until the UDP punch has ended and uses it only if that failed — or at once
//!    when either side's UDP is blocked (mapping hint `blocked`): then the UDP session is
//!    closed early, which tells the peer. A UDP failure waits for a TCP attempt still
//!    running, at most [`tcp_window`](AttemptConfig::tcp_window) +
//!    [`tcp_grace`](AttemptConfig::tcp_grace) after it started. The responder succeeds as
//!    soon as it handed a TCP connection over.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    candidates::{local_candidates, tcp_candidates, MappingHint},
    error::{AttemptError, FailReason, PunchDecodeError},
    proto::PunchMessage,
    race::{PathRace, RaceStep, TcpPhase},
    rng::SessionRng,
    router::RouteKeys,
    session::{self, PunchConfig, PunchSession, Role},
};
use crate::nat::{Gathered, Gatherer, ProbeConfig};

/// Punch messages kept while gathering: the peer's offer, the ping right behind it, and
/// room for a few more (nothing else is sent before an answer). Beyond, they are dropped.
pub const MAX_EARLY: usize = 8;

/// Tuning of an attempt. [`Default`] gives the values below, each with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptConfig {
    /// The UDP punch ([`PunchConfig::default`]).
    pub punch: PunchConfig,
    /// STUN retransmission while gathering. Default: requests at 0, 200 and 600 ms, given
    /// up at 1 s — shorter than NAT discovery's, because gathering delays the punch, and
    /// a server that does not answer within a second (UDP blocked, server down) is not
    /// worth waiting for.
    pub gather: ProbeConfig,
    /// How long TCP simultaneous open is tried, from the moment the peer's TCP candidates
    /// are known. Default 8 s: longer than the UDP punch's three rounds (≈ 6.4 s), so a
    /// TCP path can still rescue a pair whose UDP punch failed.
    pub tcp_window: Duration,
    /// How long after the window the attempt still waits for the shell's report of the
    /// TCP attempt (a handshake on a stream found at the last moment) before taking it as
    /// failed. Default 12 s: above the node's default connect and handshake timeouts
    /// (10 s), which bound that handshake.
    pub tcp_grace: Duration,
}

impl Default for AttemptConfig {
    fn default() -> Self {
        Self {
            punch: PunchConfig::default(),
            gather: ProbeConfig {
                initial_rto: Duration::from_millis(200),
                max_transmissions: 3,
                last_wait: 2,
            },
            tcp_window: Duration::from_secs(8),
            tcp_grace: Duration::from_secs(12),
        }
    }
}

/// What the node knows about its network when an attempt starts: the sources of its
/// local candidates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalEnv {
    /// The local address of the UDP socket QUIC and the punch share; `None` if it is not
    /// known (then there are no UDP candidates and nothing to gather).
    pub udp: Option<SocketAddr>,
    /// STUN servers to learn the socket's public mapping from (configured ones first,
    /// then those the relay advertises); those of the other address family are skipped.
    pub stun: Vec<SocketAddr>,
    /// The host's interface addresses (host candidates for a wildcard-bound socket).
    pub interfaces: Vec<IpAddr>,
    /// The IP the relay sees this node come from.
    pub relay_observed: Option<IpAddr>,
    /// The TCP port the shell reserved for simultaneous open, if it runs TCP.
    pub tcp: Option<SocketAddr>,
}

/// What the shell must do, drained with [`PunchAttempt::poll_output`] in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send `bytes` from the shared UDP socket (its side channel) to `to`: a STUN request
    /// or a punch datagram.
    Transmit {
        /// Destination.
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Send this punch message to the peer (as a signal, [`super::signal::encode_punch`]).
    Signal(PunchMessage),
    /// Start TCP simultaneous open from the reserved port to `remotes`, for `window`;
    /// report with [`handle_tcp_found`](PunchAttempt::handle_tcp_found) (initiator: the
    /// first stream, which the shell holds) and
    /// [`handle_tcp_ended`](PunchAttempt::handle_tcp_ended).
    StartTcp {
        /// The peer's TCP candidates.
        remotes: Vec<SocketAddr>,
        /// How long to try.
        window: Duration,
    },
    /// The attempt is over (exactly once, the last output).
    Finished(Finish),
}

/// How an attempt ended, and what the shell does about it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finish {
    /// Initiator: the UDP punch worked; dial QUIC to `remote` from the punched socket.
    /// The attempt's result is that dial's.
    DialQuic {
        /// The peer's address on the punched path.
        remote: SocketAddr,
    },
    /// Initiator: secure the TCP stream the simultaneous open found, and use it (the UDP
    /// punch failed for `udp_reason`, to report if the handshake fails too).
    UseTcp {
        /// Why the UDP punch failed.
        udp_reason: FailReason,
    },
    /// Responder: the UDP punch worked; the initiator dials QUIC from `remote` and the
    /// node's QUIC listener accepts it.
    AcceptQuic {
        /// The peer's address on the punched path.
        remote: SocketAddr,
    },
    /// Responder: TCP simultaneous open handed a connection over.
    TcpHandedOver,
    /// No direct path; the relayed connection stays.
    Failed(AttemptError),
}

impl Finish {
    /// Whether the attempt found a direct path (the initiator's dial or handshake may
    /// still fail).
    pub fn is_success(&self) -> bool {
        !matches!(self, Finish::Failed(_))
    }
}

enum Stage {
    Gathering { gatherer: Gatherer, early: Vec<Result<PunchMessage, PunchDecodeError>>, seed: [u8; 32] },
    Punching(Box<PunchSession>),
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed: it determines the session token.
        match self {
            Stage::Gathering { early, .. } => {
                f.debug_struct("Gathering").field("early", &early.len()).finish_non_exhaustive()
            }
            Stage::Punching(s) => f.debug_tuple("Punching").field(&s.phase()).finish(),
        }
    }
}

/// One hole-punch attempt (see the module docs for the contract).
#[derive(Debug)]
pub struct PunchAttempt {
    role: Role,
    cfg: AttemptConfig,
    env: LocalEnv,
    stage: Stage,
    gathered: Option<Gathered>,
    race: PathRace,
    /// When a running TCP attempt is taken as failed if the shell has not reported.
    tcp_deadline: Option<Instant>,
    finished: bool,
    out: VecDeque<Output>,
}

impl PunchAttempt {
    /// An attempt for `role`, started at `now`, with candidates from `env`. `seed` drives
    /// the STUN transaction ids and the punch token — pass 32 bytes from the OS CSPRNG in
    /// production, a constant in tests. Drain [`poll_output`](Self::poll_output): the
    /// first STUN requests are queued (or, with no server to ask, the session's first
    /// messages).
    pub fn new(role: Role, now: Instant, cfg: AttemptConfig, env: LocalEnv, seed: [u8; 32]) -> Self {
        let mut rng = SessionRng::new(seed);
        let (gather_seed, session_seed) = (rng.block(), rng.block());
        let servers: Vec<SocketAddr> = match env.udp {
            Some(bound) => env.stun.iter().copied().filter(|s| s.is_ipv4() == bound.is_ipv4()).collect(),
            None => Vec::new(),
        };
        let gatherer = Gatherer::new(&servers, now, cfg.gather, gather_seed);
        let mut a = Self {
            role,
            cfg,
            env,
            stage: Stage::Gathering { gatherer, early: Vec::new(), seed: session_seed },
            gathered: None,
            race: PathRace::default(),
            tcp_deadline: None,
            finished: false,
            out: VecDeque::new(),
        };
        a.pump(now);
        a
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the attempt has ended (its [`Output::Finished`] is queued or was drained).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The UDP punch session, once gathering is over.
    pub fn session(&self) -> Option<&PunchSession> {
        match &self.stage {
            Stage::Punching(s) => Some(s),
            Stage::Gathering { .. } => None,
        }
    }

    /// What gathering learned, once it is over.
    pub fn gathered(&self) -> Option<&Gathered> {
        self.gathered.as_ref()
    }

    /// The keys of the datagrams to route to this attempt now: the pending STUN
    /// transactions while gathering, the session token while the UDP punch runs, none
    /// once either is over. Re-read after every input (before performing outputs).
    pub fn route_keys(&self) -> RouteKeys {
        match &self.stage {
            _ if self.finished => RouteKeys::default(),
            Stage::Gathering { gatherer, .. } => {
                RouteKeys { token: None, transactions: gatherer.pending_transactions().collect() }
            }
            Stage::Punching(s) if !s.is_finished() => {
                RouteKeys { token: s.token(), transactions: Vec::new() }
            }
            Stage::Punching(_) => RouteKeys::default(),
        }
    }

    /// The next output, or `None` when drained.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called; `None` once
    /// finished. The attempt ends by the UDP session's deadline or, when a TCP attempt
    /// outlives it, by that attempt's bound.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let stage = match &self.stage {
            Stage::Gathering { gatherer, .. } => gatherer.poll_timeout(),
            Stage::Punching(s) => s.poll_timeout(),
        };
        let tcp = self.tcp_deadline.filter(|_| self.race.tcp_phase() == TcpPhase::Running);
        [stage, tcp].into_iter().flatten().min()
    }

    /// A datagram from `from` that was routed to this attempt. Returns whether it was
    /// this attempt's (a STUN answer to one of its transactions, a punch datagram with
    /// its token); anything else is ignored.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        if self.finished {
            return false;
        }
        let used = match &mut self.stage {
            Stage::Gathering { gatherer, .. } => gatherer.handle_datagram(now, from, bytes),
            Stage::Punching(s) if s.accepts(bytes) => {
                s.handle_datagram(now, from, bytes);
                true
            }
            Stage::Punching(_) => false,
        };
        if used {
            self.pump(now);
        }
        used
    }

    /// A punch message from the peer, or why the one it sent did not decode (which fails
    /// the UDP session, telling the peer). Kept while gathering, replayed after.
    pub fn handle_signal(&mut self, now: Instant, message: Result<PunchMessage, PunchDecodeError>) {
        if self.finished {
            return;
        }
        match &mut self.stage {
            Stage::Gathering { early, .. } => {
                if early.len() < MAX_EARLY {
                    early.push(message);
                }
            }
            Stage::Punching(s) => match message {
                Ok(m) => s.handle_message(now, m),
                Err(e) => s.handle_undecodable(now, e),
            },
        }
        self.pump(now);
    }

    /// Initiator: the TCP attempt established a stream, which the shell now holds until
    /// told to use it ([`Finish::UseTcp`]) or the attempt ends otherwise. Ignored on a
    /// responder, and unless a TCP attempt runs.
    pub fn handle_tcp_found(&mut self, now: Instant) {
        if self.finished || self.role != Role::Initiator || self.race.tcp_phase() != TcpPhase::Running {
            return;
        }
        let (udp_open, remote) = match &self.stage {
            Stage::Punching(s) => (!s.is_finished(), s.remote_mapping()),
            Stage::Gathering { .. } => (false, MappingHint::Unknown),
        };
        let local = self.gathered.as_ref().map(|g| g.mapping).unwrap_or_default();
        self.tcp_deadline = None;
        let step = self.race.tcp_found(udp_open, local, remote);
        self.step(now, step);
        self.pump(now);
    }

    /// The TCP attempt ended; `connected`: the responder handed a connection over (an
    /// initiator's report of it is taken as `false`: it hands nothing over itself).
    pub fn handle_tcp_ended(&mut self, now: Instant, connected: bool) {
        if self.finished || !matches!(self.race.tcp_phase(), TcpPhase::Running | TcpPhase::Found) {
            return;
        }
        self.tcp_deadline = None;
        let step = self.race.tcp_ended(connected && self.role == Role::Responder);
        self.step(now, step);
        self.pump(now);
    }

    /// A signal to the peer could not be sent (`reason`): unless the UDP punch is already
    /// over (a TCP attempt may still deliver), the attempt fails at once, without trying
    /// to tell the peer.
    pub fn handle_signaling_failed(&mut self, now: Instant, reason: String) {
        if self.finished {
            return;
        }
        if let Stage::Punching(s) = &mut self.stage {
            if s.is_finished() {
                return;
            }
            s.close(now);
            while s.poll_output().is_some() {}
        }
        self.finish(Finish::Failed(AttemptError::Signaling(reason)));
    }

    /// Handles the timer (call at or after [`poll_timeout`](Self::poll_timeout); early or
    /// repeated calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        match &mut self.stage {
            Stage::Gathering { gatherer, .. } => gatherer.handle_timeout(now),
            Stage::Punching(s) => s.handle_timeout(now),
        }
        if self.race.tcp_phase() == TcpPhase::Running && self.tcp_deadline.is_some_and(|t| now >= t) {
            self.tcp_deadline = None;
            let step = self.race.tcp_ended(false);
            self.step(now, step);
        }
        self.pump(now);
    }

    /// Gives up now (the shell is stopping, the relayed connection closed): the peer is
    /// told if the UDP session runs, and the attempt finishes with
    /// [`AttemptError::Cancelled`].
    pub fn close(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if let Stage::Punching(s) = &mut self.stage {
            s.close(now);
            while let Some(out) = s.poll_output() {
                if let session::Output::SendMessage(m) = out {
                    self.out.push_back(Output::Signal(m));
                }
            }
        }
        self.finish(Finish::Failed(AttemptError::Cancelled));
    }

    /// Moves outputs of the parts to the attempt's queue, advancing the stages: the one
    /// place where gathering, the session and the race meet.
    fn pump(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if let Stage::Gathering { gatherer, .. } = &mut self.stage {
            while let Some((to, bytes)) = gatherer.poll_transmit() {
                self.out.push_back(Output::Transmit { to, bytes });
            }
            if gatherer.is_done() {
                self.start_session(now);
            }
        }
        self.maybe_start_tcp(now);
        // A race step may close the session, whose outputs then come out here too.
        while !self.finished {
            let Stage::Punching(s) = &mut self.stage else { break };
            let Some(out) = s.poll_output() else { break };
            match out {
                session::Output::SendMessage(m) => self.out.push_back(Output::Signal(m)),
                session::Output::SendDatagram { to, bytes } => {
                    self.out.push_back(Output::Transmit { to, bytes })
                }
                session::Output::Event(session::Event::Succeeded { remote }) => {
                    self.finish(match self.role {
                        Role::Initiator => Finish::DialQuic { remote },
                        Role::Responder => Finish::AcceptQuic { remote },
                    })
                }
                session::Output::Event(session::Event::Failed { reason }) => {
                    let step = self.race.udp_failed(reason);
                    self.step(now, step);
                }
            }
        }
    }

    /// Gathering is over: build the candidates, start the session, replay what arrived.
    fn start_session(&mut self, now: Instant) {
        let Stage::Gathering { gatherer, early, seed } = &mut self.stage else { return };
        let gathered = gatherer.result();
        let (early, seed) = (std::mem::take(early), *seed);
        let env = &self.env;
        let mut local = match env.udp {
            Some(bound) => local_candidates(bound, &env.interfaces, &gathered.reflexive, env.relay_observed),
            None => Vec::new(),
        };
        if let Some(tcp) = env.tcp {
            local.extend(tcp_candidates(tcp, &env.interfaces, env.relay_observed));
        }
        let mut s = PunchSession::new(self.role, now, self.cfg.punch.clone(), local, gathered.mapping, seed);
        for m in early {
            match m {
                Ok(m) => s.handle_message(now, m),
                Err(e) => s.handle_undecodable(now, e),
            }
        }
        self.gathered = Some(gathered);
        self.stage = Stage::Punching(Box::new(s));
    }

    /// Asks for TCP simultaneous open once the peer's TCP candidates are known.
    fn maybe_start_tcp(&mut self, now: Instant) {
        if self.finished || self.race.tcp_phase() != TcpPhase::Idle || self.env.tcp.is_none() {
            return;
        }
        let Stage::Punching(s) = &self.stage else { return };
        let remotes = s.remote_tcp();
        if remotes.is_empty() {
            return;
        }
        self.race.tcp_started();
        self.tcp_deadline = Some(now + self.cfg.tcp_window + self.cfg.tcp_grace);
        self.out.push_back(Output::StartTcp { remotes, window: self.cfg.tcp_window });
    }

    /// Does what the UDP/TCP race decided.
    fn step(&mut self, now: Instant, step: RaceStep) {
        match step {
            RaceStep::Wait => {}
            RaceStep::UseTcp { udp_reason } => self.finish(Finish::UseTcp { udp_reason }),
            RaceStep::EndUdpSession => {
                // Its `Failed` event then hands over to the held TCP stream (see `pump`).
                if let Stage::Punching(s) = &mut self.stage {
                    s.close(now);
                }
            }
            RaceStep::Fail(e) => self.finish(Finish::Failed(e)),
            RaceStep::Succeed => self.finish(Finish::TcpHandedOver),
        }
    }

    fn finish(&mut self, f: Finish) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.tcp_deadline = None;
        self.out.push_back(Output::Finished(f));
    }
}
