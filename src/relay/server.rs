//! The relay's decision core: reservations, circuits, limits and usage metrics (sans-IO).
//!
//! [`RelayState`] follows the quinn-proto contract. The shell (the relay actor) owns the
//! WebSocket connections and one timer, and:
//!
//! * gives every WebSocket connection a [`ConnId`], runs its
//!   [`ServerHandshake`](super::auth::ServerHandshake), and on success calls
//!   [`handle_authenticated`](RelayState::handle_authenticated);
//! * feeds each later decoded control message to
//!   [`handle_message`](RelayState::handle_message) — except on spliced connections,
//!   whose binary messages are opaque circuit bytes and go to the circuit's forwarder;
//! * calls [`handle_closed`](RelayState::handle_closed) when a socket ends,
//!   [`record_forwarded`](RelayState::record_forwarded) before forwarding each message of
//!   a circuit, and [`handle_timeout`](RelayState::handle_timeout) when the timer fires;
//! * after **every** input, drains [`poll_output`](RelayState::poll_output) until `None`
//!   and re-arms its timer from [`poll_timeout`](RelayState::poll_timeout).
//!
//! Closing is immediate in the state: when the relay decides to close a connection it
//! forgets it at once and emits [`Output::Close`]; a later `handle_closed` for it is a
//! no-op. Inputs for unknown connections are ignored. Nothing here panics on any input;
//! the output queue holds only the effects of one input (bounded by the limits).
//!
//! Lifecycle of a circuit: `dial` from A → *pending* (B's control connection gets
//! `incoming`) → B's `accept` connection → *open* (`circuit_ready` to both,
//! [`Output::Splice`]) → closed (either end leaves, a limit trips, or B refuses / times
//! out while pending). Pending circuits count toward every circuit limit. Until its ends
//! have exchanged the three flights of an end-to-end handshake (reported by the shell with
//! [`record_handshake`](RelayState::record_handshake)) a circuit is *unconfirmed*: bounded
//! per initiating key, address and target ([`unconfirmed`](super::unconfirmed)), and
//! closed if still unconfirmed `circuit_handshake_timeout` after it opened. A control
//! connection closing drops its reservation and refuses circuits still pending to it;
//! open circuits live on their own two connections and survive it.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use serde::Serialize;

pub use super::metrics::{CircuitUsage, LimitHits, LimitKind, PeerUsage, RelayMetrics, RelayTotals};
use super::{
    error::ForwardError,
    limits::RelayLimits,
    proto::{CircuitId, ErrorCode, Purpose, RelayMessage, MAX_ADVERTISED_STUN},
    unconfirmed::UnconfirmedCircuits,
    MAX_SIGNAL_LEN,
};
use crate::identity::PeerId;

/// Longest reason text the relay forwards from a client (`refuse`), in bytes; longer
/// reasons are cut at a character boundary. Reasons are for humans and logs.
pub const MAX_REASON_LEN: usize = 256;

/// The shell's id for one authenticated WebSocket connection. The shell must not reuse
/// an id within one `RelayState` (a counter is enough).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn{}", self.0)
    }
}

/// A direction of a circuit: A is the dialer, B the target that accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes from the dialer to the target.
    AToB,
    /// Bytes from the target to the dialer.
    BToA,
}

/// The limits a forwarder applies to one circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitLimits {
    /// Initial rate in bytes per second, both directions together (changes arrive as
    /// [`Output::RateChanged`]).
    pub rate: u64,
    /// The circuit is closed at this age (the relay's timer does it).
    pub max_duration: Duration,
    /// The circuit is closed before carrying more than this many bytes.
    pub max_bytes: u64,
}

/// Why the relay closes a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    /// The typed reason; the WebSocket close code is `code.ws_close_code()`.
    pub code: ErrorCode,
    /// Human-readable detail (the shell cuts it to the WebSocket limit of 123 bytes).
    pub message: String,
}

/// Something worth logging or counting, emitted as [`Output::Event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayEvent {
    /// A reservation was granted or renewed.
    ReservationAccepted {
        /// The peer.
        peer: PeerId,
        /// Whether it renewed a live reservation.
        renewed: bool,
        /// Granted lifetime.
        ttl: Duration,
    },
    /// A reservation ended: released (`reserve 0`), its connection closed, or it expired.
    ReservationEnded {
        /// The peer.
        peer: PeerId,
        /// Whether it ended by expiring.
        expired: bool,
    },
    /// A circuit was requested and announced to its target.
    CircuitRequested {
        /// The circuit.
        circuit: CircuitId,
        /// The dialer.
        src: PeerId,
        /// The target.
        dst: PeerId,
    },
    /// A circuit opened.
    CircuitOpened {
        /// The circuit.
        circuit: CircuitId,
        /// The dialer.
        src: PeerId,
        /// The target.
        dst: PeerId,
    },
    /// A circuit ended (pending or open), with its final usage.
    CircuitClosed {
        /// Usage at the end.
        usage: CircuitUsage,
        /// Why.
        code: ErrorCode,
    },
    /// A limit was hit by `peer`.
    LimitHit {
        /// Which.
        kind: LimitKind,
        /// The peer whose request or circuit hit it.
        peer: PeerId,
    },
    /// A connection broke the protocol and was closed.
    ProtocolViolation {
        /// The connection.
        conn: ConnId,
        /// Its peer.
        peer: PeerId,
        /// What it did.
        detail: String,
    },
    /// A peer's last connection closed; its usage record is dropped after this event.
    PeerGone {
        /// Final usage.
        usage: PeerUsage,
    },
}

/// What the shell must do, drained with [`RelayState::poll_output`] in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send `msg` as one binary WebSocket message on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: RelayMessage,
    },
    /// Close `conn` (after sending what was queued before) with `reason`.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Start forwarding between `a` (dialer) and `b` (target): every later binary
    /// message on one goes, opaque, to the other, shaped by `limits`.
    Splice {
        /// The circuit.
        circuit: CircuitId,
        /// The dialer's connection.
        a: ConnId,
        /// The target's connection.
        b: ConnId,
        /// Limits for the forwarder.
        limits: CircuitLimits,
    },
    /// The circuit's fair share changed: set its bucket to `rate` bytes per second.
    RateChanged {
        /// The circuit.
        circuit: CircuitId,
        /// New rate.
        rate: u64,
    },
    /// Something to log or count.
    Event(RelayEvent),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Being closed by the current input (a failed purpose).
    Closing,
    Control,
    /// Dialer's connection while its circuit is pending.
    Dialing(CircuitId),
    /// One end of an open circuit.
    Spliced(CircuitId),
}

#[derive(Debug)]
struct ConnEntry {
    peer: PeerId,
    role: Role,
}

#[derive(Debug)]
struct Reservation {
    conn: ConnId,
    expires: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Pending { deadline: Instant },
    Open { opened: Instant, deadline: Instant },
}

#[derive(Debug)]
struct Circuit {
    src: PeerId,
    dst: PeerId,
    a: ConnId,
    b: Option<ConnId>,
    phase: Phase,
    bytes_ab: u64,
    bytes_ba: u64,
    rate: u64,
    /// While open and unconfirmed: when it is closed unless its ends complete a handshake.
    confirm_by: Option<Instant>,
}

#[derive(Debug, Default)]
struct PeerStats {
    since: Option<Instant>,
    connections: usize,
    circuits: usize,
    circuits_opened: u64,
    bytes_sent: u64,
    bytes_received: u64,
}

/// The relay server's state machine. See the module docs for the contract.
#[derive(Debug)]
pub struct RelayState {
    limits: RelayLimits,
    conns: HashMap<ConnId, ConnEntry>,
    controls: HashMap<PeerId, ConnId>,
    reservations: HashMap<PeerId, Reservation>,
    circuits: BTreeMap<CircuitId, Circuit>,
    peers: HashMap<PeerId, PeerStats>,
    open_circuits: usize,
    next_circuit: u64,
    totals: RelayTotals,
    hits: LimitHits,
    out: VecDeque<Output>,
    /// STUN addresses advertised in `reserved` (wildcard IPs are replaced per connection).
    stun: Vec<SocketAddr>,
    /// Per connection: where it comes from and which local address it reached.
    addrs: HashMap<ConnId, (SocketAddr, SocketAddr)>,
    /// Circuits whose ends have not completed an end-to-end handshake yet.
    unconfirmed: UnconfirmedCircuits,
}

impl RelayState {
    /// A relay enforcing `limits` (check them first with [`RelayLimits::validate`]).
    pub fn new(limits: RelayLimits) -> Self {
        Self {
            unconfirmed: UnconfirmedCircuits::new(&limits),
            limits,
            conns: HashMap::new(),
            controls: HashMap::new(),
            reservations: HashMap::new(),
            circuits: BTreeMap::new(),
            peers: HashMap::new(),
            open_circuits: 0,
            next_circuit: 1,
            totals: RelayTotals::default(),
            hits: LimitHits::default(),
            out: VecDeque::new(),
            stun: Vec::new(),
            addrs: HashMap::new(),
        }
    }

    /// Advertises `stun` (the relay's STUN responder addresses) to every client in its
    /// `reserved` messages, so clients behind NATs learn their UDP mapping from the relay
    /// they already know. A wildcard IP (`0.0.0.0:3478`) is advertised as the IP the
    /// client reached the relay on. At most [`MAX_ADVERTISED_STUN`] are kept.
    pub fn set_stun(&mut self, mut stun: Vec<SocketAddr>) {
        stun.truncate(MAX_ADVERTISED_STUN);
        self.stun = stun;
    }

    /// Records, before [`handle_authenticated`](Self::handle_authenticated), the address
    /// connection `conn` comes from (`remote`, reported back to the client as its
    /// observed address) and the local address it reached (`local`).
    pub fn handle_addresses(&mut self, conn: ConnId, remote: SocketAddr, local: SocketAddr) {
        self.addrs.insert(conn, (remote, local));
    }

    /// The `reserved` message for `conn`.
    fn reserved(&self, conn: ConnId, expires_in_secs: u64) -> RelayMessage {
        let addrs = self.addrs.get(&conn).copied();
        let stun = self
            .stun
            .iter()
            .filter_map(|s| match (s.ip().is_unspecified(), addrs) {
                (false, _) => Some(*s),
                (true, Some((_, local))) if local.is_ipv4() == s.is_ipv4() => {
                    Some(SocketAddr::new(local.ip(), s.port()))
                }
                (true, _) => None,
            })
            .collect();
        RelayMessage::Reserved { expires_in_secs, observed: addrs.map(|(remote, _)| remote), stun }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// Whether `peer` holds a reservation that is live at `now`.
    pub fn is_reserved(&self, peer: &PeerId, now: Instant) -> bool {
        self.reservations.get(peer).is_some_and(|r| r.expires > now)
    }

    /// The next output, in the order the shell must perform them.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next: the earliest
    /// reservation expiry, pending-circuit deadline, end-to-end handshake deadline or
    /// circuit duration limit.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let res = self.reservations.values().map(|r| r.expires);
        let circ = self.circuits.values().map(|c| match c.phase {
            Phase::Pending { deadline } => deadline,
            Phase::Open { deadline, .. } => c.confirm_by.map_or(deadline, |t| t.min(deadline)),
        });
        res.chain(circ).min()
    }

    /// A connection finished its handshake as `peer` and declared `purpose`.
    ///
    /// `conn` must be new; a purpose declared twice for one connection is a protocol
    /// violation.
    pub fn handle_authenticated(&mut self, conn: ConnId, peer: PeerId, purpose: Purpose, now: Instant) {
        if let Some(e) = self.conns.get(&conn) {
            let peer = e.peer;
            self.violation(conn, peer, "purpose declared twice on one connection".into(), now);
            return;
        }
        self.conns.insert(conn, ConnEntry { peer, role: Role::Closing });
        let stats = self.peers.entry(peer).or_default();
        stats.connections += 1;
        stats.since.get_or_insert(now);
        self.totals.connections += 1;
        match purpose {
            Purpose::Control => {
                self.set_role(conn, Role::Control);
                if let Some(old) = self.controls.insert(peer, conn) {
                    self.close(
                        conn_close(old, ErrorCode::Replaced, "replaced by a newer control connection"),
                        now,
                    );
                }
            }
            Purpose::Dial { target } => self.dial(conn, peer, target, now),
            Purpose::Accept { circuit } => self.accept(conn, peer, circuit, now),
        }
    }

    /// A control message arrived on an authenticated, unspliced connection.
    pub fn handle_message(&mut self, conn: ConnId, msg: RelayMessage, now: Instant) {
        let Some(entry) = self.conns.get(&conn) else { return };
        let (peer, role) = (entry.peer, entry.role);
        match (role, msg) {
            (_, RelayMessage::Unknown) | (Role::Spliced(_) | Role::Closing, _) => {}
            (Role::Control, RelayMessage::Reserve { ttl_secs }) => self.reserve(conn, peer, ttl_secs, now),
            (Role::Control, RelayMessage::Signal { to, payload }) => {
                self.signal(conn, peer, to, payload, now)
            }
            (Role::Control, RelayMessage::Refuse { circuit, reason }) => {
                self.refuse(conn, peer, circuit, reason, now)
            }
            (role, msg) => {
                let what = match role {
                    Role::Control => "control",
                    _ => "pending dial",
                };
                self.violation(
                    conn,
                    peer,
                    format!("{} is not allowed on a {what} connection", msg.type_name()),
                    now,
                );
            }
        }
    }

    /// A message on an authenticated, unspliced connection could not be decoded
    /// (malformed, oversized, or not a binary message): closes it as a protocol violation.
    pub fn handle_malformed(&mut self, conn: ConnId, detail: String, now: Instant) {
        let Some(entry) = self.conns.get(&conn) else { return };
        let peer = entry.peer;
        self.violation(conn, peer, detail, now);
    }

    /// The connection's socket ended (either side closed it, or it failed).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        self.forget_conn(conn, None, now);
    }

    /// Expires reservations, pending circuits and circuits past their duration at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<PeerId> =
            self.reservations.iter().filter(|(_, r)| r.expires <= now).map(|(p, _)| *p).collect();
        for peer in expired {
            self.reservations.remove(&peer);
            self.event(RelayEvent::ReservationEnded { peer, expired: true });
        }
        let due: Vec<(CircuitId, LimitKind, PeerId)> = self
            .circuits
            .iter()
            .filter_map(|(id, c)| match c.phase {
                Phase::Pending { deadline } if deadline <= now => {
                    Some((*id, LimitKind::PendingTimeout, c.dst))
                }
                Phase::Open { deadline, .. } if deadline <= now => Some((*id, LimitKind::Duration, c.src)),
                Phase::Open { .. } if c.confirm_by.is_some_and(|t| t <= now) => {
                    Some((*id, LimitKind::CircuitHandshakeTimeout, c.src))
                }
                _ => None,
            })
            .collect();
        for (id, kind, peer) in due {
            self.event(RelayEvent::LimitHit { kind, peer });
            let (code, msg) = match kind {
                LimitKind::PendingTimeout => {
                    self.hits.pending_timeout += 1;
                    (
                        ErrorCode::PendingTimeout,
                        format!("target did not answer within {:?}", self.limits.pending_timeout),
                    )
                }
                LimitKind::CircuitHandshakeTimeout => {
                    self.hits.circuit_handshake_timeout += 1;
                    let t = self.limits.circuit_handshake_timeout;
                    (
                        ErrorCode::CircuitHandshakeTimeout,
                        format!("the circuit carried no end-to-end handshake within {t:?}"),
                    )
                }
                _ => {
                    self.hits.duration += 1;
                    let t = self.limits.max_circuit_duration;
                    (ErrorCode::DurationLimit, format!("circuit reached its duration limit of {t:?}"))
                }
            };
            self.end_circuit(id, code, &msg, now);
        }
    }

    /// Accounts `bytes` about to be forwarded on `circuit` in `direction`.
    ///
    /// Call before forwarding each message. On `Err` the bytes are not counted and must
    /// be dropped; for a limit, the relay has queued the close of both ends. A circuit
    /// carries at most `max_circuit_bytes` bytes: a message that would cross the cap
    /// closes it instead.
    pub fn record_forwarded(
        &mut self,
        circuit: CircuitId,
        direction: Direction,
        bytes: u64,
        now: Instant,
    ) -> Result<(), ForwardError> {
        let Some(c) = self.circuits.get_mut(&circuit) else { return Err(ForwardError::NotOpen) };
        let Phase::Open { deadline, .. } = c.phase else { return Err(ForwardError::NotOpen) };
        let (src, dst) = (c.src, c.dst);
        if now >= deadline {
            self.hits.duration += 1;
            self.event(RelayEvent::LimitHit { kind: LimitKind::Duration, peer: src });
            let limit = self.limits.max_circuit_duration;
            self.end_circuit(circuit, ErrorCode::DurationLimit, "circuit reached its duration limit", now);
            return Err(ForwardError::DurationLimit { limit });
        }
        let attempted = c.bytes_ab.saturating_add(c.bytes_ba).saturating_add(bytes);
        let limit = self.limits.max_circuit_bytes;
        if attempted > limit {
            self.hits.data_cap += 1;
            let sender = if direction == Direction::AToB { src } else { dst };
            self.event(RelayEvent::LimitHit { kind: LimitKind::DataCap, peer: sender });
            let msg = format!("circuit reached its data cap of {limit} bytes");
            self.end_circuit(circuit, ErrorCode::DataCap, &msg, now);
            return Err(ForwardError::DataCap { limit, attempted });
        }
        let (from, to) = match direction {
            Direction::AToB => {
                c.bytes_ab += bytes;
                (src, dst)
            }
            Direction::BToA => {
                c.bytes_ba += bytes;
                (dst, src)
            }
        };
        self.totals.bytes_forwarded = self.totals.bytes_forwarded.saturating_add(bytes);
        if let Some(p) = self.peers.get_mut(&from) {
            p.bytes_sent = p.bytes_sent.saturating_add(bytes);
        }
        if let Some(p) = self.peers.get_mut(&to) {
            p.bytes_received = p.bytes_received.saturating_add(bytes);
        }
        Ok(())
    }

    /// Counts one bandwidth limit hit: a forwarder of `circuit` had to wait for its
    /// bucket. Throttling is not an error; this only feeds the metrics (the shell should
    /// report at most once per wait).
    pub fn record_throttled(&mut self, circuit: CircuitId) {
        if self.circuits.contains_key(&circuit) {
            self.hits.bandwidth += 1;
        }
    }

    /// The forwarder of `circuit` saw its ends complete the three flights of an end-to-end
    /// handshake ([`HandshakeFlights`](super::unconfirmed::HandshakeFlights)): the circuit
    /// is confirmed and no longer counts toward the unconfirmed-circuit limits.
    pub fn record_handshake(&mut self, circuit: CircuitId) {
        if let Some(c) = self.circuits.get_mut(&circuit) {
            if matches!(c.phase, Phase::Open { .. }) {
                c.confirm_by = None;
                self.unconfirmed.remove(circuit);
            }
        }
    }

    /// A snapshot of counters and usage at `now`.
    pub fn metrics(&self, now: Instant) -> RelayMetrics {
        let mut peers: Vec<PeerUsage> = self.peers.iter().map(|(p, s)| self.peer_usage(*p, s, now)).collect();
        peers.sort_by_key(|u| u.peer);
        RelayMetrics {
            connections: self.conns.len(),
            reservations: self.reservations.values().filter(|r| r.expires > now).count(),
            circuits_pending: self.circuits.len().saturating_sub(self.open_circuits),
            circuits_open: self.open_circuits,
            circuits_unconfirmed: self.unconfirmed.len(),
            circuit_rate: self.limits.fair_share(self.open_circuits),
            totals: self.totals.clone(),
            limit_hits: self.hits.clone(),
            handshakes: Default::default(),
            peers,
            circuits: self.circuits.iter().map(|(id, c)| circuit_usage(*id, c, now)).collect(),
        }
    }

    // ----- purposes -----

    fn dial(&mut self, conn: ConnId, peer: PeerId, target: PeerId, now: Instant) {
        if target == peer {
            self.violation(conn, peer, "dial to yourself".into(), now);
            return;
        }
        let Some(target_conn) = self.reservations.get(&target).filter(|r| r.expires > now).map(|r| r.conn)
        else {
            self.close(
                conn_close(conn, ErrorCode::TargetNotReserved, "target holds no reservation here"),
                now,
            );
            return;
        };
        if self.circuits.len() >= self.limits.max_circuits {
            self.hits.circuits_total += 1;
            self.event(RelayEvent::LimitHit { kind: LimitKind::CircuitsTotal, peer });
            let msg = format!("relay circuit limit ({}) reached", self.limits.max_circuits);
            self.close(conn_close(conn, ErrorCode::CircuitLimitTotal, &msg), now);
            return;
        }
        let max = self.limits.max_circuits_per_peer;
        if self.peers.get(&peer).map_or(0, |s| s.circuits) >= max {
            self.circuit_limit_peer(conn, peer, "your", now);
            return;
        }
        let id = CircuitId(self.next_circuit);
        // An unknown address (the shell did not report one) shares one bucket.
        let ip = self.addrs.get(&conn).map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |(remote, _)| remote.ip());
        match self.unconfirmed.admit(id, peer, ip, target) {
            Err(why) => {
                self.hits.unconfirmed_refused += 1;
                self.event(RelayEvent::LimitHit { kind: LimitKind::UnconfirmedCircuits, peer });
                self.close(conn_close(conn, ErrorCode::UnconfirmedCircuitLimit, &why.to_string()), now);
                return;
            }
            Ok(Some(old)) => {
                self.hits.unconfirmed_evicted += 1;
                let src = self.circuits.get(&old).map_or(peer, |c| c.src);
                self.event(RelayEvent::LimitHit { kind: LimitKind::UnconfirmedCircuits, peer: src });
                let msg = "closed to make room for another circuit to the target: its end-to-end handshake had not completed";
                self.end_circuit(old, ErrorCode::UnconfirmedCircuitLimit, msg, now);
            }
            Ok(None) => {}
        }
        if self.peers.get(&target).map_or(0, |s| s.circuits) >= max {
            self.unconfirmed.remove(id);
            self.circuit_limit_peer(conn, target, "the target's", now);
            return;
        }
        self.next_circuit += 1;
        self.circuits.insert(
            id,
            Circuit {
                src: peer,
                dst: target,
                a: conn,
                b: None,
                phase: Phase::Pending { deadline: now + self.limits.pending_timeout },
                bytes_ab: 0,
                bytes_ba: 0,
                rate: 0,
                confirm_by: None,
            },
        );
        for p in [peer, target] {
            self.peers.entry(p).or_default().circuits += 1;
        }
        self.set_role(conn, Role::Dialing(id));
        self.totals.circuits_requested += 1;
        self.send(target_conn, RelayMessage::Incoming { circuit: id, from: peer });
        self.event(RelayEvent::CircuitRequested { circuit: id, src: peer, dst: target });
    }

    fn circuit_limit_peer(&mut self, conn: ConnId, p: PeerId, who: &str, now: Instant) {
        let max = self.limits.max_circuits_per_peer;
        self.hits.circuits_per_peer += 1;
        self.event(RelayEvent::LimitHit { kind: LimitKind::CircuitsPerPeer, peer: p });
        let msg = format!("{who} circuit limit ({max}) reached");
        self.close(conn_close(conn, ErrorCode::CircuitLimitPeer, &msg), now);
    }

    fn accept(&mut self, conn: ConnId, peer: PeerId, id: CircuitId, now: Instant) {
        let Some(c) = self.circuits.get(&id) else {
            if id.0 > 0 && id.0 < self.next_circuit {
                self.close(conn_close(conn, ErrorCode::CircuitGone, "circuit no longer exists"), now);
            } else {
                self.violation(conn, peer, format!("accept for unknown circuit {id}"), now);
            }
            return;
        };
        if c.dst != peer {
            self.violation(conn, peer, format!("circuit {id} is not addressed to you"), now);
            return;
        }
        if matches!(c.phase, Phase::Open { .. }) {
            self.violation(conn, peer, format!("circuit {id} was already accepted"), now);
            return;
        }
        self.open_circuits += 1;
        let rate = self.limits.fair_share(self.open_circuits);
        let limits = CircuitLimits {
            rate,
            max_duration: self.limits.max_circuit_duration,
            max_bytes: self.limits.max_circuit_bytes,
        };
        let a = c.a;
        let src = c.src;
        if let Some(c) = self.circuits.get_mut(&id) {
            c.b = Some(conn);
            c.phase = Phase::Open { opened: now, deadline: now + limits.max_duration };
            c.rate = rate;
            if self.unconfirmed.contains(id) {
                c.confirm_by = Some(now + self.limits.circuit_handshake_timeout);
            }
        }
        self.unconfirmed.opened(id);
        self.set_role(conn, Role::Spliced(id));
        self.set_role(a, Role::Spliced(id));
        for p in [src, peer] {
            if let Some(s) = self.peers.get_mut(&p) {
                s.circuits_opened += 1;
            }
        }
        self.totals.circuits_opened += 1;
        let ready = |peer| RelayMessage::CircuitReady {
            circuit: id,
            peer,
            max_duration_secs: limits.max_duration.as_secs(),
            max_bytes: limits.max_bytes,
        };
        self.send(a, ready(peer));
        self.send(conn, ready(src));
        self.out.push_back(Output::Splice { circuit: id, a, b: conn, limits });
        self.event(RelayEvent::CircuitOpened { circuit: id, src, dst: peer });
        self.rebalance();
    }

    // ----- control messages -----

    fn reserve(&mut self, conn: ConnId, peer: PeerId, ttl_secs: u64, now: Instant) {
        if ttl_secs == 0 {
            if self.reservations.remove(&peer).is_some() {
                self.event(RelayEvent::ReservationEnded { peer, expired: false });
            }
            self.send(conn, self.reserved(conn, 0));
            return;
        }
        let renewed = self.is_reserved(&peer, now);
        if !renewed {
            if self.reservations.len() >= self.limits.max_reservations {
                // Expired entries wait for the next timeout; do not count them.
                self.reservations.retain(|_, r| r.expires > now);
            }
            if self.reservations.len() >= self.limits.max_reservations {
                self.hits.reservations += 1;
                self.event(RelayEvent::LimitHit { kind: LimitKind::Reservations, peer });
                let msg = format!("relay reservation limit ({}) reached", self.limits.max_reservations);
                self.send(conn, RelayMessage::error(ErrorCode::ReservationLimit, msg));
                return;
            }
        }
        let granted = ttl_secs.min(self.limits.reservation_ttl_max.as_secs());
        let ttl = Duration::from_secs(granted);
        self.reservations.insert(peer, Reservation { conn, expires: now + ttl });
        self.totals.reservations_granted += 1;
        self.send(conn, self.reserved(conn, granted));
        self.event(RelayEvent::ReservationAccepted { peer, renewed, ttl });
    }

    fn signal(&mut self, conn: ConnId, peer: PeerId, to: PeerId, payload: Vec<u8>, now: Instant) {
        if payload.len() > MAX_SIGNAL_LEN {
            let detail = format!("signal payload of {} bytes exceeds {MAX_SIGNAL_LEN}", payload.len());
            self.violation(conn, peer, detail, now);
            return;
        }
        if !self.is_reserved(&peer, now) {
            let msg = "signaling needs a reservation: send reserve first";
            self.send(conn, RelayMessage::error(ErrorCode::NotReserved, msg));
            return;
        }
        let Some(target) = self.reservations.get(&to).filter(|r| r.expires > now).map(|r| r.conn) else {
            self.send(
                conn,
                RelayMessage::error(ErrorCode::TargetNotReserved, format!("{to} is not reserved")),
            );
            return;
        };
        self.totals.signals_forwarded += 1;
        self.send(target, RelayMessage::Signaled { from: peer, payload });
    }

    fn refuse(&mut self, conn: ConnId, peer: PeerId, id: CircuitId, reason: String, now: Instant) {
        let Some(c) = self.circuits.get(&id) else {
            if id.0 == 0 || id.0 >= self.next_circuit {
                self.violation(conn, peer, format!("refuse for unknown circuit {id}"), now);
            }
            return; // already gone: a harmless race with a timeout or the dialer leaving
        };
        if c.dst != peer {
            self.violation(conn, peer, format!("circuit {id} is not addressed to you"), now);
            return;
        }
        if matches!(c.phase, Phase::Open { .. }) {
            self.violation(conn, peer, format!("circuit {id} was already accepted"), now);
            return;
        }
        let reason = truncate(reason, MAX_REASON_LEN);
        let a = c.a;
        self.send(a, RelayMessage::CircuitRefused { reason: reason.clone() });
        self.totals.circuits_refused += 1;
        self.end_circuit(id, ErrorCode::TargetRefused, &reason, now);
    }

    // ----- closing and bookkeeping -----

    fn violation(&mut self, conn: ConnId, peer: PeerId, detail: String, now: Instant) {
        self.totals.protocol_violations += 1;
        self.event(RelayEvent::ProtocolViolation { conn, peer, detail: detail.clone() });
        self.close(conn_close(conn, ErrorCode::ProtocolViolation, &detail), now);
    }

    /// Closes a connection the relay decided to close.
    fn close(&mut self, (conn, reason): (ConnId, CloseReason), now: Instant) {
        self.forget_conn(conn, Some(reason), now);
    }

    /// Forgets `conn` and everything that depends on it; `reason` is `Some` when the relay
    /// closes it (then the close is emitted), `None` when the socket already ended.
    fn forget_conn(&mut self, conn: ConnId, reason: Option<CloseReason>, now: Instant) {
        self.addrs.remove(&conn);
        let Some(entry) = self.conns.remove(&conn) else { return };
        if let Some(reason) = reason {
            self.emit_close(conn, reason);
        }
        match entry.role {
            Role::Closing => {}
            Role::Control => self.control_gone(conn, entry.peer, now),
            Role::Dialing(id) => self.end_circuit(id, ErrorCode::Normal, "the dialer left", now),
            Role::Spliced(id) => self.end_circuit(id, ErrorCode::Normal, "the other end left", now),
        }
        self.peer_conn_gone(entry.peer, now);
    }

    fn control_gone(&mut self, conn: ConnId, peer: PeerId, now: Instant) {
        if self.controls.get(&peer) == Some(&conn) {
            self.controls.remove(&peer);
        }
        if self.reservations.get(&peer).is_some_and(|r| r.conn == conn) {
            self.reservations.remove(&peer);
            self.event(RelayEvent::ReservationEnded { peer, expired: false });
        }
        let pending: Vec<(CircuitId, ConnId)> = self
            .circuits
            .iter()
            .filter(|(_, c)| c.dst == peer && matches!(c.phase, Phase::Pending { .. }))
            .map(|(id, c)| (*id, c.a))
            .collect();
        for (id, a) in pending {
            let reason = "the target's control connection closed";
            self.send(a, RelayMessage::CircuitRefused { reason: reason.into() });
            self.end_circuit(id, ErrorCode::TargetRefused, reason, now);
        }
    }

    /// Removes circuit `id` and closes whichever of its connections are still known.
    fn end_circuit(&mut self, id: CircuitId, code: ErrorCode, message: &str, now: Instant) {
        let Some(c) = self.circuits.remove(&id) else { return };
        self.unconfirmed.remove(id);
        for p in [c.src, c.dst] {
            if let Some(s) = self.peers.get_mut(&p) {
                s.circuits = s.circuits.saturating_sub(1);
            }
        }
        let was_open = matches!(c.phase, Phase::Open { .. });
        let usage = circuit_usage(id, &c, now);
        for conn in [Some(c.a), c.b].into_iter().flatten() {
            self.addrs.remove(&conn);
            if let Some(entry) = self.conns.remove(&conn) {
                self.emit_close(conn, CloseReason { code, message: message.to_owned() });
                self.peer_conn_gone(entry.peer, now);
            }
        }
        // A peer whose stats were kept only for this circuit's count can go now.
        for p in [c.src, c.dst] {
            self.peer_conn_gone_check(p, now);
        }
        if was_open {
            self.open_circuits = self.open_circuits.saturating_sub(1);
            self.totals.circuits_closed += 1;
        }
        self.event(RelayEvent::CircuitClosed { usage, code });
        if was_open {
            self.rebalance();
        }
    }

    fn peer_conn_gone(&mut self, peer: PeerId, now: Instant) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.connections = s.connections.saturating_sub(1);
        }
        self.peer_conn_gone_check(peer, now);
    }

    fn peer_conn_gone_check(&mut self, peer: PeerId, now: Instant) {
        let gone = self.peers.get(&peer).is_some_and(|s| s.connections == 0 && s.circuits == 0);
        if gone {
            if let Some(s) = self.peers.get(&peer) {
                let usage = self.peer_usage(peer, s, now);
                self.peers.remove(&peer);
                self.event(RelayEvent::PeerGone { usage });
            }
        }
    }

    /// Gives every open circuit the current fair share, announcing changes.
    fn rebalance(&mut self) {
        let rate = self.limits.fair_share(self.open_circuits);
        for (id, c) in self.circuits.iter_mut() {
            if matches!(c.phase, Phase::Open { .. }) && c.rate != rate {
                c.rate = rate;
                self.out.push_back(Output::RateChanged { circuit: *id, rate });
            }
        }
    }

    fn emit_close(&mut self, conn: ConnId, reason: CloseReason) {
        // `refuse` already told the dialer with `circuit_refused`; normal closes need no
        // explanation; everything else gets a typed error message before the close.
        if !matches!(reason.code, ErrorCode::Normal | ErrorCode::TargetRefused) {
            self.send(conn, RelayMessage::error(reason.code, reason.message.clone()));
        }
        self.out.push_back(Output::Close { conn, reason });
    }

    fn set_role(&mut self, conn: ConnId, role: Role) {
        if let Some(e) = self.conns.get_mut(&conn) {
            e.role = role;
        }
    }

    fn send(&mut self, conn: ConnId, msg: RelayMessage) {
        self.out.push_back(Output::Send { conn, msg });
    }

    fn event(&mut self, e: RelayEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn peer_usage(&self, peer: PeerId, s: &PeerStats, now: Instant) -> PeerUsage {
        PeerUsage {
            peer,
            connections: s.connections,
            connected_ms: s.since.map_or(0, |t| millis(now.saturating_duration_since(t))),
            reserved: self.is_reserved(&peer, now),
            circuits: s.circuits,
            circuits_opened: s.circuits_opened,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
        }
    }
}

fn conn_close(conn: ConnId, code: ErrorCode, message: &str) -> (ConnId, CloseReason) {
    (conn, CloseReason { code, message: message.to_owned() })
}

fn circuit_usage(id: CircuitId, c: &Circuit, now: Instant) -> CircuitUsage {
    let (state, duration_ms) = match c.phase {
        Phase::Pending { .. } => ("pending", 0),
        Phase::Open { opened, .. } => ("open", millis(now.saturating_duration_since(opened))),
    };
    CircuitUsage {
        circuit: id.0,
        src: c.src,
        dst: c.dst,
        state,
        bytes_a_to_b: c.bytes_ab,
        bytes_b_to_a: c.bytes_ba,
        duration_ms,
        rate: c.rate,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
