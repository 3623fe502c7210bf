//! WebSocket transport and the WebSocket byte stream, over real loopback sockets.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use kizuna::{
    transport::ws::{ws_accept, ws_connect, WsConfig, WsOptions, WsStream, WsTransport, SUBPROTOCOL},
    wire::CloseCode,
    Connection, Listener, LocalNode, NodeConfig, PathKind, Protocol, Transport, TransportAddr,
    TransportError,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest,
        handshake::server::{Request, Response},
        http::{header::SEC_WEBSOCKET_PROTOCOL, HeaderValue},
        protocol::frame::coding::CloseCode as WsCloseCode,
        Error as WsError, Message,
    },
    WebSocketStream,
};

use common::*;

fn loopback() -> TransportAddr {
    TransportAddr::Ws("ws://127.0.0.1:0".into())
}

async fn listen(t: &WsTransport, addr: &TransportAddr) -> (Box<dyn Listener>, TransportAddr) {
    let l = t.listen(addr).await.unwrap();
    let a = l.local_addr();
    (l, a)
}

fn url_of(addr: &TransportAddr) -> String {
    match addr {
        TransportAddr::Ws(u) => u.clone(),
        other => panic!("not a ws address: {other}"),
    }
}

/// `host:port` of a `ws://` URL without a path.
fn sock_of(addr: &TransportAddr) -> String {
    let u = url_of(addr);
    u.split("://").nth(1).unwrap().split('/').next().unwrap().to_string()
}

/// Dials `l` from a fresh client and exchanges one message both ways.
async fn still_serves(server: &Arc<LocalNode>, l: &mut Box<dyn Listener>, addr: &TransportAddr) {
    let client = WsTransport::new(node());
    let (c, s) = tokio::join!(client.connect(addr, server.peer_id()), next_connection(l));
    let c = c.unwrap();
    c.send(Bytes::from_static(b"hi")).await.unwrap();
    assert_eq!(within(s.recv()).await.unwrap().unwrap(), Bytes::from_static(b"hi"));
    s.send(Bytes::from_static(b"ho")).await.unwrap();
    assert_eq!(within(c.recv()).await.unwrap().unwrap(), Bytes::from_static(b"ho"));
}

/// Both directions of one stream at once, then many small messages.
async fn exercise(c: &Connection, s: &Connection, total: u64, messages: u32) {
    let mut cs = c.open_stream().await.unwrap();
    let mut ss = within(s.accept_stream()).await.unwrap().unwrap();
    let started = Instant::now();
    let (mut cr, mut cw) = tokio::io::split(&mut cs);
    let (mut sr, mut sw) = tokio::io::split(&mut ss);
    within(async {
        tokio::join!(
            send_pattern(&mut cw, 1, total),
            check_pattern(&mut sr, 1, total),
            send_pattern(&mut sw, 2, total),
            check_pattern(&mut cr, 2, total)
        );
    })
    .await;
    eprintln!("2 x {} MiB over one stream in {:?}", total >> 20, started.elapsed());

    let sender = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..messages {
                c.send(Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
            }
        })
    };
    for i in 0..messages {
        assert_eq!(within(s.recv()).await.unwrap().unwrap(), Bytes::from(i.to_be_bytes().to_vec()));
    }
    sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64_mib_each_way_and_many_messages() {
    let (server, client) = (node(), node());
    let st = WsTransport::new(server.clone());
    assert_eq!(st.protocol(), Protocol::WebSocket);
    assert!(st.priority() < kizuna::transport::tcp::TCP_PRIORITY);
    let (mut l, addr) = listen(&st, &loopback()).await;
    let url = url_of(&addr);
    assert!(url.starts_with("ws://127.0.0.1:") && !url.ends_with(":0"), "{url}");
    assert!(server.listen_addrs().contains(&addr));

    let dial = WsTransport::new(client.clone());
    let (c, s) = tokio::join!(dial.connect(&addr, server.peer_id()), next_connection(&mut l));
    let c = c.unwrap();
    assert_eq!(c.peer(), server.peer_id());
    assert_eq!(s.peer(), client.peer_id());
    assert!(c.is_dialer() && !s.is_dialer());
    let (ci, si) = (c.info(), s.info());
    assert_eq!((ci.protocol, ci.path), (Protocol::WebSocket, PathKind::Direct));
    assert_eq!((si.protocol, si.path), (Protocol::WebSocket, PathKind::Direct));
    assert_eq!(ci.remote_addr, addr);
    // The listener saw the dialer's socket, as a ws:// URL, and told it so.
    let observed = c.remote_hello().observed_addr.clone();
    assert!(
        matches!(&observed, Some(TransportAddr::Ws(u)) if u.starts_with("ws://127.0.0.1:")),
        "{observed:?}"
    );
    assert_eq!(observed.as_ref(), Some(&si.remote_addr));
    assert_eq!(s.remote_hello().observed_addr.as_ref(), Some(&addr));

    exercise(&c, &s, BULK, 20_000).await;
    let info = c.info();
    assert!(info.bytes_sent >= BULK && info.bytes_received >= BULK);
    assert!(info.local_addr.is_some());
    c.close(CloseCode::Normal, "done").await;
    assert!(within(s.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn dialing_the_wrong_peer_fails_authentication() {
    let (server, client, stranger) = (node(), node(), node());
    let (mut l, addr) = listen(&WsTransport::new(server.clone()), &loopback()).await;
    let err = within(WsTransport::new(client).connect(&addr, stranger.peer_id())).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::AuthenticationFailed { expected, .. } if *expected == stranger.peer_id()),
        "{err}"
    );
    assert!(!err.is_retryable());
    next_rejection(&mut l).await;
    still_serves(&server, &mut l, &addr).await;
}

/// A plain tokio-tungstenite client offering `protocols` (none if empty).
async fn plain_client(
    addr: &TransportAddr,
    protocols: Option<&'static str>,
) -> Result<WebSocketStream<TcpStream>, WsError> {
    let tcp = TcpStream::connect(sock_of(addr)).await.unwrap();
    let mut req = format!("{}/some/path", url_of(addr)).into_client_request().unwrap();
    if let Some(p) = protocols {
        req.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    tokio_tungstenite::client_async(req, tcp).await.map(|(ws, _)| ws)
}

#[tokio::test]
async fn clients_without_the_kizuna_subprotocol_are_refused_during_the_upgrade() {
    let server = node();
    let (mut l, addr) = listen(&WsTransport::new(server.clone()), &loopback()).await;
    for (offer, quoted) in
        [(None, "offered none"), (Some("chat"), "\"chat\""), (Some("chat, superchat"), "\"superchat\"")]
    {
        let err = within(plain_client(&addr, offer)).await.unwrap_err();
        let WsError::Http(resp) = err else { panic!("expected an HTTP refusal, got {err}") };
        assert_eq!(resp.status(), 400);
        let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
        assert!(body.contains("Kizuna requires the WebSocket subprotocol \"kizuna\""), "{body}");
        assert!(body.contains(quoted), "{body}");
        let e = next_rejection(&mut l).await;
        assert!(matches!(&e, TransportError::UnsupportedProtocol(r) if r.contains("subprotocol")), "{e}");
    }
    still_serves(&server, &mut l, &addr).await;
}

#[tokio::test]
async fn garbage_after_a_correct_upgrade_is_rejected_and_the_listener_keeps_serving() {
    let server = node();
    let (mut l, addr) = listen(&WsTransport::new(server.clone()), &loopback()).await;

    // Binary garbage where the Kizuna TLS handshake should be.
    let mut ws = within(plain_client(&addr, Some(SUBPROTOCOL))).await.unwrap();
    ws.send(Message::Binary(Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))).await.unwrap();
    let e = next_rejection(&mut l).await;
    assert!(matches!(e, TransportError::Tls(_)), "{e}");
    // The server hangs up: the client's stream ends promptly.
    within(async { while let Some(Ok(_)) = ws.next().await {} }).await;

    // A text message instead of binary: refused, and the client is told why (1003).
    let mut ws = within(plain_client(&addr, Some("other, kizuna"))).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let e = next_rejection(&mut l).await;
    assert!(e.to_string().contains("binary"), "{e}");
    let mut close = None;
    within(async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                close = f;
            }
        }
    })
    .await;
    assert_eq!(close.map(|f| f.code), Some(WsCloseCode::Unsupported));

    still_serves(&server, &mut l, &addr).await;
}

#[tokio::test]
async fn silent_client_after_upgrade_times_out_and_others_are_served() {
    let server = node_with(|c| c.handshake_timeout = Duration::from_millis(300));
    let (mut l, addr) = listen(&WsTransport::new(server.clone()), &loopback()).await;
    let _silent = within(plain_client(&addr, Some(SUBPROTOCOL))).await.unwrap();
    let e = next_rejection(&mut l).await;
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    still_serves(&server, &mut l, &addr).await;
}

/// A raw WebSocket server that accepts with the `kizuna` subprotocol and hands each
/// accepted stream to `f`.
async fn raw_server<F, Fut>(f: F) -> String
where
    F: Fn(WebSocketStream<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            #[allow(clippy::result_large_err)] // tungstenite's `Callback` signature
            let cb = |_: &Request, mut resp: Response| {
                resp.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
                Ok(resp)
            };
            if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await {
                tokio::spawn(f(ws));
            }
        }
    });
    url
}

fn fast_keepalive() -> WsOptions {
    WsOptions {
        keep_alive_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..WsOptions::default()
    }
}

/// Reads until an error; returns it and how long it took.
async fn read_until_error<S>(ws: &mut WsStream<S>) -> (std::io::Error, Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match within(ws.read(&mut buf)).await {
            Ok(0) => panic!("clean end of stream, expected an error"),
            Ok(_) => continue,
            Err(e) => return (e, started.elapsed()),
        }
    }
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_detected_dead() {
    // Completes the upgrade, then never reads (so never answers a ping).
    let url = raw_server(|ws| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(ws);
    })
    .await;
    let opts = fast_keepalive();
    let mut ws = ws_connect(&url, &opts).await.unwrap();
    let (e, took) = read_until_error(&mut ws).await;
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("dead"), "{e}");
    assert!(took >= opts.idle_timeout && took < opts.idle_timeout * 4, "took {took:?}");
}

#[tokio::test]
async fn a_quiet_peer_that_answers_pings_stays_alive() {
    // Reads (tungstenite answers pings) but never sends anything itself.
    let url = raw_server(|mut ws| async move { while let Some(Ok(_)) = ws.next().await {} }).await;
    let opts = fast_keepalive();
    let mut ws = ws_connect(&url, &opts).await.unwrap();
    let mut buf = [0u8; 16];
    let quiet = tokio::time::timeout(opts.idle_timeout * 5, ws.read(&mut buf)).await;
    assert!(quiet.is_err(), "read ended although the peer answered every ping: {quiet:?}");
}

#[tokio::test]
async fn the_accepting_side_detects_a_dead_client_too() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/relay", listener.local_addr().unwrap());
    let client = tokio::spawn(async move {
        let tcp =
            TcpStream::connect(url.trim_start_matches("ws://").trim_end_matches("/relay")).await.unwrap();
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
        let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        // Hold it without ever reading.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(ws);
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let opts = fast_keepalive();
    let mut ws = ws_accept(tcp, &opts).await.unwrap();
    assert_eq!(ws.request_path(), Some("/relay"));
    let (e, took) = read_until_error(&mut ws).await;
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(took < opts.idle_timeout * 4, "took {took:?}");
    client.abort();
}

#[tokio::test]
async fn text_messages_are_an_error_of_the_stream() {
    let url = raw_server(|mut ws| async move {
        ws.send(Message::Binary(Bytes::from_static(b"ok"))).await.unwrap();
        ws.send(Message::text("not bytes")).await.unwrap();
        // Wait for the close frame the Kizuna side sends back.
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(Some(f)) = m {
                assert_eq!(f.code, WsCloseCode::Unsupported);
            }
        }
    })
    .await;
    let mut ws = ws_connect(&url, &WsOptions::default()).await.unwrap();
    let mut buf = [0u8; 2];
    ws.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    let e = within(ws.read(&mut buf)).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("binary"), "{e}");
}

#[tokio::test]
async fn bytes_are_coalesced_into_messages_of_at_most_64_kib() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let url = raw_server(move |mut ws| {
        let tx = tx.clone();
        async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Binary(b) = m {
                    tx.send(b.len()).await.unwrap();
                }
            }
        }
    })
    .await;
    let mut ws = ws_connect(&url, &WsOptions::default()).await.unwrap();
    // 100 small writes and one flush: one message.
    for _ in 0..100 {
        ws.write_all(&[7u8; 10]).await.unwrap();
    }
    ws.flush().await.unwrap();
    assert_eq!(within(rx.recv()).await, Some(1000));
    // 200 KiB in one write: full 64 KiB messages, the rest on flush.
    ws.write_all(&vec![1u8; 200 * 1024]).await.unwrap();
    ws.flush().await.unwrap();
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < 200 * 1024 {
        sizes.push(within(rx.recv()).await.unwrap());
    }
    assert_eq!(sizes, vec![65536, 65536, 65536, 8192]);
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let url = raw_server(|mut ws| async move {
        let _ = ws.send(Message::Binary(Bytes::from(vec![0u8; 256 * 1024]))).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let mut ws = ws_connect(&url, &WsOptions::default()).await.unwrap();
    let (e, _) = read_until_error(&mut ws).await;
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
}

#[tokio::test]
async fn servers_that_do_not_speak_kizuna_are_named_as_such() {
    // A WebSocket server that ignores subprotocols.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    let e = ws_connect(&url, &WsOptions::default()).await.unwrap_err();
    assert!(
        matches!(&e, TransportError::UnsupportedProtocol(r) if r.contains("\"kizuna\"") && r.contains("not a Kizuna endpoint")),
        "{e}"
    );

    // A plain HTTP server: the status and body are quoted.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).await;
        let body = "no such endpoint";
        let resp = format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        tcp.write_all(resp.as_bytes()).await.unwrap();
    });
    let e = ws_connect(&url, &WsOptions::default()).await.unwrap_err();
    assert!(
        matches!(&e, TransportError::ConnectFailed { reason, .. } if reason.contains("404") && reason.contains("no such endpoint")),
        "{e}"
    );
}

#[tokio::test]
async fn relay_and_other_addresses_are_not_dialed_directly() {
    let t = WsTransport::new(node());
    let e = t.connect(&TransportAddr::Relay("ws://127.0.0.1:1".into()), node().peer_id()).await.unwrap_err();
    assert!(matches!(e, TransportError::UnsupportedProtocol(_)), "{e}");
    let e = t.listen(&TransportAddr::Tcp("127.0.0.1:0".parse().unwrap())).await.err().unwrap();
    assert!(matches!(e, TransportError::UnsupportedProtocol(_)), "{e}");
    let e = t.listen(&TransportAddr::Ws("wss://127.0.0.1:0".into())).await.err().unwrap();
    assert!(matches!(&e, TransportError::Config(m) if m.contains("certificate")), "{e}");
}

/// PEM text of one DER object.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A CA and a server certificate for 127.0.0.1 / localhost that it signed:
/// (CA certificate DER, server chain PEM, server key PEM).
fn test_pki(cn: &str) -> (CertificateDer<'static>, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let chain = pem("CERTIFICATE", leaf_cert.der());
    let key = pem("PRIVATE KEY", &leaf_key.serialize_der());
    (ca_cert.der().clone(), chain, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_private_ca_works_end_to_end() {
    let (ca, chain, key) = test_pki("Kizuna test CA");
    let (server, client) = (node(), node());
    let server_cfg = WsConfig::new().with_server_cert_pem(chain.as_bytes(), key.as_bytes()).unwrap();
    let st = WsTransport::with_config(server.clone(), server_cfg);
    let (mut l, addr) = listen(&st, &TransportAddr::Ws("wss://127.0.0.1:0/kizuna".into())).await;
    let url = url_of(&addr);
    assert!(url.starts_with("wss://127.0.0.1:") && url.ends_with("/kizuna"), "{url}");

    let dial = WsTransport::with_config(client.clone(), WsConfig::new().trust_root_der(ca).unwrap());
    let (c, s) = tokio::join!(dial.connect(&addr, server.peer_id()), next_connection(&mut l));
    let c = c.unwrap();
    assert_eq!((c.peer(), s.peer()), (server.peer_id(), client.peer_id()));
    assert!(matches!(&s.info().remote_addr, TransportAddr::Ws(u) if u.starts_with("wss://")));
    exercise(&c, &s, 4 * 1024 * 1024, 1000).await;
    c.close(CloseCode::Normal, "done").await;
    assert!(within(s.recv()).await.unwrap().is_none());

    // Without trusted roots, wss:// is a configuration error.
    let e = WsTransport::new(client.clone()).connect(&addr, server.peer_id()).await.unwrap_err();
    assert!(matches!(&e, TransportError::Config(m) if m.contains("wss://")), "{e}");

    // Trusting some other CA: the outer TLS fails, and the listener keeps serving.
    let (other_ca, _, _) = test_pki("Some other CA");
    let other = WsTransport::with_config(client.clone(), WsConfig::new().trust_root_der(other_ca).unwrap());
    let e = other.connect(&addr, server.peer_id()).await.unwrap_err();
    assert!(matches!(&e, TransportError::Tls(m) if m.contains("wss")), "{e}");
    assert!(matches!(next_rejection(&mut l).await, TransportError::Tls(_)));
    let (c, s) = tokio::join!(dial.connect(&addr, server.peer_id()), next_connection(&mut l));
    c.unwrap().send(Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(within(s.recv()).await.unwrap().unwrap(), Bytes::from_static(b"again"));
}

/// A TCP relay between a client and `target` that forwards until `freeze` is set, then
/// stops forwarding in both directions while keeping both sockets open (a black hole).
async fn freezer(target: String) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (freeze, frozen) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let (inbound, _) = listener.accept().await.unwrap();
        let outbound = TcpStream::connect(target).await.unwrap();
        let (mut ir, mut iw) = inbound.into_split();
        let (mut or, mut ow) = outbound.into_split();
        async fn pump(
            r: &mut tokio::net::tcp::OwnedReadHalf,
            w: &mut tokio::net::tcp::OwnedWriteHalf,
            mut frozen: tokio::sync::watch::Receiver<bool>,
        ) {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    n = r.read(&mut buf) => match n {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if w.write_all(&buf[..n]).await.is_err() { return },
                    },
                    _ = async { drop(frozen.wait_for(|f| *f).await) } => {
                        // Hold the sockets open and silent.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                }
            }
        }
        tokio::join!(pump(&mut ir, &mut ow, frozen.clone()), pump(&mut or, &mut iw, frozen));
    });
    (addr, freeze)
}

#[tokio::test]
async fn a_kizuna_connection_over_a_dead_path_fails_within_the_websocket_idle_timeout() {
    let (server, client) = (node(), node());
    let short = || WsConfig::new().with_keep_alive(Duration::from_millis(50), Duration::from_millis(400));
    let (mut l, addr) = listen(&WsTransport::with_config(server.clone(), short()), &loopback()).await;
    let (proxy, freeze) = freezer(sock_of(&addr)).await;
    let via = TransportAddr::Ws(format!("ws://{proxy}/"));
    let dial = WsTransport::with_config(client.clone(), short());
    let (c, s) = tokio::join!(dial.connect(&via, server.peer_id()), next_connection(&mut l));
    let c = c.unwrap();
    c.send(Bytes::from_static(b"before")).await.unwrap();
    assert_eq!(within(s.recv()).await.unwrap().unwrap(), Bytes::from_static(b"before"));
    // The node-level keep-alive is 15 s / 45 s: only the WebSocket layer can notice now.
    freeze.send_replace(true);
    let started = Instant::now();
    let (cr, sr) = tokio::join!(within(c.recv()), within(s.recv()));
    let took = started.elapsed();
    let e = cr.unwrap_err();
    assert!(matches!(&e, TransportError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut), "{e}");
    assert!(sr.is_err());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!c.is_connected() && !s.is_connected());
}

#[tokio::test]
async fn pem_and_der_errors_are_configuration_errors() {
    let e = WsConfig::new().with_server_cert_pem(b"not pem", b"nope").unwrap_err();
    assert!(matches!(e, TransportError::Config(_)), "{e}");
    let e = WsConfig::new().trust_root_pem(b"").unwrap_err();
    assert!(matches!(e, TransportError::Config(_)), "{e}");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(vec![1, 2, 3]));
    let e = WsConfig::new().with_server_cert_der(vec![CertificateDer::from(vec![1, 2, 3])], key).unwrap_err();
    assert!(matches!(e, TransportError::Config(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_during_bulk_transfer_neither_stall_nor_corrupt_the_stream() {
    // Pings due every millisecond of silence: the reader queues and flushes them while
    // the writer is busy in another task, which exercises the shared-waker handling.
    let busy = || WsConfig::new().with_keep_alive(Duration::from_millis(1), Duration::from_secs(10));
    let (server, client) = (node(), node());
    let (mut l, addr) = listen(&WsTransport::with_config(server.clone(), busy()), &loopback()).await;
    let dial = WsTransport::with_config(client.clone(), busy());
    let (c, s) = tokio::join!(dial.connect(&addr, server.peer_id()), next_connection(&mut l));
    let c = c.unwrap();
    exercise(&c, &s, 16 * 1024 * 1024, 2000).await;
    // Idle with pings flowing: still connected after many intervals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.is_connected() && s.is_connected());
    c.send(Bytes::from_static(b"still here")).await.unwrap();
    assert_eq!(within(s.recv()).await.unwrap().unwrap(), Bytes::from_static(b"still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_while_the_socket_is_full_do_not_lose_the_writer() {
    // The receiver stops reading, so the sender's socket fills and its writer waits on
    // tungstenite while its reader keeps queueing pings (every 2 ms of silence).
    let busy = || WsConfig::new().with_keep_alive(Duration::from_millis(2), Duration::from_secs(10));
    let small_queue = |c: &mut NodeConfig| c.message_queue = 8;
    let (server, client) = (node_with(small_queue), node_with(small_queue));
    let (mut l, addr) = listen(&WsTransport::with_config(server.clone(), busy()), &loopback()).await;
    let dial = WsTransport::with_config(client.clone(), busy());
    let (c, s) = tokio::join!(dial.connect(&addr, server.peer_id()), next_connection(&mut l));
    let c = c.unwrap();
    const N: u32 = 300;
    let sender = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let mut m = vec![(i % 251) as u8; 64 * 1024];
                m[..4].copy_from_slice(&i.to_be_bytes());
                c.send(Bytes::from(m)).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!sender.is_finished(), "the sender never blocked; the test proves nothing");
    for i in 0..N {
        let m = within(s.recv()).await.unwrap().unwrap();
        assert_eq!(m.len(), 64 * 1024);
        assert_eq!(&m[..4], &i.to_be_bytes());
        assert!(m[4..].iter().all(|b| *b == (i % 251) as u8));
    }
    within(sender).await.unwrap();
}
