//! Kizuna over WebSocket: [`WsTransport`], and the pieces the relay reuses — the byte
//! stream adapter [`WsStream`], [`ws_connect`] and [`ws_accept`].
//!
//! The binding is specified in `docs/ws-binding.md`. A connection is, bottom up:
//!
//! 1. TCP (`TCP_NODELAY`, kernel keep-alive);
//! 2. for `wss://` only, TLS with an ordinary web certificate (configured in
//!    [`WsConfig`]) — this is for networks that only let HTTPS through, it proves nothing
//!    about the peer's Kizuna identity;
//! 3. the WebSocket upgrade (RFC 6455) with the subprotocol `kizuna`, which the server
//!    requires: a client offering none or another is refused with `400 Bad Request` and a
//!    plain-text reason. Any request path is accepted;
//! 4. [`WsStream`]: bytes in binary messages of at most 64 KiB, ping/pong keep-alive and
//!    dead-peer detection;
//! 5. Kizuna's secure channel (TLS 1.3 bound to the expected [`PeerId`]), end to end,
//!    exactly as over TCP — then the hello, then the stream multiplexer ([`Mux`](crate::mux::Mux)).
//!
//! Dialing is bounded as a whole by `NodeConfig::connect_timeout`. Listening takes a
//! `ws://` or `wss://` URL whose host is an IP address or a resolvable name (port 0 picks
//! a free port; the listener's [`Listener::local_addr`] reports the real URL); inbound
//! handshakes run concurrently, at most `max_pending_handshakes` at a time, each bounded by
//! `handshake_timeout`, and a client that fails is reported as
//! [`Incoming::Rejected`](crate::transport::Incoming::Rejected)
//! while the listener keeps serving.

mod client;
mod server;
mod socket;
mod stream;

use crate::transport::muxed::{muxed_connection, StreamEnd};
use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    RootCertStore,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

pub use client::ws_connect;
pub use server::ws_accept;
pub use socket::WsSocket;
pub use stream::{WsStream, DEFAULT_MAX_MESSAGE, MAX_CHUNK};

use self::client::WsUrl;
use super::{BoxFuture, Connection, Listener, Transport};
use crate::{
    address::{PathKind, Protocol, TransportAddr},
    error::{Result, TransportError},
    identity::PeerId,
    node::{LocalNode, NodeConfig},
    wire::{exchange_hello, Hello},
};

/// The WebSocket subprotocol of Kizuna (`Sec-WebSocket-Protocol: kizuna`). Versioning
/// happens in the hello inside the secure channel, so the name carries no version.
pub const SUBPROTOCOL: &str = "kizuna";

/// Priority of WebSocket among transports. 50: below TCP (100), which carries the same
/// bytes with less framing, and above relayed paths; WebSocket is chosen when it is the
/// only thing a firewall lets through.
pub const WS_PRIORITY: u8 = 50;

/// ALPN of the outer TLS of `wss://`: the WebSocket upgrade is HTTP/1.1 (RFC 6455).
const HTTP11_ALPN: &[u8] = b"http/1.1";

/// Tunables of one WebSocket byte stream ([`ws_connect`], [`ws_accept`]).
#[derive(Clone)]
pub struct WsOptions {
    /// Silence after which a ping is sent. Zero disables pings.
    pub keep_alive_interval: Duration,
    /// Silence (no data, ping or pong) after which the peer is presumed dead and reads
    /// fail with `TimedOut`. Zero disables dead-peer detection.
    pub idle_timeout: Duration,
    /// Bound on [`ws_connect`] (TCP, TLS for `wss://`, upgrade) and on [`ws_accept`]
    /// (the upgrade).
    pub handshake_timeout: Duration,
    /// Largest message (and frame) accepted from the peer; see [`DEFAULT_MAX_MESSAGE`].
    pub max_message_size: usize,
    /// TLS client configuration for `wss://` URLs (trusted roots, ALPN `http/1.1`).
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for WsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsOptions")
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("client_tls", &self.client_tls.is_some())
            .finish()
    }
}

impl Default for WsOptions {
    /// The defaults of [`NodeConfig`]: 15 s pings, 45 s idle timeout, 10 s handshakes.
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            handshake_timeout: Duration::from_secs(10),
            max_message_size: DEFAULT_MAX_MESSAGE,
            client_tls: None,
        }
    }
}

impl WsOptions {
    /// The options a node's settings imply (keep-alive, idle and handshake bounds).
    pub fn from_node(config: &NodeConfig) -> Self {
        Self {
            keep_alive_interval: config.keep_alive_interval,
            idle_timeout: config.idle_timeout,
            handshake_timeout: config.handshake_timeout,
            ..Self::default()
        }
    }
}

/// Configuration of a [`WsTransport`] beyond the node's: `wss://` certificates and trust,
/// and keep-alive overrides.
#[derive(Clone)]
pub struct WsConfig {
    server_tls: Option<Arc<rustls::ServerConfig>>,
    roots: RootCertStore,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    /// WebSocket ping interval; `None` uses `NodeConfig::keep_alive_interval`.
    pub keep_alive_interval: Option<Duration>,
    /// WebSocket dead-peer timeout; `None` uses `NodeConfig::idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// Largest message accepted; `None` uses [`DEFAULT_MAX_MESSAGE`].
    pub max_message_size: Option<usize>,
}

impl fmt::Debug for WsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConfig")
            .field("server_tls", &self.server_tls.is_some())
            .field("trusted_roots", &self.roots.len())
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            server_tls: None,
            roots: RootCertStore::empty(),
            client_tls: None,
            keep_alive_interval: None,
            idle_timeout: None,
            max_message_size: None,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl WsConfig {
    /// Plain `ws://` only, node defaults for the keep-alive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the node's keep-alive for the WebSocket layer: a ping after `interval` of
    /// silence, the peer presumed dead after `idle` (zero disables either).
    pub fn with_keep_alive(mut self, interval: Duration, idle: Duration) -> Self {
        self.keep_alive_interval = Some(interval);
        self.idle_timeout = Some(idle);
        self
    }

    /// Serves `wss://` with this certificate chain (leaf first) and private key, both PEM
    /// (PKCS#8, PKCS#1 or SEC1 key).
    pub fn with_server_cert_pem(self, chain_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| TransportError::Config(format!("wss certificate chain PEM: {e}")))?;
        if chain.is_empty() {
            return Err(TransportError::Config("wss certificate chain PEM holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TransportError::Config(format!("wss private key PEM: {e}")))?;
        self.with_server_cert_der(chain, key)
    }

    /// Serves `wss://` with this certificate chain (leaf first) and private key, DER.
    pub fn with_server_cert_der(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Config(format!("wss server TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TransportError::Config(format!("wss certificate or key rejected: {e}")))?;
        cfg.alpn_protocols = vec![HTTP11_ALPN.to_vec()];
        self.server_tls = Some(Arc::new(cfg));
        Ok(self)
    }

    /// Serves `wss://` with a ready-made rustls configuration (ALPN should include
    /// `http/1.1` or be empty).
    pub fn with_server_tls(mut self, cfg: Arc<rustls::ServerConfig>) -> Self {
        self.server_tls = Some(cfg);
        self
    }

    /// Trusts the CA certificates in `pem` when dialing `wss://`. No system roots are
    /// bundled: a deployment behind a public CA passes its CA bundle here (e.g. the
    /// contents of `/etc/ssl/certs/ca-certificates.crt`).
    pub fn trust_root_pem(mut self, pem: &[u8]) -> Result<Self> {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TransportError::Config(format!("trusted root PEM: {e}")))?;
            self.add_root(cert)?;
            added += 1;
        }
        if added == 0 {
            return Err(TransportError::Config("trusted root PEM holds no certificate".into()));
        }
        self.rebuild_client()?;
        Ok(self)
    }

    /// Trusts one CA certificate (DER) when dialing `wss://`.
    pub fn trust_root_der(mut self, cert: CertificateDer<'static>) -> Result<Self> {
        self.add_root(cert)?;
        self.rebuild_client()?;
        Ok(self)
    }

    /// Dials `wss://` with a ready-made rustls configuration (replaces the trusted roots
    /// given so far).
    pub fn with_client_tls(mut self, cfg: Arc<rustls::ClientConfig>) -> Self {
        self.client_tls = Some(cfg);
        self
    }

    /// The `wss://` server configuration, if one was set (the relay reuses it).
    pub fn server_tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.server_tls.as_ref()
    }

    /// The `wss://` client configuration, if trusted roots were given.
    pub fn client_tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.client_tls.as_ref()
    }

    fn add_root(&mut self, cert: CertificateDer<'static>) -> Result<()> {
        self.roots.add(cert).map_err(|e| TransportError::Config(format!("trusted root rejected: {e}")))
    }

    fn rebuild_client(&mut self) -> Result<()> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Config(format!("wss client TLS: {e}")))?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![HTTP11_ALPN.to_vec()];
        self.client_tls = Some(Arc::new(cfg));
        Ok(())
    }
}

/// Kizuna over WebSocket (`ws://` and `wss://`), direct between two peers.
#[derive(Debug, Clone)]
pub struct WsTransport {
    node: Arc<LocalNode>,
    config: WsConfig,
}

impl WsTransport {
    /// A `ws://` transport for `node` (no `wss://` until configured).
    pub fn new(node: Arc<LocalNode>) -> Self {
        Self::with_config(node, WsConfig::default())
    }

    /// A transport with `wss://` material or keep-alive overrides.
    pub fn with_config(node: Arc<LocalNode>, config: WsConfig) -> Self {
        Self { node, config }
    }

    /// The node this transport belongs to.
    pub fn node(&self) -> &Arc<LocalNode> {
        &self.node
    }

    /// The transport's configuration.
    pub fn config(&self) -> &WsConfig {
        &self.config
    }

    /// The options each of its WebSocket streams gets.
    pub fn options(&self) -> WsOptions {
        let node = self.node.config();
        WsOptions {
            keep_alive_interval: self.config.keep_alive_interval.unwrap_or(node.keep_alive_interval),
            idle_timeout: self.config.idle_timeout.unwrap_or(node.idle_timeout),
            handshake_timeout: node.handshake_timeout,
            max_message_size: self.config.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE),
            client_tls: self.config.client_tls.clone(),
        }
    }

    async fn dial(&self, url: &str, expected: PeerId) -> Result<Connection> {
        let node = &self.node;
        let bound = node.config().connect_timeout;
        let opts = WsOptions { handshake_timeout: bound, ..self.options() };
        let ws = ws_connect(url, &opts).await?;
        let local = ws.get_ref().local_addr().ok();
        let (mut tls, peer) = node.secure().connect_labeled(ws, expected, url, bound).await?;
        let remote_addr = TransportAddr::Ws(url.to_string());
        let ours = node.hello(Some(remote_addr.clone()));
        let theirs = exchange_hello(&mut tls, &ours, peer, url, bound).await?;
        let side = StreamEnd {
            peer,
            remote_addr,
            label: url.to_string(),
            local,
            dialer: true,
            path: PathKind::Direct,
        };
        Ok(build_connection(node, tls, side, theirs))
    }

    async fn bind(&self, url: &str) -> Result<Box<dyn Listener>> {
        let parsed = WsUrl::parse(url)?;
        let tls = match (parsed.secure, &self.config.server_tls) {
            (false, _) => None,
            (true, Some(cfg)) => Some(TlsAcceptor::from(cfg.clone())),
            (true, None) => {
                return Err(TransportError::Config(format!(
                    "cannot listen on {url}: wss:// needs a certificate (WsConfig::with_server_cert_pem)"
                )))
            }
        };
        let sa = match parsed.host.parse() {
            Ok(ip) => SocketAddr::new(ip, parsed.port),
            Err(_) => tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
                .await
                .map_err(|e| TransportError::Config(format!("cannot listen on {url}: {e}")))?
                .next()
                .ok_or_else(|| {
                    TransportError::Config(format!("cannot listen on {url}: host has no address"))
                })?,
        };
        let listener =
            crate::transport::accept::bind_tcp(sa, self.node.config().tcp_backlog, &format!("ws={sa}"))?;
        let local = listener.local_addr()?;
        // The path is informational (the listener answers every path); keep a non-root
        // one so that the advertised URL is the one the operator chose.
        let path = if parsed.path == "/" { "" } else { parsed.path.as_str() };
        let local_addr = TransportAddr::Ws(format!("{}://{local}{path}", parsed.scheme()));
        tracing::debug!(%local, scheme = parsed.scheme(), "WebSocket listener started");
        let ctx = server::ListenCtx { node: self.node.clone(), opts: self.options(), tls };
        Ok(Box::new(server::start(ctx, listener, local_addr)))
    }
}

fn ws_url(addr: &TransportAddr) -> Result<&str> {
    match addr {
        TransportAddr::Ws(url) => Ok(url),
        TransportAddr::Relay(url) => Err(TransportError::UnsupportedProtocol(format!(
            "the WebSocket transport dials peers directly; {url} is a relay, reached through the relay client"
        ))),
        other => Err(TransportError::UnsupportedProtocol(format!("WebSocket transport cannot use {other}"))),
    }
}

impl Transport for WsTransport {
    fn protocol(&self) -> Protocol {
        Protocol::WebSocket
    }

    fn priority(&self) -> u8 {
        WS_PRIORITY
    }

    fn connect<'a>(&'a self, addr: &'a TransportAddr, expected: PeerId) -> BoxFuture<'a, Result<Connection>> {
        Box::pin(async move {
            let url = ws_url(addr)?;
            let bound = self.node.config().connect_timeout;
            tokio::time::timeout(bound, self.dial(url, expected))
                .await
                .map_err(|_| TransportError::Timeout { what: format!("connect to {url}"), after: bound })?
        })
    }

    fn listen<'a>(&'a self, addr: &'a TransportAddr) -> BoxFuture<'a, Result<Box<dyn Listener>>> {
        Box::pin(async move { self.bind(ws_url(addr)?).await })
    }
}

fn build_connection<S>(node: &LocalNode, io: S, end: StreamEnd, remote_hello: Hello) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    muxed_connection(node, io, end, remote_hello)
}
