//! Actor-harness tests of the dial history: negotiators record every dial's outcome into
//! the node's `DialHistory` (seen through `NodeStats::dials`). The ranking itself is
//! unit-tested in `src/negotiate/rank_tests.rs`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use kizuna::{negotiate::DialStats, PeerAddress, PeerId, Protocol};
use kizuna_actors::{
    testing::{secs, seeded_keypair, TestNode},
    Connect,
};

/// What `node` measured dialing `peer` over `protocol`.
async fn dial_stats(node: &TestNode, peer: PeerId, protocol: Protocol) -> Option<DialStats> {
    let stats = node.stats().await.unwrap();
    stats.dials.into_iter().find(|(p, proto, _)| *p == peer && *proto == protocol).map(|(_, _, s)| s)
}

/// Waits until `pred` holds for what `node` measured of `peer` over `protocol` (a dial
/// that lost the race is recorded when it ends, possibly after the connect returned).
async fn wait_dial_stats(
    node: &TestNode,
    peer: PeerId,
    protocol: Protocol,
    pred: impl Fn(&DialStats) -> bool,
) -> DialStats {
    let deadline = Instant::now() + secs(5);
    loop {
        let s = dial_stats(node, peer, protocol).await;
        match s {
            Some(s) if pred(&s) => return s,
            _ if Instant::now() > deadline => panic!("{protocol} to {peer}: {s:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[actix_rt::test]
async fn a_wrong_identity_is_a_failure_and_the_winner_a_measured_success() {
    let a = TestNode::start(70).await.unwrap();
    let b = TestNode::start(71).await.unwrap();
    let c = TestNode::start(72).await.unwrap();
    // B's ticket with C's QUIC address first: QUIC (tried first) reaches the wrong peer.
    let wrong = c.ticket_for(Protocol::Quic).await.unwrap().addrs;
    let right = b.ticket_for(Protocol::Tcp).await.unwrap().addrs;
    let ticket = PeerAddress::new(b.peer, [wrong, right].concat());
    let info = a.addr.send(Connect { addr: ticket }).await.unwrap().unwrap();
    assert_eq!(info.protocol, Protocol::Tcp);

    let quic = wait_dial_stats(&a, b.peer, Protocol::Quic, |s| s.attempts == 1).await;
    assert_eq!((quic.successes, quic.consecutive_failures), (0, 1));
    assert!(quic.last_failure.is_some());
    let tcp = dial_stats(&a, b.peer, Protocol::Tcp).await.unwrap();
    assert_eq!((tcp.attempts, tcp.successes, tcp.consecutive_failures), (1, 1, 0));
    let connect = tcp.connect_time.unwrap();
    assert!(connect > Duration::ZERO && connect < secs(10), "{connect:?}");

    // A QUIC dial that succeeds records its connect time and the handshake's RTT.
    a.addr.send(Connect { addr: c.ticket_for(Protocol::Quic).await.unwrap() }).await.unwrap().unwrap();
    let quic = wait_dial_stats(&a, c.peer, Protocol::Quic, |s| s.successes == 1).await;
    assert!(quic.connect_time.is_some() && quic.rtt.is_some(), "{quic:?}");
    // Nothing was recorded for peers A did not dial, nor by the nodes that only accepted.
    assert!(dial_stats(&b, a.peer, Protocol::Tcp).await.is_none());
    assert!(c.stats().await.unwrap().dials.is_empty());
}

#[actix_rt::test]
async fn a_refused_dial_is_recorded_before_the_connect_fails() {
    let a = TestNode::start(73).await.unwrap();
    let other = seeded_keypair(74).peer_id();
    // A port nobody listens on (bound and released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let t = format!("{other}@tcp={port}").parse().unwrap();
    a.addr.send(Connect { addr: t }).await.unwrap().unwrap_err();
    let s = dial_stats(&a, other, Protocol::Tcp).await.unwrap();
    assert_eq!((s.attempts, s.successes, s.consecutive_failures), (1, 0, 1));
    assert_eq!(s.connect_time, None);
}
