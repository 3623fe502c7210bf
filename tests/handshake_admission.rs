//! Handshake admission on a node's TCP and WebSocket listeners, attacked from raw sockets:
//! a crowd of idle, truncated or unfinished connections from one loopback address must not
//! keep a client from another loopback address out.
//!
//! The crowd connects from 127.0.0.2, the legitimate client from 127.0.0.1 (both are on
//! `lo`). The crowd's first-byte deadline is set far beyond the connect bound (10 s), so
//! the legitimate dial can only succeed if admission keeps the crowd to its share: with a
//! single slot pool, the crowd would hold every slot until long after the dial gave up.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kizuna::{
    transport::{tcp::TcpTransport, ws::WsTransport},
    Incoming, Listener, LocalNode, NodeConfig, Transport, TransportAddr,
};
use tokio::{net::TcpStream, task::JoinHandle};

use common::*;

/// Connections in the crowd: more than the default total of 256 slots.
const CROWD: usize = 400;

/// A listening node whose silent clients would hold their slot for 60 s.
fn patient_server() -> Arc<LocalNode> {
    node_with(|c: &mut NodeConfig| c.first_byte_timeout = Duration::from_secs(60))
}

/// `n` connections to `to` from 127.0.0.2, each writing `first`, kept open.
async fn crowd(to: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    kizuna_actors::testing::crowd([127, 0, 0, 2].into(), to, n, first).await
}

/// A listener of transport `t` on `on`, served by [`serve`] until the test ends; its address.
async fn serving(t: impl Transport, on: &str) -> TransportAddr {
    let l = t.listen(&on.parse().unwrap()).await.unwrap();
    let addr = l.local_addr();
    drop(serve(l)); // detached
    addr
}

/// Accepts and drops whatever the listener yields, forever (a node that serves).
fn serve(mut l: Box<dyn Listener>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(i) = l.accept().await {
            if let Incoming::Connection(c) = i {
                kept.push(c);
            }
        }
    })
}

fn sock(addr: &TransportAddr) -> SocketAddr {
    match addr {
        TransportAddr::Tcp(a) => *a,
        TransportAddr::Ws(u) => u.trim_start_matches("ws://").trim_end_matches('/').parse().unwrap(),
        other => panic!("unexpected {other}"),
    }
}

/// The first 20 bytes of a TLS ClientHello record: a header announcing 512 bytes that
/// never come.
const TRUNCATED_CLIENT_HELLO: &[u8] =
    &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 1, 2, 3, 4, 5, 6, 7, 8, 9];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_crowd_from_one_address_does_not_delay_a_tcp_client_from_another() {
    let server = patient_server();
    let addr = serving(TcpTransport::new(server.clone()), "tcp=127.0.0.1:0").await;
    let _crowd = within(crowd(sock(&addr), CROWD, b"")).await;

    let client = node();
    let conn = TcpTransport::new(client).connect(&addr, server.peer_id()).await;
    assert!(conn.is_ok(), "legitimate dial failed beside an idle crowd: {:?}", conn.err());

    // The crowd only ever held its own 16 slots: each newcomer replaced its oldest idle one.
    let s = server.handshake_stats();
    assert!(s.evicted >= (CROWD - 2 * 16) as u64, "{s:?}");
    // The server side finishes its hello just after the client: wait for it to count.
    within(async {
        while server.handshake_stats().completed == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_client_hello_crowd_is_refused_beyond_its_share() {
    let server = patient_server();
    let addr = serving(TcpTransport::new(server.clone()), "tcp=127.0.0.1:0").await;
    let _crowd = within(crowd(sock(&addr), CROWD, TRUNCATED_CLIENT_HELLO)).await;
    // Give the listener time to read the crowd's bytes (so its handshakes are "talking").
    tokio::time::sleep(Duration::from_millis(300)).await;

    let conn = TcpTransport::new(node()).connect(&addr, server.peer_id()).await;
    assert!(conn.is_ok(), "legitimate dial failed beside a truncated-ClientHello crowd: {:?}", conn.err());
    let s = server.handshake_stats();
    assert!(s.refused_per_address + s.evicted >= (CROWD - 2 * 16) as u64, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_websocket_upgrades_do_not_delay_a_websocket_client() {
    let server = patient_server();
    let addr = serving(WsTransport::new(server.clone()), "ws=ws://127.0.0.1:0").await;
    let upgrade = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let _crowd = within(crowd(sock(&addr), CROWD, upgrade)).await;

    let conn = WsTransport::new(node()).connect(&addr, server.peer_id()).await;
    assert!(conn.is_ok(), "legitimate WebSocket dial failed beside unfinished upgrades: {:?}", conn.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_first_byte_deadline_and_counted() {
    let server = node_with(|c| c.first_byte_timeout = Duration::from_millis(200));
    let mut l = TcpTransport::new(server.clone())
        .listen(&TransportAddr::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = l.local_addr();
    let mut silent = TcpStream::connect(sock(&addr)).await.unwrap();
    // The server closes it: reading sees the end (or a reset) well before the 10 s bound.
    let mut b = [0u8; 1];
    let r = within(tokio::io::AsyncReadExt::read(&mut silent, &mut b)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert_eq!(server.handshake_stats().silent, 1);
    // Not reported as a rejection (a flood of them would flood the application's log);
    // the listener keeps serving.
    let client = node();
    let dial = TcpTransport::new(client.clone());
    let (c, s) = tokio::join!(dial.connect(&addr, server.peer_id()), next_connection(&mut l));
    c.unwrap();
    assert_eq!(s.peer(), client.peer_id());
}

#[tokio::test]
async fn unusable_admission_limits_are_a_config_error_naming_the_setting() {
    let mut c = NodeConfig::new(kizuna::Keypair::generate());
    c.max_pending_handshakes_per_address = 0;
    let e = LocalNode::new(c).unwrap_err();
    assert!(e.to_string().contains("max_pending_handshakes_per_address"), "{e}");
}
