//! Tests of the classification: a simulated NAT of every RFC 4787 behaviour in front of
//! simulated servers drives [`NatDiscovery`]; and every combination of answers goes
//! through [`classify`] with its invariants checked.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use super::*;

const A1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const A2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const A3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
const P1: u16 = 3478;
const P2: u16 = 3479;
const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn local() -> SocketAddr {
    sa(Ipv4Addr::new(10, 0, 0, 2), 5000)
}

/// What sits between the host and the internet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Middlebox {
    Blocked,
    Open,
    Firewall(Filtering),
    Nat(Mapping, Filtering),
}

/// The STUN servers the host is given.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Servers {
    /// One RFC 5780 server on A1/A2 × P1/P2.
    Rfc5780,
    /// A dead server first, then the RFC 5780 one.
    DeadThenRfc5780,
    /// One plain server that ignores CHANGE-REQUEST.
    PlainIgnoring,
    /// One plain server that answers CHANGE-REQUEST with 420.
    PlainRefusing,
    /// Two plain servers on different IPs.
    TwoPlain,
    /// Two plain servers on one IP, different ports.
    TwoPlainSameIp,
}

struct World {
    middlebox: Middlebox,
    servers: Servers,
    /// Destinations the host has sent to (the filter state).
    sent: HashSet<SocketAddr>,
}

impl World {
    fn server_list(&self) -> Vec<SocketAddr> {
        match self.servers {
            Servers::Rfc5780 | Servers::PlainIgnoring | Servers::PlainRefusing => vec![sa(A1, P1)],
            Servers::DeadThenRfc5780 => vec![sa(Ipv4Addr::new(192, 0, 2, 66), P1), sa(A1, P1)],
            Servers::TwoPlain => vec![sa(A1, P1), sa(A3, P1)],
            Servers::TwoPlainSameIp => vec![sa(A1, P1), sa(A1, P2)],
        }
    }

    fn mapped(&self, dest: SocketAddr) -> SocketAddr {
        let last = match dest.ip() {
            IpAddr::V4(v4) => u16::from(v4.octets()[3]),
            IpAddr::V6(_) => 0,
        };
        match self.middlebox {
            Middlebox::Blocked | Middlebox::Open | Middlebox::Firewall(_) => local(),
            Middlebox::Nat(Mapping::EndpointIndependent, _) => sa(PUBLIC, 40000),
            Middlebox::Nat(Mapping::AddressDependent, _) => sa(PUBLIC, 40000 + last),
            Middlebox::Nat(Mapping::AddressAndPortDependent, _) => {
                sa(PUBLIC, 40000 + last * 10 + (dest.port() - P1))
            }
        }
    }

    fn inbound_allowed(&self, from: SocketAddr) -> bool {
        let f = match self.middlebox {
            Middlebox::Blocked => return false,
            Middlebox::Open => return true,
            Middlebox::Firewall(f) | Middlebox::Nat(_, f) => f,
        };
        match f {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => self.sent.iter().any(|s| s.ip() == from.ip()),
            Filtering::AddressAndPortDependent => self.sent.contains(&from),
        }
    }

    /// Sends `t` and returns what comes back.
    fn run(&mut self, t: Test) -> Outcome {
        if self.middlebox == Middlebox::Blocked {
            return Outcome::Timeout;
        }
        self.sent.insert(t.dest);
        let grid = matches!(self.servers, Servers::Rfc5780 | Servers::DeadThenRfc5780);
        let (ip, port) = match t.dest {
            SocketAddr::V4(v4) => (*v4.ip(), v4.port()),
            SocketAddr::V6(_) => return Outcome::Timeout,
        };
        let known = if grid {
            [A1, A2].contains(&ip) && [P1, P2].contains(&port)
        } else {
            ip != Ipv4Addr::new(192, 0, 2, 66)
        };
        if !known {
            return Outcome::Timeout;
        }
        let change = t.change_ip || t.change_port;
        let source = if grid {
            let ip = if t.change_ip {
                if ip == A1 {
                    A2
                } else {
                    A1
                }
            } else {
                ip
            };
            let port = if t.change_port {
                if port == P1 {
                    P2
                } else {
                    P1
                }
            } else {
                port
            };
            sa(ip, port)
        } else if change && self.servers == Servers::PlainRefusing {
            return Outcome::Error(Some(420));
        } else {
            t.dest
        };
        if !self.inbound_allowed(source) {
            return Outcome::Timeout;
        }
        let other_address =
            grid.then(|| sa(if ip == A1 { A2 } else { A1 }, if port == P1 { P2 } else { P1 }));
        Outcome::Success(BindingResponse {
            mapped: self.mapped(t.dest),
            source,
            other_address,
            response_origin: Some(source),
        })
    }
}

fn simulate(middlebox: Middlebox, servers: Servers) -> NatReport {
    let mut w = World { middlebox, servers, sent: HashSet::new() };
    let mut d = NatDiscovery::new(w.server_list(), local());
    let mut steps = 0;
    while let Some(t) = d.poll_test() {
        steps += 1;
        assert!(steps <= 8, "too many tests: {middlebox:?} {servers:?}");
        let o = w.run(t);
        d.handle_outcome(o);
    }
    assert!(d.is_done());
    d.report()
}

const BEHAVIOURS: [Mapping; 3] =
    [Mapping::EndpointIndependent, Mapping::AddressDependent, Mapping::AddressAndPortDependent];
const FILTERS: [Filtering; 3] =
    [Filtering::EndpointIndependent, Filtering::AddressDependent, Filtering::AddressAndPortDependent];

fn all_middleboxes() -> Vec<Middlebox> {
    let mut v = vec![Middlebox::Blocked, Middlebox::Open];
    v.extend(FILTERS.iter().map(|f| Middlebox::Firewall(*f)));
    for m in BEHAVIOURS {
        v.extend(FILTERS.iter().map(|f| Middlebox::Nat(m, *f)));
    }
    v
}

fn cone(f: Filtering) -> NatType {
    match f {
        Filtering::EndpointIndependent => NatType::FullCone,
        Filtering::AddressDependent => NatType::RestrictedCone,
        Filtering::AddressAndPortDependent => NatType::PortRestrictedCone,
    }
}

#[test]
fn rfc5780_server_classifies_every_behaviour_exactly() {
    for servers in [Servers::Rfc5780, Servers::DeadThenRfc5780] {
        for mb in all_middleboxes() {
            let r = simulate(mb, servers);
            let ctx = format!("{mb:?} {servers:?}: {r:?}");
            match mb {
                Middlebox::Blocked => {
                    assert_eq!(r.nat_type, NatType::UdpBlocked, "{ctx}");
                    assert_eq!((r.mapping, r.filtering, r.public_addr), (None, None, None), "{ctx}");
                    assert_eq!(r.method, Method::NoAnswer, "{ctx}");
                }
                Middlebox::Open => {
                    assert_eq!(r.nat_type, NatType::Open, "{ctx}");
                    assert_eq!(r.mapping, Some(Mapping::EndpointIndependent), "{ctx}");
                    assert_eq!(r.filtering, Some(Filtering::EndpointIndependent), "{ctx}");
                    assert_eq!(r.public_addr, Some(local()), "{ctx}");
                    assert_eq!(r.behind_nat, Some(false), "{ctx}");
                }
                Middlebox::Firewall(f) => {
                    let want = if f == Filtering::EndpointIndependent { NatType::Open } else { cone(f) };
                    assert_eq!(r.nat_type, want, "{ctx}");
                    assert_eq!(r.filtering, Some(f), "{ctx}");
                    assert_eq!(r.behind_nat, Some(false), "{ctx}");
                }
                Middlebox::Nat(m, f) => {
                    let want = if m == Mapping::EndpointIndependent { cone(f) } else { NatType::Symmetric };
                    assert_eq!(r.nat_type, want, "{ctx}");
                    assert_eq!(r.mapping, Some(m), "{ctx}");
                    assert_eq!(r.filtering, Some(f), "{ctx}");
                    assert_eq!(r.behind_nat, Some(true), "{ctx}");
                    assert_eq!(r.method, Method::Rfc5780, "{ctx}");
                    assert_eq!(r.public_addr.map(|a| a.ip()), Some(IpAddr::V4(PUBLIC)), "{ctx}");
                }
            }
            if mb != Middlebox::Blocked {
                assert_eq!(r.server, Some(sa(A1, P1)), "{ctx}");
            }
        }
    }
}

#[test]
fn two_plain_servers_decide_mapping_only() {
    for mb in all_middleboxes() {
        let r = simulate(mb, Servers::TwoPlain);
        let ctx = format!("{mb:?}: {r:?}");
        assert_eq!(r.filtering, None, "{ctx}");
        match mb {
            Middlebox::Blocked => assert_eq!(r.nat_type, NatType::UdpBlocked, "{ctx}"),
            Middlebox::Open | Middlebox::Firewall(_) => {
                assert_eq!(r.nat_type, NatType::Open, "{ctx}");
                assert_eq!(r.mapping, Some(Mapping::EndpointIndependent), "{ctx}");
            }
            Middlebox::Nat(Mapping::EndpointIndependent, _) => {
                assert_eq!(r.nat_type, NatType::Unknown, "{ctx}");
                assert_eq!(r.mapping, Some(Mapping::EndpointIndependent), "{ctx}");
                assert_eq!(r.method, Method::TwoServers, "{ctx}");
            }
            Middlebox::Nat(_, _) => {
                assert_eq!(r.nat_type, NatType::Symmetric, "{ctx}");
                assert_eq!(r.mapping, None, "{ctx}");
                assert!(!r.notes.is_empty(), "{ctx}");
            }
        }
    }
}

#[test]
fn two_plain_servers_on_one_ip_tell_port_dependence_only() {
    for mb in all_middleboxes() {
        let r = simulate(mb, Servers::TwoPlainSameIp);
        let ctx = format!("{mb:?}: {r:?}");
        match mb {
            Middlebox::Nat(Mapping::AddressAndPortDependent, _) => {
                assert_eq!(r.nat_type, NatType::Symmetric, "{ctx}");
                assert_eq!(r.mapping, Some(Mapping::AddressAndPortDependent), "{ctx}");
            }
            Middlebox::Nat(_, _) => {
                assert_eq!(r.nat_type, NatType::Unknown, "{ctx}");
                assert_eq!(r.mapping, None, "{ctx}");
            }
            Middlebox::Blocked => assert_eq!(r.nat_type, NatType::UdpBlocked, "{ctx}"),
            _ => assert_eq!(r.nat_type, NatType::Open, "{ctx}"),
        }
    }
}

#[test]
fn one_plain_server_tells_translation_only() {
    for servers in [Servers::PlainIgnoring, Servers::PlainRefusing] {
        for mb in all_middleboxes() {
            let r = simulate(mb, servers);
            let ctx = format!("{mb:?} {servers:?}: {r:?}");
            assert_eq!(r.filtering, None, "{ctx}");
            let want = match mb {
                Middlebox::Blocked => NatType::UdpBlocked,
                Middlebox::Open | Middlebox::Firewall(_) => NatType::Open,
                Middlebox::Nat(..) => NatType::Unknown,
            };
            assert_eq!(r.nat_type, want, "{ctx}");
            if matches!(mb, Middlebox::Nat(..)) {
                assert_eq!(r.behind_nat, Some(true), "{ctx}");
                assert_eq!(r.method, Method::SingleServer, "{ctx}");
            }
        }
    }
}

#[test]
fn no_server_means_udp_blocked_and_done() {
    let d = NatDiscovery::new(Vec::new(), local());
    assert!(d.is_done() && d.poll_test().is_none());
    assert_eq!(d.report().nat_type, NatType::UdpBlocked);
}

#[test]
fn handling_after_done_is_ignored() {
    let mut d = NatDiscovery::new(vec![sa(A1, P1)], local());
    d.handle_outcome(Outcome::Timeout);
    assert!(d.is_done());
    d.handle_outcome(Outcome::Error(Some(400)));
    assert_eq!(d.report().nat_type, NatType::UdpBlocked);
}

#[test]
fn errors_only_are_unknown_not_blocked() {
    let mut d = NatDiscovery::new(vec![sa(A1, P1), sa(A3, P1)], local());
    d.handle_outcome(Outcome::Error(Some(400)));
    d.handle_outcome(Outcome::Timeout);
    assert!(d.is_done());
    assert_eq!(d.report().nat_type, NatType::Unknown);
}

/// Filtering test II answered from the primary address: the server ignored
/// CHANGE-REQUEST even though it advertised OTHER-ADDRESS. Filtering must stay unknown,
/// not become endpoint-independent.
#[test]
fn ignored_change_request_proves_nothing() {
    let mut d = NatDiscovery::new(vec![sa(A1, P1)], local());
    let resp = |mapped, source| BindingResponse {
        mapped,
        source,
        other_address: Some(sa(A2, P2)),
        response_origin: None,
    };
    let m = sa(PUBLIC, 40000);
    d.handle_outcome(Outcome::Success(resp(m, sa(A1, P1))));
    assert_eq!(
        d.poll_test().map(|t| (t.kind, t.change_ip, t.change_port)),
        Some((TestKind::FilteringII, true, true))
    );
    d.handle_outcome(Outcome::Success(resp(m, sa(A1, P1))));
    assert_eq!(d.poll_test().map(|t| (t.kind, t.dest)), Some((TestKind::MappingII, sa(A2, P1))));
    d.handle_outcome(Outcome::Success(resp(m, sa(A2, P1))));
    assert!(d.is_done());
    let r = d.report();
    assert_eq!(
        (r.mapping, r.filtering, r.nat_type),
        (Some(Mapping::EndpointIndependent), None, NatType::Unknown)
    );
    assert!(r.notes.iter().any(|n| n.contains("not honoured")), "{r:?}");
}

/// Every combination of answers: classification never panics and its invariants hold.
#[test]
fn every_combination_of_answers_is_classified_consistently() {
    let m = sa(PUBLIC, 40000);
    let m_other = sa(PUBLIC, 40001);
    let resp =
        |mapped, source| BindingResponse { mapped, source, other_address: None, response_origin: None };
    let primaries = [
        None,
        Some((sa(A1, P1), BindingResponse { other_address: Some(sa(A2, P2)), ..resp(local(), sa(A1, P1)) })),
        Some((sa(A1, P1), BindingResponse { other_address: Some(sa(A2, P2)), ..resp(m, sa(A1, P1)) })),
        Some((sa(A1, P1), BindingResponse { other_address: Some(sa(A2, P1)), ..resp(m, sa(A1, P1)) })),
        Some((sa(A1, P1), resp(m, sa(A1, P1)))),
        Some((sa(A1, P1), resp(local(), sa(A1, P1)))),
    ];
    let outcomes = |a: Outcome, b: Outcome| {
        [None, Some(Outcome::Timeout), Some(Outcome::Error(Some(420))), Some(a), Some(b)]
    };
    let f2 = outcomes(Outcome::Success(resp(m, sa(A2, P2))), Outcome::Success(resp(m, sa(A1, P1))));
    let f3 = outcomes(Outcome::Success(resp(m, sa(A1, P2))), Outcome::Success(resp(m, sa(A1, P1))));
    let m2 = outcomes(Outcome::Success(resp(m, sa(A2, P1))), Outcome::Success(resp(m_other, sa(A2, P1))));
    let m3 = outcomes(
        Outcome::Success(resp(m_other, sa(A2, P2))),
        Outcome::Success(resp(sa(PUBLIC, 40002), sa(A2, P2))),
    );
    let comparisons = [
        None,
        Some((sa(A3, P1), resp(m, sa(A3, P1)))),
        Some((sa(A3, P1), resp(m_other, sa(A3, P1)))),
        Some((sa(A1, P2), resp(m, sa(A1, P2)))),
        Some((sa(A1, P2), resp(m_other, sa(A1, P2)))),
    ];
    let mut n = 0;
    for primary in primaries {
        for any_answer in [false, true] {
            for filtering_ii in f2 {
                for filtering_iii in f3 {
                    for mapping_ii in m2 {
                        for mapping_iii in m3 {
                            for comparison in comparisons {
                                let obs = Observations {
                                    local: local(),
                                    primary,
                                    any_answer,
                                    filtering_ii,
                                    filtering_iii,
                                    mapping_ii,
                                    mapping_iii,
                                    comparison,
                                };
                                check_invariants(&obs, &classify(&obs));
                                n += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(n, 6 * 2 * 5 * 5 * 5 * 5 * 5);
}

fn check_invariants(obs: &Observations, r: &NatReport) {
    let ctx = || format!("{obs:?} → {r:?}");
    assert_eq!(r.local_addr, obs.local);
    assert_eq!(r.public_addr, obs.primary.map(|(_, p)| p.mapped), "{}", ctx());
    assert_eq!(r.server, obs.primary.map(|(s, _)| s), "{}", ctx());
    assert_eq!(r.nat_type == NatType::UdpBlocked, obs.primary.is_none() && !obs.any_answer, "{}", ctx());
    match r.nat_type {
        NatType::Open => {
            assert_eq!(r.behind_nat, Some(false), "{}", ctx());
            assert!(matches!(r.filtering, None | Some(Filtering::EndpointIndependent)), "{}", ctx());
        }
        NatType::FullCone | NatType::RestrictedCone | NatType::PortRestrictedCone => {
            assert_eq!(r.mapping, Some(Mapping::EndpointIndependent), "{}", ctx());
            let f = r.filtering.unwrap_or_else(|| panic!("{}", ctx()));
            assert_eq!(cone(f), r.nat_type, "{}", ctx());
        }
        NatType::Symmetric => {
            assert_eq!(r.behind_nat, Some(true), "{}", ctx());
            assert_ne!(r.mapping, Some(Mapping::EndpointIndependent), "{}", ctx());
        }
        NatType::UdpBlocked => assert_eq!((r.mapping, r.filtering, r.behind_nat), (None, None, None)),
        NatType::Unknown => assert!(!r.notes.is_empty(), "{}", ctx()),
    }
    if r.behind_nat == Some(false) {
        assert_eq!(r.mapping, Some(Mapping::EndpointIndependent), "{}", ctx());
    }
    // Endpoint-independent filtering only from an answer that came from the alternate
    // address.
    if r.filtering == Some(Filtering::EndpointIndependent) {
        assert!(matches!(obs.filtering_ii, Some(Outcome::Success(b)) if b.source == sa(A2, P2)), "{}", ctx());
    }
    // The report round-trips through JSON with the contract's field names.
    let v = serde_json::to_value(r).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
    for k in ["nat_type", "mapping", "filtering", "public_addr"] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
}

#[test]
fn json_names_are_snake_case() {
    let r = simulate(
        Middlebox::Nat(Mapping::EndpointIndependent, Filtering::AddressAndPortDependent),
        Servers::Rfc5780,
    );
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["nat_type"], "port_restricted_cone");
    assert_eq!(v["mapping"], "endpoint_independent");
    assert_eq!(v["filtering"], "address_and_port_dependent");
    assert_eq!(v["public_addr"], "198.51.100.1:40000");
    assert_eq!(v["method"], "rfc5780");
    let back: NatReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);
    assert_eq!(NatType::PortRestrictedCone.to_string(), "port-restricted cone");
}
