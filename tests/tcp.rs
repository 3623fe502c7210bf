//! TLS-over-TCP transport over real loopback sockets.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use kizuna::{
    error::WireError,
    transport::tcp::TcpTransport,
    wire::{encode_frame, read_frame, CloseCode, Frame, FrameDecoder, FrameType, MAGIC, MAX_CONTROL_LEN},
    Connection, Listener, LocalNode, NodeConfig, Transport, TransportAddr, TransportError,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use common::*;

fn loopback() -> TransportAddr {
    TransportAddr::Tcp("127.0.0.1:0".parse().unwrap())
}

async fn listen(node: &Arc<LocalNode>) -> (Box<dyn Listener>, TransportAddr) {
    let l = TcpTransport::new(node.clone()).listen(&loopback()).await.unwrap();
    let a = l.local_addr();
    (l, a)
}

/// A connected pair: (dialer side, listener side).
async fn connected(
    server: &Arc<LocalNode>,
    client: &Arc<LocalNode>,
) -> (Connection, Connection, Box<dyn Listener>) {
    let (mut l, addr) = listen(server).await;
    let dial = TcpTransport::new(client.clone());
    let (c, s) = tokio::join!(dial.connect(&addr, server.peer_id()), next_connection(&mut l));
    (c.unwrap(), s, l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64_mib_each_way_and_many_messages() {
    let (server, client) = (node(), node());
    let (c, s, _l) = connected(&server, &client).await;
    assert_eq!(c.peer(), server.peer_id());
    assert_eq!(s.peer(), client.peer_id());
    assert!(c.is_dialer() && !s.is_dialer());
    // Each side saw the other's address.
    assert!(matches!(s.remote_hello().observed_addr, Some(TransportAddr::Tcp(a)) if a.ip().is_loopback()));

    let mut cs = c.open_stream().await.unwrap();
    let mut ss = within(s.accept_stream()).await.unwrap().unwrap();
    let started = Instant::now();
    let (mut cr, mut cw) = tokio::io::split(&mut cs);
    let (mut sr, mut sw) = tokio::io::split(&mut ss);
    within(async {
        tokio::join!(
            send_pattern(&mut cw, 1, BULK),
            check_pattern(&mut sr, 1, BULK),
            send_pattern(&mut sw, 2, BULK),
            check_pattern(&mut cr, 2, BULK)
        );
    })
    .await;
    eprintln!("2 x 64 MiB over one stream in {:?}", started.elapsed());

    const N: u32 = 20_000;
    let sender = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..N {
                c.send(Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
            }
        })
    };
    for i in 0..N {
        assert_eq!(within(s.recv()).await.unwrap().unwrap(), Bytes::from(i.to_be_bytes().to_vec()));
    }
    sender.await.unwrap();
    let info = c.info();
    assert!(info.bytes_sent >= BULK && info.bytes_received >= BULK);
    assert!(info.local_addr.is_some());
    c.close(CloseCode::Normal, "done").await;
    assert!(within(s.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn dialing_the_wrong_peer_fails_authentication() {
    let (server, client, stranger) = (node(), node(), node());
    let (mut l, addr) = listen(&server).await;
    let err = within(TcpTransport::new(client).connect(&addr, stranger.peer_id())).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::AuthenticationFailed { expected, .. } if *expected == stranger.peer_id()),
        "{err}"
    );
    assert!(!err.is_retryable());
    // The listener saw the failed attempt and carries on.
    next_rejection(&mut l).await;
}

/// Completes TLS to `addr` as a client with its own key, then sends `bytes`, and checks
/// that the server closes the socket.
async fn raw_client_sends(server: &Arc<LocalNode>, addr: &TransportAddr, bytes: &[u8]) {
    let me = node();
    let tcp = TcpStream::connect(addr.socket_addr().unwrap()).await.unwrap();
    let (mut tls, _) = me.secure().connect(tcp, server.peer_id(), Duration::from_secs(5)).await.unwrap();
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
    // The server's hello, possibly its close frame, then the end of the stream.
    let decoder = FrameDecoder::default();
    within(async { while let Ok(Some(_)) = read_frame(&mut tls, &decoder).await {} }).await;
}

fn hello_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32(payload.len() as u32);
    out.put_u8(FrameType::Hello as u8);
    out.put_slice(payload);
    out.to_vec()
}

#[tokio::test]
async fn bad_hellos_are_rejected_and_the_listener_keeps_serving() {
    let server = node();
    let (mut l, addr) = listen(&server).await;

    // (a) A hello whose body is not MessagePack.
    let mut malformed = MAGIC.to_vec();
    malformed.extend_from_slice(&kizuna::wire::PROTOCOL_VERSION.to_be_bytes());
    malformed.extend_from_slice(&[0xc1, 0xc1, 0xc1]);
    raw_client_sends(&server, &addr, &hello_frame(&malformed)).await;
    let e = next_rejection(&mut l).await;
    assert!(
        matches!(&e, TransportError::ProtocolViolation { source: WireError::Malformed { .. }, .. }),
        "{e}"
    );

    // (b) A well-formed hello of another protocol version.
    let me = node();
    let mut buf = BytesMut::new();
    encode_frame(&Frame::Hello(me.hello(None)), &mut buf).unwrap();
    buf[5 + 2..5 + 4].copy_from_slice(&99u16.to_be_bytes());
    raw_client_sends(&server, &addr, &buf).await;
    let e = next_rejection(&mut l).await;
    assert!(
        matches!(
            &e,
            TransportError::ProtocolViolation { source: WireError::UnsupportedVersion { got: 99, .. }, .. }
        ),
        "{e}"
    );

    // (c) A header declaring a hello larger than any hello may be.
    let mut header = BytesMut::new();
    header.put_u32(MAX_CONTROL_LEN as u32 + 1);
    header.put_u8(FrameType::Hello as u8);
    raw_client_sends(&server, &addr, &header).await;
    let e = next_rejection(&mut l).await;
    assert!(
        matches!(&e, TransportError::ProtocolViolation { source: WireError::FrameTooLarge { .. }, .. }),
        "{e}"
    );

    // A well-behaved client is still served.
    let client = node();
    let dial = TcpTransport::new(client.clone());
    let (c, s) = tokio::join!(dial.connect(&addr, server.peer_id()), next_connection(&mut l));
    let c = c.unwrap();
    c.send(Bytes::from_static(b"hi")).await.unwrap();
    assert_eq!(within(s.recv()).await.unwrap().unwrap(), Bytes::from_static(b"hi"));
}

#[tokio::test]
async fn plaintext_garbage_is_rejected_with_a_tls_error() {
    let server = node();
    let (mut l, addr) = listen(&server).await;
    let mut tcp = TcpStream::connect(addr.socket_addr().unwrap()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let e = next_rejection(&mut l).await;
    assert!(matches!(e, TransportError::Tls(_)), "{e}");
    // The socket is closed: reading ends (EOF or reset) promptly.
    let mut buf = [0u8; 512];
    within(async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = TransportAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], port)));
    let started = Instant::now();
    let err = TcpTransport::new(node()).connect(&addr, node().peer_id()).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::ConnectFailed { addr, .. } if addr.contains(&port.to_string())),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// A loopback address whose SYNs are dropped: a listener that never accepts, with a
/// backlog of one, filled first. Returns the address and the sockets to keep alive.
fn black_hole() -> (SocketAddr, std::net::TcpListener, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    s.listen(0).unwrap();
    let listener: std::net::TcpListener = s.into();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue; once full, the kernel drops further SYNs.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        let _ = c.connect(&addr.into());
        fillers.push(c);
    }
    std::thread::sleep(Duration::from_millis(100));
    (addr, listener, fillers)
}

#[tokio::test]
async fn connecting_to_a_black_hole_times_out_within_the_bound() {
    let (sa, _listener, _fillers) = black_hole();
    // Check the black hole works here: a plain TCP connect must hang.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(sa)).await.is_err(),
        "the loopback black hole accepted a connection"
    );
    let bound = Duration::from_millis(500);
    let client = node_with(|c| c.connect_timeout = bound);
    let started = Instant::now();
    let err = TcpTransport::new(client).connect(&TransportAddr::Tcp(sa), node().peer_id()).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, TransportError::Timeout { what, after } if what.contains(&sa.to_string()) && *after == bound),
        "{err}"
    );
    assert!(took >= bound && took < bound + Duration::from_millis(500), "took {took:?}");
}

#[tokio::test]
async fn keep_alive_reports_rtt() {
    let fast = |c: &mut NodeConfig| c.keep_alive_interval = Duration::from_millis(50);
    let (server, client) = (node_with(fast), node_with(fast));
    let (c, s, _l) = connected(&server, &client).await;
    within(async {
        while c.info().rtt.is_none() || s.info().rtt.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(c.info().rtt.unwrap() < Duration::from_millis(500));
    assert!(c.is_connected() && s.is_connected());
}

#[tokio::test]
async fn listener_records_and_forgets_its_address() {
    let server = node();
    let (mut l, addr) = listen(&server).await;
    assert!(server.listen_addrs().contains(&addr));
    l.close();
    assert!(!server.listen_addrs().contains(&addr));
    assert!(within(l.accept()).await.is_none());
}

/// The first stream a TCP punch finds.
async fn punched_stream(
    p: kizuna::transport::tcp_punch::TcpPunch,
    to: SocketAddr,
) -> (TcpStream, SocketAddr) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let remotes = [to];
    let run = p.open(&remotes, Duration::from_secs(10), tx);
    tokio::pin!(run);
    tokio::select! {
        s = rx.recv() => s.unwrap(),
        _ = &mut run => rx.recv().await.unwrap(),
    }
}

/// Punches a TCP path between `initiator` and `responder` on loopback and runs the
/// secure channel over it with the punch's roles; the responder expects `expected`.
async fn punched_pair(
    initiator: &LocalNode,
    responder: &LocalNode,
    expected: kizuna::PeerId,
) -> (kizuna::error::Result<Connection>, kizuna::error::Result<Connection>) {
    use kizuna::transport::{tcp::punched_connection, tcp_punch::TcpPunch};
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let (pi, pr) = (TcpPunch::bind(lo).unwrap(), TcpPunch::bind(lo).unwrap());
    let (ia, ra) = (pi.local_addr(), pr.local_addr());
    let ((si, to_r), (sr, to_i)) =
        within(async { tokio::join!(punched_stream(pi, ra), punched_stream(pr, ia)) }).await;
    within(async {
        tokio::join!(
            punched_connection(initiator, si, to_r, true, responder.peer_id()),
            punched_connection(responder, sr, to_i, false, expected)
        )
    })
    .await
}

/// TCP simultaneous open then the secure channel with roles from the punch: the
/// initiator is the TLS client, the responder the server; both authenticate the peer the
/// punch was for, and a wrong peer is refused.
#[tokio::test]
async fn punched_tcp_paths_carry_authenticated_connections() {
    let (a, b, mallory) = (node(), node(), node());
    let (ca, cb) = punched_pair(&a, &b, a.peer_id()).await;
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!((ca.peer(), cb.peer()), (b.peer_id(), a.peer_id()));
    assert!(ca.is_dialer() && !cb.is_dialer());
    ca.send(Bytes::from_static(b"through the punched path")).await.unwrap();
    assert_eq!(within(cb.recv()).await.unwrap().unwrap(), Bytes::from_static(b"through the punched path"));
    cb.send(Bytes::from_static(b"and back")).await.unwrap();
    assert_eq!(within(ca.recv()).await.unwrap().unwrap(), Bytes::from_static(b"and back"));

    // The responder expects `a` but `mallory` turns up: refused.
    let (_, cb) = punched_pair(&mallory, &b, a.peer_id()).await;
    assert!(matches!(cb, Err(TransportError::AuthenticationFailed { .. })), "{cb:?}");
}
