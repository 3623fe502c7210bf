//! The relay server machine with a synthetic clock: reservations, circuits, limits,
//! signaling, cleanup, protocol violations, metrics.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::{peer, reserved};
use crate::{
    identity::PeerId,
    relay::{
        limits::RelayLimits,
        server::{CircuitLimits, ConnId, Direction, LimitKind, Output, RelayEvent, RelayState},
        CircuitId, ErrorCode, ForwardError, Purpose, RelayMessage,
    },
};

struct H {
    s: RelayState,
    now: Instant,
    next: u64,
}

impl H {
    fn new(limits: RelayLimits) -> Self {
        Self { s: RelayState::new(limits), now: Instant::now(), next: 1 }
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.s.poll_output()).collect()
    }

    /// A new authenticated connection of peer `n` with `purpose`.
    fn conn(&mut self, n: u8, purpose: Purpose) -> (ConnId, Vec<Output>) {
        let c = ConnId(self.next);
        self.next += 1;
        self.s.handle_authenticated(c, peer(n), purpose, self.now);
        (c, self.drain())
    }

    /// [`conn`](Self::conn) from `ip` (reported before authentication, as the shell does).
    fn conn_from(&mut self, n: u8, purpose: Purpose, ip: [u8; 4]) -> (ConnId, Vec<Output>) {
        let c = ConnId(self.next);
        self.next += 1;
        let remote = SocketAddr::from((ip, 40_000));
        self.s.handle_addresses(c, remote, "203.0.113.1:7000".parse().unwrap());
        self.s.handle_authenticated(c, peer(n), purpose, self.now);
        (c, self.drain())
    }

    fn msg(&mut self, c: ConnId, m: RelayMessage) -> Vec<Output> {
        self.s.handle_message(c, m, self.now);
        self.drain()
    }

    fn closed(&mut self, c: ConnId) -> Vec<Output> {
        self.s.handle_closed(c, self.now);
        self.drain()
    }

    fn advance(&mut self, d: Duration) -> Vec<Output> {
        self.now += d;
        self.s.handle_timeout(self.now);
        self.drain()
    }

    /// A control connection of peer `n` holding a reservation.
    fn reserved(&mut self, n: u8) -> ConnId {
        let (c, out) = self.conn(n, Purpose::Control);
        assert!(out.iter().all(|o| matches!(o, Output::Event(_))), "{out:?}");
        let out = self.msg(c, RelayMessage::Reserve { ttl_secs: 600 });
        assert_eq!(sent(&out, c), vec![reserved(600)]);
        c
    }

    /// Peer `a` dials reserved peer `b` (control `bc`); returns the dial conn and circuit.
    fn dial(&mut self, a: u8, b: u8, bc: ConnId) -> (ConnId, CircuitId) {
        let (d, out) = self.conn(a, Purpose::Dial { target: peer(b) });
        let incoming = sent(&out, bc);
        let [RelayMessage::Incoming { circuit, from }] = incoming[..] else { panic!("{out:?}") };
        assert_eq!(from, peer(a));
        assert_eq!(closed_with(&out, d), None);
        (d, circuit)
    }

    /// Opens a circuit from `a` to reserved `b` whose ends then complete their handshake;
    /// returns (dial conn, accept conn, circuit).
    fn open(&mut self, a: u8, b: u8, bc: ConnId) -> (ConnId, ConnId, CircuitId) {
        let (d, acc, circuit) = self.open_unconfirmed(a, b, bc);
        self.s.record_handshake(circuit);
        (d, acc, circuit)
    }

    /// Opens a circuit from `a` to reserved `b` (no handshake seen yet).
    fn open_unconfirmed(&mut self, a: u8, b: u8, bc: ConnId) -> (ConnId, ConnId, CircuitId) {
        let (d, circuit) = self.dial(a, b, bc);
        let (acc, out) = self.conn(b, Purpose::Accept { circuit });
        assert!(out.iter().any(|o| matches!(o, Output::Splice { circuit: c, a, b, .. } if *c == circuit && *a == d && *b == acc)), "{out:?}");
        (d, acc, circuit)
    }
}

fn sent(out: &[Output], conn: ConnId) -> Vec<RelayMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, msg } if *c == conn => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn closed_with(out: &[Output], conn: ConnId) -> Option<ErrorCode> {
    out.iter().find_map(|o| match o {
        Output::Close { conn: c, reason } if *c == conn => Some(reason.code),
        _ => None,
    })
}

fn closes(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Close { .. })).count()
}

fn error_code(out: &[Output], conn: ConnId) -> Option<ErrorCode> {
    sent(out, conn).into_iter().find_map(|m| match m {
        RelayMessage::Error { code, .. } => Some(code),
        _ => None,
    })
}

fn limit_hits(out: &[Output]) -> Vec<(LimitKind, PeerId)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(RelayEvent::LimitHit { kind, peer }) => Some((*kind, *peer)),
            _ => None,
        })
        .collect()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn reserve_renew_cap_release_and_expire() {
    let mut h = H::new(RelayLimits { reservation_ttl_max: secs(3600), ..Default::default() });
    let (c, _) = h.conn(1, Purpose::Control);
    assert_eq!(h.s.poll_timeout(), None);
    let out = h.msg(c, RelayMessage::Reserve { ttl_secs: 10_000 });
    assert_eq!(sent(&out, c), vec![reserved(3600)]);
    assert!(h.s.is_reserved(&peer(1), h.now));
    assert_eq!(h.s.poll_timeout(), Some(h.now + secs(3600)));
    // Renewal half-way.
    h.advance(secs(1800));
    let out = h.msg(c, RelayMessage::Reserve { ttl_secs: 60 });
    assert_eq!(sent(&out, c), vec![reserved(60)]);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Event(RelayEvent::ReservationAccepted { renewed: true, .. }))));
    assert_eq!(h.s.poll_timeout(), Some(h.now + secs(60)));
    // Expiry by the timer, at exactly the TTL.
    let out = h.advance(secs(59));
    assert!(out.is_empty() && h.s.is_reserved(&peer(1), h.now));
    let out = h.advance(secs(1));
    assert!(
        matches!(out[..], [Output::Event(RelayEvent::ReservationEnded { expired: true, .. })]),
        "{out:?}"
    );
    assert!(!h.s.is_reserved(&peer(1), h.now));
    assert_eq!(h.s.poll_timeout(), None);
    // Reserve again, then release with ttl 0. The connection stays open throughout.
    h.msg(c, RelayMessage::Reserve { ttl_secs: 60 });
    let out = h.msg(c, RelayMessage::Reserve { ttl_secs: 0 });
    assert_eq!(sent(&out, c), vec![reserved(0)]);
    assert!(!h.s.is_reserved(&peer(1), h.now));
    assert_eq!(closes(&out), 0);
    assert_eq!(h.s.metrics(h.now).totals.reservations_granted, 3);
}

#[test]
fn dial_to_unreserved_peer_is_a_typed_error() {
    let mut h = H::new(RelayLimits::default());
    let (_bc, _) = h.conn(2, Purpose::Control); // connected but not reserved
    let (d, out) = h.conn(1, Purpose::Dial { target: peer(2) });
    assert_eq!(error_code(&out, d), Some(ErrorCode::TargetNotReserved));
    assert_eq!(closed_with(&out, d), Some(ErrorCode::TargetNotReserved));
    let (d, out) = h.conn(1, Purpose::Dial { target: peer(9) });
    assert_eq!(closed_with(&out, d), Some(ErrorCode::TargetNotReserved));
    assert_eq!(h.s.metrics(h.now).circuits_pending, 0);
}

#[test]
fn dial_incoming_accept_splice() {
    let limits = RelayLimits::default();
    let mut h = H::new(limits.clone());
    let bc = h.reserved(2);
    let (d, circuit) = h.dial(1, 2, bc);
    assert_eq!(circuit, CircuitId(1));
    assert_eq!(h.s.metrics(h.now).circuits_pending, 1);
    assert_eq!(h.s.poll_timeout(), Some(h.now + limits.pending_timeout));
    h.now += secs(1);
    let (acc, out) = h.conn(2, Purpose::Accept { circuit });
    let ready = |p| RelayMessage::CircuitReady {
        circuit,
        peer: p,
        max_duration_secs: 3600,
        max_bytes: limits.max_circuit_bytes,
    };
    assert_eq!(sent(&out, d), vec![ready(peer(2))]);
    assert_eq!(sent(&out, acc), vec![ready(peer(1))]);
    let splice = out.iter().find(|o| matches!(o, Output::Splice { .. })).unwrap();
    assert_eq!(
        splice,
        &Output::Splice {
            circuit,
            a: d,
            b: acc,
            limits: CircuitLimits {
                rate: limits.circuit_bandwidth,
                max_duration: limits.max_circuit_duration,
                max_bytes: limits.max_circuit_bytes
            }
        }
    );
    // The splice comes after both ready messages, so they precede the first opaque byte.
    let pos = |f: &dyn Fn(&Output) -> bool| out.iter().position(f).unwrap();
    assert!(pos(&|o| matches!(o, Output::Send { .. })) < pos(&|o| matches!(o, Output::Splice { .. })));
    assert_eq!(closes(&out), 0);

    h.s.record_forwarded(circuit, Direction::AToB, 100, h.now).unwrap();
    h.s.record_forwarded(circuit, Direction::BToA, 30, h.now).unwrap();
    h.now += secs(2);
    let m = h.s.metrics(h.now);
    assert_eq!((m.circuits_open, m.circuits_pending, m.totals.bytes_forwarded), (1, 0, 130));
    let c = &m.circuits[0];
    assert_eq!((c.bytes_a_to_b, c.bytes_b_to_a, c.duration_ms, c.state), (100, 30, 2000, "open"));
    let a = m.peers.iter().find(|p| p.peer == peer(1)).unwrap();
    assert_eq!((a.bytes_sent, a.bytes_received, a.circuits, a.circuits_opened), (100, 30, 1, 1));
    assert_eq!(a.connected_ms, 3000);
    // Messages on spliced connections are not control messages: ignored by the core.
    assert!(h.msg(d, RelayMessage::Reserve { ttl_secs: 1 }).is_empty());
}

#[test]
fn target_refuses() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(2);
    let (d, circuit) = h.dial(1, 2, bc);
    let out = h.msg(bc, RelayMessage::Refuse { circuit, reason: "x".repeat(1000) });
    let [RelayMessage::CircuitRefused { reason }] = &sent(&out, d)[..] else { panic!("{out:?}") };
    assert_eq!(reason.len(), 256);
    assert_eq!(closed_with(&out, d), Some(ErrorCode::TargetRefused));
    assert_eq!(closed_with(&out, bc), None);
    assert_eq!(h.s.metrics(h.now).totals.circuits_refused, 1);
    // A late accept for it: the circuit is gone (not a violation).
    let (acc, out) = h.conn(2, Purpose::Accept { circuit });
    assert_eq!(closed_with(&out, acc), Some(ErrorCode::CircuitGone));
    // A late refuse is ignored.
    assert!(h.msg(bc, RelayMessage::Refuse { circuit, reason: String::new() }).is_empty());
}

#[test]
fn pending_circuit_times_out() {
    let limits = RelayLimits { pending_timeout: secs(10), ..Default::default() };
    let mut h = H::new(limits);
    let bc = h.reserved(2);
    let (d, circuit) = h.dial(1, 2, bc);
    assert!(h.advance(Duration::from_millis(9_999)).is_empty());
    let out = h.advance(Duration::from_millis(1));
    assert_eq!(error_code(&out, d), Some(ErrorCode::PendingTimeout));
    assert_eq!(closed_with(&out, d), Some(ErrorCode::PendingTimeout));
    assert_eq!(limit_hits(&out), vec![(LimitKind::PendingTimeout, peer(2))]);
    assert_eq!(h.s.metrics(h.now).limit_hits.pending_timeout, 1);
    let (acc, out) = h.conn(2, Purpose::Accept { circuit });
    assert_eq!(closed_with(&out, acc), Some(ErrorCode::CircuitGone));
}

#[test]
fn reservation_limit_at_exactly_its_value() {
    let mut h = H::new(RelayLimits { max_reservations: 2, ..Default::default() });
    let c1 = h.reserved(1);
    h.reserved(2);
    let (c3, _) = h.conn(3, Purpose::Control);
    let out = h.msg(c3, RelayMessage::Reserve { ttl_secs: 60 });
    assert_eq!(error_code(&out, c3), Some(ErrorCode::ReservationLimit));
    assert_eq!(closes(&out), 0, "the connection stays for a later retry");
    assert_eq!(limit_hits(&out), vec![(LimitKind::Reservations, peer(3))]);
    assert_eq!(h.s.metrics(h.now).limit_hits.reservations, 1);
    // Renewals of existing reservations are unaffected.
    let out = h.msg(c1, RelayMessage::Reserve { ttl_secs: 60 });
    assert_eq!(sent(&out, c1), vec![reserved(60)]);
    // An expired reservation frees its slot even before the timer sweeps it.
    h.now += secs(61);
    let out = h.msg(c3, RelayMessage::Reserve { ttl_secs: 60 });
    assert_eq!(sent(&out, c3), vec![reserved(60)]);
}

#[test]
fn total_circuit_limit_at_exactly_its_value() {
    let mut h = H::new(RelayLimits { max_circuits: 2, ..Default::default() });
    let bc = h.reserved(2);
    let (_d1, c1) = h.dial(1, 2, bc);
    let (_d2, _) = h.dial(3, 2, bc);
    let (d3, out) = h.conn(4, Purpose::Dial { target: peer(2) });
    assert_eq!(error_code(&out, d3), Some(ErrorCode::CircuitLimitTotal));
    assert_eq!(closed_with(&out, d3), Some(ErrorCode::CircuitLimitTotal));
    assert_eq!(closes(&out), 1, "nobody else is closed");
    assert_eq!(limit_hits(&out), vec![(LimitKind::CircuitsTotal, peer(4))]);
    // The pending ones still open.
    let (_acc, out) = h.conn(2, Purpose::Accept { circuit: c1 });
    assert!(out.iter().any(|o| matches!(o, Output::Splice { .. })));
    assert_eq!(h.s.metrics(h.now).limit_hits.circuits_total, 1);
}

#[test]
fn per_peer_circuit_limit_at_exactly_its_value_both_ends() {
    let mut h = H::new(RelayLimits { max_circuits_per_peer: 2, ..Default::default() });
    let bc = h.reserved(2);
    let cc = h.reserved(3);
    h.open(1, 2, bc);
    h.dial(1, 2, bc);
    // Peer 1 is at its limit, as dialer.
    let (d, out) = h.conn(1, Purpose::Dial { target: peer(3) });
    assert_eq!(closed_with(&out, d), Some(ErrorCode::CircuitLimitPeer));
    assert_eq!(limit_hits(&out), vec![(LimitKind::CircuitsPerPeer, peer(1))]);
    // Peer 2 is at its limit, as target.
    let (d, out) = h.conn(4, Purpose::Dial { target: peer(2) });
    assert_eq!(closed_with(&out, d), Some(ErrorCode::CircuitLimitPeer));
    assert_eq!(limit_hits(&out), vec![(LimitKind::CircuitsPerPeer, peer(2))]);
    // Others are unaffected.
    h.open(4, 3, cc);
    assert_eq!(h.s.metrics(h.now).limit_hits.circuits_per_peer, 2);
}

#[test]
fn data_cap_trips_at_the_exact_byte_and_spares_other_circuits() {
    let mut h = H::new(RelayLimits { max_circuit_bytes: 1000, ..Default::default() });
    let bc = h.reserved(2);
    let (d, acc, c) = h.open(1, 2, bc);
    let (d2, acc2, c2) = h.open(3, 2, bc);
    h.s.record_forwarded(c, Direction::AToB, 600, h.now).unwrap();
    h.s.record_forwarded(c, Direction::BToA, 400, h.now).unwrap();
    assert!(h.drain().is_empty());
    assert_eq!(
        h.s.record_forwarded(c, Direction::BToA, 1, h.now),
        Err(ForwardError::DataCap { limit: 1000, attempted: 1001 })
    );
    let out = h.drain();
    for conn in [d, acc] {
        assert_eq!(error_code(&out, conn), Some(ErrorCode::DataCap));
        assert_eq!(closed_with(&out, conn), Some(ErrorCode::DataCap));
    }
    assert_eq!(closed_with(&out, d2), None);
    assert_eq!(closed_with(&out, acc2), None);
    assert_eq!(limit_hits(&out), vec![(LimitKind::DataCap, peer(2))]);
    let m = h.s.metrics(h.now);
    assert_eq!((m.limit_hits.data_cap, m.totals.bytes_forwarded, m.circuits_open), (1, 1000, 1));
    assert_eq!(h.s.record_forwarded(c, Direction::AToB, 1, h.now), Err(ForwardError::NotOpen));
    h.s.record_forwarded(c2, Direction::AToB, 1000, h.now).unwrap();
    // The closed connections' own close notifications are no-ops now.
    assert!(h.closed(d).iter().all(|o| !matches!(o, Output::Close { .. })));
}

#[test]
fn duration_limit_closes_at_the_exact_time() {
    let mut h = H::new(RelayLimits { max_circuit_duration: secs(60), ..Default::default() });
    let bc = h.reserved(2);
    let (d, acc, c) = h.open(1, 2, bc);
    assert_eq!(h.s.poll_timeout(), Some(h.now + secs(60)));
    h.now += Duration::from_millis(59_999);
    h.s.record_forwarded(c, Direction::AToB, 1, h.now).unwrap();
    // A forwarder racing the timer gets the typed error.
    let at = h.now + Duration::from_millis(1);
    assert_eq!(
        h.s.record_forwarded(c, Direction::AToB, 1, at),
        Err(ForwardError::DurationLimit { limit: secs(60) })
    );
    let out = h.drain();
    assert_eq!(closed_with(&out, d), Some(ErrorCode::DurationLimit));
    assert_eq!(closed_with(&out, acc), Some(ErrorCode::DurationLimit));

    // And the timer alone does it too.
    let (d, _, _) = h.open(1, 2, bc);
    assert!(h.advance(Duration::from_millis(59_999)).iter().all(|o| !matches!(o, Output::Close { .. })));
    let out = h.advance(Duration::from_millis(1));
    assert_eq!(closed_with(&out, d), Some(ErrorCode::DurationLimit));
    assert_eq!(h.s.metrics(h.now).limit_hits.duration, 2);
}

#[test]
fn fair_share_is_recomputed_as_circuits_come_and_go() {
    let mut h = H::new(RelayLimits { circuit_bandwidth: 800, total_bandwidth: 1000, ..Default::default() });
    let bc = h.reserved(2);
    let (_, _, c1) = h.open(1, 2, bc);
    let (d2, _) = h.dial(3, 2, bc);
    let c2 = CircuitId(2);
    let (_, out) = h.conn(2, Purpose::Accept { circuit: c2 });
    let rate_of = |out: &[Output]| {
        out.iter()
            .find_map(|o| match o {
                Output::Splice { limits, .. } => Some(limits.rate),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(rate_of(&out), 500);
    assert!(out.contains(&Output::RateChanged { circuit: c1, rate: 500 }));
    assert_eq!(h.s.metrics(h.now).circuit_rate, 500);
    let out = h.closed(d2);
    assert!(out.contains(&Output::RateChanged { circuit: c1, rate: 800 }));
    assert_eq!(h.s.metrics(h.now).circuits[0].rate, 800);
    // Throttling is counted, not an error.
    h.s.record_throttled(c1);
    h.s.record_throttled(CircuitId(99));
    assert_eq!(h.s.metrics(h.now).limit_hits.bandwidth, 1);
}

#[test]
fn signaling_only_between_reserved_peers() {
    let mut h = H::new(RelayLimits::default());
    let ac = h.reserved(1);
    let bc = h.reserved(2);
    let out = h.msg(ac, RelayMessage::Signal { to: peer(2), payload: b"offer".to_vec() });
    assert_eq!(sent(&out, bc), vec![RelayMessage::Signaled { from: peer(1), payload: b"offer".to_vec() }]);
    // Target not reserved.
    let out = h.msg(ac, RelayMessage::Signal { to: peer(3), payload: vec![] });
    assert_eq!(error_code(&out, ac), Some(ErrorCode::TargetNotReserved));
    // Sender not reserved.
    let (cc, _) = h.conn(3, Purpose::Control);
    let out = h.msg(cc, RelayMessage::Signal { to: peer(2), payload: vec![] });
    assert_eq!(error_code(&out, cc), Some(ErrorCode::NotReserved));
    assert!(sent(&out, bc).is_empty());
    assert_eq!(closes(&out), 0);
    // Oversized payload: violation, only for the sender.
    let out = h.msg(ac, RelayMessage::Signal { to: peer(2), payload: vec![0; 16 * 1024 + 1] });
    assert_eq!(closed_with(&out, ac), Some(ErrorCode::ProtocolViolation));
    assert_eq!(closes(&out), 1);
    assert_eq!(h.s.metrics(h.now).totals.signals_forwarded, 1);
}

#[test]
fn closing_a_control_connection_cleans_up() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(2);
    let (od, oa, open_c) = h.open(1, 2, bc);
    let (pd, _) = h.dial(3, 2, bc);
    let out = h.closed(bc);
    assert!(!h.s.is_reserved(&peer(2), h.now));
    assert_eq!(
        sent(&out, pd),
        vec![RelayMessage::CircuitRefused { reason: "the target's control connection closed".into() }]
    );
    assert_eq!(closed_with(&out, pd), Some(ErrorCode::TargetRefused));
    // The open circuit survives on its own connections.
    assert_eq!(closed_with(&out, od), None);
    assert_eq!(closed_with(&out, oa), None);
    h.s.record_forwarded(open_c, Direction::AToB, 10, h.now).unwrap();
    // One end leaving closes the other normally.
    let out = h.closed(oa);
    assert_eq!(closed_with(&out, od), Some(ErrorCode::Normal));
    assert!(sent(&out, od).is_empty(), "a normal close sends no error");
    let m = h.s.metrics(h.now);
    assert_eq!((m.circuits_open, m.circuits_pending, m.connections, m.reservations), (0, 0, 0, 0));
    assert!(m.peers.is_empty(), "usage records of departed peers are dropped");
    assert_eq!(m.totals.circuits_closed, 1);
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn dialer_leaving_cancels_its_pending_circuit() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(2);
    let (d, circuit) = h.dial(1, 2, bc);
    let out = h.closed(d);
    assert_eq!(closes(&out), 0);
    assert_eq!(h.s.metrics(h.now).circuits_pending, 0);
    let (acc, out) = h.conn(2, Purpose::Accept { circuit });
    assert_eq!(closed_with(&out, acc), Some(ErrorCode::CircuitGone));
}

#[test]
fn newer_control_connection_replaces_the_old() {
    let mut h = H::new(RelayLimits::default());
    let old = h.reserved(2);
    let (new, out) = h.conn(2, Purpose::Control);
    assert_eq!(closed_with(&out, old), Some(ErrorCode::Replaced));
    assert!(!h.s.is_reserved(&peer(2), h.now));
    let out = h.msg(new, RelayMessage::Reserve { ttl_secs: 60 });
    assert_eq!(sent(&out, new), vec![reserved(60)]);
    // Incoming circuits now go to the new connection.
    h.dial(1, 2, new);
}

#[test]
fn garbage_and_out_of_order_messages_close_only_that_connection() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(2);
    let (_, bystander_circuit) = h.dial(5, 2, bc);
    let violation = |h: &mut H, out: &[Output], c: ConnId| {
        assert_eq!(error_code(out, c), Some(ErrorCode::ProtocolViolation), "{out:?}");
        assert_eq!(closed_with(out, c), Some(ErrorCode::ProtocolViolation));
        assert_eq!(closes(out), 1, "{out:?}");
        assert!(h.s.is_reserved(&peer(2), h.now));
    };
    // Accept for a circuit that never existed.
    let (c, out) = h.conn(1, Purpose::Accept { circuit: CircuitId(77) });
    violation(&mut h, &out, c);
    let (c, out) = h.conn(1, Purpose::Accept { circuit: CircuitId(0) });
    violation(&mut h, &out, c);
    // Accept for a circuit addressed to someone else.
    let (c, out) = h.conn(3, Purpose::Accept { circuit: bystander_circuit });
    violation(&mut h, &out, c);
    // Reserve on a dial connection.
    let (d, _) = h.dial(1, 2, bc);
    let out = h.msg(d, RelayMessage::Reserve { ttl_secs: 60 });
    assert_eq!(closed_with(&out, d), Some(ErrorCode::ProtocolViolation));
    // A second auth, a challenge, a purpose on a control connection.
    for m in [
        RelayMessage::Auth { peer_id: peer(4), signature: [0; 64], token: None },
        RelayMessage::Challenge { nonce: [0; 32], relay: String::new() },
        RelayMessage::Control,
        RelayMessage::CircuitReady {
            circuit: CircuitId(1),
            peer: peer(1),
            max_duration_secs: 0,
            max_bytes: 0,
        },
    ] {
        let (c, _) = h.conn(4, Purpose::Control);
        let out = h.msg(c, m);
        violation(&mut h, &out, c);
    }
    // Refuse of a circuit that is not yours / never existed.
    let (c, _) = h.conn(4, Purpose::Control);
    let out = h.msg(c, RelayMessage::Refuse { circuit: bystander_circuit, reason: String::new() });
    violation(&mut h, &out, c);
    let (c, _) = h.conn(4, Purpose::Control);
    let out = h.msg(c, RelayMessage::Refuse { circuit: CircuitId(1000), reason: String::new() });
    violation(&mut h, &out, c);
    // Purpose declared twice for one connection id.
    let (c, _) = h.conn(4, Purpose::Control);
    h.s.handle_authenticated(c, peer(4), Purpose::Control, h.now);
    let out = h.drain();
    violation(&mut h, &out, c);
    // Dialing yourself.
    let (c, out) = h.conn(2, Purpose::Dial { target: peer(2) });
    assert_eq!(closed_with(&out, c), Some(ErrorCode::ProtocolViolation));
    // Unknown messages are ignored, inputs for unknown connections too.
    assert!(h.msg(bc, RelayMessage::Unknown).is_empty());
    assert!(h.msg(ConnId(999), RelayMessage::Control).is_empty());
    assert!(h.closed(ConnId(999)).is_empty());
    // The bystander circuit still opens.
    let (_, out) = h.conn(2, Purpose::Accept { circuit: bystander_circuit });
    assert!(out.iter().any(|o| matches!(o, Output::Splice { .. })));
    assert_eq!(h.s.metrics(h.now).totals.protocol_violations, 12);
}

#[test]
fn metrics_serialize() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(2);
    h.open(1, 2, bc);
    let m = h.s.metrics(h.now);
    // No JSON crate is a dependency of the core; any serde format proves the derive.
    let bytes = rmp_serde::to_vec_named(&m).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for key in ["limit_hits", "bytes_a_to_b", "circuits_per_peer", &peer(1).to_string()] {
        assert!(text.contains(key), "{key} missing");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Control(u8),
    Reserve(usize, u64),
    Dial(u8, u8),
    Accept(u8, u64),
    Refuse(usize, u64),
    Signal(usize, u8, usize),
    Msg(usize, u8),
    Close(usize),
    Forward(u64, bool, u64),
    Handshake(u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 1u8..6;
    prop_oneof![
        p.clone().prop_map(Op::Control),
        (any::<usize>(), 0u64..5000).prop_map(|(c, t)| Op::Reserve(c, t)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Op::Dial(a, b)),
        (p.clone(), 0u64..12).prop_map(|(a, c)| Op::Accept(a, c)),
        (any::<usize>(), 0u64..12).prop_map(|(c, id)| Op::Refuse(c, id)),
        (any::<usize>(), p, 0usize..20_000).prop_map(|(c, to, n)| Op::Signal(c, to, n)),
        (any::<usize>(), any::<u8>()).prop_map(|(c, m)| Op::Msg(c, m)),
        any::<usize>().prop_map(Op::Close),
        (0u64..12, any::<bool>(), 0u64..600).prop_map(|(c, d, n)| Op::Forward(c, d, n)),
        (0u64..12).prop_map(Op::Handshake),
        (0u64..20_000).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Random inputs never panic and the counts stay consistent and within the limits.
    #[test]
    fn random_inputs_keep_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let limits = RelayLimits {
            max_reservations: 3,
            max_circuits: 4,
            max_circuits_per_peer: 2,
            max_circuit_bytes: 2000,
            max_circuit_duration: secs(30),
            pending_timeout: secs(5),
            reservation_ttl_max: secs(60),
            ..Default::default()
        };
        let mut h = H::new(limits);
        let mut conns: Vec<ConnId> = Vec::new();
        let pick = |conns: &[ConnId], i: usize| conns.get(i % conns.len().max(1)).copied().unwrap_or(ConnId(0));
        for op in ops {
            match op {
                Op::Control(n) => conns.push(h.conn(n, Purpose::Control).0),
                Op::Reserve(c, t) => { h.msg(pick(&conns, c), RelayMessage::Reserve { ttl_secs: t }); }
                Op::Dial(a, b) => conns.push(h.conn(a, Purpose::Dial { target: peer(b) }).0),
                Op::Accept(a, c) => conns.push(h.conn(a, Purpose::Accept { circuit: CircuitId(c) }).0),
                Op::Refuse(c, id) => {
                    h.msg(pick(&conns, c), RelayMessage::Refuse { circuit: CircuitId(id), reason: String::new() });
                }
                Op::Signal(c, to, n) => {
                    h.msg(pick(&conns, c), RelayMessage::Signal { to: peer(to), payload: vec![0; n] });
                }
                Op::Msg(c, m) => {
                    let msg = match m % 4 {
                        0 => RelayMessage::Control,
                        1 => RelayMessage::Unknown,
                        2 => reserved(1),
                        _ => RelayMessage::Accept { circuit: CircuitId(1) },
                    };
                    h.msg(pick(&conns, c), msg);
                }
                Op::Close(c) => { h.closed(pick(&conns, c)); }
                Op::Forward(c, d, n) => {
                    let dir = if d { Direction::AToB } else { Direction::BToA };
                    let _ = h.s.record_forwarded(CircuitId(c), dir, n, h.now);
                    h.drain();
                }
                Op::Handshake(c) => {
                    h.s.record_handshake(CircuitId(c));
                    h.drain();
                }
                Op::Advance(ms) => {
                    h.advance(Duration::from_millis(ms));
                    // Everything due has been handled.
                    prop_assert!(h.s.poll_timeout().is_none_or(|t| t > h.now));
                }
            }
            let m = h.s.metrics(h.now);
            prop_assert!(m.circuits_open + m.circuits_pending <= 4);
            prop_assert!(m.reservations <= 3);
            prop_assert_eq!(m.circuits.len(), m.circuits_open + m.circuits_pending);
            // Pending circuits are always unconfirmed; no unconfirmed circuit is forgotten.
            prop_assert!(m.circuits_unconfirmed >= m.circuits_pending);
            prop_assert!(m.circuits_unconfirmed <= m.circuits.len());
            for p in &m.peers {
                prop_assert!(p.circuits <= 2);
                let involved = m.circuits.iter().filter(|c| c.src == p.peer || c.dst == p.peer).count();
                prop_assert_eq!(p.circuits, involved);
            }
            for c in &m.circuits {
                prop_assert!(c.bytes_a_to_b + c.bytes_b_to_a <= 2000);
                prop_assert!(c.duration_ms <= 30_000);
            }
        }
    }
}

// ----- unconfirmed circuits (throwaway keys) -----

const CROWD_IP: [u8; 4] = [198, 51, 100, 7];
const OTHER_IP: [u8; 4] = [198, 51, 100, 9];

#[test]
fn throwaway_keys_from_one_address_cannot_take_a_targets_capacity() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(200);
    let mut evictions = 0;
    // 70 throwaway keys dial and never get further: the address keeps 8 slots, each new dial
    // replacing its oldest.
    for k in 1..=70u8 {
        let (d, out) = h.conn_from(k, Purpose::Dial { target: peer(200) }, CROWD_IP);
        assert_eq!(closed_with(&out, d), None, "dial {k} refused: {out:?}");
        evictions += closes(&out);
    }
    assert_eq!(evictions, 70 - 8);
    let m = h.s.metrics(h.now);
    assert_eq!((m.circuits_pending, m.circuits_unconfirmed), (8, 8));
    assert_eq!(m.limit_hits.unconfirmed_evicted, 62);
    // A legitimate peer from another address dials, is accepted, and completes its
    // handshake: nothing of its own is refused or evicted.
    let (d, out) = h.conn_from(100, Purpose::Dial { target: peer(200) }, OTHER_IP);
    assert_eq!(closes(&out), 0, "{out:?}");
    let [RelayMessage::Incoming { circuit, .. }] = sent(&out, bc)[..] else { panic!("{out:?}") };
    let (_acc, out) = h.conn(200, Purpose::Accept { circuit });
    assert!(out.iter().any(|o| matches!(o, Output::Splice { .. })));
    h.s.record_handshake(circuit);
    assert_eq!(h.s.metrics(h.now).circuits_unconfirmed, 8);
    assert_eq!(closed_with(&h.drain(), d), None);
}

#[test]
fn accepted_circuits_that_never_handshake_are_refused_beyond_the_share_then_closed() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(200);
    // The target accepts every circuit (as a node does), the dialers never speak.
    let mut opened = Vec::new();
    for k in 1..=8u8 {
        let (d, out) = h.conn_from(k, Purpose::Dial { target: peer(200) }, CROWD_IP);
        let [RelayMessage::Incoming { circuit, .. }] = sent(&out, bc)[..] else { panic!("{out:?}") };
        let (acc, _) = h.conn(200, Purpose::Accept { circuit });
        opened.push((d, acc));
    }
    // Their address's half of the target's slots is taken by open circuits: refused.
    let (d, out) = h.conn_from(9, Purpose::Dial { target: peer(200) }, CROWD_IP);
    assert_eq!(closed_with(&out, d), Some(ErrorCode::UnconfirmedCircuitLimit));
    assert_eq!(limit_hits(&out), vec![(LimitKind::UnconfirmedCircuits, peer(9))]);
    // Another address is served at once.
    let (d2, out) = h.conn_from(100, Purpose::Dial { target: peer(200) }, OTHER_IP);
    assert_eq!(closed_with(&out, d2), None);
    // 5 s after opening, the silent circuits are closed (both ends); the pending dial of
    // the other address has its own 10 s bound.
    assert_eq!(h.s.poll_timeout(), Some(h.now + secs(5)));
    let out = h.advance(secs(5));
    for (d, acc) in opened {
        assert_eq!(closed_with(&out, d), Some(ErrorCode::CircuitHandshakeTimeout));
        assert_eq!(closed_with(&out, acc), Some(ErrorCode::CircuitHandshakeTimeout));
    }
    assert_eq!(closed_with(&out, d2), None);
    let m = h.s.metrics(h.now);
    assert_eq!(m.limit_hits.circuit_handshake_timeout, 8);
    assert_eq!(m.limit_hits.unconfirmed_refused, 1);
    assert_eq!(m.circuits_unconfirmed, 1);
}

#[test]
fn a_confirmed_circuit_is_never_closed_for_its_handshake() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(2);
    let (d, acc, c) = h.open_unconfirmed(1, 2, bc);
    h.now += Duration::from_millis(4_999);
    h.s.record_handshake(c);
    let out = h.advance(secs(3600 - 5));
    assert_eq!(closed_with(&out, d), None);
    assert_eq!(closed_with(&out, acc), None);
    assert_eq!(h.s.metrics(h.now).circuits_unconfirmed, 0);
}

#[test]
fn unconfirmed_circuits_are_capped_per_key_and_per_address() {
    let mut h = H::new(RelayLimits::default());
    let targets: Vec<ConnId> = (100..=110u8).map(|t| h.reserved(t)).collect();
    let _ = targets;
    // One key dials nine targets: the ninth is refused.
    for t in 0..8u8 {
        let (d, out) = h.conn_from(1, Purpose::Dial { target: peer(100 + t) }, CROWD_IP);
        assert_eq!(closed_with(&out, d), None);
    }
    let (d, out) = h.conn_from(1, Purpose::Dial { target: peer(108) }, CROWD_IP);
    assert_eq!(closed_with(&out, d), Some(ErrorCode::UnconfirmedCircuitLimit));
    let msg = sent(&out, d).into_iter().find_map(|m| match m {
        RelayMessage::Error { message, .. } => Some(message),
        _ => None,
    });
    assert!(msg.is_some_and(|m| m.contains("you already have 8")));
    // Other keys of the same address: 8 more, then the address is full.
    for k in 2..=9u8 {
        let (d, out) = h.conn_from(k, Purpose::Dial { target: peer(100 + k) }, CROWD_IP);
        assert_eq!(closed_with(&out, d), None, "key {k}");
    }
    let (d, out) = h.conn_from(20, Purpose::Dial { target: peer(110) }, CROWD_IP);
    assert_eq!(closed_with(&out, d), Some(ErrorCode::UnconfirmedCircuitLimit));
    // A key from another address is not affected.
    let (d, out) = h.conn_from(21, Purpose::Dial { target: peer(110) }, OTHER_IP);
    assert_eq!(closed_with(&out, d), None);
    assert_eq!(h.s.metrics(h.now).limit_hits.unconfirmed_refused, 2);
}

#[test]
fn a_full_target_makes_room_for_a_third_address() {
    let mut h = H::new(RelayLimits::default());
    let bc = h.reserved(200);
    for k in 1..=8u8 {
        h.conn_from(k, Purpose::Dial { target: peer(200) }, CROWD_IP);
        h.conn_from(k + 10, Purpose::Dial { target: peer(200) }, OTHER_IP);
    }
    assert_eq!(h.s.metrics(h.now).circuits_unconfirmed, 16);
    let (d, out) = h.conn_from(50, Purpose::Dial { target: peer(200) }, [203, 0, 113, 50]);
    assert_eq!(closed_with(&out, d), None);
    assert_eq!(closes(&out), 1, "one of the two crowds made room: {out:?}");
    assert!(matches!(sent(&out, bc)[..], [RelayMessage::Incoming { .. }]));
    assert_eq!(h.s.metrics(h.now).circuits_unconfirmed, 16);
}
