//! WebRTC transport over real loopback sockets (two webrtc-rs peer connections, DTLS,
//! SCTP), signaled through an in-process signaler that can tamper with messages.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use kizuna::{
    transport::{
        webrtc::{SignalError, SignalKind, SignalMessage, Signaler, WebRtcConfig, WebRtcTransport},
        BoxFuture,
    },
    Connection, Incoming, Keypair, Listener, LocalNode, NodeConfig, PeerId, Transport, TransportAddr,
    TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

type Tamper = Arc<dyn Fn(SignalMessage) -> SignalMessage + Send + Sync>;
type ErrorCheck = fn(&SignalError) -> bool;

/// Delivers signals between transports in this process, like a relay would (the
/// sender's id is the authenticated `from`).
#[derive(Default)]
struct Switchboard {
    nodes: Mutex<HashMap<PeerId, WebRtcTransport>>,
    tamper: Mutex<Option<Tamper>>,
}

struct Port {
    board: Arc<Switchboard>,
    me: PeerId,
}

impl Signaler for Port {
    fn signal(&self, to: PeerId, payload: Vec<u8>) -> BoxFuture<'_, kizuna::error::Result<()>> {
        Box::pin(async move {
            let target = self.board.nodes.lock().unwrap().get(&to).cloned();
            let tamper = self.board.tamper.lock().unwrap().clone();
            let payload = match tamper {
                Some(f) => f(SignalMessage::decode(&payload).unwrap()).encode().unwrap(),
                None => payload,
            };
            if let Some(t) = target {
                if let Err(e) = t.handle_signal(self.me, &payload) {
                    eprintln!("signal refused: {e}");
                }
            }
            Ok(())
        })
    }
}

fn transport(board: &Arc<Switchboard>, seed: u8) -> (WebRtcTransport, PeerId) {
    let node = LocalNode::new(NodeConfig::new(Keypair::from_seed([seed; 32]))).unwrap();
    let id = node.peer_id();
    let t = WebRtcTransport::new(node, WebRtcConfig::loopback()).unwrap();
    t.set_signaler(Arc::new(Port { board: board.clone(), me: id }));
    board.nodes.lock().unwrap().insert(id, t.clone());
    (t, id)
}

async fn accept(listener: &mut Box<dyn Listener>) -> Connection {
    match tokio::time::timeout(WAIT, listener.accept()).await.unwrap() {
        Some(Incoming::Connection(c)) => c,
        other => panic!("expected a connection, got {other:?}"),
    }
}

struct Pair {
    board: Arc<Switchboard>,
    client: WebRtcTransport,
    client_id: PeerId,
    server: WebRtcTransport,
    server_id: PeerId,
    listener: Box<dyn Listener>,
}

async fn setup() -> Pair {
    let board = Arc::new(Switchboard::default());
    let (server, server_id) = transport(&board, 1);
    let (client, client_id) = transport(&board, 2);
    let listener = server.listen(&TransportAddr::WebRtc).await.unwrap();
    Pair { board, client, client_id, server, server_id, listener }
}

async fn connect(p: &mut Pair) -> (Connection, Connection) {
    let t0 = Instant::now();
    let (c, a) = tokio::join!(p.client.connect(&TransportAddr::WebRtc, p.server_id), accept(&mut p.listener));
    eprintln!("offer -> open: {:?}", t0.elapsed());
    (c.unwrap(), a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_datagrams_and_a_16_mib_stream() {
    let mut p = setup().await;
    let (c, s) = connect(&mut p).await;
    assert_eq!(s.peer(), p.client_id);
    assert_eq!(c.peer(), p.server_id);
    assert_eq!(c.protocol(), kizuna::Protocol::WebRtc);
    assert_eq!((c.info().path, s.info().path), (kizuna::PathKind::Direct, kizuna::PathKind::Direct));

    // Messages both ways, in order.
    for i in 0..100u32 {
        c.send(Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
    }
    for i in 0..100u32 {
        let m = tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(&m[..], &i.to_be_bytes());
    }
    s.send(Bytes::from_static(b"pong")).await.unwrap();
    assert_eq!(&tokio::time::timeout(WAIT, c.recv()).await.unwrap().unwrap().unwrap()[..], b"pong");

    // A datagram (loopback: no loss expected, but only one needs to arrive).
    let got = async {
        loop {
            c.send_datagram(Bytes::from_static(b"dgram")).unwrap();
            if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), s.recv_datagram()).await {
                return d;
            }
        }
    };
    assert_eq!(&tokio::time::timeout(WAIT, got).await.unwrap()[..], b"dgram");

    // 16 MiB over a stream, integrity checked.
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let expected = data.clone();
    let mut out = c.open_stream().await.unwrap();
    let writer = tokio::spawn(async move {
        out.write_all(&data).await.unwrap();
        out.shutdown().await.unwrap();
    });
    let mut inc = tokio::time::timeout(WAIT, s.accept_stream()).await.unwrap().unwrap().unwrap();
    let mut got = Vec::with_capacity(16 << 20);
    tokio::time::timeout(Duration::from_secs(120), inc.read_to_end(&mut got)).await.unwrap().unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "stream bytes differ");
}

/// Flips one hex digit of the DTLS fingerprint in an SDP.
fn tamper_fingerprint(sdp: &str) -> String {
    let at = sdp.find("a=fingerprint:").expect("SDP has a fingerprint");
    let colon = at + sdp[at..].find(' ').unwrap() + 1;
    let mut b = sdp.as_bytes().to_vec();
    b[colon] = if b[colon] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

fn tamper(p: &Pair, kind: SignalKind) {
    *p.board.tamper.lock().unwrap() = Some(Arc::new(move |mut m: SignalMessage| {
        if m.kind == kind {
            m.sdp = tamper_fingerprint(&m.sdp);
        }
        m
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_answer_fingerprint_fails_authentication() {
    let mut p = setup().await;
    tamper(&p, SignalKind::Answer);
    let e = tokio::time::timeout(WAIT, p.client.connect(&TransportAddr::WebRtc, p.server_id)).await.unwrap();
    match e {
        Err(TransportError::AuthenticationFailed { expected, .. }) => assert_eq!(expected, p.server_id),
        other => panic!("expected an authentication failure, got {other:?}"),
    }
    // The answering side gave up on that session too.
    match tokio::time::timeout(WAIT, p.listener.accept()).await.unwrap() {
        Some(Incoming::Rejected { .. }) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Untampered, the same pair connects.
    *p.board.tamper.lock().unwrap() = None;
    let (c, _s) = connect(&mut p).await;
    assert!(c.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_offer_is_refused_and_the_dialer_fails_fast() {
    let mut p = setup().await;
    tamper(&p, SignalKind::Offer);
    let t0 = Instant::now();
    let e = tokio::time::timeout(WAIT, p.client.connect(&TransportAddr::WebRtc, p.server_id)).await.unwrap();
    assert!(e.is_err(), "a tampered offer must not connect");
    // The answerer refused with a `close`, so the dialer did not wait for its timeout.
    assert!(t0.elapsed() < Duration::from_secs(9), "dialer waited {:?}", t0.elapsed());
    // The offer never reached the listener as a connection.
    assert!(!matches!(
        tokio::time::timeout(Duration::from_millis(200), p.listener.accept()).await,
        Ok(Some(Incoming::Connection(_)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_signaling_is_refused_with_typed_errors_and_the_node_keeps_serving() {
    let mut p = setup().await;
    let from = p.client_id;
    let s = &p.server;
    let sig = |m: SignalMessage| m.encode().unwrap();
    let cases: Vec<(Vec<u8>, ErrorCheck)> = vec![
        (vec![], |e| matches!(e, SignalError::Malformed(_))),
        (vec![0x13, 0x80], |e| matches!(e, SignalError::Malformed(_))),
        (vec![0x14], |e| matches!(e, SignalError::Malformed(_))),
        (vec![0x14, 0x93, 1, 2, 3], |e| matches!(e, SignalError::Malformed(_))),
        (vec![0x14, 0xdf, 0xff, 0xff, 0xff, 0xff], |e| matches!(e, SignalError::Malformed(_))),
        (vec![0x14; 20_000], |e| matches!(e, SignalError::TooLarge { .. })),
        (
            sig(SignalMessage::unsigned(
                5,
                SignalKind::Candidate,
                "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                None,
            )),
            |e| matches!(e, SignalError::UnknownSession { .. }),
        ),
        (sig(SignalMessage::unsigned(6, SignalKind::Close, "bye".into(), None)), |e| {
            matches!(e, SignalError::UnknownSession { .. })
        }),
        // An offer "signed" by another key than the sender's.
        (
            sig(SignalMessage::signed(
                &Keypair::from_seed([9; 32]),
                &p.server_id,
                7,
                SignalKind::Offer,
                "v=0".into(),
            )),
            |e| matches!(e, SignalError::BadSignature { .. }),
        ),
        // A correctly signed offer whose SDP is garbage: accepted for answering, then
        // refused by the peer connection (reported by the listener as a rejection).
    ];
    for (payload, check) in cases {
        let e = s.handle_signal(from, &payload).unwrap_err();
        assert!(check(&e), "payload {:02x?}…: unexpected error {e}", &payload[..payload.len().min(8)]);
    }
    let bad_sdp = SignalMessage::signed(
        &Keypair::from_seed([2; 32]),
        &p.server_id,
        8,
        SignalKind::Offer,
        "garbage".into(),
    );
    s.handle_signal(from, &sig(bad_sdp)).unwrap();
    match tokio::time::timeout(WAIT, p.listener.accept()).await.unwrap() {
        Some(Incoming::Rejected { .. }) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    // Still serving.
    let (c, a) = connect(&mut p).await;
    c.send(Bytes::from_static(b"still here")).await.unwrap();
    assert_eq!(&a.recv().await.unwrap().unwrap()[..], b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreliable_channel_tolerates_loss_without_stalling() {
    let mut p = setup().await;
    let (c, s) = connect(&mut p).await;
    // A burst far beyond what the queues hold: whatever is dropped is dropped, the sender
    // never waits, and what arrives arrives without a stall.
    let burst = 20_000u32;
    let t0 = Instant::now();
    for i in 0..burst {
        let mut d = vec![0u8; 1000];
        d[..4].copy_from_slice(&i.to_be_bytes());
        c.send_datagram(Bytes::from(d)).unwrap();
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "datagram sends waited {:?}", t0.elapsed());
    let mut got = 0u32;
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(500), s.recv_datagram()).await {
        assert_eq!(d.len(), 1000);
        assert!(u32::from_be_bytes(d[..4].try_into().unwrap()) < burst);
        got += 1;
    }
    eprintln!("datagrams delivered: {got} of {burst}");
    assert!(got > 0 && got <= burst);
    // The reliable channel is unaffected.
    c.send(Bytes::from_static(b"after the burst")).await.unwrap();
    assert_eq!(
        &tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap().unwrap()[..],
        b"after the burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receiver_bounds_the_senders_memory() {
    let mut p = setup().await;
    let (c, s) = connect(&mut p).await;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total: u64 = 96 << 20;
    let msg = Bytes::from(vec![7u8; 64 << 10]);
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        while counter.load(std::sync::atomic::Ordering::Relaxed) < total {
            c.send(msg.clone()).await.unwrap();
            counter.fetch_add(msg.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        c
    });
    // The receiver does not read: the sender must stall at a bounded amount.
    let mut last = 0;
    let mut stable = 0;
    while stable < 3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        assert!(now < 64 << 20, "sender buffered {now} bytes for a receiver that reads nothing");
    }
    eprintln!("sender stalled after {} KiB", last >> 10);
    // Reading resumes the flow, and everything arrives.
    let mut received = 0u64;
    while received < total {
        let m = tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap().unwrap();
        received += m.len() as u64;
    }
    let _c = tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
    assert_eq!(received, total);
}

// ---- TURN: a real coturn relaying the data channel, relay-only ICE on both sides ----

use kizuna_actors::testing::{Coturn, TURN_PASS, TURN_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_relays_a_data_channel_with_relay_only_ice() {
    if !Coturn::available() {
        eprintln!("SKIP: `turnserver` not found (apt-get install coturn; .ci/run does): TURN not tested");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let turn = Coturn::start(std::net::Ipv4Addr::LOCALHOST, dir.path()).await;
    let url = turn.url.clone();
    let board = Arc::new(Switchboard::default());
    let relay_only = |seed: u8| {
        let node = LocalNode::new(NodeConfig::new(Keypair::from_seed([seed; 32]))).unwrap();
        let id = node.peer_id();
        let mut cfg = WebRtcConfig::loopback();
        cfg.ice_servers = vec![kizuna::transport::webrtc::IceServer::turn(&url, TURN_USER, TURN_PASS)];
        cfg.relay_only = true;
        let t = WebRtcTransport::new(node, cfg).unwrap();
        t.set_signaler(Arc::new(Port { board: board.clone(), me: id }));
        board.nodes.lock().unwrap().insert(id, t.clone());
        (t, id)
    };
    let (server, server_id) = relay_only(11);
    let (client, _) = relay_only(12);
    // Only relay candidates may be signaled (a panic here loses the signal: no connection).
    let relayed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = relayed.clone();
    *board.tamper.lock().unwrap() = Some(Arc::new(move |m: SignalMessage| {
        if m.kind == SignalKind::Candidate && !m.sdp.is_empty() {
            assert!(m.sdp.contains("typ relay"), "non-relay candidate signaled: {}", m.sdp);
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if m.kind == SignalKind::Offer || m.kind == SignalKind::Answer {
            assert!(!m.sdp.contains("typ host"), "host candidate in the SDP");
        }
        m
    }));
    let mut listener = server.listen(&TransportAddr::WebRtc).await.unwrap();
    let (c, s) = tokio::join!(client.connect(&TransportAddr::WebRtc, server_id), accept(&mut listener));
    let c = c.unwrap();
    // A TURN path is reported as relayed (through a TURN server, still end-to-end DTLS).
    assert_eq!((c.info().path, s.info().path), (kizuna::PathKind::Relayed, kizuna::PathKind::Relayed));
    // Data both ways, through coturn.
    let payload = Bytes::from(vec![0x5a; 100_000]);
    c.send(payload.clone()).await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap().unwrap(), payload);
    s.send(Bytes::from_static(b"back through TURN")).await.unwrap();
    assert_eq!(
        &tokio::time::timeout(WAIT, c.recv()).await.unwrap().unwrap().unwrap()[..],
        b"back through TURN"
    );
    assert!(relayed.load(std::sync::atomic::Ordering::Relaxed) >= 2, "both sides signal relay candidates");
}

#[test]
fn turn_without_credentials_or_relay_only_without_turn_is_a_configuration_error() {
    let node = LocalNode::new(NodeConfig::new(Keypair::from_seed([3; 32]))).unwrap();
    let mut cfg = WebRtcConfig::loopback();
    cfg.ice_servers = vec![kizuna::transport::webrtc::IceServer {
        url: "turn:127.0.0.1:3478".into(),
        username: None,
        credential: None,
    }];
    let e = WebRtcTransport::new(node.clone(), cfg).err().unwrap();
    assert!(e.to_string().contains("--turn-user"), "{e}");
    let mut cfg = WebRtcConfig::loopback();
    cfg.relay_only = true;
    let e = WebRtcTransport::new(node, cfg).err().unwrap();
    assert!(e.to_string().contains("--turn"), "{e}");
}
