//! QUIC transport over real loopback sockets, including hostile UDP to the listening
//! socket: garbage, forged Initials, and STUN (the socket is shared with STUN and hole
//! punching, see `kizuna::transport::quic::demux`).
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use kizuna::{
    transport::quic::QuicTransport, wire::CloseCode, Congestion, Connection, Incoming, Keypair, Listener,
    LocalNode, NodeConfig, PeerId, Transport, TransportAddr, TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

fn node(seed: u8, tweak: impl FnOnce(&mut NodeConfig)) -> Arc<LocalNode> {
    let mut cfg = NodeConfig::new(Keypair::from_seed([seed; 32]));
    tweak(&mut cfg);
    LocalNode::new(cfg).unwrap()
}

fn loopback() -> TransportAddr {
    TransportAddr::Quic("127.0.0.1:0".parse().unwrap())
}

struct Server {
    transport: QuicTransport,
    listener: Box<dyn Listener>,
    addr: SocketAddr,
    id: PeerId,
}

async fn server(seed: u8, tweak: impl FnOnce(&mut NodeConfig)) -> Server {
    let n = node(seed, tweak);
    let id = n.peer_id();
    let transport = QuicTransport::new(n);
    let listener = transport.listen(&loopback()).await.unwrap();
    let addr = listener.local_addr().socket_addr().unwrap();
    Server { transport, listener, addr, id }
}

async fn accept(listener: &mut Box<dyn Listener>) -> Connection {
    match tokio::time::timeout(WAIT, listener.accept()).await.unwrap() {
        Some(Incoming::Connection(c)) => c,
        other => panic!("expected a connection, got {other:?}"),
    }
}

/// A connected pair: (client transport, client side, server, server side).
async fn pair(tweak: impl Fn(&mut NodeConfig) + Copy) -> (QuicTransport, Connection, Server, Connection) {
    let mut s = server(1, tweak).await;
    let client = QuicTransport::new(node(2, tweak));
    let target = TransportAddr::Quic(s.addr);
    let (c, a) = tokio::join!(client.connect(&target, s.id), accept(&mut s.listener));
    (client, c.unwrap(), s, a)
}

/// Deterministic pseudo-random bytes (xorshift64*), so both ends can check integrity.
struct Gen(u64);
impl Gen {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// FNV-1a, 64-bit.
fn fnv(hash: u64, data: &[u8]) -> u64 {
    data.iter().fold(hash, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

#[tokio::test]
async fn bulk_stream_64_mib_each_way_with_integrity() {
    const TOTAL: usize = 64 * 1024 * 1024;
    let (_ct, client, _s, server) = pair(|_| {}).await;
    let started = Instant::now();
    let (cs, ss) = tokio::join!(client.open_stream(), server.accept_stream());
    let (cs, ss) = (cs.unwrap(), ss.unwrap().unwrap());
    tokio::join!(send_and_receive_exact(cs, 11, 22, TOTAL), send_and_receive_exact(ss, 22, 11, TOTAL));
    let secs = started.elapsed().as_secs_f64();
    eprintln!("64 MiB each way in {secs:.2} s ({:.0} Mbit/s total)", 2.0 * TOTAL as f64 * 8.0 / secs / 1e6);
    assert!(client.info().bytes_sent >= TOTAL as u64);
    assert!(server.info().bytes_received >= TOTAL as u64);
}

/// Like `send_and_receive`, but checks received bytes against the peer's generator fed in
/// the same 64 KiB blocks the peer wrote, so read boundaries do not matter.
async fn send_and_receive_exact(stream: kizuna::ByteStream, seed: u64, peer_seed: u64, total: usize) {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async move {
        let mut g = Gen(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len());
            g.fill(&mut buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
    };
    let reader = async move {
        let mut g = Gen(peer_seed);
        let (mut got, mut expect) = (FNV_INIT, FNV_INIT);
        let mut block = vec![0u8; 64 * 1024];
        let mut want = vec![0u8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(block.len());
            r.read_exact(&mut block[..n]).await.unwrap();
            g.fill(&mut want[..n]);
            got = fnv(got, &block[..n]);
            expect = fnv(expect, &want[..n]);
            left -= n;
        }
        assert_eq!(r.read(&mut block).await.unwrap(), 0, "stream must end after {total} bytes");
        (got, expect)
    };
    let ((), (got, expect)) = tokio::join!(writer, reader);
    assert_eq!(got, expect, "stream data corrupted");
}

fn message(i: usize) -> Bytes {
    let len = (i * 7919) % 20_000 + 1;
    Bytes::from((0..len).map(|j| (i + j) as u8).collect::<Vec<_>>())
}

#[tokio::test]
async fn many_messages_each_way() {
    const N: usize = 5_000;
    let (_ct, client, _s, server) = pair(|_| {}).await;
    let run = |conn: Connection| async move {
        let tx = conn.clone();
        let send = tokio::spawn(async move {
            for i in 0..N {
                tx.send(message(i)).await.unwrap();
            }
        });
        for i in 0..N {
            let m = tokio::time::timeout(WAIT, conn.recv()).await.unwrap().unwrap().unwrap();
            assert_eq!(m, message(i), "message {i}");
        }
        send.await.unwrap();
    };
    tokio::join!(run(client.clone()), run(server.clone()));
    // A graceful close is seen by the peer as the end of its messages.
    tokio::join!(client.close(CloseCode::Normal, "done"), async {
        assert!(tokio::time::timeout(WAIT, server.recv()).await.unwrap().unwrap().is_none());
    });
    assert!(!client.is_connected());
    tokio::time::timeout(WAIT, async {
        while server.is_connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn hello_and_info_describe_both_ends() {
    let (_ct, client, s, server) = pair(|_| {}).await;
    assert_eq!(client.peer(), s.id);
    assert_eq!(server.peer(), Keypair::from_seed([2; 32]).peer_id());
    assert!(client.is_dialer() && !server.is_dialer());
    // Each side tells the other where it saw it.
    assert_eq!(server.remote_hello().observed_addr, Some(TransportAddr::Quic(s.addr)));
    let client_port = client.info().local_addr.unwrap().port();
    match &client.remote_hello().observed_addr {
        Some(TransportAddr::Quic(a)) => assert_eq!(a.port(), client_port),
        other => panic!("listener observed nothing: {other:?}"),
    }
    assert!(server.remote_hello().listen_addrs.is_empty());
    assert!(client.remote_hello().listen_addrs.contains(&TransportAddr::Quic(s.addr)));
    let info = client.info();
    assert_eq!(info.protocol, kizuna::Protocol::Quic);
    assert!(info.rtt.is_some());
    assert_eq!(s.transport.priority(), 200);
}

#[tokio::test]
async fn wrong_peer_dial_is_authentication_failure() {
    let s = server(1, |_| {}).await;
    let client = QuicTransport::new(node(2, |_| {}));
    let someone_else = Keypair::from_seed([3; 32]).peer_id();
    match client.connect(&TransportAddr::Quic(s.addr), someone_else).await {
        Err(TransportError::AuthenticationFailed { expected, presented }) => {
            assert_eq!(expected, someone_else);
            assert_eq!(presented, s.id.to_string());
        }
        other => panic!("expected AuthenticationFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn listener_keeps_serving_after_a_failed_handshake() {
    let mut s = server(1, |_| {}).await;
    let target = TransportAddr::Quic(s.addr);
    // This client aborts the handshake: it expected somebody else.
    let bad = QuicTransport::new(node(2, |_| {}));
    let wrong = Keypair::from_seed([3; 32]).peer_id();
    assert!(bad.connect(&target, wrong).await.is_err());
    match tokio::time::timeout(WAIT, s.listener.accept()).await.unwrap() {
        Some(Incoming::Rejected { remote, error }) => {
            assert_eq!(remote, bad.local_addr().unwrap().to_string().replace("0.0.0.0", "127.0.0.1"));
            assert!(matches!(error, TransportError::Quic(_)), "{error:?}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(s.transport.stats().inbound_rejected, 1);
    let good = QuicTransport::new(node(4, |_| {}));
    let (c, a) = tokio::join!(good.connect(&target, s.id), accept(&mut s.listener));
    let c = c.unwrap();
    c.send(Bytes::from_static(b"ok")).await.unwrap();
    assert_eq!(&a.recv().await.unwrap().unwrap()[..], b"ok");
}

#[tokio::test]
async fn listening_after_dialing_moves_dials_to_the_listening_socket() {
    let (client_transport, client, _s, server) = pair(|_| {}).await;
    let before = client_transport.local_addr().unwrap();
    let listener = client_transport.listen(&loopback()).await.unwrap();
    let now = listener.local_addr().socket_addr().unwrap();
    assert_ne!(before.port(), now.port());
    assert_eq!(client_transport.local_addr(), Some(now));
    // The connection made before followed the endpoint to its new socket.
    client.send(Bytes::from_static(b"moved")).await.unwrap();
    assert_eq!(&server.recv().await.unwrap().unwrap()[..], b"moved");
    server.send(Bytes::from_static(b"back")).await.unwrap();
    assert_eq!(&client.recv().await.unwrap().unwrap()[..], b"back");
}

#[tokio::test]
async fn ten_concurrent_streams() {
    let (_ct, client, _s, server) = pair(|_| {}).await;
    let echo = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let mut st = server.accept_stream().await.unwrap().unwrap();
            tasks.push(tokio::spawn(async move {
                let mut data = Vec::new();
                st.read_to_end(&mut data).await.unwrap();
                st.write_all(&data).await.unwrap();
                st.shutdown().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        server
    });
    let mut tasks = Vec::new();
    for k in 0..10u8 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = c.open_stream().await.unwrap();
            let data: Vec<u8> = (0..256 * 1024).map(|i| (i as u8) ^ k).collect();
            st.write_all(&data).await.unwrap();
            st.shutdown().await.unwrap();
            let mut back = Vec::new();
            st.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data, "stream {k}");
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    tokio::time::timeout(WAIT, echo).await.unwrap().unwrap();
}

#[tokio::test]
async fn datagrams_round_trip() {
    let (_ct, client, _s, server) = pair(|_| {}).await;
    // Datagrams are unreliable: retry until one gets through each way.
    let got = tokio::time::timeout(WAIT, async {
        loop {
            client.send_datagram(Bytes::from_static(b"ping")).unwrap();
            if let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), server.recv_datagram()).await
            {
                break d;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&got[..], b"ping");
    server.send_datagram(Bytes::from_static(b"pong")).unwrap();
    let back = tokio::time::timeout(WAIT, client.recv_datagram()).await.unwrap().unwrap();
    assert_eq!(&back[..], b"pong");
    let huge = Bytes::from(vec![0u8; 64 * 1024]);
    assert!(matches!(client.send_datagram(huge), Err(TransportError::LimitExceeded { .. })));
}

#[tokio::test]
async fn every_congestion_controller_connects_and_moves_data() {
    for cc in [Congestion::Cubic, Congestion::NewReno, Congestion::Bbr] {
        let (_ct, client, _s, server) = pair(move |c| c.congestion = cc).await;
        let (cs, ss) = tokio::join!(client.open_stream(), server.accept_stream());
        tokio::join!(
            send_and_receive_exact(cs.unwrap(), 5, 6, 4 * 1024 * 1024),
            send_and_receive_exact(ss.unwrap().unwrap(), 6, 5, 4 * 1024 * 1024)
        );
    }
}

#[tokio::test]
async fn second_connection_uses_zero_rtt() {
    let mut s = server(1, |_| {}).await;
    let client = QuicTransport::new(node(2, |_| {}));

    let (first, a) = tokio::join!(client.connect_with_info(s.addr, s.id), accept(&mut s.listener));
    let (first, info) = first.unwrap();
    assert!(!info.zero_rtt_attempted, "no ticket yet");
    // A round trip after the handshake: the session tickets arrive meanwhile.
    first.send(Bytes::from_static(b"hi")).await.unwrap();
    let m = a.recv().await.unwrap().unwrap();
    a.send(m).await.unwrap();
    first.recv().await.unwrap().unwrap();
    tokio::join!(first.close(CloseCode::Normal, "bye"), async { a.recv().await.unwrap() });

    let (second, b) = tokio::join!(client.connect_with_info(s.addr, s.id), accept(&mut s.listener));
    let (second, info) = second.unwrap();
    assert!(info.zero_rtt_attempted, "a ticket was stored: {info:?}");
    assert!(info.zero_rtt_accepted, "listener must accept 0-RTT: {info:?}");
    assert_eq!(client.stats().zero_rtt_accepted_dials, 1);
    assert_eq!(s.transport.stats().zero_rtt_accepted_inbound, 1);
    assert_eq!(second.peer(), s.id);
    assert_eq!(b.peer(), Keypair::from_seed([2; 32]).peer_id());
    second.send(Bytes::from_static(b"resumed")).await.unwrap();
    assert_eq!(&b.recv().await.unwrap().unwrap()[..], b"resumed");
}

#[tokio::test]
async fn migration_to_a_new_socket_keeps_the_connection() {
    let (client_transport, client, _s, server) = pair(|_| {}).await;
    let echo = tokio::spawn(async move {
        while let Ok(Some(m)) = server.recv().await {
            if server.send(m).await.is_err() {
                break;
            }
        }
    });
    client.send(Bytes::from_static(b"before")).await.unwrap();
    assert_eq!(&client.recv().await.unwrap().unwrap()[..], b"before");
    let old = client.info().local_addr.unwrap();

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client_transport.rebind(socket).unwrap();
    let new = client.info().local_addr.unwrap();
    assert_ne!(old.port(), new.port(), "client must be on a new socket");
    assert_eq!(client_transport.local_addr(), Some(new));

    for i in 0..3 {
        let m = Bytes::from(format!("after {i}"));
        client.send(m.clone()).await.unwrap();
        let back = tokio::time::timeout(WAIT, client.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(back, m);
    }
    client.close(CloseCode::Normal, "done").await;
    echo.await.unwrap();
}

/// A QUIC v1 long-header Initial (RFC 9000 §17.2.2) of `len` bytes (at least 64) with
/// random connection IDs and a random, so undecryptable, payload: what a spoofed flood of
/// connection attempts looks like.
fn fake_initial(g: &mut Gen, len: usize) -> Vec<u8> {
    let mut pkt = vec![0u8; len];
    g.fill(&mut pkt);
    // Long header, fixed bit, type Initial, a random packet number length; version 1.
    pkt[0] = 0xc0 | (pkt[0] & 0x03);
    pkt[1..5].copy_from_slice(&1u32.to_be_bytes());
    // Destination connection ID of 8 to 20 bytes, source one of 0 to 20, no token.
    let dcid = 8 + pkt[5] % 13;
    pkt[5] = dcid;
    let scid_at = 6 + dcid as usize;
    let scid = pkt[scid_at] % 21;
    pkt[scid_at] = scid;
    let token_at = scid_at + 1 + scid as usize;
    pkt[token_at] = 0;
    // Length (a 2-byte varint): the rest of the datagram.
    let rest = (len - token_at - 3) as u16;
    pkt[token_at + 1..token_at + 3].copy_from_slice(&(0x4000 | rest).to_be_bytes());
    pkt
}

#[tokio::test]
async fn udp_garbage_does_not_disturb_the_listener() {
    let mut s = server(1, |_| {}).await;
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let junk_addr = junk.local_addr().unwrap();
    let client = QuicTransport::new(node(2, |_| {}));
    let target = TransportAddr::Quic(s.addr);
    // The forged Initials that quinn takes for connection attempts fail their handshake
    // at once and are reported as rejections; the application (here this loop) takes
    // them as they come, as every application must.
    let listener = &mut s.listener;
    let accepted = async move {
        loop {
            match tokio::time::timeout(WAIT, listener.accept()).await.unwrap() {
                Some(Incoming::Connection(c)) => return c,
                Some(Incoming::Rejected { remote, error }) => {
                    assert_eq!(remote, junk_addr.to_string(), "{error}");
                }
                None => panic!("the listener stopped"),
            }
        }
    };
    let attack_then_dial = async {
        let mut g = Gen(99);
        let mut size = [0u8; 2];
        for i in 0..5_000usize {
            g.fill(&mut size);
            let pkt = if i % 3 == 0 {
                // Mostly full-size Initials (servers ignore smaller ones), some not.
                fake_initial(&mut g, [1200, 1200, 1500, 64 + size[0] as usize][i / 3 % 4])
            } else {
                // Anything from empty to 1500 bytes, QUIC-looking or not.
                let len = [0, 1, 20, 1200, 1500, u16::from_le_bytes(size) as usize % 1501][i % 6];
                let mut pkt = vec![0u8; len];
                g.fill(&mut pkt);
                pkt
            };
            junk.send_to(&pkt, s.addr).await.unwrap();
            if i % 16 == 0 {
                // Lets the listener read its socket during the burst, so that the
                // datagrams reach it rather than overflow its receive buffer.
                tokio::task::yield_now().await;
            }
        }
        client.connect(&target, s.id).await
    };
    let (a, c) = tokio::join!(accepted, attack_then_dial);
    let c = c.unwrap();
    assert_eq!(a.peer(), Keypair::from_seed([2; 32]).peer_id());
    c.send(Bytes::from_static(b"still here")).await.unwrap();
    assert_eq!(&a.recv().await.unwrap().unwrap()[..], b"still here");
}

#[tokio::test]
async fn dial_to_a_closed_port_fails_within_the_connect_timeout() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let client = QuicTransport::new(node(2, |c| c.connect_timeout = Duration::from_secs(1)));
    let started = Instant::now();
    let r = client.connect(&TransportAddr::Quic(port), Keypair::from_seed([1; 32]).peer_id()).await;
    let elapsed = started.elapsed();
    match r {
        Err(e @ TransportError::Timeout { .. }) => {
            assert!(e.to_string().contains(&format!("QUIC connect to {port}")), "{e}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
}

#[tokio::test]
async fn one_socket_per_transport() {
    let mut s = server(1, |_| {}).await;
    // A second listen on the same transport is refused: one UDP socket per transport.
    assert!(matches!(s.transport.listen(&loopback()).await, Err(TransportError::Config(_))));
    // Dials leave from the listening socket.
    let mut other = server(3, |_| {}).await;
    let target = TransportAddr::Quic(other.addr);
    let (c, _a) = tokio::join!(s.transport.connect(&target, other.id), accept(&mut other.listener));
    assert_eq!(c.unwrap().info().local_addr, Some(s.addr));
    s.listener.close();
    assert!(s.listener.accept().await.is_none());
}

#[tokio::test]
async fn stun_and_punch_datagrams_share_the_quic_socket() {
    let (client, c, s, a) = pair(|_| {}).await;
    let side = s.transport.side_channel().expect("a listening transport has a side channel");
    assert_eq!(side.local_addr().unwrap(), s.addr, "the side channel is the QUIC socket");
    // A STUN-looking datagram (first byte 0x00, RFC 8489) to the QUIC port is diverted.
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stun = [0x00u8, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    raw.send_to(&stun, s.addr).await.unwrap();
    let (from, got) = tokio::time::timeout(WAIT, side.recv_from()).await.unwrap().unwrap();
    assert_eq!(from, raw.local_addr().unwrap());
    assert_eq!(&got[..], &stun[..]);
    // And datagrams sent on the side channel leave from the QUIC port.
    side.send_to(b"\x01punch", raw.local_addr().unwrap()).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, src) = tokio::time::timeout(WAIT, raw.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], src), (&b"\x01punch"[..], s.addr));
    // QUIC on the same socket is unaffected.
    c.send(Bytes::from_static(b"after stun")).await.unwrap();
    assert_eq!(&a.recv().await.unwrap().unwrap()[..], b"after stun");
    drop(client);
}

/// The magic cookie of STUN (RFC 8489 §5).
const STUN_COOKIE: u32 = 0x2112_a442;

/// A STUN message (RFC 8489 §5): `ty` (class and method), a length field of `len`,
/// `cookie` in place of the magic cookie, a transaction ID from `g`, then `body`.
fn stun_msg(g: &mut Gen, ty: u16, len: u16, cookie: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + body.len());
    m.extend_from_slice(&ty.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    let mut tid = [0u8; 12];
    g.fill(&mut tid);
    m.extend_from_slice(&tid);
    m.extend_from_slice(body);
    m
}

/// STUN Binding requests, malformed STUN and STUN-looking garbage, all with a first byte
/// that the QUIC socket's demultiplexer diverts to its side channel.
fn stun_datagrams(g: &mut Gen, count: usize) -> Vec<Vec<u8>> {
    use stun_rs::{
        attributes::stun::{Fingerprint, Software},
        methods::BINDING,
        MessageClass, MessageEncoderBuilder, StunMessageBuilder,
    };
    let full = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_attribute(Software::new("kizuna-test").unwrap())
        .with_attribute(Fingerprint::default())
        .build();
    let mut buf = [0u8; 256];
    let n = MessageEncoderBuilder::default().build().encode(&mut buf, &full).unwrap();
    let mut out = vec![
        // Binding requests: bare, and with SOFTWARE and FINGERPRINT.
        stun_msg(g, 0x0001, 0, STUN_COOKIE, &[]),
        buf[..n].to_vec(),
        // A length field announcing 64 KiB of attributes that never come.
        stun_msg(g, 0x0001, 0xfffc, STUN_COOKIE, &[]),
        // A length that is not a multiple of 4.
        stun_msg(g, 0x0001, 3, STUN_COOKIE, &[1, 2, 3]),
        // RFC 3489 (no magic cookie).
        stun_msg(g, 0x0001, 0, 0x0102_0304, &[]),
        // XOR-MAPPED-ADDRESS whose length runs far past the datagram.
        stun_msg(g, 0x0001, 8, STUN_COOKIE, &[0x00, 0x20, 0xff, 0xff, 0, 1, 2, 3]),
        // A Binding success response and a Binding indication nobody asked for.
        stun_msg(
            g,
            0x0101,
            12,
            STUN_COOKIE,
            &[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0x5e, 0x12, 0x5e, 0x12, 0xa4, 0x4b],
        ),
        stun_msg(g, 0x0011, 0, STUN_COOKIE, &[]),
        // An unknown method, and a request padded to a full datagram with an unknown
        // comprehension-required attribute.
        stun_msg(g, 0x3eef, 0, STUN_COOKIE, &[]),
        stun_msg(
            g,
            0x0001,
            1480,
            STUN_COOKIE,
            &[[0x00, 0x77, 0x05, 0xc4].as_slice(), &[0xab; 1476]].concat(),
        ),
        // Truncated headers.
        vec![0x00],
        stun_msg(g, 0x0001, 0, STUN_COOKIE, &[])[..10].to_vec(),
    ];
    // The rest: random bytes behind a first byte with both top bits clear, 1 to 1500 long.
    let mut len = [0u8; 2];
    while out.len() < count {
        g.fill(&mut len);
        let mut d = vec![0u8; 1 + u16::from_le_bytes(len) as usize % 1500];
        g.fill(&mut d);
        d[0] &= 0x3f;
        out.push(d);
    }
    out
}

/// Reads everything `sock` receives for `quiet` after the last datagram; returns the sizes.
async fn answers(sock: &tokio::net::UdpSocket, quiet: Duration) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(r) = tokio::time::timeout(quiet, sock.recv_from(&mut buf)).await {
        sizes.push(r.unwrap().0);
    }
    sizes
}

#[tokio::test]
async fn stun_to_the_quic_port_is_never_answered_nor_amplified() {
    let mut s = server(1, |_| {}).await;
    let side = s.transport.side_channel().unwrap();
    let mut g = Gen(7);
    // The node has no STUN responder: what its QUIC socket diverts (the STUN-like traffic
    // here) is only for its own STUN client and hole punching, and nothing here reads
    // the side channel, so its bounded queue fills and the rest must be dropped without
    // holding up QUIC.
    let stun = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Binding requests with a top bit set reach quinn instead: whatever quinn answers
    // (version negotiation, a stateless reset) must not amplify.
    let quicish = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (mut quicish_sent, mut quicish_count) = (0, 0);
    for (i, d) in stun_datagrams(&mut g, 1_000).iter().enumerate() {
        stun.send_to(d, s.addr).await.unwrap();
        if i % 16 == 0 {
            let mut q = stun_msg(&mut g, 0x0001, 0, STUN_COOKIE, &[]);
            q.resize([20, 100, 1200][i / 16 % 3], 0);
            q[0] |= [0x40, 0xc0][i / 16 % 2];
            quicish.send_to(&q, s.addr).await.unwrap();
            quicish_sent += q.len();
            quicish_count += 1;
            // Lets the listener read its socket during the burst.
            tokio::task::yield_now().await;
        }
    }
    // A QUIC dial still works, and it is read after every datagram above.
    let client = QuicTransport::new(node(2, |_| {}));
    let target = TransportAddr::Quic(s.addr);
    let (c, a) = tokio::join!(client.connect(&target, s.id), accept(&mut s.listener));
    let c = c.unwrap();
    c.send(Bytes::from_static(b"after stun")).await.unwrap();
    assert_eq!(&a.recv().await.unwrap().unwrap()[..], b"after stun");
    // No answer to STUN. (A responder would have answered by now; 300 ms of quiet on top.)
    let quiet = Duration::from_millis(300);
    assert_eq!(answers(&stun, quiet).await, Vec::<usize>::new(), "the node answered STUN");
    let answered = answers(&quicish, quiet).await;
    let bytes: usize = answered.iter().sum();
    assert!(answered.len() <= quicish_count, "{} answers to {quicish_count} datagrams", answered.len());
    assert!(bytes <= 3 * quicish_sent, "{bytes} bytes answered to {quicish_sent}");
    // The side channel holds at most its bound (SIDE_QUEUE in demux.rs), only STUN-like
    // datagrams, and takes new ones once drained.
    let mut queued = 0;
    while let Ok(Some((from, d))) = tokio::time::timeout(quiet, side.recv_from()).await {
        assert_eq!(from, stun.local_addr().unwrap());
        assert_eq!(d[0] & 0xc0, 0);
        queued += 1;
    }
    assert!((1..=256).contains(&queued), "{queued} datagrams queued on the side channel");
    let probe = stun_msg(&mut g, 0x0001, 0, STUN_COOKIE, &[]);
    stun.send_to(&probe, s.addr).await.unwrap();
    let (_, d) = tokio::time::timeout(WAIT, side.recv_from()).await.unwrap().unwrap();
    assert_eq!(&d[..], &probe[..]);
}
