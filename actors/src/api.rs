//! The whole public interface of a Kizuna node in one place: the messages an application
//! sends to the [`Supervisor`](crate::Supervisor), their replies, and the [`Event`]s it
//! subscribes to.
//!
//! Commands are imperative (`Connect`), notifications past tense (`PeerConnected`), queries
//! start with `Get`. Every command is answered asynchronously; none blocks the supervisor.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix::Message;
use bytes::Bytes;
use kizuna::{ByteStream, ConnectionInfo, PeerAddress, PeerId, Protocol, TransportAddr, TransportError};

use crate::events::EventStream;

/// Errors answered to commands.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Every address and transport of the peer was tried and failed.
    #[error("could not connect to {peer}: {}", fmt_attempts(.attempts))]
    ConnectFailed {
        /// The peer.
        peer: PeerId,
        /// Each attempt and why it failed (empty if the peer had no usable address).
        attempts: Vec<(String, String)>,
    },
    /// The peer proved a different identity than the one dialed.
    #[error("{0}")]
    AuthenticationFailed(String),
    /// No connection to the peer exists.
    #[error("not connected to {0}")]
    NotConnected(PeerId),
    /// Listening failed.
    #[error("cannot listen on {addr}: {reason}")]
    ListenFailed {
        /// The requested address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The node has no transport for this protocol.
    #[error("no transport for {0} on this node")]
    NoTransport(String),
    /// A transport-level failure on an established connection.
    #[error("{0}")]
    Transport(Arc<TransportError>),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// An actor needed for the command has stopped.
    #[error("internal actor unavailable: {0}")]
    ActorGone(String),
}

fn fmt_attempts(a: &[(String, String)]) -> String {
    if a.is_empty() {
        return "the peer has no address this node can use".into();
    }
    a.iter().map(|(addr, why)| format!("{addr}: {why}")).collect::<Vec<_>>().join("; ")
}

impl From<TransportError> for NodeError {
    fn from(e: TransportError) -> Self {
        NodeError::Transport(Arc::new(e))
    }
}

impl From<actix::MailboxError> for NodeError {
    fn from(e: actix::MailboxError) -> Self {
        NodeError::ActorGone(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// Commands

/// Start listening on an address (port 0 picks one). Replies with the bound address.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<TransportAddr, NodeError>")]
pub struct Listen {
    /// Where to listen, e.g. `TransportAddr::Tcp("0.0.0.0:0".parse()?)`.
    pub addr: TransportAddr,
}

/// Connect to a peer (or return the existing connection). Tries the peer's transports in
/// ranked order with fallback, bounded by the connect timeout (10 s by default).
/// Concurrent `Connect`s to one peer share one attempt. The peer stays *wanted*: if the
/// connection later fails, the supervisor reconnects with backoff until [`Disconnect`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<ConnectionInfo, NodeError>")]
pub struct Connect {
    /// Who and where.
    pub addr: PeerAddress,
}

/// Open an additional path to a peer over the given addresses, even while it is connected
/// (a second transport, a direct path beside a relayed one). Replies with the new path's
/// connection once it is up (or with the surviving one, if it duplicated a path of the
/// same transport and kind). The peer's path manager decides whether it carries traffic.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<ConnectionInfo, NodeError>")]
pub struct DialPath {
    /// Who and where.
    pub addr: PeerAddress,
}

/// Send one message to a connected peer. Replies once the message is taken by the peer's
/// session (ordered, reliable, exactly once across path changes: it is kept until the peer
/// acknowledges it and sent again on a new path if the old one dies). Waits while the
/// peer is slow or the session's window is full (backpressure).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), NodeError>")]
pub struct Send {
    /// The recipient.
    pub peer: PeerId,
    /// The message (at most 4 MiB minus 9 bytes of session header).
    pub data: Bytes,
}

/// Open a byte stream to a connected peer, for bulk data that bypasses every mailbox.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<ByteStream, NodeError>")]
pub struct OpenStream {
    /// The peer.
    pub peer: PeerId,
}

/// Get a direct sending handle for a connected peer: the hot path for many small
/// messages, bypassing the supervisor's mailbox (the connection still batches writes).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<PeerSender, NodeError>")]
pub struct GetSender {
    /// The peer.
    pub peer: PeerId,
}

/// Send one unreliable datagram to a connected peer (QUIC datagrams, WebRTC's unordered
/// `maxRetransmits = 0` channel). It may be lost or reordered; an error where the
/// connection's transport has no datagrams.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), NodeError>")]
pub struct SendDatagram {
    /// The peer.
    pub peer: PeerId,
    /// The payload.
    pub data: Bytes,
}

/// Close the connection to a peer and stop wanting it (no reconnect).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), NodeError>")]
pub struct Disconnect {
    /// The peer.
    pub peer: PeerId,
}

/// Subscribe to events. Replies with a bounded [`EventStream`]; a subscriber that stops
/// consuming slows the peers sending to this node (messages are not dropped).
#[derive(Debug, Clone, Message)]
#[rtype(result = "EventStream")]
pub struct Subscribe {
    /// Events buffered for this subscriber before backpressure starts.
    pub capacity: usize,
}

impl Default for Subscribe {
    fn default() -> Self {
        Self { capacity: 1024 }
    }
}

/// Query statistics: connections, listeners, supervision counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "NodeStats")]
pub struct GetStats;

/// Query this node's address (peer id and listen addresses) as a ticket.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "PeerAddress")]
pub struct GetAddress;

/// Shut down gracefully: stop listeners, close every connection after flushing what was
/// queued, then stop the supervisor. Messages acknowledged before are not lost.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

// ---------------------------------------------------------------------------------------
// Replies

/// Statistics of a node.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// One entry per connected peer: the connection carrying its traffic.
    pub connections: Vec<ConnectionInfo>,
    /// Every path to every peer (the active one and standbys), with their health.
    pub paths: Vec<PathStats>,
    /// Times a peer's traffic moved to another path, all peers together.
    pub path_changes: u64,
    /// Active listeners.
    pub listeners: Vec<TransportAddr>,
    /// Children restarted so far.
    pub restarts: u64,
    /// Children given up on (restart intensity exceeded).
    pub given_up: u64,
    /// Connections established so far (inbound and outbound).
    pub connections_established: u64,
    /// Connect attempts that failed.
    pub connects_failed: u64,
    /// What happened to inbound connections before they authenticated, on the TCP and
    /// WebSocket listeners: admitted, refused per address or when full, evicted, silent,
    /// timed out, protocol violations ([`kizuna::transport::admission`]).
    pub handshakes: kizuna::transport::admission::HandshakeStats,
    /// What this node measured dialing peers, one entry per peer and transport (the
    /// dial history outgoing connects are ranked by, [`kizuna::negotiate::DialHistory`]).
    pub dials: Vec<(PeerId, Protocol, kizuna::negotiate::DialStats)>,
}

/// Messages below this size are queued for the writer task at once when there is room;
/// larger ones are written by the sending task. 16 KiB, one TLS record: what the
/// connection writes directly from the caller from that size on.
const SMALL_MESSAGE: usize = 16 * 1024;

/// A direct handle for sending messages to one connected peer (see [`GetSender`]): no
/// mailbox between the caller and the peer's session. It follows path changes.
#[derive(Clone)]
pub struct PeerSender {
    pub(crate) link: Arc<crate::node::link::PeerLink>,
}

impl fmt::Debug for PeerSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerSender({})", self.link.peer().short())
    }
}

impl PeerSender {
    /// The peer.
    pub fn peer(&self) -> PeerId {
        self.link.peer()
    }

    /// Sends one message, exactly once and in order (as [`Send`]); waits while the peer is
    /// slow. Small messages are queued for the connection's writer when there is room
    /// (no waiting, no hand-off); large ones are written by the calling task.
    pub async fn send(&self, data: Bytes) -> Result<(), NodeError> {
        if data.len() < SMALL_MESSAGE {
            if let Some(r) = self.link.try_send(&data) {
                return r;
            }
        }
        self.link.send(data, false).await
    }

    /// Sends `msgs` in order, each exactly once (as [`send`](Self::send)): the way to move
    /// many small messages, handed to the connection in batches as large as the peer's
    /// window allows. Waits while the peer is slow; never writes on the calling task.
    pub async fn send_many(&self, msgs: Vec<Bytes>) -> Result<(), NodeError> {
        self.link.send_many(msgs).await
    }

    /// Sends one unreliable datagram on the current path (see [`SendDatagram`]).
    pub fn send_datagram(&self, data: Bytes) -> Result<(), NodeError> {
        self.link.send_datagram(data)
    }
}

/// One path to a peer, as reported by [`GetStats`].
#[derive(Debug, Clone)]
pub struct PathStats {
    /// The connection under it.
    pub info: ConnectionInfo,
    /// It carries the peer's traffic now.
    pub active: bool,
    /// It answers (not declared dead).
    pub alive: bool,
    /// Smoothed round-trip time of its probes.
    pub rtt: Option<Duration>,
    /// Estimated share of probes lost (0 to 1).
    pub loss: f64,
    /// Recent throughput, bytes per second.
    pub throughput: f64,
}

// ---------------------------------------------------------------------------------------
// Events

/// Why a peer's traffic moved to another path ([`Event::PathChanged`]).
pub type PathChangeReason = kizuna::peer::ChangeReason;

/// Why a peer disconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// This node asked ([`Disconnect`] or [`Shutdown`]).
    Local,
    /// The peer closed the connection.
    Remote(String),
    /// The connection failed (I/O error, protocol violation, keep-alive timeout).
    Failed(String),
    /// Replaced by another connection to the same peer (simultaneous dial or upgrade).
    Replaced,
    /// The connection's actor was killed or panicked.
    ActorFailed(String),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Local => f.write_str("closed locally"),
            DisconnectReason::Remote(r) => write!(f, "closed by peer: {r}"),
            DisconnectReason::Failed(r) => write!(f, "failed: {r}"),
            DisconnectReason::Replaced => f.write_str("replaced by another connection"),
            DisconnectReason::ActorFailed(r) => write!(f, "actor failed: {r}"),
        }
    }
}

/// A stream the peer opened, delivered in [`Event::StreamOpened`]. The first subscriber to
/// [`take`](IncomingStream::take) it owns it.
#[derive(Clone)]
pub struct IncomingStream(Arc<Mutex<Option<ByteStream>>>);

impl IncomingStream {
    pub(crate) fn new(s: ByteStream) -> Self {
        Self(Arc::new(Mutex::new(Some(s))))
    }

    /// Takes the stream; `None` if another subscriber already took it.
    pub fn take(&self) -> Option<ByteStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IncomingStream")
    }
}

/// Something that happened on the node.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A connection to a peer is established (after authentication and hello).
    PeerConnected {
        /// The connection.
        info: ConnectionInfo,
    },
    /// The connection to a peer ended.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: DisconnectReason,
    },
    /// A message arrived.
    MessageReceived {
        /// From whom.
        peer: PeerId,
        /// The message.
        data: Bytes,
    },
    /// The peer opened a byte stream.
    StreamOpened {
        /// The peer.
        peer: PeerId,
        /// The stream (take it).
        stream: IncomingStream,
    },
    /// A listener is accepting.
    ListenerStarted {
        /// Where.
        addr: TransportAddr,
    },
    /// A listener failed (it will be restarted per policy).
    ListenerFailed {
        /// The requested address.
        addr: TransportAddr,
        /// Why.
        error: String,
    },
    /// A connect attempt failed.
    ConnectFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: String,
    },
    /// A supervised actor was restarted.
    ActorRestarted {
        /// The child's name, e.g. `listener/tcp=127.0.0.1:4000`.
        child: String,
        /// Restart number within the current intensity window.
        attempt: u32,
        /// Backoff waited before the restart.
        after: Duration,
    },
    /// The supervisor gave up on a child: it failed more often than the restart intensity
    /// allows.
    ChildGivenUp {
        /// The child's name.
        child: String,
        /// Its last failure.
        last_error: String,
    },
    /// The traffic to `peer` moved to another path. Messages sent around the change still
    /// arrive exactly once and in order; no `PeerConnected`/`PeerDisconnected` pair
    /// accompanies it. (Replaces the former `PathUpgraded`: an upgrade is
    /// `reason: Upgrade`.)
    PathChanged {
        /// The peer.
        peer: PeerId,
        /// The path the traffic left.
        from: Box<ConnectionInfo>,
        /// The path now carrying it.
        to: Box<ConnectionInfo>,
        /// Why.
        reason: PathChangeReason,
    },
    /// A path's loss or round-trip time crossed its threshold (10 % loss, or an RTT of 3×
    /// its lowest and 100 ms more; see `kizuna::peer::manager`). Reported once per
    /// crossing.
    PathDegraded {
        /// The peer.
        peer: PeerId,
        /// The path.
        path: Box<ConnectionInfo>,
        /// Its smoothed round-trip time.
        rtt: Option<Duration>,
        /// Its estimated loss (0 to 1).
        loss: f64,
    },
    /// An automatic hole-punch attempt with `peer` (started because the connection to it
    /// is relayed) found no direct path; the relayed connection stays, and the attempt is
    /// repeated later.
    HolePunchFailed {
        /// The peer.
        peer: PeerId,
        /// Why (from the punch session, or the QUIC dial over the punched path).
        reason: String,
    },
    /// This node holds a reservation at the relay (first grant or after recovering).
    RelayReserved {
        /// The relay.
        url: String,
    },
    /// The relay in use failed (or could not be reached); the relay client retries with
    /// backoff, moving to the next configured relay.
    RelayFailed {
        /// The relay.
        url: String,
        /// Why.
        reason: String,
    },
    /// An unreliable datagram from a peer (see [`SendDatagram`]). Datagrams that arrive
    /// while subscribers are full wait in a small queue and are dropped beyond it.
    DatagramReceived {
        /// The sender.
        peer: PeerId,
        /// The payload.
        data: Bytes,
    },
    /// A signaling message from a peer, through the relay.
    SignalReceived {
        /// The sender (authenticated by the relay).
        peer: PeerId,
        /// The payload.
        payload: Bytes,
    },
    /// A limit was hit (message size, connection count, ...).
    LimitHit {
        /// Which limit.
        limit: String,
        /// Details.
        detail: String,
    },
}
