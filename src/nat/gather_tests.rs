//! Tests of the server-reflexive gatherer: retransmission, answers, hints, strangers.

use std::{net::SocketAddr, time::Instant};

use stun_rs::{
    attributes::{discovery::OtherAddress, stun::XorMappedAddress},
    MessageClass,
};

use super::*;
use crate::nat::probe::tests::response;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn drain(g: &mut Gatherer) -> Vec<(SocketAddr, Vec<u8>)> {
    std::iter::from_fn(|| g.poll_transmit()).collect()
}

/// The transaction id of a request.
fn tid(req: &[u8]) -> [u8; 12] {
    req[8..20].try_into().unwrap()
}

fn answer(req: &[u8], mapped: SocketAddr, other: Option<SocketAddr>) -> Vec<u8> {
    let mut attrs = vec![XorMappedAddress::from(mapped).into()];
    if let Some(o) = other {
        attrs.push(OtherAddress::from(o).into());
    }
    response(tid(req), MessageClass::SuccessResponse, attrs)
}

#[test]
fn one_server_answers_with_the_mapping() {
    let now = Instant::now();
    let s1 = a("203.0.113.1:3478");
    let mut g = Gatherer::new(&[s1], now, ProbeConfig::default(), [1; 32]);
    let sent = drain(&mut g);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, s1);
    assert!(!g.is_done());
    let mapped = a("198.51.100.7:40001");
    assert!(g.handle_datagram(now, s1, &answer(&sent[0].1, mapped, None)));
    assert!(g.is_done());
    assert_eq!(g.poll_timeout(), None);
    assert_eq!(g.result(), Gathered { reflexive: vec![mapped], mapping: MappingHint::Unknown });
    // A duplicate answer is consumed and changes nothing.
    assert!(g.handle_datagram(now, s1, &answer(&sent[0].1, a("198.51.100.7:1"), None)));
    assert_eq!(g.result().reflexive, vec![mapped]);
}

#[test]
fn retransmits_on_schedule_then_gives_up() {
    let now = Instant::now();
    let cfg = ProbeConfig::default();
    let s1 = a("203.0.113.1:3478");
    let mut g = Gatherer::new(&[s1], now, cfg, [2; 32]);
    let mut sent = drain(&mut g).len();
    let mut t = now;
    while let Some(at) = g.poll_timeout() {
        assert!(at > t, "the timer must advance");
        t = at;
        g.handle_timeout(t);
        sent += drain(&mut g).len();
    }
    assert_eq!(sent, cfg.transmit_times().len());
    assert_eq!(t, now + cfg.deadline());
    assert!(g.is_done());
    assert_eq!(g.result(), Gathered { reflexive: vec![], mapping: MappingHint::UdpBlocked });
    // Nobody asked: nothing known, not "blocked".
    let none = Gatherer::new(&[], now, cfg, [2; 32]);
    assert!(none.is_done());
    assert_eq!(none.result(), Gathered::default());
}

#[test]
fn two_server_ips_tell_the_mapping_behaviour() {
    let now = Instant::now();
    let (s1, s2) = (a("203.0.113.1:3478"), a("203.0.113.2:3478"));
    for (m1, m2, want) in [
        (a("198.51.100.7:40001"), a("198.51.100.7:40001"), MappingHint::EndpointIndependent),
        (a("198.51.100.7:40001"), a("198.51.100.7:40002"), MappingHint::AddressAndPortDependent),
    ] {
        let mut g = Gatherer::new(&[s1, s2, s1], now, ProbeConfig::default(), [3; 32]);
        let sent = drain(&mut g);
        assert_eq!(sent.len(), 2, "duplicates are skipped");
        assert_ne!(tid(&sent[0].1), tid(&sent[1].1), "every transaction has its own id");
        // Answers to one transaction are not accepted from the other's id.
        assert!(g.handle_datagram(now, s2, &answer(&sent[1].1, m2, None)));
        assert!(!g.is_done());
        assert!(g.handle_datagram(now, s1, &answer(&sent[0].1, m1, None)));
        assert!(g.is_done());
        let r = g.result();
        assert_eq!(r.mapping, want);
        assert_eq!(r.reflexive.len(), if m1 == m2 { 1 } else { 2 });
    }
}

#[test]
fn other_address_is_asked_when_only_one_server_ip_is_known() {
    let now = Instant::now();
    let s1 = a("203.0.113.1:3478");
    let other = a("203.0.113.2:3479");
    let mut g = Gatherer::new(&[s1], now, ProbeConfig::default(), [4; 32]);
    let first = drain(&mut g);
    let mapped = a("198.51.100.7:40001");
    assert!(g.handle_datagram(now, s1, &answer(&first[0].1, mapped, Some(other))));
    assert!(!g.is_done(), "the other address is asked next");
    let second = drain(&mut g);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].0, other);
    assert!(g.handle_datagram(now, other, &answer(&second[0].1, a("198.51.100.7:40009"), None)));
    assert_eq!(g.result().mapping, MappingHint::AddressAndPortDependent);
}

#[test]
fn strangers_and_garbage_are_not_consumed() {
    let now = Instant::now();
    let s1 = a("203.0.113.1:3478");
    let mut g = Gatherer::new(&[s1], now, ProbeConfig::default(), [5; 32]);
    let sent = drain(&mut g);
    let other_tx = response([9; 12], MessageClass::SuccessResponse, vec![]);
    for junk in [&b""[..], b"\x13punch", &[0u8; 19], &other_tx, &sent[0].1] {
        assert!(!g.handle_datagram(now, s1, junk));
    }
    let mut flipped = answer(&sent[0].1, a("198.51.100.7:1"), None);
    flipped[10] ^= 1;
    assert!(!g.handle_datagram(now, s1, &flipped));
    assert!(!g.is_done());
    // At most MAX_GATHER_SERVERS transactions, however many servers are given.
    let many: Vec<SocketAddr> = (1..=10).map(|i| a(&format!("203.0.113.{i}:3478"))).collect();
    let mut g = Gatherer::new(&many, now, ProbeConfig::default(), [6; 32]);
    assert_eq!(drain(&mut g).len(), MAX_GATHER_SERVERS);
}

#[test]
fn pending_transactions_are_those_awaiting_an_answer() {
    let now = Instant::now();
    let (s1, s2) = (a("203.0.113.1:3478"), a("203.0.113.2:3478"));
    let mut g = Gatherer::new(&[s1, s2], now, ProbeConfig::default(), [4; 32]);
    let sent = drain(&mut g);
    let tids: Vec<[u8; 12]> = sent.iter().map(|(_, r)| tid(r)).collect();
    assert_eq!(g.pending_transactions().collect::<Vec<_>>(), tids);
    assert!(g.handle_datagram(now, s1, &answer(&sent[0].1, a("198.51.100.7:1"), None)));
    assert_eq!(g.pending_transactions().collect::<Vec<_>>(), vec![tids[1]]);
    g.handle_timeout(now + ProbeConfig::default().deadline());
    assert_eq!(g.pending_transactions().count(), 0, "given up");
}
