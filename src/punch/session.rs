//! [`PunchSession`]: one hole-punching attempt between two peers that already share a
//! relayed connection (sans-IO).
//!
//! The contract follows quinn-proto and the relay machines of this crate: the shell (the
//! `HolePunchActor`) creates the session with the current `Instant`, feeds it
//!
//! * [`handle_message`](PunchSession::handle_message) (or
//!   [`handle_message_bytes`](PunchSession::handle_message_bytes)) for every punch message
//!   the peer sent over the relayed connection,
//! * [`handle_datagram`](PunchSession::handle_datagram) for every punch datagram arriving
//!   on the node's UDP socket ([`accepts`](PunchSession::accepts) says which are this
//!   session's),
//! * [`handle_timeout`](PunchSession::handle_timeout) when its one timer fires,
//!
//! and after **every** input (and after construction) drains
//! [`poll_output`](PunchSession::poll_output) until `None`, performing each [`Output`] in
//! order, then re-arms its timer from [`poll_timeout`](PunchSession::poll_timeout).
//! Nothing here reads a clock, opens a socket or panics on any input; randomness comes
//! from the caller's seed.
//!
//! The protocol, with I the initiator and R the responder (`docs/punch.md` has the
//! diagram):
//!
//! 1. I sends `offer` (its candidates and the session token) and a `ping`; R answers
//!    `answer` (its candidates) and `pong`. The pong gives I the relayed RTT.
//! 2. I sends `sync(round)` and starts punching RTT/2 later; R starts punching when the
//!    sync arrives — so both start at about the same moment, and each side's first
//!    packets open its own NAT just before the other side's packets reach it.
//! 3. Punching: every [`probe_interval`](PunchConfig::probe_interval), one probe to each
//!    target (the peer's candidates, addresses learned from its packets, predicted ports)
//!    until each got [`probes_per_round`](PunchConfig::probes_per_round).
//! 4. Each side acks every authenticated probe, to the address it came from, reporting
//!    that address. A probe from an address not among the targets is adopted as a
//!    peer-reflexive target and probed at once (ICE's triggered check): this is what lets
//!    a symmetric NAT's fresh mapping be reached.
//! 5. I (the controlling side, as in ICE) succeeds when an ack arrives **from the very
//!    address its probe was sent to**: both directions of that exact pair work. It tells
//!    R with `success(remote)`, the address R saw that probe come from; R checks it did
//!    receive a probe from there and succeeds too.
//! 6. A round without success ends after [`round_timeout`](PunchConfig::round_timeout);
//!    I backs off ([`backoff`](PunchConfig::backoff), doubling), re-measures the RTT and
//!    syncs the next round, up to [`rounds`](PunchConfig::rounds). Then, or at the total
//!    [`deadline`](PunchConfig::deadline), the session fails and tells the peer.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    candidates::{is_usable, predicted_ports, sanitize, Candidate, CandidateKind, MappingHint},
    error::{FailReason, PunchDecodeError, PunchProtocolError},
    packet::{is_punch_datagram, Datagram},
    proto::PunchMessage,
    rng::SessionRng,
    MAX_OUTSTANDING_PROBES, MAX_PEER_REFLEXIVE, MAX_SEEN, MAX_TARGETS,
};

/// Which side of the session this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Starts the session, measures the RTT, paces the rounds and nominates the path (the
    /// controlling side). After success it opens QUIC to the remote address.
    Initiator,
    /// Answers, punches when told, and accepts the nominated path. After success it
    /// accepts QUIC from the remote address.
    Responder,
}

/// Tuning of a session. [`Default`] gives the values below, each with its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PunchConfig {
    /// Punching rounds before giving up. Default 3 (DCUtR's default too): the first round
    /// succeeds for every pair that can succeed on a clean network; two more cover loss
    /// and a peer that was slow to start. At least 1.
    pub rounds: u8,
    /// Probes sent to each target per round. Default 5: with 2 % loss per link, all five
    /// of one direction are lost with probability ~10⁻⁸, and five packets per target are
    /// harmless to any NAT. At least 1.
    pub probes_per_round: u8,
    /// Spacing of the probes to one target. Default 50 ms: five probes span 200 ms, enough
    /// to straddle a start-time error of half a relayed RTT on typical paths.
    pub probe_interval: Duration,
    /// Time from the start of a round to giving up on it. Default 1.5 s: the 200 ms probe
    /// train plus a direct round trip of up to ~1.3 s for the last probe and its ack.
    pub round_timeout: Duration,
    /// Wait after the first failed round, doubled after each further one. Default 500 ms:
    /// lets NAT state from the failed round settle without adding much to the worst case.
    pub backoff: Duration,
    /// How long the initiator waits for the responder's `answer` or `pong`. Default 5 s:
    /// a relayed RTT far above any seen in practice (the relay path rarely exceeds 1 s).
    pub message_timeout: Duration,
    /// Total lifetime from construction; the session has ended by then. Default 15 s:
    /// above the worst case of the defaults (3 × 1.5 s of rounds + 0.5 s + 1 s of
    /// backoff + 3 relayed RTTs and 3 half RTTs ≈ 6 s + 4.5 RTT) so that it only trips
    /// when the peer stalls. A responder adds [`message_timeout`](Self::message_timeout)
    /// to it, so that a success the initiator nominates at its last moment still reaches
    /// the responder in time.
    pub deadline: Duration,
    /// Ports tried above each server-reflexive candidate of a peer whose mapping hint is
    /// destination-dependent; 0 disables prediction. Default 8: sequential allocators
    /// hand out the next few ports, and 8 extra targets cost little.
    pub port_prediction: u16,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            rounds: 3,
            probes_per_round: 5,
            probe_interval: Duration::from_millis(50),
            round_timeout: Duration::from_millis(1500),
            backoff: Duration::from_millis(500),
            message_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(15),
            port_prediction: 8,
        }
    }
}

/// What the shell must do, drained with [`PunchSession::poll_output`] in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send this message to the peer over the relayed connection.
    SendMessage(PunchMessage),
    /// Send `bytes` from the node's UDP socket (the one QUIC will use) to `to`.
    SendDatagram {
        /// Destination.
        to: SocketAddr,
        /// A punch datagram (at most [`MAX_DATAGRAM_LEN`](super::packet::MAX_DATAGRAM_LEN)).
        bytes: Vec<u8>,
    },
    /// The session ended (exactly one event per session, its last output).
    Event(Event),
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A direct path works both ways. The initiator opens QUIC to `remote`; the responder
    /// accepts QUIC from `remote` — both from the same UDP socket the punch used.
    Succeeded {
        /// The peer's address on the punched path.
        remote: SocketAddr,
    },
    /// No direct path; the relayed connection stays.
    Failed {
        /// Why.
        reason: FailReason,
    },
}

/// Where a session is (for logs, metrics and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Responder: waiting for the initiator's `offer`.
    AwaitingOffer,
    /// Initiator: `offer` and `ping` sent, waiting for `answer` and `pong`.
    Gathering,
    /// Initiator: `ping` sent before a retry round, waiting for `pong`.
    Measuring,
    /// Initiator: `sync` sent, punching starts half an RTT later.
    Scheduled,
    /// Sending probes (and waiting for acks) in a round.
    Punching,
    /// Initiator: waiting between rounds.
    Backoff,
    /// Responder: between rounds, answering probes, waiting for `sync` or the result.
    Listening,
    /// Ended with a direct path.
    Succeeded,
    /// Ended without one.
    Failed,
}

impl Phase {
    /// A lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Phase::AwaitingOffer => "awaiting the offer",
            Phase::Gathering => "gathering",
            Phase::Measuring => "measuring the RTT",
            Phase::Scheduled => "scheduled",
            Phase::Punching => "punching",
            Phase::Backoff => "backing off",
            Phase::Listening => "listening",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
        }
    }
}

/// Counters of one session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PunchStats {
    /// Probes sent.
    pub probes_sent: u64,
    /// Acks sent.
    pub acks_sent: u64,
    /// Datagrams ignored (undecodable, wrong token, unknown transaction, over a bound).
    pub datagrams_ignored: u64,
    /// Peer-reflexive addresses adopted.
    pub peer_reflexive: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingOffer,
    Gathering { since: Instant, answer: bool, pong: bool },
    Measuring { round: u8, since: Instant },
    Scheduled { round: u8, at: Instant },
    Punching { round: u8, ends_at: Instant },
    Backoff { next_round: u8, until: Instant },
    Listening,
    Succeeded { remote: SocketAddr },
    Failed,
}

impl State {
    fn phase(&self) -> Phase {
        match self {
            State::AwaitingOffer => Phase::AwaitingOffer,
            State::Gathering { .. } => Phase::Gathering,
            State::Measuring { .. } => Phase::Measuring,
            State::Scheduled { .. } => Phase::Scheduled,
            State::Punching { .. } => Phase::Punching,
            State::Backoff { .. } => Phase::Backoff,
            State::Listening => Phase::Listening,
            State::Succeeded { .. } => Phase::Succeeded,
            State::Failed => Phase::Failed,
        }
    }
}

/// One address probed during rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    addr: SocketAddr,
    kind: CandidateKind,
    priority: u32,
    /// Probes still to send to it in the current round.
    remaining: u8,
}

/// One hole-punching attempt (see the module docs for the protocol and the contract).
#[derive(Debug)]
pub struct PunchSession {
    role: Role,
    cfg: PunchConfig,
    started: Instant,
    deadline: Instant,
    rng: SessionRng,
    /// The session token: chosen by the initiator, learned from the offer by the
    /// responder.
    token: Option<[u8; 16]>,
    local: Vec<Candidate>,
    mapping: MappingHint,
    /// The peer's offered candidates.
    remote: Vec<Candidate>,
    remote_mapping: MappingHint,
    targets: Vec<Target>,
    next_probe: Option<Instant>,
    /// Probes awaiting an ack: (txid, destination), oldest first.
    outstanding: VecDeque<(u64, SocketAddr)>,
    /// Addresses authenticated probes arrived from (acked), in arrival order.
    seen: Vec<SocketAddr>,
    ping_seq: u32,
    ping_outstanding: Option<u32>,
    rtt: Option<Duration>,
    round: u8,
    state: State,
    ended_at: Option<Instant>,
    stats: PunchStats,
    out: VecDeque<Output>,
}

impl PunchSession {
    /// A session for `role`, created at `now`.
    ///
    /// `local` are this node's candidates (cleaned with
    /// [`sanitize`]); `mapping` is this node's NAT mapping
    /// behaviour if NAT detection measured it; `seed` drives the token and transaction
    /// ids — pass 32 bytes from the OS CSPRNG in production, a constant in tests.
    /// An initiator queues its `offer` and first `ping` at once: drain
    /// [`poll_output`](Self::poll_output). Config values of 0 are treated as 1.
    pub fn new(
        role: Role,
        now: Instant,
        mut cfg: PunchConfig,
        local: Vec<Candidate>,
        mapping: MappingHint,
        seed: [u8; 32],
    ) -> Self {
        cfg.rounds = cfg.rounds.max(1);
        cfg.probes_per_round = cfg.probes_per_round.max(1);
        cfg.probe_interval = cfg.probe_interval.max(Duration::from_millis(1));
        let deadline = match role {
            Role::Initiator => now + cfg.deadline,
            Role::Responder => now + cfg.deadline + cfg.message_timeout,
        };
        let mut s = Self {
            role,
            cfg,
            started: now,
            deadline,
            rng: SessionRng::new(seed),
            token: None,
            local: sanitize(local),
            mapping,
            remote: Vec::new(),
            remote_mapping: MappingHint::Unknown,
            targets: Vec::new(),
            next_probe: None,
            outstanding: VecDeque::new(),
            seen: Vec::new(),
            ping_seq: 0,
            ping_outstanding: None,
            rtt: None,
            round: 0,
            state: State::AwaitingOffer,
            ended_at: None,
            stats: PunchStats::default(),
            out: VecDeque::new(),
        };
        if role == Role::Initiator {
            let token = s.rng.token();
            s.token = Some(token);
            s.send(PunchMessage::Offer { token, mapping: s.mapping, candidates: s.local.clone() });
            s.send_ping(now);
            s.state = State::Gathering { since: now, answer: false, pong: false };
        }
        s
    }

    /// The peer's mapping hint, once its offer or answer arrived ([`MappingHint::Unknown`]
    /// before).
    pub fn remote_mapping(&self) -> MappingHint {
        self.remote_mapping
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// Whether the session has ended (its event is queued or was drained).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Succeeded { .. } | State::Failed)
    }

    /// The punched path's remote address, once succeeded.
    pub fn remote(&self) -> Option<SocketAddr> {
        match self.state {
            State::Succeeded { remote } => Some(remote),
            _ => None,
        }
    }

    /// The current (or last) round, from 1; 0 before the first.
    pub fn round(&self) -> u8 {
        self.round
    }

    /// The last relayed RTT measured (initiator only).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The instant by which the session has ended, whatever happens.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// When the session ended.
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }

    /// The session's counters.
    pub fn stats(&self) -> PunchStats {
        self.stats
    }

    /// The session token, once known (the initiator's from construction, the responder's
    /// from the offer): every punch datagram of this session carries it, which is how a
    /// shell sharing one socket among sessions routes them
    /// ([`DatagramRouter`](super::router::DatagramRouter)). Secret between the two peers:
    /// never log it.
    pub fn token(&self) -> Option<[u8; 16]> {
        self.token
    }

    /// The candidates this node offers (after cleaning).
    pub fn local_candidates(&self) -> &[Candidate] {
        &self.local
    }

    /// Whether datagram `bytes` belongs to this session (a punch datagram carrying its
    /// token), for a shell demultiplexing one socket among sessions, STUN and QUIC.
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        match (self.token, is_punch_datagram(bytes).then(|| Datagram::decode(bytes)).flatten()) {
            (Some(token), Some(d)) => tokens_equal(&token, d.token()),
            _ => false,
        }
    }

    /// The next output, or `None` when drained.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called; `None` once the
    /// session has ended. Never later than [`deadline`](Self::deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state_timer = match self.state {
            State::Succeeded { .. } | State::Failed => return None,
            State::AwaitingOffer | State::Listening => None,
            State::Gathering { since, .. } | State::Measuring { since, .. } => {
                Some(since + self.cfg.message_timeout)
            }
            State::Scheduled { at, .. } => Some(at),
            State::Punching { ends_at, .. } => Some(ends_at),
            State::Backoff { until, .. } => Some(until),
        };
        [Some(self.deadline), state_timer, self.next_probe].into_iter().flatten().min()
    }

    /// Ends the session now (for example, the relayed connection closed or the shell is
    /// stopping); the peer is told.
    pub fn close(&mut self, now: Instant) {
        self.fail(now, FailReason::Cancelled);
    }

    /// Decodes and handles a message from the peer. An undecodable message ends the
    /// session (see [`handle_undecodable`](Self::handle_undecodable)) and is returned as
    /// the error.
    pub fn handle_message_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), PunchDecodeError> {
        match PunchMessage::decode(bytes) {
            Ok(msg) => {
                self.handle_message(now, msg);
                Ok(())
            }
            Err(e) => {
                self.handle_undecodable(now, e.clone());
                Err(e)
            }
        }
    }

    /// The peer sent a punch message that did not decode (`error`, from wherever it was
    /// decoded): the session fails with a protocol error, reported to the peer.
    pub fn handle_undecodable(&mut self, now: Instant, error: PunchDecodeError) {
        self.fail(now, FailReason::Protocol(PunchProtocolError::Decode(error)));
    }

    /// Handles a message from the peer (received over the relayed connection).
    pub fn handle_message(&mut self, now: Instant, msg: PunchMessage) {
        if self.is_finished() || self.check_deadline(now) {
            return;
        }
        match (self.role, self.state, msg) {
            (_, _, PunchMessage::Ping { seq, sent_us }) => self.send(PunchMessage::Pong { seq, sent_us }),
            (_, _, PunchMessage::Unknown) => {}
            (_, _, PunchMessage::Failure { reason }) => {
                self.end(now, Event::Failed { reason: FailReason::PeerFailed(reason) })
            }
            (Role::Initiator, _, PunchMessage::Pong { seq, sent_us }) => self.on_pong(now, seq, sent_us),
            (Role::Responder, _, PunchMessage::Pong { .. }) => {}
            (Role::Responder, State::AwaitingOffer, PunchMessage::Offer { token, mapping, candidates }) => {
                self.token = Some(token);
                self.set_remote(mapping, candidates);
                self.send(PunchMessage::Answer { mapping: self.mapping, candidates: self.local.clone() });
                self.state = State::Listening;
            }
            (
                Role::Initiator,
                State::Gathering { since, answer: false, pong },
                PunchMessage::Answer { mapping, candidates },
            ) => {
                self.set_remote(mapping, candidates);
                if self.remote.is_empty() && self.local.is_empty() {
                    self.fail(now, FailReason::NoCandidates);
                    return;
                }
                self.state = State::Gathering { since, answer: true, pong };
                self.maybe_first_round(now);
            }
            (Role::Responder, State::Listening, PunchMessage::Sync { round, .. }) if round > self.round => {
                self.start_round(now, round);
            }
            (Role::Responder, State::Punching { round: current, .. }, PunchMessage::Sync { round, .. })
                if round > current =>
            {
                self.start_round(now, round);
            }
            (
                Role::Responder,
                State::Listening | State::Punching { .. },
                PunchMessage::Success { remote },
            ) => {
                if self.seen.contains(&remote) {
                    self.end(now, Event::Succeeded { remote });
                } else {
                    self.fail(now, FailReason::Protocol(PunchProtocolError::BadNomination(remote)));
                }
            }
            (_, state, msg) => {
                let e =
                    PunchProtocolError::Unexpected { message: msg.type_name(), state: state.phase().name() };
                self.fail(now, FailReason::Protocol(e));
            }
        }
    }

    /// Handles a datagram that arrived on the node's UDP socket from `from` (the source
    /// address as received, which may be a mapping the peer never offered). Anything that
    /// is not an authenticated punch datagram of this session is ignored.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.is_finished() || self.check_deadline(now) {
            return;
        }
        let (Some(token), Some(d)) = (self.token, Datagram::decode(bytes)) else {
            self.stats.datagrams_ignored += 1;
            return;
        };
        if !tokens_equal(&token, d.token()) || !is_usable(from) {
            self.stats.datagrams_ignored += 1;
            return;
        }
        match d {
            Datagram::Probe { txid, .. } => {
                if !self.seen.contains(&from) {
                    if self.seen.len() >= MAX_SEEN {
                        self.stats.datagrams_ignored += 1;
                        return;
                    }
                    self.seen.push(from);
                }
                let ack = Datagram::Ack { token, txid, observed: from };
                self.out.push_back(Output::SendDatagram { to: from, bytes: ack.encode() });
                self.stats.acks_sent += 1;
                self.adopt(now, from);
            }
            Datagram::Ack { txid, observed, .. } => {
                let Some(i) = self.outstanding.iter().position(|(t, _)| *t == txid) else {
                    self.stats.datagrams_ignored += 1;
                    return;
                };
                let Some((_, dest)) = self.outstanding.remove(i) else { return };
                if !is_usable(observed) {
                    self.stats.datagrams_ignored += 1;
                    return;
                }
                if from != dest {
                    // The peer's NAT answered from another mapping: check that one.
                    self.adopt(now, from);
                } else if self.role == Role::Initiator {
                    self.send(PunchMessage::Success { remote: observed });
                    self.end(now, Event::Succeeded { remote: from });
                }
            }
        }
    }

    /// Handles the timer (call at or after [`poll_timeout`](Self::poll_timeout); early or
    /// repeated calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_finished() || self.check_deadline(now) {
            return;
        }
        match self.state {
            State::Gathering { since, answer, .. } if now >= since + self.cfg.message_timeout => {
                let waiting_for = if answer { "a pong" } else { "an answer" };
                self.fail(now, FailReason::PeerUnresponsive { waiting_for, waited: now - since });
            }
            State::Measuring { since, .. } if now >= since + self.cfg.message_timeout => {
                self.fail(now, FailReason::PeerUnresponsive { waiting_for: "a pong", waited: now - since });
            }
            State::Scheduled { round, at } if now >= at => self.start_round(now, round),
            State::Punching { round, ends_at } => {
                if self.next_probe.is_some_and(|t| now >= t) {
                    self.tick(now);
                }
                if now >= ends_at {
                    self.end_round(now, round);
                }
            }
            State::Backoff { next_round, until } if now >= until => {
                self.send_ping(now);
                self.state = State::Measuring { round: next_round, since: now };
            }
            _ => {}
        }
    }

    fn check_deadline(&mut self, now: Instant) -> bool {
        if now >= self.deadline {
            self.fail(now, FailReason::DeadlineExceeded(self.cfg.deadline));
            true
        } else {
            false
        }
    }

    fn send(&mut self, msg: PunchMessage) {
        self.out.push_back(Output::SendMessage(msg));
    }

    fn send_ping(&mut self, now: Instant) {
        self.ping_seq = self.ping_seq.wrapping_add(1);
        let sent_us =
            u64::try_from(now.saturating_duration_since(self.started).as_micros()).unwrap_or(u64::MAX);
        self.ping_outstanding = Some(self.ping_seq);
        self.send(PunchMessage::Ping { seq: self.ping_seq, sent_us });
    }

    fn on_pong(&mut self, now: Instant, seq: u32, sent_us: u64) {
        if self.ping_outstanding != Some(seq) {
            return; // late or foreign: ignore
        }
        let Some(sent_at) = self.started.checked_add(Duration::from_micros(sent_us)) else { return };
        if sent_at > now {
            return; // a timestamp from the future: not our ping
        }
        self.ping_outstanding = None;
        self.rtt = Some(now - sent_at);
        match self.state {
            State::Gathering { since, answer, .. } => {
                self.state = State::Gathering { since, answer, pong: true };
                self.maybe_first_round(now);
            }
            State::Measuring { round, .. } => self.sync_round(now, round),
            _ => {}
        }
    }

    fn maybe_first_round(&mut self, now: Instant) {
        if let State::Gathering { answer: true, pong: true, .. } = self.state {
            self.sync_round(now, 1);
        }
    }

    /// Initiator: tell the responder to punch `round` now; start ourselves RTT/2 later,
    /// when the sync has reached it.
    fn sync_round(&mut self, now: Instant, round: u8) {
        let rtt = self.rtt.unwrap_or_default();
        let rtt_us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.send(PunchMessage::Sync { round, rtt_us });
        self.state = State::Scheduled { round, at: now + rtt / 2 };
    }

    /// The peer's TCP candidates (for simultaneous open), once its offer or answer
    /// arrived; at most [`MAX_TCP_CANDIDATES`](super::candidates::MAX_TCP_CANDIDATES).
    pub fn remote_tcp(&self) -> Vec<SocketAddr> {
        self.remote
            .iter()
            .filter(|c| c.kind == CandidateKind::Tcp)
            .take(super::candidates::MAX_TCP_CANDIDATES)
            .map(|c| c.addr)
            .collect()
    }

    fn set_remote(&mut self, mapping: MappingHint, mut candidates: Vec<Candidate>) {
        candidates.retain(|c| is_usable(c.addr));
        candidates.truncate(super::MAX_CANDIDATES);
        self.remote = candidates;
        self.remote_mapping = mapping;
        let remote: Vec<Candidate> =
            self.remote.iter().filter(|c| c.kind != CandidateKind::Tcp).copied().collect();
        for c in &remote {
            self.add_target(c.addr, c.kind, c.priority, 0);
        }
        for (i, addr) in predicted_ports(&remote, mapping, self.cfg.port_prediction).into_iter().enumerate() {
            let c = Candidate::new(CandidateKind::Predicted, addr, u16::try_from(i).unwrap_or(u16::MAX));
            self.add_target(addr, c.kind, c.priority, 0);
        }
    }

    fn add_target(&mut self, addr: SocketAddr, kind: CandidateKind, priority: u32, remaining: u8) -> bool {
        if self.targets.len() >= MAX_TARGETS || self.targets.iter().any(|t| t.addr == addr) {
            return false;
        }
        self.targets.push(Target { addr, kind, priority, remaining });
        true
    }

    /// A packet of the peer came from `from`: if it is new, make it a peer-reflexive
    /// target and probe it at once (a triggered check).
    fn adopt(&mut self, now: Instant, from: SocketAddr) {
        if self.targets.iter().any(|t| t.addr == from) {
            return;
        }
        let adopted = self.targets.iter().filter(|t| t.kind == CandidateKind::PeerReflexive).count();
        if adopted >= MAX_PEER_REFLEXIVE {
            return;
        }
        let punching = matches!(self.state, State::Punching { .. });
        let remaining = if punching { self.cfg.probes_per_round - 1 } else { 0 };
        let c = Candidate::new(CandidateKind::PeerReflexive, from, u16::try_from(adopted).unwrap_or(0));
        if self.add_target(from, c.kind, c.priority, remaining) {
            self.stats.peer_reflexive += 1;
            self.send_probe(from);
            if remaining > 0 && self.next_probe.is_none() {
                self.next_probe = Some(now + self.cfg.probe_interval);
            }
        }
    }

    fn start_round(&mut self, now: Instant, round: u8) {
        self.round = round;
        self.targets.sort_by_key(|t| std::cmp::Reverse(t.priority));
        for t in &mut self.targets {
            t.remaining = self.cfg.probes_per_round;
        }
        self.state = State::Punching { round, ends_at: now + self.cfg.round_timeout };
        self.tick(now);
    }

    /// Sends one probe to every target that still has probes left this round.
    fn tick(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut more = false;
        for t in &mut self.targets {
            if t.remaining > 0 {
                t.remaining -= 1;
                due.push(t.addr);
                more |= t.remaining > 0;
            }
        }
        for addr in due {
            self.send_probe(addr);
        }
        self.next_probe = more.then(|| now + self.cfg.probe_interval);
    }

    fn send_probe(&mut self, to: SocketAddr) {
        let (Some(token), txid) = (self.token, self.rng.next_u64()) else { return };
        if self.outstanding.len() >= MAX_OUTSTANDING_PROBES {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((txid, to));
        self.stats.probes_sent += 1;
        self.out.push_back(Output::SendDatagram { to, bytes: Datagram::Probe { token, txid }.encode() });
    }

    fn end_round(&mut self, now: Instant, round: u8) {
        self.next_probe = None;
        for t in &mut self.targets {
            t.remaining = 0;
        }
        match self.role {
            Role::Responder => self.state = State::Listening,
            Role::Initiator if round >= self.cfg.rounds => {
                self.fail(now, FailReason::NoPath { rounds: round })
            }
            Role::Initiator => {
                let factor = 1u32 << u32::from(round.saturating_sub(1)).min(16);
                let until = now + self.cfg.backoff.saturating_mul(factor);
                self.state = State::Backoff { next_round: round + 1, until };
            }
        }
    }

    /// Ends the session with a failure, telling the peer unless the peer failed first.
    fn fail(&mut self, now: Instant, reason: FailReason) {
        if self.is_finished() {
            return;
        }
        if !matches!(reason, FailReason::PeerFailed(_)) {
            self.send(PunchMessage::Failure { reason: reason.to_string() });
        }
        self.end(now, Event::Failed { reason });
    }

    fn end(&mut self, now: Instant, event: Event) {
        if self.is_finished() {
            return;
        }
        self.state = match event {
            Event::Succeeded { remote } => State::Succeeded { remote },
            Event::Failed { .. } => State::Failed,
        };
        self.ended_at = Some(now);
        self.next_probe = None;
        self.outstanding.clear();
        self.out.push_back(Output::Event(event));
    }
}

/// Compares two tokens in time independent of where they differ.
fn tokens_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
