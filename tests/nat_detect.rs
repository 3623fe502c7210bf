//! NAT discovery (`kizuna::nat`) against the relay's own STUN responder, in process, on
//! loopback: with two addresses (RFC 5780) and with one (plain).
//!
//! On loopback there is no NAT, so the answer is `Open` with both behaviours
//! endpoint-independent; the RFC 5780 path is exercised end to end all the same (the
//! filtering result needs the answer to come from the alternate address and port).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::{net::SocketAddr, time::Duration};

use kizuna::{
    nat::{discover, Filtering, Mapping, Method, NatType, ProbeConfig},
    relay::auth::Admission,
};
use kizuna_actors::relay::{RelayHandle, RelayServer, RelayServerConfig};
use tokio::net::UdpSocket;

async fn relay_with_stun(stun: &[&str]) -> RelayHandle {
    let mut cfg = RelayServerConfig::new("127.0.0.1:0".parse().unwrap(), Admission::open());
    cfg.stun = stun.iter().map(|s| s.parse().unwrap()).collect();
    RelayServer::start(cfg).await.unwrap()
}

/// Quick retransmission: loopback answers in microseconds.
fn fast() -> ProbeConfig {
    ProbeConfig { initial_rto: Duration::from_millis(100), max_transmissions: 3, last_wait: 3 }
}

#[actix_rt::test]
async fn rfc5780_relay_classifies_loopback_as_open() {
    let relay = relay_with_stun(&["127.0.0.1:0", "127.0.0.2:0"]).await;
    assert_eq!(relay.stun_addrs.len(), 2);
    let (a, b) = (relay.stun_addrs[0], relay.stun_addrs[1]);
    assert_eq!(a.port(), b.port(), "the grid shares one port");
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = discover(&sock, &[a], &fast()).await.unwrap();
    assert_eq!(r.nat_type, NatType::Open, "{r:?}");
    assert_eq!(r.mapping, Some(Mapping::EndpointIndependent), "{r:?}");
    assert_eq!(r.filtering, Some(Filtering::EndpointIndependent), "{r:?}");
    assert_eq!(r.public_addr, Some(sock.local_addr().unwrap()));
    assert_eq!(r.method, Method::Rfc5780);
    assert_eq!(r.behind_nat, Some(false));
    assert!(r.notes.is_empty(), "{r:?}");
    // From the alternate address too, and from a socket bound to 0.0.0.0 (the local
    // address is then the routed one).
    let any = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let r = discover(&any, &[b], &fast()).await.unwrap();
    assert_eq!(r.nat_type, NatType::Open, "{r:?}");
    let port = any.local_addr().unwrap().port();
    assert_eq!(r.public_addr, Some(SocketAddr::new(r.local_addr.ip(), port)));
    assert_eq!(r.filtering, Some(Filtering::EndpointIndependent), "{r:?}");
}

#[actix_rt::test]
async fn plain_relay_says_open_but_cannot_measure_filtering() {
    let relay = relay_with_stun(&["127.0.0.1:0"]).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = discover(&sock, &relay.stun_addrs, &fast()).await.unwrap();
    assert_eq!(r.nat_type, NatType::Open, "{r:?}");
    assert_eq!(r.mapping, Some(Mapping::EndpointIndependent));
    assert_eq!(r.filtering, None);
    assert_eq!(r.method, Method::SingleServer);
    assert_eq!(r.public_addr, Some(sock.local_addr().unwrap()));
}

#[actix_rt::test]
async fn a_dead_first_server_falls_back_to_the_next() {
    let relay = relay_with_stun(&["127.0.0.1:0", "127.0.0.2:0"]).await;
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = discover(&sock, &[dead.local_addr().unwrap(), relay.stun_addrs[0]], &fast()).await.unwrap();
    assert_eq!(r.nat_type, NatType::Open, "{r:?}");
    assert_eq!(r.server, Some(relay.stun_addrs[0]));
    assert_eq!(r.filtering, Some(Filtering::EndpointIndependent));
    // Only dead servers: UDP blocked, a result, not an error.
    let r = discover(&sock, &[dead.local_addr().unwrap()], &fast()).await.unwrap();
    assert_eq!(r.nat_type, NatType::UdpBlocked);
    assert_eq!(r.public_addr, None);
}
