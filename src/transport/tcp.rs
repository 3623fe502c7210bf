//! TLS 1.3 over TCP: [`TcpTransport`].
//!
//! A connection is a TCP socket (`TCP_NODELAY`, kernel keep-alive), the secure channel
//! ([`SecureConfig`](crate::secure::SecureConfig)) authenticating the peer, the hello
//! exchange, and then the stream multiplexer ([`Mux`](crate::mux::Mux)) carrying messages and streams.
//!
//! Dialing is bounded as a whole by `NodeConfig::connect_timeout`. Listening uses a
//! `socket2` socket (`SO_REUSEADDR`, `NodeConfig::tcp_backlog`); inbound handshakes run
//! concurrently, at most `max_pending_handshakes` at a time, each bounded by
//! `handshake_timeout`; a client that fails its handshake is reported as
//! [`Incoming::Rejected`] and the listener keeps serving.

use crate::transport::{
    accept::{admitted_handshake, bind_tcp, configure_tcp, AdmittingAccept, ChannelListener},
    muxed::{muxed_connection, StreamEnd},
};
use std::{net::SocketAddr, sync::Arc};

use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{BoxFuture, Connection, Incoming, Listener, Transport};
use crate::{
    address::{PathKind, Protocol, TransportAddr},
    error::{Result, TransportError},
    identity::PeerId,
    node::LocalNode,
    wire::{exchange_hello, Hello},
};

/// Priority of TCP among transports. 100: below QUIC (which adds 0-RTT and migration),
/// above WebSocket and relayed paths.
pub const TCP_PRIORITY: u8 = 100;

/// Handshaken connections waiting for [`Listener::accept`]. 64: when the application
/// stops accepting, handshake tasks wait holding their permits, so this plus
/// `max_pending_handshakes` bounds everything a listener holds.
const INCOMING_QUEUE: usize = 64;

/// TLS 1.3 over TCP.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    node: Arc<LocalNode>,
}

impl TcpTransport {
    /// A TCP transport for `node`.
    pub fn new(node: Arc<LocalNode>) -> Self {
        Self { node }
    }

    /// The node this transport belongs to.
    pub fn node(&self) -> &Arc<LocalNode> {
        &self.node
    }
}

fn tcp_addr(addr: &TransportAddr) -> Result<SocketAddr> {
    match addr {
        TransportAddr::Tcp(sa) => Ok(*sa),
        other => Err(TransportError::UnsupportedProtocol(format!("TCP transport cannot use {other}"))),
    }
}

fn build_connection<S>(
    node: &LocalNode,
    io: S,
    peer: PeerId,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    remote_hello: Hello,
    dialer: bool,
) -> Connection
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let end = StreamEnd {
        peer,
        remote_addr: TransportAddr::Tcp(remote),
        label: remote.to_string(),
        local,
        dialer,
        path: PathKind::Direct,
    };
    muxed_connection(node, io, end, remote_hello)
}

async fn dial(node: &LocalNode, sa: SocketAddr, expected: PeerId) -> Result<Connection> {
    let stream = TcpStream::connect(sa).await.map_err(|e| TransportError::connect_failed(sa, e))?;
    secure_outgoing(node, stream, sa, expected).await
}

/// The client half of a connection over a connected `stream` to `sa`: secure channel
/// (expecting `expected`) and hello.
async fn secure_outgoing(
    node: &LocalNode,
    stream: TcpStream,
    sa: SocketAddr,
    expected: PeerId,
) -> Result<Connection> {
    let bound = node.config().connect_timeout;
    configure_tcp(&stream).map_err(|e| TransportError::connect_failed(sa, e))?;
    let local = stream.local_addr().ok();
    let (mut tls, peer) = node.secure().connect_labeled(stream, expected, &sa.to_string(), bound).await?;
    let ours = node.hello(Some(TransportAddr::Tcp(sa)));
    let theirs = exchange_hello(&mut tls, &ours, peer, &sa.to_string(), bound).await?;
    Ok(build_connection(node, tls, peer, sa, local, theirs, true))
}

impl Transport for TcpTransport {
    fn protocol(&self) -> Protocol {
        Protocol::Tcp
    }

    fn priority(&self) -> u8 {
        TCP_PRIORITY
    }

    fn connect<'a>(&'a self, addr: &'a TransportAddr, expected: PeerId) -> BoxFuture<'a, Result<Connection>> {
        Box::pin(async move {
            let sa = tcp_addr(addr)?;
            let bound = self.node.config().connect_timeout;
            tokio::time::timeout(bound, dial(&self.node, sa, expected))
                .await
                .map_err(|_| TransportError::Timeout { what: format!("connect to {sa}"), after: bound })?
        })
    }

    fn listen<'a>(&'a self, addr: &'a TransportAddr) -> BoxFuture<'a, Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let sa = tcp_addr(addr)?;
            let listener = bind_tcp(sa, self.node.config().tcp_backlog, &format!("tcp={sa}"))?;
            let local = listener.local_addr()?;
            let local_addr = TransportAddr::Tcp(local);
            self.node.add_listen_addr(local_addr.clone());
            let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
            let (shutdown, shutdown_rx) = watch::channel(false);
            let task = tokio::spawn(accept_loop(self.node.clone(), listener, tx, shutdown_rx));
            tracing::debug!(%local, "TCP listener started");
            Ok(Box::new(ChannelListener::new(self.node.clone(), local_addr, rx, shutdown, task))
                as Box<dyn Listener>)
        })
    }
}

async fn accept_loop(
    node: Arc<LocalNode>,
    listener: tokio::net::TcpListener,
    tx: mpsc::Sender<Incoming>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = node.config().admission_limits();
    let counters = node.handshake_counters().clone();
    let mut accept = AdmittingAccept::new(listener, limits, counters, shutdown, "TCP listener");
    let mut handshakes = JoinSet::new();
    while let Some((stream, remote, permit)) = accept.next().await {
        // Reap finished handshakes so the set stays bounded by the slots.
        while handshakes.try_join_next().is_some() {}
        let node = node.clone();
        let tx = tx.clone();
        let ticket = permit.ticket();
        let task = handshakes.spawn(async move {
            let label = remote.to_string();
            let bound = node.config().handshake_timeout;
            let run = |stream| handshake(&node, stream, remote);
            if let Some(incoming) = admitted_handshake(&permit, stream, &label, bound, run).await {
                let _ = tx.send(incoming).await;
            }
            drop(permit);
        });
        accept.track(ticket, task);
    }
    // Dropping the set aborts pending handshakes.
    handshakes.abort_all();
}

async fn handshake(node: &LocalNode, stream: TcpStream, remote: SocketAddr) -> Result<Connection> {
    let bound = node.config().handshake_timeout;
    configure_tcp(&stream)?;
    let local = stream.local_addr().ok();
    let (mut tls, peer) = node.secure().accept_labeled(stream, &remote.to_string(), bound).await?;
    let ours = node.hello(Some(TransportAddr::Tcp(remote)));
    match exchange_hello(&mut tls, &ours, peer, &remote.to_string(), bound).await {
        Ok(theirs) => Ok(build_connection(node, tls, peer, remote, local, theirs, false)),
        Err(e) => Err(crate::transport::accept::reject(&mut tls, e).await),
    }
}

/// A Kizuna connection over a TCP `stream` that a hole punch established (see
/// [`tcp_punch`](super::tcp_punch)) with `expected`, at `remote`: the punch initiator
/// (`initiator`) runs the client half of the secure channel, the responder the server
/// half; either way the peer must prove it is `expected`. Bounded by the node's connect
/// or handshake timeout.
pub async fn punched_connection(
    node: &LocalNode,
    stream: TcpStream,
    remote: SocketAddr,
    initiator: bool,
    expected: PeerId,
) -> Result<Connection> {
    if initiator {
        let bound = node.config().connect_timeout;
        return tokio::time::timeout(bound, secure_outgoing(node, stream, remote, expected)).await.map_err(
            |_| TransportError::Timeout {
                what: format!("TLS over the punched TCP path to {remote}"),
                after: bound,
            },
        )?;
    }
    let bound = node.config().handshake_timeout;
    let conn = tokio::time::timeout(bound, handshake(node, stream, remote)).await.map_err(|_| {
        TransportError::Timeout { what: format!("TLS over the punched TCP path from {remote}"), after: bound }
    })??;
    if conn.peer() != expected {
        let presented = conn.peer();
        conn.close(crate::wire::CloseCode::ProtocolError, "not the peer this punch was for").await;
        return Err(TransportError::AuthenticationFailed { expected, presented: presented.to_string() });
    }
    Ok(conn)
}
