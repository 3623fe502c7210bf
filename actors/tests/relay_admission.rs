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
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::Message;

/// Connections in each crowd: more than the relay's 256 handshake slots.
const CROWD: usize = 400;

/// Opens `n` connections to `to` from `from`, writing `first` on each, and keeps them.
async fn crowd(from: &str, to: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        // A refused connection may be reset before `connect` returns: the crowd goes on.
        let Ok(mut c) = s.connect(to).await else { continue };
        if !first.is_empty() {
            let _ = c.write_all(first).await;
        }
        v.push(c);
    }
    v
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
