//! Relayed connections end to end through a real relay on loopback: connect by peer id,
//! bulk integrity, the upgrade hook (relayed → direct, nothing lost or duplicated),
//! degradation without a relay, relay restart and failover.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use bytes::Bytes;
use kizuna::{relay::auth::Admission, relay::client::RelayEndpoint, PathKind, PeerAddress, Protocol};
use kizuna_actors::{
    relay::{RelayHandle, RelayServer, RelayServerConfig, StopRelay},
    testing::{secs, TestNode},
    Connect, Event, OpenStream, Send as SendMsg,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn relay_on(listen: SocketAddr) -> RelayHandle {
    RelayServer::start(RelayServerConfig::new(listen, Admission::open())).await.expect("relay starts")
}

async fn relay() -> RelayHandle {
    relay_on("127.0.0.1:0".parse().unwrap()).await
}

fn endpoint(r: &RelayHandle) -> RelayEndpoint {
    RelayEndpoint { url: r.url.clone(), token: None }
}

/// A node that only reaches others through `relays` (no listeners of its own).
async fn relayed_node(seed: u8, relays: Vec<RelayEndpoint>) -> TestNode {
    TestNode::start_with(seed, move |c| {
        c.protocols = vec![];
        c.relays = relays;
    })
    .await
    .unwrap()
}

fn fnv(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[actix_rt::test]
async fn connect_by_peer_id_through_the_relay_and_move_64_mib() {
    let r = relay().await;
    let a = relayed_node(70, vec![endpoint(&r)]).await;
    let mut b = relayed_node(71, vec![endpoint(&r)]).await;
    b.wait_reserved(secs(10)).await.unwrap();
    // Only the peer id: the relay is the route.
    let info = a.addr.send(Connect { addr: PeerAddress::new(b.peer, vec![]) }).await.unwrap().unwrap();
    assert_eq!(info.path, PathKind::Relayed);
    assert_eq!(info.peer, b.peer);

    const TOTAL: usize = 64 << 20;
    let mut s = a.addr.send(OpenStream { peer: b.peer }).await.unwrap().unwrap();
    let writer = kizuna_actors::runtime::io_runtime().spawn(async move {
        let mut h = 0xcbf29ce484222325u64;
        let mut chunk = vec![0u8; 64 * 1024];
        for i in 0..TOTAL / chunk.len() {
            for (j, c) in chunk.iter_mut().enumerate() {
                *c = (i * 31 + j * 7) as u8;
            }
            h = fnv(&chunk, h);
            s.write_all(&chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        h
    });
    let ev = b.wait_for(|e| matches!(e, Event::StreamOpened { .. }), secs(10)).await.unwrap();
    let Event::StreamOpened { stream, .. } = ev else { unreachable!() };
    let mut rs = stream.take().unwrap();
    let reader = kizuna_actors::runtime::io_runtime().spawn(async move {
        let mut h = 0xcbf29ce484222325u64;
        let mut n = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let k = rs.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            h = fnv(&buf[..k], h);
            n += k;
        }
        (n, h)
    });
    let sent = writer.await.unwrap();
    let (n, got) = reader.await.unwrap();
    assert_eq!(n, TOTAL);
    assert_eq!(got, sent, "integrity through the relay");
}

#[actix_rt::test]
async fn direct_connection_replaces_the_relayed_one_without_loss_or_duplicates() {
    let r = relay().await;
    let url = r.url.clone();
    // a can dial TCP (for the upgrade) but first reaches b through the relay.
    let mut a = TestNode::start_with(72, move |c| {
        c.protocols = vec![Protocol::Tcp];
        c.relays = vec![RelayEndpoint { url, token: None }];
    })
    .await
    .unwrap();
    // b also listens on TCP: the direct path the upgrade will use.
    let url = r.url.clone();
    let mut b = TestNode::start_with(74, move |c| {
        c.protocols = vec![Protocol::Tcp];
        c.relays = vec![RelayEndpoint { url, token: None }];
    })
    .await
    .unwrap();
    b.wait_reserved(secs(10)).await.unwrap();
    let info = a.addr.send(Connect { addr: PeerAddress::new(b.peer, vec![]) }).await.unwrap().unwrap();
    assert_eq!(info.path, PathKind::Relayed);

    // Messages flow continuously through the supervisor while the path changes.
    const N: u32 = 3000;
    let sender = a.addr.clone();
    let bpeer = b.peer;
    let pump = actix_rt::spawn(async move {
        for n in 0..N {
            sender
                .send(SendMsg { peer: bpeer, data: Bytes::from(n.to_be_bytes().to_vec()) })
                .await
                .unwrap()
                .unwrap();
            if n % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let direct = b.ticket_for(Protocol::Tcp).await.unwrap();
    let up = a.addr.send(Connect { addr: direct }).await.unwrap().unwrap();
    assert_eq!(up.path, PathKind::Direct);
    let ev = a.wait_for(|e| matches!(e, Event::PathChanged { .. }), secs(10)).await.unwrap();
    let Event::PathChanged { from, to, reason, .. } = ev else { unreachable!() };
    assert_eq!(reason, kizuna::peer::ChangeReason::Upgrade);
    assert_eq!((from.path, to.path), (PathKind::Relayed, PathKind::Direct));
    pump.await.unwrap();

    let mut seen = BTreeSet::new();
    while seen.len() < N as usize {
        let ev = b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(10)).await.unwrap();
        let Event::MessageReceived { data, .. } = ev else { unreachable!() };
        let n = u32::from_be_bytes(data[..4].try_into().unwrap());
        assert!(seen.insert(n), "message {n} delivered twice");
    }
    assert_eq!(seen.len(), N as usize, "every message delivered exactly once");
    // And nothing more arrives (no duplicate after the fact).
    let extra = b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), Duration::from_millis(300)).await;
    assert!(extra.is_err(), "unexpected extra message: {extra:?}");
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.connections.len(), 1);
    assert_eq!(stats.connections[0].path, PathKind::Direct);
}

#[actix_rt::test]
async fn no_reachable_relay_fails_connect_clearly() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("ws://{port}");
    let mut a = relayed_node(75, vec![RelayEndpoint { url: url.clone(), token: None }]).await;
    let other = kizuna_actors::testing::seeded_keypair(76).peer_id();
    let e = a.addr.send(Connect { addr: PeerAddress::new(other, vec![]) }).await.unwrap().unwrap_err();
    assert!(e.to_string().contains(&url), "{e}");
    a.wait_for(|e| matches!(e, Event::ConnectFailed { .. }), secs(5)).await.unwrap();
    a.wait_for(|e| matches!(e, Event::RelayFailed { .. }), secs(5)).await.unwrap();
}

#[actix_rt::test]
async fn relay_restart_is_recovered_and_new_connects_work() {
    let r = relay().await;
    let listen = r.local_addr;
    let a = relayed_node(77, vec![endpoint(&r)]).await;
    let mut b = relayed_node(78, vec![endpoint(&r)]).await;
    b.wait_reserved(secs(10)).await.unwrap();
    r.addr.send(StopRelay).await.unwrap();
    b.wait_for(|e| matches!(e, Event::RelayFailed { .. }), secs(10)).await.unwrap();
    let _r2 = relay_on(listen).await;
    // The client re-reserves by itself, within seconds.
    b.wait_reserved(secs(15)).await.unwrap();
    let info = a.addr.send(Connect { addr: PeerAddress::new(b.peer, vec![]) }).await.unwrap().unwrap();
    assert_eq!(info.path, PathKind::Relayed);
}

#[actix_rt::test]
async fn fails_over_to_the_second_relay() {
    let r1 = relay().await;
    let r2 = relay().await;
    let mut b = relayed_node(79, vec![endpoint(&r1), endpoint(&r2)]).await;
    assert_eq!(b.wait_reserved(secs(10)).await.unwrap(), r1.url);
    r1.addr.send(StopRelay).await.unwrap();
    assert_eq!(b.wait_reserved(secs(15)).await.unwrap(), r2.url);
    let a = relayed_node(80, vec![endpoint(&r2)]).await;
    let info = a.addr.send(Connect { addr: PeerAddress::new(b.peer, vec![]) }).await.unwrap().unwrap();
    assert_eq!(info.path, PathKind::Relayed);
    a.addr.send(SendMsg { peer: b.peer, data: "via r2".into() }).await.unwrap().unwrap();
    b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(5)).await.unwrap();
}
