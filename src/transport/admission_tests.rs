#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use proptest::prelude::*;

use super::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
}

fn limits(total: usize, per: usize) -> AdmissionLimits {
    AdmissionLimits {
        max_pending: total,
        max_pending_per_address: per,
        first_byte_timeout: Duration::from_secs(3),
    }
}

fn admit(m: &mut HandshakeAdmission, from: IpAddr) -> (Ticket, Option<Ticket>) {
    match m.admit(from) {
        Admission::Admit { ticket, evict } => (ticket, evict),
        Admission::Refuse(r) => panic!("refused {from}: {r}"),
    }
}

#[test]
fn a_silent_crowd_from_one_address_only_competes_with_itself() {
    let mut m = HandshakeAdmission::new(limits(256, 16));
    let crowd: Vec<Ticket> = (0..16).map(|_| admit(&mut m, ip(1)).0).collect();
    // The 17th from the same address replaces the oldest silent one …
    let (t, evicted) = admit(&mut m, ip(1));
    assert_eq!(evicted, Some(crowd[0]));
    assert_eq!(m.pending_from(ip(1)), 16);
    // … and 400 more never hold more than 16 slots.
    for _ in 0..400 {
        admit(&mut m, ip(1));
    }
    assert_eq!(m.pending_from(ip(1)), 16);
    assert_eq!(m.pending(), 16);
    // Another address gets in at once, without evicting anyone.
    assert_eq!(admit(&mut m, ip(2)).1, None);
    let _ = t;
}

#[test]
fn a_talking_crowd_at_its_cap_is_refused_not_rotated() {
    let mut m = HandshakeAdmission::new(limits(256, 4));
    for _ in 0..4 {
        let (t, _) = admit(&mut m, ip(1));
        m.heard(t);
    }
    assert_eq!(m.admit(ip(1)), Admission::Refuse(Refusal::PerAddress { max: 4 }));
    // One silent among them is the one to go.
    m.release(Ticket(0));
    let (silent, _) = admit(&mut m, ip(1));
    let (_, evicted) = admit(&mut m, ip(1));
    assert_eq!(evicted, Some(silent));
}

#[test]
fn a_full_server_takes_room_from_the_largest_holder() {
    let mut m = HandshakeAdmission::new(limits(8, 8));
    let big: Vec<Ticket> = (0..6).map(|_| admit(&mut m, ip(1)).0).collect();
    admit(&mut m, ip(2));
    admit(&mut m, ip(2));
    assert_eq!(m.pending(), 8);
    // A newcomer evicts the oldest of the address holding the most.
    let (_, evicted) = admit(&mut m, ip(3));
    assert_eq!(evicted, Some(big[0]));
    assert_eq!(m.pending(), 8);
    // Silent before talking: the holder's talking handshakes survive while it has silent ones.
    m.heard(big[1]);
    let (_, evicted) = admit(&mut m, ip(4));
    assert_eq!(evicted, Some(big[2]));
}

#[test]
fn slots_settle_to_an_even_split_and_then_refuse() {
    let mut m = HandshakeAdmission::new(limits(4, 4));
    for _ in 0..4 {
        admit(&mut m, ip(1));
    }
    admit(&mut m, ip(2)); // 3 + 1
    admit(&mut m, ip(2)); // 2 + 2
                          // 2 is not more than 2 + 1: an even split is not disturbed.
    assert_eq!(m.admit(ip(2)), Admission::Refuse(Refusal::Full { max: 4 }));
    assert_eq!(m.pending_from(ip(1)), 2);
    assert_eq!(m.pending_from(ip(2)), 2);
    // A third address still gets one (2 > 0 + 1).
    assert!(matches!(m.admit(ip(3)), Admission::Admit { evict: Some(_), .. }));
}

#[test]
fn established_handshakes_are_never_evicted() {
    let mut m = HandshakeAdmission::new(limits(2, 2));
    let (a, _) = admit(&mut m, ip(1));
    let (b, _) = admit(&mut m, ip(1));
    m.established(a);
    m.established(b);
    assert_eq!(m.admit(ip(1)), Admission::Refuse(Refusal::PerAddress { max: 2 }));
    assert_eq!(m.admit(ip(2)), Admission::Refuse(Refusal::Full { max: 2 }));
    m.release(a);
    assert!(matches!(m.admit(ip(2)), Admission::Admit { evict: None, .. }));
}

#[test]
fn stages_only_move_forward_and_unknown_tickets_are_ignored() {
    let mut m = HandshakeAdmission::new(limits(2, 1));
    let (t, _) = admit(&mut m, ip(1));
    m.established(t);
    m.heard(t); // not back to talking
    assert_eq!(m.admit(ip(1)), Admission::Refuse(Refusal::PerAddress { max: 1 }));
    m.release(Ticket(99));
    m.heard(Ticket(99));
    m.release(t);
    m.release(t);
    assert_eq!(m.pending(), 0);
}

#[test]
fn ipv6_counts_by_prefix_and_mapped_ipv4_as_ipv4() {
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(AddressKey::from(a), AddressKey::from(b));
    assert_ne!(AddressKey::from(a), AddressKey::from(c));
    let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 5).to_ipv6_mapped());
    assert_eq!(AddressKey::from(mapped), AddressKey::from(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5))));
    let _ = Ipv6Addr::LOCALHOST;
}

#[test]
fn limits_are_validated_by_name() {
    assert!(AdmissionLimits::default().validate().is_ok());
    let e = AdmissionLimits { max_pending_per_address: 0, ..Default::default() }.validate().unwrap_err();
    assert!(e.contains("max_pending_handshakes_per_address"), "{e}");
    let e =
        AdmissionLimits { first_byte_timeout: Duration::ZERO, ..Default::default() }.validate().unwrap_err();
    assert!(e.contains("first_byte_timeout"), "{e}");
}

#[test]
fn counters_count_each_outcome() {
    let c = HandshakeCounters::default();
    for _ in 0..3 {
        c.record(HandshakeOutcome::Violation);
    }
    c.record(HandshakeOutcome::Refused(Refusal::PerAddress { max: 1 }));
    c.record(HandshakeOutcome::Silent);
    let s = c.snapshot();
    assert_eq!((s.violations, s.refused_per_address, s.silent, s.admitted), (3, 1, 1, 0));
}

#[derive(Clone, Debug)]
enum Op {
    Admit(u8),
    Heard(usize),
    Established(usize),
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6).prop_map(Op::Admit),
        1 => any::<usize>().prop_map(Op::Heard),
        1 => any::<usize>().prop_map(Op::Established),
        2 => any::<usize>().prop_map(Op::Release),
    ]
}

proptest! {
    /// Under any sequence of inputs: the bounds hold, evictions name live, unestablished
    /// handshakes, and an address below its cap and below its share is never refused.
    #[test]
    fn bounds_hold_under_any_inputs(total in 1usize..12, per in 1usize..6, ops in prop::collection::vec(op(), 0..300)) {
        let mut m = HandshakeAdmission::new(limits(total, per));
        let mut live: Vec<(Ticket, u8)> = Vec::new();
        let mut established: HashSet<Ticket> = HashSet::new();
        for op in ops {
            match op {
                Op::Admit(a) => {
                    let before_mine = m.pending_from(ip(a));
                    let before_total = m.pending();
                    match m.admit(ip(a)) {
                        Admission::Admit { ticket, evict } => {
                            if let Some(e) = evict {
                                let i = live.iter().position(|(t, _)| *t == e);
                                prop_assert!(i.is_some(), "evicted an unknown ticket");
                                prop_assert!(!established.contains(&e), "evicted an established one");
                                live.remove(i.unwrap_or(0));
                            } else {
                                prop_assert!(before_mine < per.max(1) && before_total < total.max(1));
                            }
                            live.push((ticket, a));
                        }
                        Admission::Refuse(Refusal::Full { .. }) => {
                            prop_assert!(before_total >= total.max(1));
                        }
                        Admission::Refuse(Refusal::PerAddress { .. }) => {
                            prop_assert!(before_mine >= per.max(1));
                        }
                    }
                }
                Op::Heard(i) if !live.is_empty() => m.heard(live[i % live.len()].0),
                Op::Established(i) if !live.is_empty() => {
                    let t = live[i % live.len()].0;
                    m.established(t);
                    established.insert(t);
                }
                Op::Release(i) if !live.is_empty() => {
                    let (t, _) = live.remove(i % live.len());
                    established.remove(&t);
                    m.release(t);
                }
                _ => {}
            }
            prop_assert!(m.pending() <= total.max(1));
            prop_assert_eq!(m.pending(), live.len());
            for a in 0..6u8 {
                prop_assert!(m.pending_from(ip(a)) <= per.max(1));
                prop_assert_eq!(m.pending_from(ip(a)), live.iter().filter(|(_, x)| *x == a).count());
            }
        }
    }
}
