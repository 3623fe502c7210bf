//! The TLS profile of `docs/protocol.md` §1 seen from outside, over real loopback
//! sockets: a plain rustls (or quinn) client that does not offer Kizuna's ALPN is refused
//! *during* the handshake with the `no_application_protocol` alert, by the TCP, WebSocket
//! and QUIC listeners alike; the listener keeps serving and a Kizuna dial still works.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::{net::SocketAddr, sync::Arc};

use kizuna::{
    transport::{
        quic::QuicTransport,
        tcp::TcpTransport,
        ws::{ws_connect, WsOptions, WsTransport},
    },
    Listener, LocalNode, Transport, TransportAddr, TransportError,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    AlertDescription, DigitallySignedStruct, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use common::*;

/// ALPN lists a foreign client may offer: none at all, a web protocol, a future Kizuna.
const FOREIGN_ALPN: [&[&[u8]]; 3] = [&[], &[b"h2"], &[b"http/1.1", b"kizuna/2"]];

/// The ALPN alert as rustls reports it when received.
const NO_APP_PROTOCOL: rustls::Error = rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol);

/// Accepts any server certificate: these clients are strangers to Kizuna's identities.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client with no certificate of its own, offering `alpn`.
fn foreign_client(alpn: &[&[u8]]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

/// Runs a foreign client's handshake over `io` and returns the rustls error it fails with.
async fn foreign_handshake_error(io: impl AsyncRead + AsyncWrite + Unpin, alpn: &[&[u8]]) -> rustls::Error {
    let connector = TlsConnector::from(Arc::new(foreign_client(alpn)));
    let name = ServerName::try_from("kizuna.invalid").unwrap();
    let e = match within(connector.connect(name, io)).await {
        Ok(_) => panic!("{alpn:?}: the handshake completed"),
        Err(e) => e,
    };
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    inner.cloned().unwrap_or_else(|| panic!("{alpn:?}: not a TLS error: {e:?}"))
}

/// The listener's rejection of a foreign client names the ALPN rule.
async fn expect_alpn_rejection(l: &mut Box<dyn Listener>, alpn: &[&[u8]]) {
    match next_rejection(l).await {
        TransportError::Tls(m) => assert!(m.contains(r#"did not offer ALPN "kizuna/1""#), "{alpn:?}: {m}"),
        other => panic!("{alpn:?}: expected a TLS rejection, got {other}"),
    }
}

/// A Kizuna dial to `addr` still works after the foreign clients.
async fn kizuna_dial_works(
    t: &dyn Transport,
    server: &Arc<LocalNode>,
    l: &mut Box<dyn Listener>,
    addr: &TransportAddr,
) {
    let (c, s) = tokio::join!(within(t.connect(addr, server.peer_id())), next_connection(l));
    assert_eq!(c.unwrap().peer(), server.peer_id());
    assert!(!s.is_dialer());
}

#[tokio::test]
async fn tcp_listener_refuses_clients_without_kizuna_alpn_during_the_handshake() {
    let server = node();
    let mut l = TcpTransport::new(server.clone()).listen(&"tcp=127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = l.local_addr();
    for alpn in FOREIGN_ALPN {
        let tcp = tokio::net::TcpStream::connect(addr.socket_addr().unwrap()).await.unwrap();
        assert_eq!(foreign_handshake_error(tcp, alpn).await, NO_APP_PROTOCOL, "{alpn:?}");
        expect_alpn_rejection(&mut l, alpn).await;
    }
    kizuna_dial_works(&TcpTransport::new(node()), &server, &mut l, &addr).await;
}

#[tokio::test]
async fn websocket_listener_refuses_inner_tls_without_kizuna_alpn() {
    let server = node();
    let mut l =
        WsTransport::new(server.clone()).listen(&"ws=ws://127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = l.local_addr();
    let TransportAddr::Ws(url) = &addr else { panic!("{addr}") };
    for alpn in FOREIGN_ALPN {
        // A proper WebSocket upgrade with the `kizuna` subprotocol, then a foreign TLS.
        let ws = within(ws_connect(url, &WsOptions::default())).await.unwrap();
        assert_eq!(foreign_handshake_error(ws, alpn).await, NO_APP_PROTOCOL, "{alpn:?}");
        expect_alpn_rejection(&mut l, alpn).await;
    }
    kizuna_dial_works(&WsTransport::new(node()), &server, &mut l, &addr).await;
}

#[tokio::test]
async fn quic_listener_refuses_clients_without_kizuna_quic_alpn_during_the_handshake() {
    let server = node();
    let mut l =
        QuicTransport::new(server.clone()).listen(&"quic=127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = l.local_addr();
    let sock: SocketAddr = addr.socket_addr().unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    for alpn in FOREIGN_ALPN.iter().chain([&[&b"kizuna/1"[..]][..]].iter()) {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(foreign_client(alpn)).unwrap();
        let cfg = quinn::ClientConfig::new(Arc::new(crypto));
        let e = within(endpoint.connect_with(cfg, sock, "kizuna.invalid").unwrap()).await.unwrap_err();
        // RFC 9001 §4.8: a TLS alert is the QUIC error 0x100 + its code.
        let quinn::ConnectionError::ConnectionClosed(close) = &e else { panic!("{alpn:?}: {e:?}") };
        assert_eq!(close.error_code, quinn::TransportErrorCode::crypto(120), "{alpn:?}: {e}");
        let rejected = next_rejection(&mut l).await;
        assert!(
            rejected.to_string().contains("peer doesn't support any known protocol"),
            "{alpn:?}: {rejected}"
        );
    }
    endpoint.close(0u32.into(), b"done");
    kizuna_dial_works(&QuicTransport::new(node()), &server, &mut l, &addr).await;
}
