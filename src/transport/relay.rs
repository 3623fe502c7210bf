//! Reaching peers through a relay: the client side of `docs/protocol.md` §10.
//!
//! A relayed connection is a circuit — two WebSocket connections the relay splices —
//! carrying the peers' own end-to-end stack: TLS 1.3 bound to their identities, the hello,
//! the stream multiplexer. The relay forwards ciphertext only. [`dial`] asks for a circuit
//! to a reserved peer; [`accept`] answers an `incoming` announced on the reserved peer's
//! control connection (kept by the actor runtime's `RelayClientActor`, driving
//! [`RelayClientState`](crate::relay::client::RelayClientState)). [`RelayTransport`]
//! makes dialing through a relay one more [`Transport`].

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;

use super::{
    muxed::{muxed_connection, StreamEnd},
    ws::{ws_connect, WsOptions, WsSocket, WsStream},
    BoxFuture, Connection, Listener, Transport,
};
use crate::{
    address::{PathKind, Protocol, TransportAddr},
    error::{Result, TransportError},
    identity::PeerId,
    node::LocalNode,
    relay::{auth::client_handshake, CircuitId, Purpose, RelayMessage},
    wire::exchange_hello,
};

/// Preference of relayed paths among transports: the lowest, a last resort.
pub const RELAY_PRIORITY: u8 = 10;

/// An authenticated WebSocket to a relay whose purpose is declared.
pub type RelaySocket = WsStream<WsSocket>;

/// Opens a WebSocket to the relay at `url`, answers its challenge with this node's key
/// (and `token`, if the relay needs one) and declares `purpose`.
pub async fn open(
    node: &LocalNode,
    url: &str,
    token: Option<&str>,
    purpose: Purpose,
    opts: &WsOptions,
) -> Result<RelaySocket> {
    let mut ws = ws_connect(url, opts).await?;
    let challenge = recv(&mut ws, url).await?;
    let [auth, purpose] = client_handshake(&node.config().keypair, &challenge, url, token, purpose)
        .map_err(|e| TransportError::connect_failed(url, e))?;
    send(&mut ws, url, &auth).await?;
    send(&mut ws, url, &purpose).await?;
    Ok(ws)
}

/// Sends one relay message.
pub async fn send(ws: &mut RelaySocket, url: &str, msg: &RelayMessage) -> Result<()> {
    let bytes = msg.encode().map_err(|e| TransportError::violation(url, e))?;
    ws.send_message(Bytes::from(bytes)).await.map_err(|e| TransportError::connect_failed(url, e))
}

/// Receives one relay message (unknown types are skipped); a closed connection is an
/// error naming the relay.
pub async fn recv(ws: &mut RelaySocket, url: &str) -> Result<RelayMessage> {
    loop {
        let bytes = ws
            .recv_message()
            .await
            .map_err(|e| TransportError::connect_failed(url, e))?
            .ok_or_else(|| TransportError::connect_failed(url, "the relay closed the connection"))?;
        match RelayMessage::decode(&bytes).map_err(|e| TransportError::violation(url, e))? {
            RelayMessage::Unknown => continue,
            msg => return Ok(msg),
        }
    }
}

/// Waits for `circuit_ready`, returning the peer at the other end.
async fn circuit_ready(ws: &mut RelaySocket, url: &str, target: Option<PeerId>) -> Result<PeerId> {
    match recv(ws, url).await? {
        RelayMessage::CircuitReady { peer, .. } => Ok(peer),
        RelayMessage::CircuitRefused { reason } => {
            let who = target.map(|t| format!("peer {t}")).unwrap_or_else(|| "the peer".into());
            Err(TransportError::connect_failed(
                format!("relay={url}"),
                format!("{who} refused the circuit: {reason}"),
            ))
        }
        RelayMessage::Error { code, message } => Err(TransportError::connect_failed(
            format!("relay={url}"),
            format!("relay error {code:?}: {message}"),
        )),
        other => Err(TransportError::connect_failed(
            format!("relay={url}"),
            format!("unexpected {} before circuit_ready", other.type_name()),
        )),
    }
}

/// Dials `target` through the relay at `url`: asks for a circuit, then runs the secure
/// channel (as TLS client, authenticating `target` end to end), the hello and the
/// multiplexer over it. Bounded by the node's connect timeout.
pub async fn dial(
    node: &LocalNode,
    url: &str,
    token: Option<&str>,
    target: PeerId,
    opts: &WsOptions,
) -> Result<Connection> {
    let bound = node.config().connect_timeout;
    let work = async {
        let mut ws = open(node, url, token, Purpose::Dial { target }, opts).await?;
        let peer = circuit_ready(&mut ws, url, Some(target)).await?;
        if peer != target {
            return Err(TransportError::AuthenticationFailed {
                expected: target,
                presented: format!("relay announced {peer}"),
            });
        }
        let local = ws.get_ref().local_addr().ok();
        let label = format!("{target} via {url}");
        let (mut tls, peer) = node.secure().connect_labeled(ws, target, &label, bound).await?;
        let remote_addr = TransportAddr::Relay(url.to_string());
        let theirs = exchange_hello(&mut tls, &node.hello(None), peer, &label, bound).await?;
        let end = StreamEnd { peer, remote_addr, label, local, dialer: true, path: PathKind::Relayed };
        Ok(muxed_connection(node, tls, end, theirs))
    };
    tokio::time::timeout(bound, work).await.map_err(|_| TransportError::Timeout {
        what: format!("relayed connect to {target} via {url}"),
        after: bound,
    })?
}

/// Accepts `circuit` from `from` at the relay `url` (announced by `incoming` on this
/// node's control connection): the secure channel runs as TLS server and must
/// authenticate `from`. Bounded by the node's handshake timeout.
pub async fn accept(
    node: &LocalNode,
    url: &str,
    token: Option<&str>,
    circuit: CircuitId,
    from: PeerId,
    opts: &WsOptions,
) -> Result<Connection> {
    let bound = node.config().handshake_timeout;
    let work = async {
        let mut ws = open(node, url, token, Purpose::Accept { circuit }, opts).await?;
        circuit_ready(&mut ws, url, None).await?;
        let local = ws.get_ref().local_addr().ok();
        let label = format!("{from} via {url}");
        let (mut tls, peer) = node.secure().accept_labeled(ws, &label, bound).await?;
        if peer != from {
            return Err(TransportError::AuthenticationFailed { expected: from, presented: peer.to_string() });
        }
        let remote_addr = TransportAddr::Relay(url.to_string());
        let theirs = exchange_hello(&mut tls, &node.hello(None), peer, &label, bound).await?;
        let end = StreamEnd { peer, remote_addr, label, local, dialer: false, path: PathKind::Relayed };
        Ok(muxed_connection(node, tls, end, theirs))
    };
    tokio::time::timeout(bound, work).await.map_err(|_| TransportError::Timeout {
        what: format!("relayed accept from {from} via {url}"),
        after: bound,
    })?
}

/// Dialing through relays as a [`Transport`] for `relay=URL` addresses. Listening through
/// a relay (holding a reservation) is the actor runtime's `RelayClientActor`.
pub struct RelayTransport {
    node: Arc<LocalNode>,
    tokens: HashMap<String, String>,
    opts: WsOptions,
}

impl std::fmt::Debug for RelayTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTransport").field("relays_with_tokens", &self.tokens.len()).finish()
    }
}

impl RelayTransport {
    /// A relay transport for `node`; `tokens` maps relay URLs to admission tokens.
    pub fn new(node: Arc<LocalNode>, tokens: HashMap<String, String>) -> Self {
        let opts = WsOptions::from_node(node.config());
        Self { node, tokens, opts }
    }

    /// The WebSocket options used to reach relays.
    pub fn options(&self) -> &WsOptions {
        &self.opts
    }

    /// The admission token configured for `url`.
    pub fn token(&self, url: &str) -> Option<&str> {
        self.tokens.get(url).map(String::as_str)
    }
}

impl Transport for RelayTransport {
    fn protocol(&self) -> Protocol {
        Protocol::WebSocket
    }

    fn priority(&self) -> u8 {
        RELAY_PRIORITY
    }

    fn handles(&self, addr: &TransportAddr) -> bool {
        matches!(addr, TransportAddr::Relay(_))
    }

    fn connect<'a>(&'a self, addr: &'a TransportAddr, expected: PeerId) -> BoxFuture<'a, Result<Connection>> {
        Box::pin(async move {
            match addr {
                TransportAddr::Relay(url) => {
                    dial(&self.node, url, self.token(url), expected, &self.opts).await
                }
                other => Err(TransportError::UnsupportedProtocol(format!(
                    "the relay transport cannot dial {other}"
                ))),
            }
        })
    }

    fn listen<'a>(&'a self, addr: &'a TransportAddr) -> BoxFuture<'a, Result<Box<dyn Listener>>> {
        Box::pin(async move {
            Err(TransportError::UnsupportedProtocol(format!(
                "cannot listen on {addr}: reservations at a relay are kept by the node's relay client \
                 (configure relays on the supervisor)"
            )))
        })
    }
}
