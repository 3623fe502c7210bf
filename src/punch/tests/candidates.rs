//! Local candidate assembly: host addresses for wildcard sockets, reflexive and
//! relay-observed candidates, ordering and clean-up.

use std::net::IpAddr;

use super::addr;
use crate::punch::{candidates::local_candidates, CandidateKind};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn wildcard_socket_offers_each_interface_of_its_family() {
    let ifs = [ip("10.0.0.5"), ip("203.0.113.9"), ip("2001:db8::5")];
    let c = local_candidates(addr("0.0.0.0:4433"), &ifs, &[], None);
    let got: Vec<_> = c.iter().map(|c| (c.kind, c.addr)).collect();
    assert_eq!(
        got,
        vec![(CandidateKind::Host, addr("10.0.0.5:4433")), (CandidateKind::Host, addr("203.0.113.9:4433"))]
    );
    let v6 = local_candidates(addr("[::]:4433"), &ifs, &[], None);
    assert_eq!(v6.iter().map(|c| c.addr).collect::<Vec<_>>(), vec![addr("[2001:db8::5]:4433")]);
}

#[test]
fn all_kinds_in_priority_order_without_duplicates() {
    let c = local_candidates(
        addr("10.0.0.5:4433"),
        &[ip("10.0.0.99")],
        &[addr("198.51.100.7:40001"), addr("198.51.100.7:40002"), addr("10.0.0.5:4433")],
        Some(ip("198.51.100.7")),
    );
    let got: Vec<_> = c.iter().map(|c| (c.kind, c.addr)).collect();
    assert_eq!(
        got,
        vec![
            (CandidateKind::Host, addr("10.0.0.5:4433")),
            (CandidateKind::ServerReflexive, addr("198.51.100.7:40001")),
            (CandidateKind::ServerReflexive, addr("198.51.100.7:40002")),
            (CandidateKind::RelayObserved, addr("198.51.100.7:4433")),
        ],
        "a bound socket offers itself, not the other interfaces; the reflexive copy of the \
         host address is dropped"
    );
    assert!(c.windows(2).all(|w| w[0].priority > w[1].priority));
}

#[test]
fn unusable_addresses_are_never_offered() {
    let c =
        local_candidates(addr("0.0.0.0:0"), &[ip("10.0.0.5")], &[addr("0.0.0.0:9")], Some(ip("224.0.0.1")));
    assert!(c.is_empty(), "{c:?}");
    let many: Vec<_> = (1..=40).map(|i| addr(&format!("198.51.100.{i}:1000"))).collect();
    assert_eq!(local_candidates(addr("10.0.0.5:1"), &[], &many, None).len(), crate::punch::MAX_CANDIDATES);
}
