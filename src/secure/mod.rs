//! The secure channel: TLS 1.3 (rustls, *ring* provider) with self-signed certificates
//! bound to the node's Ed25519 key, mutually authenticated against the expected
//! [`PeerId`].
//!
//! Works over any `AsyncRead + AsyncWrite` (TCP, WebSocket, relayed circuits) through
//! [`SecureConfig::connect`] / [`SecureConfig::accept`], and supplies QUIC's crypto
//! configuration through [`SecureConfig::quic_client_config`] /
//! [`SecureConfig::quic_server_config`].
//!
//! How identity is bound (see [`cert`] for the certificate, `verify` for the verifiers):
//!
//! * each node presents one self-signed X.509 certificate whose SubjectPublicKeyInfo is its
//!   Ed25519 key; the TLS 1.3 `CertificateVerify` proves possession of that key;
//! * the client accepts only the key of the peer it dialed, and fails with
//!   [`TransportError::AuthenticationFailed`] naming who answered instead;
//! * the server requires a client certificate and learns the client's identity from it;
//! * only TLS 1.3 and the Ed25519 signature scheme are offered or accepted;
//! * ALPN is mandatory: a stream server reads the ClientHello first and, unless it offers
//!   `kizuna/1`, answers with a fatal `no_application_protocol` alert and closes, before
//!   any certificate is sent (rustls alone does so only for a client that offers other
//!   protocols, not for one that offers none); QUIC's rustls enforces `kizuna-quic/1`
//!   itself (RFC 9001 §8.1).
//!
//! The client addresses the server by a DNS name equal to the expected peer id's text (55
//! lowercase base32 characters are a valid DNS label), so session tickets are cached per
//! peer. Sessions resume across connections (TLS resumption over streams, 0-RTT for QUIC):
//! the node keeps one client session store for stream connections and one for QUIC (a
//! QUIC ticket is useless to a TLS-over-TCP server and vice versa, and rustls consumes a
//! ticket when it tries one), and one verifier per expected peer, because rustls only
//! resumes a session with the very verifier and client-certificate resolver that
//! established it.

pub mod cert;
mod verify;

use std::{
    collections::HashMap,
    fmt, io,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::{
    client::{ClientSessionMemoryCache, Resumption},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::ServerName,
    server::ServerSessionMemoryCache,
    sign::SingleCertAndKey,
    CertificateError,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector, TlsStream};

pub use cert::{peer_id_from_cert, peer_id_from_certs, CertError};
use verify::{AnyPeerVerifier, ExpectedPeerVerifier, WrongPeer};

use crate::{
    error::{Result, TransportError},
    identity::{Keypair, PeerId},
};

/// ALPN protocol of Kizuna's TLS over byte streams (TCP, WebSocket, relayed circuits).
pub const ALPN_STREAM: &[u8] = b"kizuna/1";
/// ALPN protocol of Kizuna over QUIC.
pub const ALPN_QUIC: &[u8] = b"kizuna-quic/1";

/// A fatal `no_application_protocol` alert (RFC 7301 §3.2) as the plaintext TLS record a
/// server sends before its ServerHello (RFC 8446 §5.1, §6): content type alert (21), legacy
/// record version 0x0303, length 2, level fatal (2), description 120. rustls has no API
/// to send an alert of one's choosing, hence the bytes.
const NO_APPLICATION_PROTOCOL_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 120];

/// ALPN names quoted in the error about a client that did not offer Kizuna's: a handful
/// shows what the client is (a browser offers `h2` and `http/1.1`), while a ClientHello
/// can carry thousands.
const MAX_QUOTED_ALPN: usize = 4;

/// Resumable sessions a client store keeps. rustls keeps up to this many server names
/// (peers), each with a few tickets; 1024 peers of a few hundred bytes each is well under
/// a MiB, and a node rarely talks to more distinct peers between restarts.
const CLIENT_SESSIONS: usize = 1024;
/// Sessions a server cache keeps for resumption (stateful: needed for 0-RTT anti-replay).
/// Each entry holds the secret and the client's ~300-byte certificate; 4096 entries is
/// about 2 MiB and covers two tickets for each of 2048 recent clients.
const SERVER_SESSIONS: usize = 4096;
/// Per-peer verifiers kept so sessions can resume (see the module docs). Matches the
/// session store's reach with room to spare; past it an arbitrary entry is forgotten,
/// which only costs that peer a full handshake.
const MAX_VERIFIERS: usize = 4096;

/// The node's TLS material and the configs derived from it.
pub struct SecureConfig {
    keypair: Keypair,
    provider: Arc<CryptoProvider>,
    resolver: Arc<SingleCertAndKey>,
    server: Arc<rustls::ServerConfig>,
    quic_server: quinn::ServerConfig,
    stream_sessions: Arc<ClientSessionMemoryCache>,
    quic_sessions: Arc<ClientSessionMemoryCache>,
    verifiers: Mutex<HashMap<PeerId, Arc<ExpectedPeerVerifier>>>,
}

impl fmt::Debug for SecureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureConfig").field("peer", &self.keypair.peer_id()).finish_non_exhaustive()
    }
}

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> TransportError + '_ {
    move |e| TransportError::Tls(format!("{what}: {e}"))
}

impl SecureConfig {
    /// Generates the node's self-signed certificate from `keypair` and builds the server
    /// configs.
    pub fn new(keypair: &Keypair) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let node_cert = cert::NodeCert::generate(keypair, &provider)?;
        let resolver = Arc::new(SingleCertAndKey::from(node_cert.certified));

        let server = Arc::new(Self::build_server(&provider, &resolver, ALPN_STREAM, 0)?);
        // QUIC allows only 0 or u32::MAX here (RFC 9001 §4.6.1); u32::MAX enables 0-RTT.
        let quic_tls = Arc::new(Self::build_server(&provider, &resolver, ALPN_QUIC, u32::MAX)?);
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(quic_tls)
            .map_err(|e| TransportError::Tls(format!("QUIC server config: {e}")))?;
        let quic_server = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));

        Ok(Self {
            keypair: keypair.clone(),
            provider,
            resolver,
            server,
            quic_server,
            stream_sessions: Arc::new(ClientSessionMemoryCache::new(CLIENT_SESSIONS)),
            quic_sessions: Arc::new(ClientSessionMemoryCache::new(CLIENT_SESSIONS)),
            verifiers: Mutex::new(HashMap::new()),
        })
    }

    fn build_server(
        provider: &Arc<CryptoProvider>,
        resolver: &Arc<SingleCertAndKey>,
        alpn: &[u8],
        max_early_data: u32,
    ) -> Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err("server config"))?
            .with_client_cert_verifier(Arc::new(AnyPeerVerifier::new(Self::algs(provider))))
            .with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg.session_storage = ServerSessionMemoryCache::new(SERVER_SESSIONS);
        cfg.max_early_data_size = max_early_data;
        Ok(cfg)
    }

    fn algs(provider: &CryptoProvider) -> WebPkiSupportedAlgorithms {
        provider.signature_verification_algorithms
    }

    /// The verifier for `expected`, the same instance every time (resumption needs it).
    fn verifier(&self, expected: PeerId) -> Arc<ExpectedPeerVerifier> {
        let mut map = self.verifiers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = map.get(&expected) {
            return v.clone();
        }
        if map.len() >= MAX_VERIFIERS {
            if let Some(k) = map.keys().next().copied() {
                map.remove(&k);
            }
        }
        let v = Arc::new(ExpectedPeerVerifier::new(expected, Self::algs(&self.provider)));
        map.insert(expected, v.clone());
        v
    }

    fn build_client(
        &self,
        expected: PeerId,
        alpn: &[u8],
        quic: bool,
    ) -> Result<(Arc<rustls::ClientConfig>, Arc<ExpectedPeerVerifier>)> {
        let verifier = self.verifier(expected);
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err("client config"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(self.resolver.clone());
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let store = if quic { &self.quic_sessions } else { &self.stream_sessions };
        cfg.resumption = Resumption::store(store.clone());
        // 0-RTT only for QUIC, where quinn replays nothing the application did not opt into;
        // over streams tokio-rustls would need the caller to handle early data explicitly.
        cfg.enable_early_data = quic;
        Ok((Arc::new(cfg), verifier))
    }

    /// rustls client config that accepts only `expected` (and presents our certificate),
    /// with ALPN `kizuna/1`. Sessions resume across all configs made for the same peer.
    pub fn client_config(&self, expected: PeerId) -> Result<Arc<rustls::ClientConfig>> {
        Ok(self.build_client(expected, ALPN_STREAM, false)?.0)
    }

    /// rustls server config (ALPN `kizuna/1`) that requires and authenticates a client
    /// certificate. Built once in [`SecureConfig::new`].
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// quinn client config for dialing `expected` (ALPN `kizuna-quic/1`, 0-RTT enabled).
    ///
    /// quinn's default transport config; transports set their own.
    pub fn quic_client_config(&self, expected: PeerId) -> Result<quinn::ClientConfig> {
        Ok(self.quic_client(expected)?.0)
    }

    /// [`SecureConfig::quic_client_config`] plus a probe that names who answered when the
    /// handshake fails because the remote is not `expected`.
    pub(crate) fn quic_client(&self, expected: PeerId) -> Result<(quinn::ClientConfig, AuthProbe)> {
        let (tls, verifier) = self.build_client(expected, ALPN_QUIC, true)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Tls(format!("QUIC client config: {e}")))?;
        Ok((quinn::ClientConfig::new(Arc::new(crypto)), AuthProbe { expected, verifier }))
    }

    /// quinn server config (ALPN `kizuna-quic/1`, mandatory client certificates, 0-RTT
    /// accepted with a stateful single-use ticket store).
    ///
    /// quinn's default transport config; transports set their own.
    pub fn quic_server_config(&self) -> Result<quinn::ServerConfig> {
        Ok(self.quic_server.clone())
    }

    /// Runs the client side of the secure channel over `io`, within `timeout`.
    ///
    /// Returns the stream and the authenticated identity (always `expected`). A remote
    /// with another identity fails with [`TransportError::AuthenticationFailed`]; a
    /// handshake that does not finish in time with [`TransportError::Timeout`]; anything
    /// else (garbage, alerts, EOF) with [`TransportError::Tls`].
    pub async fn connect<IO>(
        &self,
        io: IO,
        expected: PeerId,
        timeout: Duration,
    ) -> Result<(TlsStream<IO>, PeerId)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.connect_labeled(io, expected, &format!("peer {expected}"), timeout).await
    }

    /// [`SecureConfig::connect`], naming the remote as `remote` (e.g. its address) in errors.
    pub async fn connect_labeled<IO>(
        &self,
        io: IO,
        expected: PeerId,
        remote: &str,
        timeout: Duration,
    ) -> Result<(TlsStream<IO>, PeerId)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (cfg, verifier) = self.build_client(expected, ALPN_STREAM, false)?;
        let probe = AuthProbe { expected, verifier };
        let name = server_name(expected)?;
        let handshake = TlsConnector::from(cfg).connect(name, io);
        let stream = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| handshake_timeout(remote, timeout))?
            .map_err(|e| probe.handshake_error(e, remote))?;
        let (_, conn) = stream.get_ref();
        check_alpn(conn.alpn_protocol(), ALPN_STREAM, remote)?;
        // Also covers resumed sessions, whose identity comes from the stored session.
        let presented = peer_id_from_certs(conn.peer_certificates().unwrap_or_default())
            .map_err(|e| TransportError::AuthenticationFailed { expected, presented: e.to_string() })?;
        if presented != expected {
            return Err(TransportError::AuthenticationFailed { expected, presented: presented.to_string() });
        }
        Ok((TlsStream::Client(stream), presented))
    }

    /// Runs the server side over `io`, returning the authenticated client identity.
    ///
    /// A client that does not offer ALPN `kizuna/1` gets a fatal `no_application_protocol`
    /// alert in answer to its ClientHello, and this fails with [`TransportError::Tls`].
    pub async fn accept<IO>(&self, io: IO, timeout: Duration) -> Result<(TlsStream<IO>, PeerId)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.accept_labeled(io, "inbound peer", timeout).await
    }

    /// [`SecureConfig::accept`], naming the remote as `remote` (e.g. its address) in errors.
    pub async fn accept_labeled<IO>(
        &self,
        io: IO,
        remote: &str,
        timeout: Duration,
    ) -> Result<(TlsStream<IO>, PeerId)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let failed =
            |e: io::Error| TransportError::Tls(format!("handshake with {remote} failed: {}", io_detail(&e)));
        let handshake = async {
            let start =
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await.map_err(failed)?;
            if let Some(offered) = lacks_alpn(start.client_hello().alpn(), ALPN_STREAM) {
                let mut io = start.io;
                // Best effort: the client may already be gone.
                let _ = io.write_all(&NO_APPLICATION_PROTOCOL_ALERT).await;
                let _ = io.shutdown().await;
                return Err(TransportError::Tls(format!(
                    "{remote} did not offer ALPN {:?} (offered {offered}): refused with no_application_protocol",
                    String::from_utf8_lossy(ALPN_STREAM)
                )));
            }
            start.into_stream(self.server.clone()).await.map_err(failed)
        };
        let stream = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| handshake_timeout(remote, timeout))??;
        let (_, conn) = stream.get_ref();
        check_alpn(conn.alpn_protocol(), ALPN_STREAM, remote)?;
        let id = peer_id_from_certs(conn.peer_certificates().unwrap_or_default())
            .map_err(|e| TransportError::Tls(format!("client {remote}: {e}")))?;
        Ok((TlsStream::Server(stream), id))
    }

    /// The key pair behind the certificate.
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

/// The DNS name a client uses for `peer`: its peer id text.
pub(crate) fn server_name(peer: PeerId) -> Result<ServerName<'static>> {
    ServerName::try_from(peer.to_string())
        .map_err(|e| TransportError::Tls(format!("peer id is not a valid server name: {e}")))
}

fn handshake_timeout(remote: &str, after: Duration) -> TransportError {
    TransportError::Timeout { what: format!("TLS handshake with {remote}"), after }
}

fn check_alpn(got: Option<&[u8]>, want: &[u8], remote: &str) -> Result<()> {
    if got == Some(want) {
        return Ok(());
    }
    Err(TransportError::Tls(format!(
        "{remote} did not negotiate ALPN {:?} (got {:?})",
        String::from_utf8_lossy(want),
        got.map(String::from_utf8_lossy)
    )))
}

/// `None` if a ClientHello's ALPN list (`offered`, `None` without the extension) contains
/// `want`; otherwise what it offered, for an error message.
fn lacks_alpn<'a>(offered: Option<impl Iterator<Item = &'a [u8]>>, want: &[u8]) -> Option<String> {
    let Some(offered) = offered else { return Some("none".into()) };
    let mut names = Vec::new();
    let mut more = false;
    for name in offered {
        if name == want {
            return None;
        }
        if names.len() < MAX_QUOTED_ALPN {
            names.push(String::from_utf8_lossy(name).into_owned());
        } else {
            more = true;
        }
    }
    Some(format!("{names:?}{}", if more { " and more" } else { "" }))
}

/// The rustls error inside a tokio-rustls I/O error, or the I/O error itself.
fn io_detail(e: &io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls.to_string(),
        None => e.to_string(),
    }
}

/// Turns a failed client handshake into the error a user can act on.
pub(crate) struct AuthProbe {
    expected: PeerId,
    verifier: Arc<ExpectedPeerVerifier>,
}

impl AuthProbe {
    /// The identity the remote presented if the handshake failed because it is not the
    /// expected peer (consumes the verifier's record).
    pub(crate) fn wrong_peer(&self) -> Option<TransportError> {
        self.verifier.take_rejected().map(|presented| TransportError::AuthenticationFailed {
            expected: self.expected,
            presented: presented.to_string(),
        })
    }

    fn handshake_error(&self, e: io::Error, remote: &str) -> TransportError {
        let recorded = self.wrong_peer();
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            if let Some(w) = other.0.downcast_ref::<WrongPeer>() {
                return TransportError::AuthenticationFailed {
                    expected: w.expected,
                    presented: w.presented.to_string(),
                };
            }
            if let Some(c) = other.0.downcast_ref::<CertError>() {
                return TransportError::AuthenticationFailed {
                    expected: self.expected,
                    presented: c.to_string(),
                };
            }
        }
        recorded.unwrap_or_else(|| {
            TransportError::Tls(format!("handshake with {remote} failed: {}", io_detail(&e)))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    const T: Duration = Duration::from_secs(5);

    fn node(seed: u8) -> (SecureConfig, PeerId) {
        let kp = Keypair::from_seed([seed; 32]);
        (SecureConfig::new(&kp).unwrap(), kp.peer_id())
    }

    #[tokio::test]
    async fn mutual_auth_both_directions() {
        let (client, client_id) = node(1);
        let (server, server_id) = node(2);
        let (a, b) = duplex(64 * 1024);
        let (c, s) = tokio::join!(client.connect(a, server_id, T), server.accept(b, T));
        let (mut c, seen_server) = c.unwrap();
        let (mut s, seen_client) = s.unwrap();
        assert_eq!(seen_server, server_id);
        assert_eq!(seen_client, client_id);

        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn sessions_resume_across_configs() {
        let (client, _) = node(1);
        let (server, server_id) = node(2);
        for round in 0..2 {
            let (a, b) = duplex(64 * 1024);
            let (c, s) = tokio::join!(client.connect(a, server_id, T), server.accept(b, T));
            let (mut c, _) = c.unwrap();
            let (mut s, _) = s.unwrap();
            // Reading on the client processes the tickets the server sent after the handshake.
            s.write_all(b"x").await.unwrap();
            s.flush().await.unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.unwrap();
            let kind = c.get_ref().1.handshake_kind();
            if round == 1 {
                assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
                // A resumed session still knows who the server is.
                let id = peer_id_from_certs(c.get_ref().1.peer_certificates().unwrap()).unwrap();
                assert_eq!(id, server_id);
            }
            c.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn wrong_expected_peer_is_authentication_failure() {
        let (client, _) = node(1);
        let (server, server_id) = node(2);
        let (_, other_id) = node(3);
        let (a, b) = duplex(64 * 1024);
        let (c, s) = tokio::join!(client.connect(a, other_id, T), server.accept(b, T));
        match c {
            Err(TransportError::AuthenticationFailed { expected, presented }) => {
                assert_eq!(expected, other_id);
                assert_eq!(presented, server_id.to_string());
            }
            other => panic!("expected AuthenticationFailed, got {other:?}"),
        }
        assert!(matches!(s, Err(TransportError::Tls(_))), "{s:?}");
    }

    #[tokio::test]
    async fn client_without_certificate_is_rejected() {
        let (server, server_id) = node(2);
        let (client, _) = node(1);
        let verifier = client.verifier(server_id);
        let mut cfg = rustls::ClientConfig::builder_with_provider(client.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![ALPN_STREAM.to_vec()];
        let (a, b) = duplex(64 * 1024);
        let connector = TlsConnector::from(Arc::new(cfg));
        let client_side = async move {
            // The client believes the handshake succeeded, then sees the server's alert.
            let mut s = connector.connect(server_name(server_id).unwrap(), a).await?;
            let mut buf = [0u8; 1];
            s.read(&mut buf).await
        };
        let (c, s) = tokio::join!(client_side, server.accept(b, T));
        match s {
            Err(TransportError::Tls(msg)) => assert!(msg.contains("certificate"), "{msg}"),
            other => panic!("expected Tls error, got {other:?}"),
        }
        assert!(c.is_err());
    }

    /// A client config offering `alpn` and presenting `client`'s certificate.
    fn client_offering(client: &SecureConfig, server_id: PeerId, alpn: &[&[u8]]) -> TlsConnector {
        let mut cfg = rustls::ClientConfig::builder_with_provider(client.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(client.verifier(server_id))
            .with_client_cert_resolver(client.resolver.clone());
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        TlsConnector::from(Arc::new(cfg))
    }

    #[tokio::test]
    async fn client_without_kizuna_alpn_is_refused_with_no_application_protocol() {
        let (server, server_id) = node(2);
        let (client, _) = node(1);
        let many: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"e"];
        for (alpn, offered) in [
            (vec![], "offered none"),
            (vec![&b"h2"[..]], r#"offered ["h2"]"#),
            (vec![&b"kizuna/2"[..], b"http/1.1"], r#"offered ["kizuna/2", "http/1.1"]"#),
            (many, r#"offered ["a", "b", "c", "d"] and more"#),
        ] {
            let (a, b) = duplex(64 * 1024);
            let connector = client_offering(&client, server_id, &alpn);
            let (c, s) =
                tokio::join!(connector.connect(server_name(server_id).unwrap(), a), server.accept(b, T));
            // The client's handshake fails with the alert, not later.
            let e = c.unwrap_err();
            let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            assert_eq!(
                tls,
                Some(&rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)),
                "{alpn:?}: {e:?}"
            );
            match s {
                Err(TransportError::Tls(m)) => {
                    assert!(m.contains(r#"did not offer ALPN "kizuna/1""#) && m.contains(offered), "{m}")
                }
                other => panic!("{alpn:?}: expected a Tls error, got {other:?}"),
            }
        }
        // Offering kizuna/1 among others is fine: the server selects it.
        let (a, b) = duplex(64 * 1024);
        let connector = client_offering(&client, server_id, &[b"h2", ALPN_STREAM]);
        let (c, s) = tokio::join!(connector.connect(server_name(server_id).unwrap(), a), server.accept(b, T));
        assert_eq!(c.unwrap().get_ref().1.alpn_protocol(), Some(ALPN_STREAM));
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn alert_record_is_rustls_no_application_protocol() {
        let [content, v1, v2, l1, l2, level, desc] = NO_APPLICATION_PROTOCOL_ALERT;
        assert_eq!(rustls::ContentType::from(content), rustls::ContentType::Alert);
        assert_eq!(
            rustls::ProtocolVersion::from(u16::from_be_bytes([v1, v2])),
            rustls::ProtocolVersion::TLSv1_2
        );
        assert_eq!(u16::from_be_bytes([l1, l2]), 2);
        assert_eq!(level, 2, "fatal");
        assert_eq!(rustls::AlertDescription::from(desc), rustls::AlertDescription::NoApplicationProtocol);
    }

    #[tokio::test]
    async fn garbage_is_a_tls_error() {
        let (server, server_id) = node(2);
        let (client, _) = node(1);
        for garbage in
            [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3][..], &[0u8; 4096][..]]
        {
            // Garbage towards a server.
            let (mut a, b) = duplex(64 * 1024);
            a.write_all(garbage).await.unwrap();
            a.shutdown().await.unwrap();
            let r = server.accept(b, T).await;
            assert!(matches!(r, Err(TransportError::Tls(_))), "{r:?}");
            // Garbage towards a client.
            let (a, mut b) = duplex(64 * 1024);
            let feeder = async move {
                b.write_all(garbage).await.unwrap();
                b.shutdown().await.unwrap();
                let mut sink = Vec::new();
                let _ = b.read_to_end(&mut sink).await;
            };
            let (r, ()) = tokio::join!(client.connect(a, server_id, T), feeder);
            assert!(matches!(r, Err(TransportError::Tls(_))), "{r:?}");
        }
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (server, server_id) = node(2);
        let (client, _) = node(1);
        let short = Duration::from_millis(100);
        let (_keep, b) = duplex(1024);
        match server.accept_labeled(b, "10.0.0.1:4000", short).await {
            Err(TransportError::Timeout { what, after }) => {
                assert_eq!(what, "TLS handshake with 10.0.0.1:4000");
                assert_eq!(after, short);
            }
            other => panic!("expected Timeout, got {other:?}"),
        }
        let (a, _keep) = duplex(64 * 1024);
        let r = client.connect(a, server_id, short).await;
        assert!(matches!(r, Err(TransportError::Timeout { .. })), "{r:?}");
    }
}
