//! Connection pool over real TCP on loopback.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use kizuna::{
    pool::{ConnectionPool, PoolConfig},
    transport::tcp::TcpTransport,
    wire::CloseCode,
    Connection, Incoming, Keypair, LocalNode, NodeConfig, PeerAddress, Transport, TransportAddr,
    TransportError,
};
use tokio::sync::mpsc;

fn node() -> Arc<LocalNode> {
    LocalNode::new(NodeConfig::new(Keypair::generate())).unwrap()
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("test step timed out")
}

/// A listening server; every inbound connection is reported on the channel (and kept).
async fn server() -> (PeerAddress, mpsc::Receiver<Connection>) {
    let n = node();
    let mut l = TcpTransport::new(n.clone())
        .listen(&TransportAddr::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = PeerAddress::new(n.peer_id(), vec![l.local_addr()]);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _node = n;
        while let Some(i) = l.accept().await {
            if let Incoming::Connection(c) = i {
                if tx.send(c).await.is_err() {
                    break;
                }
            }
        }
    });
    (addr, rx)
}

fn pool(config: PoolConfig) -> ConnectionPool {
    let t: Arc<dyn Transport> = Arc::new(TcpTransport::new(node()));
    ConnectionPool::new(vec![t], config)
}

fn local(c: &Connection) -> SocketAddr {
    c.info().local_addr.unwrap()
}

/// No further inbound connection arrives within a short while.
async fn no_more(rx: &mut mpsc::Receiver<Connection>) {
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err(),
        "unexpected extra dial"
    );
}

#[tokio::test]
async fn get_reuses_a_live_connection() {
    let (addr, mut inbound) = server().await;
    let p = pool(PoolConfig::default());
    let a = within(p.get(&addr)).await.unwrap();
    let b = within(p.get(&addr)).await.unwrap();
    assert_eq!(local(&a), local(&b));
    assert_eq!(p.connections(&addr.peer_id), 1);
    assert_eq!(p.peers(), vec![addr.peer_id]);
    within(inbound.recv()).await.unwrap();
    no_more(&mut inbound).await;
}

#[tokio::test]
async fn concurrent_gets_share_one_dial() {
    let (addr, mut inbound) = server().await;
    let p = pool(PoolConfig::default());
    let gets: Vec<_> = (0..16)
        .map(|_| {
            let (p, addr) = (p.clone(), addr.clone());
            tokio::spawn(async move { p.get(&addr).await.unwrap() })
        })
        .collect();
    let mut locals = Vec::new();
    for g in gets {
        locals.push(local(&within(g).await.unwrap()));
    }
    locals.dedup();
    assert_eq!(locals.len(), 1, "all callers got the one connection");
    within(inbound.recv()).await.unwrap();
    no_more(&mut inbound).await;
}

#[tokio::test]
async fn acquire_hands_out_distinct_connections_up_to_the_limit() {
    let (addr, _inbound) = server().await;
    let p = pool(PoolConfig { max_per_peer: 3, ..PoolConfig::default() });
    let g1 = within(p.acquire(&addr)).await.unwrap();
    let g2 = within(p.acquire(&addr)).await.unwrap();
    let g3 = within(p.acquire(&addr)).await.unwrap();
    let mut l = vec![local(&g1), local(&g2), local(&g3)];
    l.sort();
    l.dedup();
    assert_eq!(l.len(), 3, "busy connections are not shared");
    assert_eq!(p.connections(&addr.peer_id), 3);

    // At the limit with all busy, a fourth caller waits for a return.
    let waiter = {
        let (p, addr) = (p.clone(), addr.clone());
        tokio::spawn(async move { local(&p.acquire(&addr).await.unwrap()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    let returned = local(&g2);
    drop(g2);
    assert_eq!(within(waiter).await.unwrap(), returned);
    // `get` still shares whatever is there, without dialing more.
    let shared = within(p.get(&addr)).await.unwrap();
    assert!([local(&g1), returned, local(&g3)].contains(&local(&shared)));
    assert_eq!(p.connections(&addr.peer_id), 3);
}

#[tokio::test]
async fn closed_connections_are_dropped_and_replaced() {
    let (addr, mut inbound) = server().await;
    let p = pool(PoolConfig::default());
    let a = within(p.get(&addr)).await.unwrap();
    let server_side = within(inbound.recv()).await.unwrap();
    // The peer closes it; the pool notices and dials afresh.
    server_side.close(CloseCode::Normal, "bye").await;
    within(async {
        while a.is_connected() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(p.connections(&addr.peer_id), 0);
    let b = within(p.get(&addr)).await.unwrap();
    assert_ne!(local(&a), local(&b));
    assert!(b.is_connected());
    within(inbound.recv()).await.unwrap();
}

#[tokio::test]
async fn sweep_closes_idle_connections_but_not_busy_ones() {
    let (addr, _inbound) = server().await;
    let idle = Duration::from_secs(60);
    let p = pool(PoolConfig { max_per_peer: 2, idle_timeout: idle });
    let first = within(p.acquire(&addr)).await.unwrap();
    let busy = within(p.acquire(&addr)).await.unwrap();
    let returned = first.connection().clone();
    assert_ne!(local(&returned), local(&busy));
    drop(first);
    assert_eq!(p.sweep(Instant::now()).await, 0, "nothing idle yet");
    assert_eq!(p.sweep(Instant::now() + idle + Duration::from_secs(1)).await, 1);
    assert!(!returned.is_connected());
    assert!(busy.is_connected());
    assert_eq!(p.connections(&addr.peer_id), 1);
    drop(busy);
    // Returned now: idle from now on.
    assert_eq!(p.sweep(Instant::now() + idle + Duration::from_secs(1)).await, 1);
    assert_eq!(p.connections(&addr.peer_id), 0);
    assert!(p.peers().is_empty());
}

#[tokio::test]
async fn a_failed_dial_reaches_every_waiting_caller() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = PeerAddress::new(
        node().peer_id(),
        vec![TransportAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))],
    );
    let p = pool(PoolConfig::default());
    let (a, b) = tokio::join!(p.get(&addr), p.get(&addr));
    for r in [a, b] {
        assert!(matches!(r, Err(TransportError::ConnectFailed { .. })), "{r:?}");
    }
    assert!(matches!(within(p.acquire(&addr)).await, Err(TransportError::ConnectFailed { .. })));
    // The failed acquire gave its dial slot back.
    assert!(matches!(within(p.acquire(&addr)).await, Err(TransportError::ConnectFailed { .. })));
    let none = PeerAddress::new(node().peer_id(), vec![]);
    assert!(matches!(p.get(&none).await, Err(TransportError::ConnectFailed { .. })));
}

#[tokio::test]
async fn inbound_connections_can_be_pooled() {
    let (addr, mut inbound) = server().await;
    let client = node();
    let conn = within(TcpTransport::new(client).connect(&addr.addrs[0], addr.peer_id)).await.unwrap();
    let server_side = within(inbound.recv()).await.unwrap();
    let p = pool(PoolConfig::default());
    assert!(p.insert(server_side.clone()));
    assert_eq!(conn.peer(), addr.peer_id);
    let got = within(p.get(&PeerAddress::new(server_side.peer(), vec![]))).await.unwrap();
    assert_eq!(local(&got), local(&server_side));
    p.close_all().await;
    assert!(!server_side.is_connected());
}
