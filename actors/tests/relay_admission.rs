//! The relay under a crowd, from raw sockets: idle connections and unfinished WebSocket
//! upgrades from one loopback address (127.0.0.2) must not keep a client from another
//! (127.0.0.1) out, the stats endpoint keeps answering beside idle sockets, and every
//! handshake-time violation is counted.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod relay_client;

use std::{net::SocketAddr, time::Duration};

use futures_util::SinkExt;
use kizuna::relay::{auth::Admission, ErrorCode};
use kizuna_actors::relay::GetRelayMetrics;
use relay_client::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

/// Connections in each crowd: more than the relay's 256 handshake slots.
const CROWD: usize = 400;

/// `n` connections to `to` from `from`, each writing `first`, kept open.
async fn crowd(from: &str, to: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    kizuna_actors::testing::crowd(from.parse().unwrap(), to, n, first).await
}

fn sock(url: &str) -> SocketAddr {
    url.trim_start_matches("ws://").trim_end_matches('/').parse().unwrap()
}

/// A relay whose silent clients would keep their slot for a minute.
fn patient_config() -> kizuna_actors::relay::RelayServerConfig {
    let mut cfg = config(Admission::open());
    cfg.handshake_limits.first_byte_timeout = Duration::from_secs(60);
    cfg.stats_addr = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

#[actix_rt::test]
async fn a_crowd_from_one_address_does_not_delay_relay_clients_from_another() {
    let relay = start(patient_config()).await;
    let url = relay.url.clone();
    let upgrade = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let _idle = crowd("127.0.0.2", sock(&url), CROWD, b"").await;
    let _upgrades = crowd("127.0.0.2", sock(&url), 300, upgrade).await;

    // A reservation and a circuit through it, like `kizuna ping PEER --relay`: each login
    // is bounded by T (10 s) in the helpers, and the crowd would hold its slots for 60 s.
    let mut cb = reserve(&url, &key(2)).await;
    let (mut a, mut b) = circuit(&url, &key(1), &key(2), &mut cb).await;
    a.send(Message::Binary(vec![7u8; 32].into())).await.unwrap();
    assert!(matches!(next(&mut b).await, Got::Data(d) if d.len() == 32));

    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    let h = m.handshakes;
    // The crowd never held more than its 16 slots: the rest were rotated or refused.
    assert!(h.evicted + h.refused_per_address >= (CROWD + 300 - 2 * 16) as u64, "{h:?}");
    assert!(h.completed >= 3, "{h:?}");
}

async fn http_get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

#[actix_rt::test]
async fn the_stats_endpoint_answers_beside_idle_connections_from_the_same_address() {
    let relay = start(patient_config()).await;
    let stats = relay.stats_addr.unwrap();
    let _idle = crowd("127.0.0.1", stats, 40, b"").await;
    // A single pool of 16 slots held 5 s each by idle sockets would answer only after
    // 10-15 s, beyond `http_get`'s bound (T = 10 s).
    let answer = http_get(stats).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert!(m.handshakes.evicted >= 30, "{:?}", m.handshakes);
}

#[actix_rt::test]
async fn every_handshake_time_violation_is_counted() {
    let relay = start(config(Admission::open())).await;
    let url = relay.url.as_str();
    const N: u64 = 30;
    for _ in 0..N {
        // Garbage instead of the auth message.
        let mut w = raw_connect(url, Some("kizuna")).await.unwrap();
        let _challenge = next(&mut w).await;
        w.send(Message::Binary(vec![0xc1, 0xff, 0x00].into())).await.unwrap();
        expect_refused(&mut w, ErrorCode::ProtocolViolation).await;
    }
    for _ in 0..N {
        // Not a WebSocket upgrade at all.
        let mut s = TcpStream::connect(sock(url)).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(T, s.read_to_end(&mut sink)).await;
    }
    // The relay counts right after it answered: give the last one a moment.
    let deadline = std::time::Instant::now() + T;
    loop {
        let h = relay.addr.send(GetRelayMetrics).await.unwrap().handshakes;
        if h.violations >= 2 * N {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{h:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn seventy_throwaway_keys_dialing_a_node_do_not_keep_a_legitimate_peer_out() {
    use kizuna::{relay::client::RelayEndpoint, relay::Purpose, Keypair, PeerAddress};
    use kizuna_actors::{
        testing::{secs, TestNode},
        Connect, Event, Send as SendMsg,
    };

    let relay = start(strict_config(Admission::open())).await;
    let endpoint = RelayEndpoint { url: relay.url.clone(), token: None };
    let relayed = |seed: u8| {
        let endpoint = endpoint.clone();
        TestNode::start_with(seed, move |c| {
            c.protocols = vec![];
            c.relays = vec![endpoint];
        })
    };
    let mut target = relayed(80).await.unwrap();
    target.wait_reserved(secs(10)).await.unwrap();

    // 70 throwaway keys from 127.0.0.2 dial the node through the relay and then never
    // speak: the node accepts each circuit and waits for a TLS ClientHello that never comes.
    // One at a time (each waits until the relay counted it), so that the relay's
    // handshake admission, which caps concurrent handshakes per address, lets every
    // dial through to the circuit rules under test.
    let mut attackers = Vec::new();
    for i in 0..70u32 {
        let before = relay.addr.send(GetRelayMetrics).await.unwrap().totals.connections;
        let k = Keypair::from_seed(*blake(i));
        attackers.push(login_from(&relay.url, "127.0.0.2", &k, Purpose::Dial { target: target.peer }).await);
        let deadline = std::time::Instant::now() + T;
        while relay.addr.send(GetRelayMetrics).await.unwrap().totals.connections == before {
            assert!(std::time::Instant::now() < deadline, "dial {i} never authenticated");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    // A legitimate peer (from 127.0.0.1) reaches the node by its id alone, right away.
    let client = relayed(81).await.unwrap();
    let info = client.addr.send(Connect { addr: PeerAddress::new(target.peer, vec![]) }).await.unwrap();
    let info = info.expect("legitimate peer connects through the relay beside 70 throwaway keys");
    assert_eq!(info.path, kizuna::PathKind::Relayed);
    client.addr.send(SendMsg { peer: target.peer, data: "hello".into() }).await.unwrap().unwrap();
    target
        .wait_for(|e| matches!(e, Event::MessageReceived { data, .. } if &data[..] == b"hello"), secs(10))
        .await
        .unwrap();

    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    // The crowd's address never held more than half the target's unconfirmed slots; the
    // rest of its dials were refused or made room for its own newer ones.
    let h = &m.limit_hits;
    assert!(m.circuits_unconfirmed <= 8, "{m:?}");
    // (A slot the node freed by closing a circuit may be taken again by a later dial.)
    assert!(h.unconfirmed_refused + h.unconfirmed_evicted >= 70 - 16, "{h:?}");
    assert_eq!(h.circuits_per_peer, 0, "the target's circuit limit was never reached: {h:?}");
    drop(attackers);
}

/// 32 distinct bytes from `i` (a throwaway key's seed).
fn blake(i: u32) -> Box<[u8; 32]> {
    let d = ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Box::new(out)
}
