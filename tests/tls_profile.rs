//! The TLS profile of `docs/protocol.md` §1 seen from outside, over real loopback
//! sockets: a plain rustls (or quinn) client that does not offer Kizuna's ALPN is refused
//! *during* the handshake with the `no_application_protocol` alert, by the TCP, WebSocket
//! and QUIC listeners alike; on TCP, a client offering only TLS 1.2, or presenting
//! anything but one certificate of an Ed25519 key it holds (ECDSA, not X.509, a chain,
//! somebody else's), is refused with a fatal alert too. Each time the listener keeps
//! serving and a Kizuna dial still works.
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
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    sign::{CertifiedKey, Signer, SigningKey, SingleCertAndKey},
    AlertDescription, DigitallySignedStruct, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
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

/// Kizuna's stream ALPN, which the clients below offer: only their version or their
/// certificate is wrong.
const KIZUNA_ALPN: &[u8] = b"kizuna/1";

/// A key of `alg` made by rcgen, loaded for rustls.
fn rcgen_key(alg: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, Arc<dyn SigningKey>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::default_provider().key_provider.load_private_key(der).unwrap();
    (key, signing)
}

/// A self-signed certificate for `key`, as any node (or anyone) could make one.
fn self_signed(key: &rcgen::KeyPair) -> CertificateDer<'static> {
    rcgen::CertificateParams::new(vec!["kizuna.invalid".into()])
        .unwrap()
        .self_signed(key)
        .unwrap()
        .der()
        .clone()
}

/// A signing key that claims Ed25519, the only scheme the server accepts, whatever it
/// really is: so that a client presents a certificate the server must refuse by itself,
/// instead of quietly sending none.
#[derive(Debug)]
struct ClaimsEd25519(Arc<dyn SigningKey>);

#[derive(Debug)]
struct Ed25519Claim(Box<dyn Signer>);

impl SigningKey for ClaimsEd25519 {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        if !offered.contains(&SignatureScheme::ED25519) {
            return None;
        }
        let all =
            rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes();
        let real = self.0.choose_scheme(&all)?;
        Some(Box::new(Ed25519Claim(real)))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl Signer for Ed25519Claim {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0.sign(message)
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A client of protocol `version` offering ALPN `kizuna/1` and presenting `chain` with
/// `key` (neither checked on this side).
fn client_presenting(
    version: &'static rustls::SupportedProtocolVersion,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = Arc::new(CertifiedKey::new(chain, key));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![KIZUNA_ALPN.to_vec()];
    cfg
}

/// Runs `cfg`'s handshake with the listener at `addr`, and returns the fatal alert the
/// client's handshake or its first read fails with (a TLS 1.3 client completes its side
/// before the server has checked its certificate). Data from the server means it
/// accepted the client: a failure.
async fn server_refusal(addr: &TransportAddr, cfg: rustls::ClientConfig) -> rustls::Error {
    let tcp = tokio::net::TcpStream::connect(addr.socket_addr().unwrap()).await.unwrap();
    let connector = TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from("kizuna.invalid").unwrap();
    let e = match within(connector.connect(name, tcp)).await {
        Err(e) => e,
        Ok(mut tls) => match within(tls.read(&mut [0u8; 64])).await {
            Ok(0) => panic!("the server closed without an alert"),
            Ok(n) => panic!("the server accepted the client and sent {n} bytes"),
            Err(e) => e,
        },
    };
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    inner.cloned().unwrap_or_else(|| panic!("not a TLS error: {e:?}"))
}

#[tokio::test]
async fn tcp_listener_refuses_tls12_during_the_handshake() {
    let server = node();
    let mut l = TcpTransport::new(server.clone()).listen(&"tcp=127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = l.local_addr();
    // Everything right but the version: ALPN `kizuna/1`, a node-like Ed25519 certificate.
    let (key, signing) = rcgen_key(&rcgen::PKCS_ED25519);
    let cfg = client_presenting(&rustls::version::TLS12, vec![self_signed(&key)], signing);
    let alert = rustls::Error::AlertReceived(AlertDescription::ProtocolVersion);
    assert_eq!(server_refusal(&addr, cfg).await, alert);
    match next_rejection(&mut l).await {
        TransportError::Tls(m) => assert!(m.contains("Tls12"), "{m}"),
        other => panic!("expected a TLS rejection, got {other}"),
    }
    kizuna_dial_works(&TcpTransport::new(node()), &server, &mut l, &addr).await;
}

/// A client certificate the listener must refuse.
struct BadCert {
    what: &'static str,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
    /// The alert the client receives.
    alert: AlertDescription,
    /// What the listener's rejection names.
    reason: &'static str,
}

#[tokio::test]
async fn tcp_listener_refuses_client_certificates_that_are_not_one_ed25519_key() {
    let server = node();
    let mut l = TcpTransport::new(server.clone()).listen(&"tcp=127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = l.local_addr();
    let (ecdsa, ecdsa_signing) = rcgen_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (ed, ed_signing) = rcgen_key(&rcgen::PKCS_ED25519);
    let (other, _) = rcgen_key(&rcgen::PKCS_ED25519);
    let claimed = |k: &Arc<dyn SigningKey>| -> Arc<dyn SigningKey> { Arc::new(ClaimsEd25519(k.clone())) };
    let cases = [
        BadCert {
            what: "an ECDSA P-256 certificate",
            chain: vec![self_signed(&ecdsa)],
            key: claimed(&ecdsa_signing),
            alert: AlertDescription::CertificateUnknown,
            reason: "NotEd25519",
        },
        BadCert {
            what: "bytes that are not X.509",
            chain: vec![CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])],
            key: ed_signing.clone(),
            alert: AlertDescription::BadCertificate,
            reason: "BadEncoding",
        },
        BadCert {
            what: "a chain of two",
            chain: vec![self_signed(&ed), self_signed(&other)],
            key: ed_signing.clone(),
            alert: AlertDescription::CertificateUnknown,
            reason: "ChainLength(2)",
        },
        // Somebody else's identity without its key: the signature over the handshake fails.
        BadCert {
            what: "another key's certificate",
            chain: vec![self_signed(&other)],
            key: ed_signing.clone(),
            alert: AlertDescription::DecryptError,
            reason: "BadSignature",
        },
    ];
    for BadCert { what, chain, key, alert, reason } in cases {
        let e = server_refusal(&addr, client_presenting(&rustls::version::TLS13, chain, key)).await;
        assert_eq!(e, rustls::Error::AlertReceived(alert), "{what}");
        match next_rejection(&mut l).await {
            TransportError::Tls(m) => {
                assert!(m.contains("invalid peer certificate") && m.contains(reason), "{what}: {m}")
            }
            other => panic!("{what}: expected a TLS rejection, got {other}"),
        }
    }
    kizuna_dial_works(&TcpTransport::new(node()), &server, &mut l, &addr).await;
}
