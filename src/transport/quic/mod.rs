//! QUIC via quinn: [`QuicTransport`].
//!
//! One UDP socket per transport. [`Transport::listen`] binds a quinn endpoint that is both
//! server and client; later dials leave from that same socket, so a hole punched for it is
//! the hole QUIC uses. Dialing before listening creates a client-only endpoint on an
//! ephemeral port of the target's address family; a later `listen` moves that endpoint
//! onto the listening socket (live connections migrate with it).
//!
//! Connection setup: the dialer opens the first bidirectional stream, the *primary*
//! stream, and both sides exchange hellos on it; the dialer's `observed_addr` is the
//! address it dialed, the listener's the address the packets came from. The peer's
//! identity comes from the TLS certificate quinn authenticated (see [`crate::secure`]).
//! After that the primary stream carries messages and control frames, and further
//! streams are application byte streams (see `backend`).
//!
//! 0-RTT: the node keeps QUIC session tickets per peer (see [`crate::secure`]). When one
//! is available the dialer sends its hello as 0-RTT data and the listener answers with
//! 0.5-RTT data, so a resumed connection is usable after one round trip.
//! [`QuicTransport::connect_with_info`] tells whether 0-RTT was attempted and accepted;
//! [`QuicTransport::stats`] counts it on both sides. Tickets arrive just after a
//! handshake, so a connection closed immediately may leave none behind. 0-RTT data can be
//! replayed by an attacker, so only the hello (idempotent, and read by the listener only
//! after the client proved its identity) ever travels as 0-RTT: `connect` returns after the
//! listener's hello arrived under 1-RTT keys, so everything the application sends is 1-RTT.
//! The listener's hello is 0.5-RTT data, sent before the client is authenticated; it holds
//! only what any client that completes a handshake learns.
//!
//! Migration: [`QuicTransport::rebind`] moves the endpoint, and every connection on it,
//! to a new UDP socket; peers follow after path validation.

mod backend;
pub(crate) mod config;
pub mod demux;
mod listener;
mod stream;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use quinn::{crypto::rustls::HandshakeData, VarInt};
use rustls::pki_types::CertificateDer;
use socket2::SockRef;

use self::{
    backend::QuicBackend,
    demux::{DemuxSocket, SideChannel},
    listener::QuicListener,
    stream::QuicBiStream,
};
use crate::{
    address::{PathKind, Protocol, TransportAddr},
    error::{Result, TransportError},
    identity::PeerId,
    node::LocalNode,
    secure::{peer_id_from_certs, ALPN_QUIC},
    transport::{BoxFuture, ConnStats, Connection, ConnectionParts, Listener, Transport},
    wire::{exchange_hello, CloseCode},
};

/// Preference of QUIC among transports: above TCP (one handshake round trip, 0-RTT,
/// migration, no head-of-line blocking between streams).
const PRIORITY: u8 = 200;

/// What happened during one dial, beyond the connection itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicDialInfo {
    /// A session ticket for the peer existed, so the hello was sent as 0-RTT data.
    pub zero_rtt_attempted: bool,
    /// The listener accepted the 0-RTT data (otherwise the hello was sent again after the
    /// handshake).
    pub zero_rtt_accepted: bool,
}

/// Counters of one [`QuicTransport`] since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicStats {
    /// Dials that attempted 0-RTT.
    pub zero_rtt_dials: u64,
    /// Dials whose 0-RTT data the listener accepted.
    pub zero_rtt_accepted_dials: u64,
    /// Inbound connections whose 0-RTT data this node accepted.
    pub zero_rtt_accepted_inbound: u64,
    /// Inbound attempts rejected (handshake failure, timeout, or too many pending).
    pub inbound_rejected: u64,
}

#[derive(Default)]
struct Counters {
    zero_rtt_dials: AtomicU64,
    zero_rtt_accepted_dials: AtomicU64,
    zero_rtt_inbound: AtomicU64,
    inbound_rejected: AtomicU64,
}

struct EndpointState {
    endpoint: quinn::Endpoint,
    /// The listening address while a listener is open.
    listening: Option<SocketAddr>,
    /// The non-QUIC half of the endpoint's socket (STUN, hole punching).
    side: Arc<SideChannel>,
}

/// A quinn endpoint on `socket`, behind the STUN/punch demultiplexer.
fn endpoint_on(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<(quinn::Endpoint, Arc<SideChannel>)> {
    let (demux, side) = DemuxSocket::wrap(socket)?;
    let mut config = quinn::EndpointConfig::default();
    // Never let peers clear the QUIC fixed bit (RFC 9287 greasing): the demultiplexer tells
    // QUIC from STUN by that bit, as RFC 9443 requires of multiplexed sockets.
    config.grease_quic_bit(false);
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(config, server, demux, Arc::new(quinn::TokioRuntime))?;
    Ok((endpoint, side))
}

/// Moves `endpoint` to `socket` (behind a new demultiplexer); returns the new side channel.
fn rebind_on(endpoint: &quinn::Endpoint, socket: std::net::UdpSocket) -> Result<Arc<SideChannel>> {
    let (demux, side) = DemuxSocket::wrap(socket)?;
    endpoint.rebind_abstract(demux)?;
    Ok(side)
}

/// State shared by the transport, its listener and its handshake tasks.
struct Shared {
    node: Arc<LocalNode>,
    transport: Arc<quinn::TransportConfig>,
    endpoint: Mutex<Option<EndpointState>>,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<EndpointState>> {
        self.endpoint.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint to dial `target` from, created on first use.
    fn client_endpoint(&self, target: SocketAddr) -> Result<quinn::Endpoint> {
        let mut state = self.lock();
        if let Some(s) = state.as_ref() {
            return Ok(s.endpoint.clone());
        }
        let any: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = config::bind_udp(any, self.node.config().udp_buffer)?;
        let (endpoint, side) = endpoint_on(socket, None)?;
        *state = Some(EndpointState { endpoint: endpoint.clone(), listening: None, side });
        Ok(endpoint)
    }

    fn server_config(&self) -> Result<quinn::ServerConfig> {
        let mut cfg = self.node.secure().quic_server_config()?;
        cfg.transport_config(self.transport.clone());
        Ok(cfg)
    }

    fn stop_listening(&self, local: SocketAddr) {
        let mut state = self.lock();
        if let Some(s) = state.as_mut() {
            if s.listening == Some(local) {
                s.endpoint.set_server_config(None);
                s.listening = None;
            }
        }
        self.node.remove_listen_addr(&TransportAddr::Quic(local));
    }
}

/// The QUIC transport of one node. See the module documentation.
pub struct QuicTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport").field("local_addr", &self.local_addr()).finish()
    }
}

impl QuicTransport {
    /// A QUIC transport for `node`. No socket is opened until `listen` or `connect`.
    pub fn new(node: Arc<LocalNode>) -> Self {
        let transport = config::transport_config(node.config());
        Self {
            shared: Arc::new(Shared {
                node,
                transport,
                endpoint: Mutex::new(None),
                counters: Counters::default(),
            }),
        }
    }

    /// The local address of the transport's UDP socket, once it has one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.lock().as_ref().and_then(|s| s.endpoint.local_addr().ok())
    }

    /// Moves the endpoint and all its connections to `socket` (connection migration).
    ///
    /// The socket's buffers are set to the node's `udp_buffer`. Fails if the transport has
    /// no endpoint yet. A listener keeps its advertised address: rebinding a listening
    /// transport is for clients and NAT rebinding tests, not for moving a server.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<()> {
        let mut state = self.shared.lock();
        let s = state.as_mut().ok_or_else(|| {
            TransportError::Config(
                "QUIC transport has no socket to rebind yet: listen or connect first".into(),
            )
        })?;
        config::tune_socket(SockRef::from(&socket), self.shared.node.config().udp_buffer);
        socket.set_nonblocking(true)?;
        s.side = rebind_on(&s.endpoint, socket)?;
        Ok(())
    }

    /// [`side_channel`](Self::side_channel), opening the transport's socket first if it
    /// has none yet (an IPv4 client socket on a free port, as a first dial would): a
    /// node that has neither listened nor dialed over QUIC can still punch, and then
    /// dials QUIC from the punched socket.
    pub fn side_channel_or_bind(&self) -> Result<Arc<SideChannel>> {
        self.shared.client_endpoint(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
        self.side_channel()
            .ok_or_else(|| TransportError::Config("QUIC transport lost its socket while opening it".into()))
    }

    /// The non-QUIC half of this transport's UDP socket: STUN and hole-punch datagrams
    /// arriving on it, and a way to send such datagrams from it (so the mapping STUN saw
    /// and the hole a punch opened are the ones QUIC uses). `None` before the transport
    /// has a socket (before the first listen or dial).
    pub fn side_channel(&self) -> Option<Arc<SideChannel>> {
        self.shared.lock().as_ref().map(|s| s.side.clone())
    }

    /// Counters of 0-RTT use and inbound rejections.
    pub fn stats(&self) -> QuicStats {
        let c = &self.shared.counters;
        QuicStats {
            zero_rtt_dials: c.zero_rtt_dials.load(Ordering::Relaxed),
            zero_rtt_accepted_dials: c.zero_rtt_accepted_dials.load(Ordering::Relaxed),
            zero_rtt_accepted_inbound: c.zero_rtt_inbound.load(Ordering::Relaxed),
            inbound_rejected: c.inbound_rejected.load(Ordering::Relaxed),
        }
    }

    /// Dials `addr`, authenticates it as `expected`, exchanges hellos, and reports whether
    /// 0-RTT was used. Bounded by the node's connect timeout.
    pub async fn connect_with_info(
        &self,
        addr: SocketAddr,
        expected: PeerId,
    ) -> Result<(Connection, QuicDialInfo)> {
        let shared = &self.shared;
        let endpoint = shared.client_endpoint(addr)?;
        let (mut cfg, probe) = shared.node.secure().quic_client(expected)?;
        cfg.transport_config(shared.transport.clone());
        let connecting = endpoint
            .connect_with(cfg, addr, &expected.to_string())
            .map_err(|e| TransportError::connect_failed(addr, format!("QUIC: {e}")))?;
        let bound = shared.node.config().connect_timeout;
        match tokio::time::timeout(bound, self.establish(endpoint, connecting, addr, expected, &probe)).await
        {
            Ok(r) => r,
            Err(_) => Err(probe.wrong_peer().unwrap_or_else(|| TransportError::Timeout {
                what: format!("QUIC connect to {addr} (peer {expected})"),
                after: bound,
            })),
        }
    }

    async fn establish(
        &self,
        endpoint: quinn::Endpoint,
        connecting: quinn::Connecting,
        addr: SocketAddr,
        expected: PeerId,
        probe: &crate::secure::AuthProbe,
    ) -> Result<(Connection, QuicDialInfo)> {
        let shared = &self.shared;
        let remote = addr.to_string();
        let ours = shared.node.hello(Some(TransportAddr::Quic(addr)));
        let bound = shared.node.config().connect_timeout;
        let dial_error = |e: quinn::ConnectionError| {
            probe
                .wrong_peer()
                .unwrap_or_else(|| TransportError::connect_failed(addr, format!("QUIC handshake: {e}")))
        };
        let hello = |conn: quinn::Connection| {
            let (ours, remote) = (&ours, &remote);
            async move {
                let (send, recv) = conn.open_bi().await.map_err(|e| TransportError::Closed(e.to_string()))?;
                let mut primary = QuicBiStream::new(send, recv);
                let theirs = exchange_hello(&mut primary, ours, expected, remote, bound).await?;
                Ok::<_, TransportError>((primary, theirs))
            }
        };
        let mut info = QuicDialInfo::default();
        let (conn, primary, theirs) = match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                info.zero_rtt_attempted = true;
                shared.counters.zero_rtt_dials.fetch_add(1, Ordering::Relaxed);
                // The hello goes out as 0-RTT data while the handshake runs.
                let (early, accepted) = tokio::join!(hello(conn.clone()), accepted);
                if let Some(e) = conn.close_reason() {
                    return Err(dial_error(e));
                }
                info.zero_rtt_accepted = accepted;
                if accepted {
                    shared.counters.zero_rtt_accepted_dials.fetch_add(1, Ordering::Relaxed);
                }
                match early {
                    Ok((primary, theirs)) => (conn, primary, theirs),
                    Err(e) if accepted => return Err(e),
                    // 0-RTT rejected: quinn discarded the early stream; start over on a
                    // fresh one now that the handshake is done.
                    Err(_) => {
                        let (primary, theirs) = hello(conn.clone()).await?;
                        (conn, primary, theirs)
                    }
                }
            }
            Err(connecting) => {
                let conn = connecting.await.map_err(dial_error)?;
                let (primary, theirs) = hello(conn.clone())
                    .await
                    .map_err(|e| conn.close_reason().map(dial_error).unwrap_or(e))?;
                (conn, primary, theirs)
            }
        };
        let result = (|| {
            // The verifier already insisted on `expected`; resumed sessions carry the
            // identity of the session they resume. Check what quinn reports anyway.
            let peer = peer_of(&conn)?;
            if peer != expected {
                return Err(TransportError::AuthenticationFailed { expected, presented: peer.to_string() });
            }
            Ok(peer)
        })();
        let peer = match result {
            Ok(p) => p,
            Err(e) => {
                conn.close(handshake_error_code(&e), e.to_string().as_bytes());
                return Err(e);
            }
        };
        Ok((quic_connection(&shared.node, conn, endpoint, primary, peer, theirs, true), info))
    }

    async fn listen_on(&self, addr: SocketAddr) -> Result<Box<dyn Listener>> {
        let shared = &self.shared;
        let server = shared.server_config()?;
        let (endpoint, local) = {
            let mut state = shared.lock();
            if let Some(s) = state.as_ref() {
                if let Some(l) = s.listening {
                    return Err(TransportError::Config(format!(
                        "this QUIC transport already listens on {l}; it has one UDP socket (close that listener first)"
                    )));
                }
            }
            // Listening again on the socket this transport already has (e.g. a restarted
            // listener re-binding its old port): the socket stays, it just serves again.
            let reuse = state.as_mut().filter(|s| s.endpoint.local_addr().ok() == Some(addr));
            if let Some(s) = reuse {
                s.endpoint.set_server_config(Some(server));
                s.listening = Some(addr);
                let endpoint = s.endpoint.clone();
                drop(state);
                shared.node.add_listen_addr(TransportAddr::Quic(addr));
                return Ok(Box::new(QuicListener::start(shared.clone(), endpoint, addr)));
            }
            let socket = config::bind_udp(addr, shared.node.config().udp_buffer)?;
            let (endpoint, side) = match state.as_ref() {
                // Dials already went out from an ephemeral socket: move them to this one.
                Some(s) => {
                    let side = rebind_on(&s.endpoint, socket)?;
                    s.endpoint.set_server_config(Some(server));
                    (s.endpoint.clone(), side)
                }
                None => endpoint_on(socket, Some(server))?,
            };
            let local = endpoint.local_addr()?;
            *state = Some(EndpointState { endpoint: endpoint.clone(), listening: Some(local), side });
            (endpoint, local)
        };
        shared.node.add_listen_addr(TransportAddr::Quic(local));
        Ok(Box::new(QuicListener::start(shared.clone(), endpoint, local)))
    }
}

impl Transport for QuicTransport {
    fn protocol(&self) -> Protocol {
        Protocol::Quic
    }

    fn priority(&self) -> u8 {
        PRIORITY
    }

    fn connect<'a>(&'a self, addr: &'a TransportAddr, expected: PeerId) -> BoxFuture<'a, Result<Connection>> {
        Box::pin(async move {
            match addr {
                TransportAddr::Quic(sa) => Ok(self.connect_with_info(*sa, expected).await?.0),
                other => Err(TransportError::UnsupportedProtocol(format!(
                    "the QUIC transport cannot dial {other}"
                ))),
            }
        })
    }

    fn listen<'a>(&'a self, addr: &'a TransportAddr) -> BoxFuture<'a, Result<Box<dyn Listener>>> {
        Box::pin(async move {
            match addr {
                TransportAddr::Quic(sa) => self.listen_on(*sa).await,
                other => Err(TransportError::UnsupportedProtocol(format!(
                    "the QUIC transport cannot listen on {other}"
                ))),
            }
        })
    }
}

/// The identity quinn authenticated for `conn`, after checking the negotiated ALPN.
fn peer_of(conn: &quinn::Connection) -> Result<PeerId> {
    let alpn =
        conn.handshake_data().and_then(|d| d.downcast::<HandshakeData>().ok()).and_then(|d| d.protocol);
    if alpn.as_deref() != Some(ALPN_QUIC) {
        return Err(TransportError::Tls(format!(
            "QUIC peer {} did not negotiate ALPN {:?}",
            conn.remote_address(),
            String::from_utf8_lossy(ALPN_QUIC)
        )));
    }
    let certs =
        conn.peer_identity().and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok()).ok_or_else(
            || TransportError::Tls(format!("QUIC peer {} presented no certificate", conn.remote_address())),
        )?;
    peer_id_from_certs(&certs)
        .map_err(|e| TransportError::Tls(format!("QUIC peer {}: {e}", conn.remote_address())))
}

/// Wraps an established QUIC connection (hellos done on `primary`) as a [`Connection`].
fn quic_connection(
    node: &LocalNode,
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    primary: QuicBiStream,
    peer: PeerId,
    remote_hello: crate::wire::Hello,
    dialer: bool,
) -> Connection {
    let stats = Arc::new(ConnStats::default());
    let remote_addr = TransportAddr::Quic(conn.remote_address());
    let backend = QuicBackend::start(conn, endpoint, primary, stats.clone(), node.config().message_queue);
    let parts = ConnectionParts {
        peer,
        remote_addr,
        protocol: Protocol::Quic,
        path: PathKind::Direct,
        remote_hello,
        dialer,
    };
    Connection::new(parts, Arc::new(backend), stats)
}

/// The QUIC application close code for a failed connection setup.
fn handshake_error_code(e: &TransportError) -> VarInt {
    let code = match e {
        TransportError::Timeout { .. } => CloseCode::Idle,
        _ => CloseCode::ProtocolError,
    };
    VarInt::from_u32(code as u32)
}
