//! Automatic hole punching on loopback: a relayed connection upgrades itself to direct
//! QUIC through the `HolePunchActor`, with no application call after the first connect.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::collections::BTreeSet;

use bytes::Bytes;
use kizuna::{relay::auth::Admission, relay::client::RelayEndpoint, PathKind, PeerAddress, Protocol};
use kizuna_actors::{
    relay::{RelayHandle, RelayServer, RelayServerConfig},
    testing::{describe, secs, TestNode},
    Connect, Event, Send as SendMsg,
};

async fn relay() -> RelayHandle {
    RelayServer::start(RelayServerConfig::new("127.0.0.1:0".parse().unwrap(), Admission::open()))
        .await
        .expect("relay starts")
}

/// A node listening on QUIC (127.0.0.1:0) with `relay` configured.
async fn quic_node(seed: u8, relay: &RelayHandle) -> TestNode {
    let url = relay.url.clone();
    TestNode::start_with(seed, move |c| {
        c.protocols = vec![Protocol::Quic];
        c.relays = vec![RelayEndpoint { url, token: None }];
    })
    .await
    .unwrap()
}

#[actix_rt::test]
async fn relayed_connection_upgrades_to_direct_quic_by_itself() {
    let r = relay().await;
    let mut a = quic_node(90, &r).await;
    let mut b = quic_node(91, &r).await;
    // Both sides signal through the relay, so both hold a reservation.
    a.wait_reserved(secs(10)).await.unwrap();
    b.wait_reserved(secs(10)).await.unwrap();

    // The peer id only: the relay is the route.
    let info = a.addr.send(Connect { addr: PeerAddress::new(b.peer, vec![]) }).await.unwrap().unwrap();
    assert_eq!(info.path, PathKind::Relayed);
    for n in 0u32..5 {
        let data = Bytes::from(n.to_be_bytes().to_vec());
        a.addr.send(SendMsg { peer: b.peer, data }).await.unwrap().unwrap();
    }

    // No further application call: the punch runs and the supervisor upgrades the path.
    let ev = a
        .wait_for(|e| matches!(e, Event::PathChanged { .. } | Event::HolePunchFailed { .. }), secs(15))
        .await
        .unwrap();
    let Event::PathChanged { peer, from, to, reason } = ev else { panic!("no upgrade: {}", describe(&ev)) };
    assert_eq!(reason, kizuna::peer::ChangeReason::Upgrade);
    assert_eq!(peer, b.peer);
    assert_eq!((from.path, to.path), (PathKind::Relayed, PathKind::Direct));
    assert_eq!(to.protocol, Protocol::Quic);
    b.wait_for(|e| matches!(e, Event::PathChanged { .. }), secs(15)).await.unwrap();

    // Messages keep flowing, now on the direct path; each arrives exactly once.
    for n in 5u32..10 {
        let data = Bytes::from(n.to_be_bytes().to_vec());
        a.addr.send(SendMsg { peer: b.peer, data }).await.unwrap().unwrap();
    }
    let number = |e: &Event| match e {
        Event::MessageReceived { data, .. } => Some(u32::from_be_bytes(data[..4].try_into().unwrap())),
        _ => None,
    };
    // Some arrived while b waited for the upgrade (recorded in its history).
    let mut seen = BTreeSet::new();
    for n in b.history.iter().filter_map(number) {
        assert!(seen.insert(n), "message {n} delivered twice");
    }
    while seen.len() < 10 {
        let ev = b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(10)).await.unwrap();
        let n = number(&ev).unwrap();
        assert!(seen.insert(n), "message {n} delivered twice");
    }
    assert_eq!(seen, (0..10).collect());
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.connections.len(), 1);
    assert_eq!(stats.connections[0].path, PathKind::Direct);
    assert_eq!(stats.connections[0].protocol, Protocol::Quic);
}

#[actix_rt::test]
async fn failed_punch_keeps_the_relayed_connection_and_reports_why() {
    let r = relay().await;
    let mut a = quic_node(92, &r).await;
    // b reaches the relay but has no UDP socket: it cannot answer the punch offer.
    let url = r.url.clone();
    let mut b = TestNode::start_with(93, move |c| {
        c.protocols = vec![];
        c.relays = vec![RelayEndpoint { url, token: None }];
    })
    .await
    .unwrap();
    a.wait_reserved(secs(10)).await.unwrap();
    b.wait_reserved(secs(10)).await.unwrap();
    let info = a.addr.send(Connect { addr: PeerAddress::new(b.peer, vec![]) }).await.unwrap().unwrap();
    assert_eq!(info.path, PathKind::Relayed);

    let ev = a
        .wait_for(|e| matches!(e, Event::PathChanged { .. } | Event::HolePunchFailed { .. }), secs(30))
        .await
        .unwrap();
    let Event::HolePunchFailed { peer, reason } = ev else { panic!("unexpected: {}", describe(&ev)) };
    assert_eq!(peer, b.peer);
    assert!(!reason.is_empty());

    // Still connected through the relay, and it still works.
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.connections.len(), 1);
    assert_eq!(stats.connections[0].path, PathKind::Relayed);
    a.addr.send(SendMsg { peer: b.peer, data: "still relayed".into() }).await.unwrap().unwrap();
    b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(10)).await.unwrap();
}
