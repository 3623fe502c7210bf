//! Path switching with real nodes on loopback, one test per reason a peer's traffic moves
//! (`upgrade` is covered by relay_paths.rs and hole_punch.rs): a direct path that dies
//! silently under traffic fails over to the relayed standby and takes the traffic back
//! when it recovers; a clearly faster path of the same tier takes over; and messages sent
//! across every change arrive exactly once and in order. Also: a node without the session
//! layer still exchanges plain messages with one that has it.
//!
//! Paths are made slow or silent by forwarders of the test harness ([`TcpProxy`],
//! [`UdpProxy`]) between the nodes, and probing is sped up (`PathConfig`) so that the
//! changes happen within seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::time::Duration;

use bytes::Bytes;
use kizuna::{
    peer::{ChangeReason, PathConfig},
    relay::{auth::Admission, client::RelayEndpoint},
    PathKind, PeerAddress, Protocol, TransportAddr,
};
use kizuna_actors::{
    api::GetSender,
    relay::{RelayHandle, RelayServer, RelayServerConfig},
    testing::{describe, secs, TcpProxy, TestNode, UdpProxy},
    Connect, DialPath, Event, Send as SendMsg, SupervisorConfig,
};

/// Probing sped up tenfold (the defaults are for real networks): probes every 500 ms, a
/// probe lost after 1 s; the 2 s silence bound under traffic is the real one.
fn fast_paths() -> PathConfig {
    PathConfig { probe_interval: Duration::from_millis(500), probe_timeout: secs(1), ..PathConfig::default() }
}

async fn relay() -> RelayHandle {
    RelayServer::start(RelayServerConfig::new("127.0.0.1:0".parse().unwrap(), Admission::open()))
        .await
        .expect("relay starts")
}

async fn node(seed: u8, protocols: Vec<Protocol>, relay: Option<&RelayHandle>) -> TestNode {
    let relays: Vec<RelayEndpoint> =
        relay.map(|r| RelayEndpoint { url: r.url.clone(), token: None }).into_iter().collect();
    TestNode::start_with(seed, move |c: &mut SupervisorConfig| {
        c.protocols = protocols;
        c.relays = relays;
        c.paths = fast_paths();
    })
    .await
    .unwrap()
}

fn tcp_addr(t: &PeerAddress) -> std::net::SocketAddr {
    t.addrs.iter().find_map(|a| if let TransportAddr::Tcp(s) = a { Some(*s) } else { None }).unwrap()
}

fn number(e: &Event) -> Option<u32> {
    match e {
        Event::MessageReceived { data, .. } if data.len() == 4 => {
            Some(u32::from_be_bytes(data[..4].try_into().unwrap()))
        }
        _ => None,
    }
}

async fn wait_change(n: &mut TestNode, reason: ChangeReason, within: Duration) -> (PathKind, PathKind) {
    let ev = n
        .wait_for(|e| matches!(e, Event::PathChanged { reason: r, .. } if *r == reason), within)
        .await
        .unwrap_or_else(|e| panic!("no {} change: {e}", reason.name()));
    let Event::PathChanged { from, to, .. } = ev else { unreachable!() };
    (from.path, to.path)
}

#[actix_rt::test]
async fn a_silently_dead_direct_path_fails_over_to_the_relay_and_recovers_without_losing_a_message() {
    let r = relay().await;
    let mut a = node(120, vec![Protocol::Tcp], Some(&r)).await;
    let mut b = node(121, vec![Protocol::Tcp], Some(&r)).await;
    b.wait_reserved(secs(10)).await.unwrap();
    // Relayed first (the standby), then direct TCP through a forwarder that can go silent.
    let relayed = a.addr.send(Connect { addr: PeerAddress::new(b.peer, vec![]) }).await.unwrap().unwrap();
    assert_eq!(relayed.path, PathKind::Relayed);
    let proxy = TcpProxy::start(tcp_addr(&b.ticket().await.unwrap())).await.unwrap();
    let direct = PeerAddress::new(b.peer, vec![TransportAddr::Tcp(proxy.addr())]);
    a.addr.send(DialPath { addr: direct }).await.unwrap().unwrap();
    assert_eq!(
        wait_change(&mut a, ChangeReason::Upgrade, secs(10)).await,
        (PathKind::Relayed, PathKind::Direct)
    );

    // 3000 numbered messages, sent steadily across the blackhole and its end, in runs of
    // ten through each way of sending: `Send`, a `GetSender` handle, its `send_many`.
    const N: u32 = 3000;
    let sender = a.addr.clone();
    let peer = b.peer;
    let handle = a.addr.send(GetSender { peer }).await.unwrap().unwrap();
    let pump = actix_rt::spawn(async move {
        let msg = |n: u32| Bytes::from(n.to_be_bytes().to_vec());
        for run in 0..N / 10 {
            let numbers = run * 10..run * 10 + 10;
            match run % 3 {
                0 => {
                    for n in numbers {
                        sender.send(SendMsg { peer, data: msg(n) }).await.unwrap().unwrap();
                    }
                }
                1 => {
                    for n in numbers {
                        handle.send(msg(n)).await.unwrap();
                    }
                }
                _ => handle.send_many(numbers.map(msg).collect()).await.unwrap(),
            }
            if run % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set_blackhole(true);
    assert_eq!(
        wait_change(&mut a, ChangeReason::Failover, secs(10)).await,
        (PathKind::Direct, PathKind::Relayed)
    );
    tokio::time::sleep(secs(1)).await;
    proxy.set_blackhole(false);
    assert_eq!(
        wait_change(&mut a, ChangeReason::Recovered, secs(10)).await,
        (PathKind::Relayed, PathKind::Direct)
    );
    pump.await.unwrap();

    let mut next = 0u32;
    while next < N {
        let ev = b.wait_for(|e| number(e).is_some(), secs(20)).await.unwrap();
        let got = number(&ev).unwrap();
        assert_eq!(got, next, "message {got} arrived when {next} was due");
        next += 1;
    }
    // And nothing twice afterwards.
    assert!(b.wait_for(|e| number(e).is_some(), Duration::from_millis(500)).await.is_err());
    let stats = a.stats().await.unwrap();
    assert!(stats.path_changes >= 3, "{}", stats.path_changes);
}

#[actix_rt::test]
async fn a_clearly_faster_path_of_the_same_tier_takes_over_and_similar_ones_do_not_flap() {
    let mut a = node(122, vec![Protocol::Quic, Protocol::Tcp], None).await;
    let b = node(123, vec![Protocol::Quic, Protocol::Tcp], None).await;
    let ticket = b.ticket().await.unwrap();
    let quic = ticket
        .addrs
        .iter()
        .find_map(|x| if let TransportAddr::Quic(s) = x { Some(*s) } else { None })
        .unwrap();
    // QUIC through a forwarder adding 40 ms each way: the first path, and a slow one.
    let slow = UdpProxy::start(quic).await.unwrap();
    slow.set_delay(Duration::from_millis(40));
    let info = a
        .addr
        .send(Connect { addr: PeerAddress::new(b.peer, vec![TransportAddr::Quic(slow.addr())]) })
        .await
        .unwrap();
    assert_eq!(info.unwrap().protocol, Protocol::Quic);
    // A direct TCP path beside it: same tier, ~100× faster.
    let tcp = PeerAddress::new(b.peer, vec![TransportAddr::Tcp(tcp_addr(&ticket))]);
    a.addr.send(DialPath { addr: tcp }).await.unwrap().unwrap();
    let ev = a
        .wait_for(|e| matches!(e, Event::PathChanged { reason: ChangeReason::Better, .. }), secs(10))
        .await
        .unwrap();
    let seen = describe(&ev);
    let Event::PathChanged { from, to, .. } = ev else { unreachable!() };
    assert_eq!((from.protocol, to.protocol), (Protocol::Quic, Protocol::Tcp), "{seen}");
    // Stays there: no change back and forth over the next seconds of probing.
    let flap = a.wait_for(|e| matches!(e, Event::PathChanged { .. }), secs(4)).await;
    assert!(flap.is_err(), "flapped: {}", flap.map(|e| describe(&e)).unwrap_or_default());
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.connections.len(), 1);
    assert_eq!(stats.connections[0].protocol, Protocol::Tcp);
    assert!(stats.paths.iter().any(|p| p.info.protocol == Protocol::Quic && !p.active));
}

#[actix_rt::test]
async fn a_node_without_the_session_layer_exchanges_plain_messages_both_ways() {
    let mut a = node(122, vec![Protocol::Tcp], None).await;
    let mut b = TestNode::start_with(123, |c: &mut SupervisorConfig| {
        c.protocols = vec![Protocol::Tcp];
        c.node.session_layer = false;
    })
    .await
    .unwrap();
    a.addr.send(Connect { addr: b.ticket().await.unwrap() }).await.unwrap().unwrap();
    const N: u32 = 200;
    let msg = |n: u32| Bytes::from(n.to_be_bytes().to_vec());
    let handle = a.addr.send(GetSender { peer: b.peer }).await.unwrap().unwrap();
    for n in 0..N {
        match n % 3 {
            0 => a.addr.send(SendMsg { peer: b.peer, data: msg(n) }).await.unwrap().unwrap(),
            1 => handle.send(msg(n)).await.unwrap(),
            _ => handle.send_many(vec![msg(n)]).await.unwrap(),
        }
        b.addr.send(SendMsg { peer: a.peer, data: msg(n) }).await.unwrap().unwrap();
    }
    // Exactly the application's bytes (no session header), in order, both ways.
    for n in 0..N {
        let got = number(&b.wait_for(|e| number(e).is_some(), secs(10)).await.unwrap());
        assert_eq!(got, Some(n));
        let got = number(&a.wait_for(|e| number(e).is_some(), secs(10)).await.unwrap());
        assert_eq!(got, Some(n));
    }
}
