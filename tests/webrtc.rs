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
    Connection, Incoming, Keypair, Listener, LocalNode, NodeConfig, PeerId, Transport, TransportAddr, TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

type Tamper = Arc<dyn Fn(SignalMessage) -> SignalMessage + Send + Sync>;

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

