//! WebRTC between two nodes (supervisors) on loopback, signaled through a real relay:
//! connect, events, messages, datagrams, a 16 MiB stream; garbage and forged signals sent
//! through the relay leave the node serving.
#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod relay_client;

use bytes::Bytes;
use kizuna::{
    relay::{auth::Admission, client::RelayEndpoint, RelayMessage},
    transport::webrtc::{SignalKind, SignalMessage, WebRtcConfig},
    PeerAddress, Protocol, TransportAddr,
};
use kizuna_actors::{
    relay::RelayHandle,
    testing::{secs, TestNode},
    Connect, Event, OpenStream, Send as SendMsg, SendDatagram,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node with only WebRTC (loopback candidates), signaling through `relay`.
async fn webrtc_node(seed: u8, relay: &RelayHandle) -> TestNode {
    let url = relay.url.clone();
    let mut n = TestNode::start_with(seed, move |c| {
        c.protocols = vec![Protocol::WebRtc];
        c.webrtc = WebRtcConfig::loopback();
        c.relays = vec![RelayEndpoint { url, token: None }];
    })
    .await
    .unwrap();
    n.wait_reserved(secs(10)).await.unwrap();
    n
}

async fn relay() -> RelayHandle {
    relay_client::start(relay_client::config(Admission::open())).await
}

async fn connect(a: &TestNode, b: &TestNode) -> kizuna::ConnectionInfo {
    let ticket = PeerAddress::new(b.peer, vec![TransportAddr::WebRtc]);
    a.addr.send(Connect { addr: ticket }).await.unwrap().unwrap()
}

#[actix_rt::test]
async fn two_nodes_connect_over_webrtc_and_move_messages_datagrams_and_16_mib() {
    let r = relay().await;
    let mut a = webrtc_node(80, &r).await;
    let mut b = webrtc_node(81, &r).await;
    let info = connect(&a, &b).await;
    assert_eq!(info.protocol, Protocol::WebRtc);
    assert_eq!(info.peer, b.peer);
    let ev = b.wait_for(|e| matches!(e, Event::PeerConnected { .. }), secs(10)).await.unwrap();
    let Event::PeerConnected { info } = ev else { unreachable!() };
    assert_eq!((info.peer, info.protocol), (a.peer, Protocol::WebRtc));

    // Messages both ways through the supervisor.
    a.addr.send(SendMsg { peer: b.peer, data: Bytes::from_static(b"hello b") }).await.unwrap().unwrap();
    let ev = b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(10)).await.unwrap();
    assert!(matches!(ev, Event::MessageReceived { peer, data } if peer == a.peer && &data[..] == b"hello b"));
    b.addr.send(SendMsg { peer: a.peer, data: Bytes::from_static(b"hello a") }).await.unwrap().unwrap();
    let ev = a.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(10)).await.unwrap();
    assert!(matches!(ev, Event::MessageReceived { peer, data } if peer == b.peer && &data[..] == b"hello a"));

    // Datagrams (unreliable: retry until one arrives).
    let mut got = None;
    for _ in 0..50 {
        a.addr.send(SendDatagram { peer: b.peer, data: Bytes::from_static(b"dg") }).await.unwrap().unwrap();
        if let Ok(ev) = b.wait_for(|e| matches!(e, Event::DatagramReceived { .. }), secs(1) / 5).await {
            got = Some(ev);
            break;
        }
    }
    assert!(
        matches!(got, Some(Event::DatagramReceived { peer, data }) if peer == a.peer && &data[..] == b"dg")
    );

    // 16 MiB over a stream, integrity checked.
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let expected = data.clone();
    let mut s = a.addr.send(OpenStream { peer: b.peer }).await.unwrap().unwrap();
    let writer = kizuna_actors::runtime::io_runtime().spawn(async move {
        s.write_all(&data).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let ev = b.wait_for(|e| matches!(e, Event::StreamOpened { .. }), secs(10)).await.unwrap();
    let Event::StreamOpened { stream, .. } = ev else { unreachable!() };
    let mut rs = stream.take().unwrap();
    let reader = kizuna_actors::runtime::io_runtime().spawn(async move {
        let mut got = Vec::with_capacity(16 << 20);
        rs.read_to_end(&mut got).await.unwrap();
        got
    });
    let got = tokio::time::timeout(secs(120), reader).await.unwrap().unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "stream bytes differ");
}

#[actix_rt::test]
async fn garbage_and_forged_signals_through_the_relay_leave_the_node_serving() {
    let r = relay().await;
    let mut b = webrtc_node(83, &r).await;
    // A hostile peer with a reservation sends WebRTC-tagged garbage and forgeries to b.
    let evil = relay_client::key(84);
    let mut ws = relay_client::reserve(&r.url, &evil).await;
    let forged_offer =
        SignalMessage::signed(&relay_client::key(85), &b.peer, 9, SignalKind::Offer, "v=0".into());
    let payloads: Vec<Vec<u8>> = vec![
        vec![0x14],
        vec![0x14, 0xc1],
        vec![0x14, 0x81, 0xa4, b'k', b'i', b'n', b'd', 0x01],
        vec![0x14; 16_000],
        forged_offer.encode().unwrap(),
        SignalMessage::unsigned(1, SignalKind::Candidate, "candidate:x".into(), None).encode().unwrap(),
        SignalMessage::unsigned(1, SignalKind::Answer, "v=0".into(), None).encode().unwrap_or_default(),
    ];
    for p in payloads {
        relay_client::send(&mut ws, &RelayMessage::Signal { to: b.peer, payload: p }).await;
    }
    // b answers the forged offer with a `close` (and nothing else): the forgery failed.
    let close = loop {
        match relay_client::next(&mut ws).await {
            relay_client::Got::Msg(RelayMessage::Signaled { from, payload }) if from == b.peer => {
                break SignalMessage::decode(&payload).unwrap();
            }
            relay_client::Got::Msg(_) => {}
            other => panic!("relay connection ended: {other:?}"),
        }
    };
    assert_eq!((close.kind, close.session), (SignalKind::Close, 9));
    assert!(close.sdp.contains("signature"), "{}", close.sdp);

    // Still serving: a real peer connects over WebRTC and talks.
    let a = webrtc_node(86, &r).await;
    let info = connect(&a, &b).await;
    assert_eq!(info.protocol, Protocol::WebRtc);
    a.addr.send(SendMsg { peer: b.peer, data: Bytes::from_static(b"ok") }).await.unwrap().unwrap();
    let ev = b.wait_for(|e| matches!(e, Event::MessageReceived { .. }), secs(10)).await.unwrap();
    assert!(matches!(ev, Event::MessageReceived { data, .. } if &data[..] == b"ok"));
}
