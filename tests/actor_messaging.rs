//! Actor-harness tests of message routing, streams, backpressure, dial races and
//! graceful shutdown.

use std::time::Duration;

use bytes::Bytes;
use kizuna::Protocol;
use kizuna_actors::{
    api::{GetSender, Subscribe},
    testing::{secs, TestNode},
    Connect, Event, OpenStream, Send as SendMsg, Shutdown,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[actix_rt::test]
async fn messages_and_streams_route_both_ways_over_each_transport() {
    for (i, p) in [Protocol::Tcp, Protocol::Quic].into_iter().enumerate() {
        let seed = 20 + 2 * i as u8;
        let mut a = TestNode::start(seed).await.unwrap();
        let mut b = TestNode::start(seed + 1).await.unwrap();
        let info = a.addr.send(Connect { addr: b.ticket_for(p).await.unwrap() }).await.unwrap().unwrap();
        assert_eq!(info.protocol, p);
        for n in 0..20u32 {
            a.addr
                .send(SendMsg { peer: b.peer, data: Bytes::from(n.to_be_bytes().to_vec()) })
                .await
                .unwrap()
                .unwrap();
        }
        for n in 0..20u32 {
            let ev = b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(5)).await.unwrap();
            let Event::MessageReceived { peer, data } = ev else { unreachable!() };
            assert_eq!(peer, a.peer);
            assert_eq!(&data[..], &n.to_be_bytes(), "in order over {p}");
        }
        b.addr.send(SendMsg { peer: a.peer, data: "pong".into() }).await.unwrap().unwrap();
        a.wait_for(|e| matches!(e, Event::MessageReceived { data, .. } if &data[..] == b"pong"), secs(5))
            .await
            .unwrap();

        let mut s = a.addr.send(OpenStream { peer: b.peer }).await.unwrap().unwrap();
        s.write_all(b"stream hello").await.unwrap();
        s.shutdown().await.unwrap();
        let ev = b.wait_for(|e| matches!(e, Event::StreamOpened { .. }), secs(5)).await.unwrap();
        let Event::StreamOpened { stream, .. } = ev else { unreachable!() };
        let mut r = stream.take().expect("first taker gets the stream");
        assert!(stream.take().is_none());
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"stream hello");
    }
}

#[actix_rt::test]
async fn send_to_unknown_peer_and_unreachable_connect_fail_clearly() {
    let a = TestNode::start(30).await.unwrap();
    let other = kizuna_actors::testing::seeded_keypair(31).peer_id();
    let e = a.addr.send(SendMsg { peer: other, data: "x".into() }).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("not connected"), "{e}");
    // A port nobody listens on (bound and released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let t = format!("{other}@tcp={port}").parse().unwrap();
    let e = a.addr.send(Connect { addr: t }).await.unwrap().unwrap_err();
    assert!(e.to_string().contains(&port.to_string()), "{e}");
}

#[actix_rt::test]
async fn concurrent_connects_share_one_attempt() {
    let a = TestNode::start(32).await.unwrap();
    let mut b = TestNode::start(33).await.unwrap();
    let t = b.ticket().await.unwrap();
    let calls: Vec<_> = (0..10).map(|_| a.addr.send(Connect { addr: t.clone() })).collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(a.stats().await.unwrap().connections_established, 1);
    // b adopts its side once its listener hands the connection over (possibly after a's
    // dial returned); then it must have exactly one, and no second one may follow.
    b.wait_for(|e| matches!(e, Event::PeerConnected { .. }), secs(5)).await.unwrap();
    let second = b.wait_for(|e| matches!(e, Event::PeerConnected { .. }), Duration::from_millis(300)).await;
    assert!(second.is_err(), "a second connection: {second:?}");
    assert_eq!(b.stats().await.unwrap().connections_established, 1);
}

#[actix_rt::test]
async fn simultaneous_dials_leave_exactly_one_connection() {
    for round in 0..3u8 {
        let a = TestNode::start(40 + 2 * round).await.unwrap();
        let mut b = TestNode::start(41 + 2 * round).await.unwrap();
        let (ta, tb) = (a.ticket().await.unwrap(), b.ticket().await.unwrap());
        let (ra, rb) = tokio::join!(a.addr.send(Connect { addr: tb }), b.addr.send(Connect { addr: ta }));
        ra.unwrap().unwrap();
        rb.unwrap().unwrap();
        // Let any duplicate be closed, then both sides must agree on one connection.
        let mut settled = false;
        for _ in 0..100 {
            let (sa, sb) = (a.stats().await.unwrap(), b.stats().await.unwrap());
            if sa.connections.len() == 1 && sb.connections.len() == 1 {
                let (ca, cb) = (&sa.connections[0], &sb.connections[0]);
                if ca.local_addr.is_some() && ca.protocol == cb.protocol {
                    settled = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(settled, "round {round}: both nodes must end with exactly one connection");
        a.addr.send(SendMsg { peer: b.peer, data: "one".into() }).await.unwrap().unwrap();
        b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(5)).await.unwrap();
    }
}

#[actix_rt::test]
async fn slow_subscriber_bounds_the_senders_memory() {
    let a = TestNode::start_with(50, |c| c.protocols = vec![Protocol::Tcp]).await.unwrap();
    let b = TestNode::start_with(51, |c| c.protocols = vec![Protocol::Tcp]).await.unwrap();
    // A subscriber on b that does not read.
    let mut stalled = b.addr.send(Subscribe { capacity: 8 }).await.unwrap();
    a.connect(&b).await.unwrap();
    let sender = a.addr.send(GetSender { peer: b.peer }).await.unwrap().unwrap();
    const TOTAL: usize = 4000;
    let msg = Bytes::from(vec![7u8; 64 * 1024]);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let task = actix_rt::spawn(async move {
        for _ in 0..TOTAL {
            sender.send(msg.clone()).await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // Wait until the sender stops making progress.
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(std::sync::atomic::Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let stuck_at = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(stuck_at < TOTAL / 2, "sender must be held back by the stalled subscriber (sent {stuck_at})");
    // In flight: subscriber buffers + connection queues + socket buffers, all bounded.
    let in_flight_bytes = stuck_at * 64 * 1024;
    assert!(in_flight_bytes < 128 * 1024 * 1024, "{in_flight_bytes} bytes queued");
    // Resume: everything arrives, in order, nothing lost.
    let mut got = 0;
    while got < TOTAL {
        if let Event::MessageReceived { data, .. } =
            tokio::time::timeout(secs(20), stalled.recv()).await.unwrap().unwrap()
        {
            assert_eq!(data.len(), 64 * 1024);
            got += 1;
        }
    }
    task.await.unwrap();
}

#[actix_rt::test]
async fn graceful_shutdown_loses_no_acknowledged_message() {
    let a = TestNode::start(60).await.unwrap();
    let mut b = TestNode::start(61).await.unwrap();
    a.connect(&b).await.unwrap();
    const N: u32 = 500;
    for n in 0..N {
        a.addr
            .send(SendMsg { peer: b.peer, data: Bytes::from(n.to_be_bytes().to_vec()) })
            .await
            .unwrap()
            .unwrap();
    }
    a.addr.send(Shutdown).await.unwrap();
    for n in 0..N {
        let ev = b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(10)).await.unwrap();
        let Event::MessageReceived { data, .. } = ev else { unreachable!() };
        assert_eq!(&data[..], &n.to_be_bytes());
    }
    b.wait_for(|e| matches!(e, Event::PeerDisconnected { .. }), secs(10)).await.unwrap();
}
