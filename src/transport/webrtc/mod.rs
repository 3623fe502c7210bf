//! WebRTC DataChannels via webrtc-rs 0.21: [`WebRtcTransport`] (docs/webrtc.md).
//!
//! A connection is one `RTCPeerConnection`: the offerer creates `kizuna-msg` (reliable,
//! ordered; one data channel message per Kizuna message) and `kizuna-dgram` (unordered,
//! `maxRetransmits = 0`; datagrams) before its offer; every stream is a further
//! `kizuna-stream` channel opened by either side. There is no TLS or hello inside: DTLS
//! authenticates the certificate whose fingerprint is in the SDP, and the SDP is signed
//! by the sender's node key in signaling (see [`signal`]), so the connection is
//! authenticated to the peer id that signed it. This is also what lets a browser be a
//! peer: it signs its offer with a WebCrypto Ed25519 key.
//!
//! Signaling goes through a [`Signaler`] (the node's relay client, which sends relay
//! `signal` messages); whatever receives the peer's signals calls
//! [`WebRtcTransport::handle_signal`]. Offers from peers are answered while the transport
//! is listening on [`TransportAddr::WebRtc`].

mod backend;
mod channel;
mod config;
pub mod error;
mod peer;
pub mod runtime;
pub mod session;
pub mod signal;

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use tokio::sync::{mpsc, watch};

use self::{
    backend::WebRtcBackend,
    peer::{PeerSetup, SessionSignals},
    session::{Role, Route, SessionTable},
};
pub use self::{
    channel::{LABEL_DATAGRAMS, LABEL_MESSAGES, LABEL_STREAM},
    config::{IceServer, WebRtcConfig, MAX_DATA_CHANNEL_MESSAGE},
    error::SignalError,
    runtime::BufferedRuntime,
    signal::{SignalKind, SignalMessage, WEBRTC_SIGNAL_TAG},
};
use crate::{
    address::{Protocol, TransportAddr},
    error::{Result, TransportError},
    identity::PeerId,
    node::LocalNode,
    transport::{
        accept::ChannelListener, BoxFuture, ConnStats, Connection, ConnectionParts, Incoming, Listener,
        Transport,
    },
    wire::{Hello, HelloPurpose},
};

/// Preference of WebRTC among transports: below QUIC, TCP and WebSocket (it needs
/// signaling round trips through a relay before its own handshakes), above relayed
/// circuits (it is end to end and usually direct).
pub const WEBRTC_PRIORITY: u8 = 30;

/// Signal messages queued per session before further ones are dropped.
const SESSION_INBOX: usize = 64;
/// Connections answered but not yet accepted by the listener's owner.
const INCOMING_QUEUE: usize = 16;

/// Sends signaling payloads to peers (for a node: relay `signal` messages).
pub trait Signaler: Send + Sync + 'static {
    /// Sends `payload` (tag byte included) to `to`.
    fn signal(&self, to: PeerId, payload: Vec<u8>) -> BoxFuture<'_, Result<()>>;
}

type SessionInbox = mpsc::Sender<SignalMessage>;

struct Shared {
    node: Arc<LocalNode>,
    config: WebRtcConfig,
    runtime: Arc<BufferedRuntime>,
    signaler: RwLock<Option<Arc<dyn Signaler>>>,
    sessions: Mutex<SessionTable<SessionInbox>>,
    /// Where answered connections go, and the runtime answering tasks run on, while a
    /// listener is open.
    incoming: Mutex<Option<(mpsc::Sender<Incoming>, tokio::runtime::Handle)>>,
}

impl Shared {
    fn sessions(&self) -> std::sync::MutexGuard<'_, SessionTable<SessionInbox>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signaler(&self) -> Option<Arc<dyn Signaler>> {
        self.signaler.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Forgets a session when its set-up ends, however it ends (cancellation included).
struct SessionGuard {
    shared: Arc<Shared>,
    peer: PeerId,
    session: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.sessions().remove(&self.peer, self.session);
    }
}

/// WebRTC DataChannel transport; see the module docs.
#[derive(Clone)]
pub struct WebRtcTransport {
    shared: Arc<Shared>,
}

impl WebRtcTransport {
    /// A transport for `node`; fails if `config` is invalid (the error says what to fix).
    pub fn new(node: Arc<LocalNode>, config: WebRtcConfig) -> Result<Self> {
        config.validate()?;
        let runtime = BufferedRuntime::new(node.config().udp_buffer);
        Ok(Self {
            shared: Arc::new(Shared {
                node,
                config,
                runtime,
                signaler: RwLock::new(None),
                sessions: Mutex::new(SessionTable::default()),
                incoming: Mutex::new(None),
            }),
        })
    }

    /// Sets (or replaces) the signaling path, e.g. once the relay client runs.
    pub fn set_signaler(&self, signaler: Arc<dyn Signaler>) {
        *self.shared.signaler.write().unwrap_or_else(|e| e.into_inner()) = Some(signaler);
    }

    /// Whether a signaling path is set.
    pub fn has_signaler(&self) -> bool {
        self.shared.signaler().is_some()
    }

    /// Feeds one signaling payload (tag byte included) from `from`, a peer the signaling
    /// path authenticated. An offer starts answering (while listening); answers,
    /// candidates and closes go to their session. Refused input is dropped with the error;
    /// a refused offer is answered with a `close` so the offerer fails fast.
    pub fn handle_signal(&self, from: PeerId, payload: &[u8]) -> std::result::Result<(), SignalError> {
        self.handle_signal_message(from, SignalMessage::decode(payload)?)
    }

    /// [`handle_signal`](Self::handle_signal) for a message already decoded (by
    /// [`crate::punch::signal::Signal::decode`], where signals arrive).
    pub fn handle_signal_message(
        &self,
        from: PeerId,
        msg: SignalMessage,
    ) -> std::result::Result<(), SignalError> {
        let route = self.shared.sessions().route(from, &msg, Instant::now())?;
        match route {
            Route::Deliver(inbox) | Route::Closed(inbox) => {
                inbox.try_send(msg).map_err(|_| SignalError::Limit("signals queued for one session"))
            }
            Route::NewOffer => self.accept_offer(from, msg),
        }
    }

    fn accept_offer(&self, from: PeerId, offer: SignalMessage) -> std::result::Result<(), SignalError> {
        let session = offer.session;
        let refuse = |e: SignalError| {
            self.send_close(from, session, &e.to_string());
            Err(e)
        };
        let Some((incoming, handle)) = self.shared.incoming.lock().unwrap_or_else(|e| e.into_inner()).clone()
        else {
            return refuse(SignalError::NotAccepting);
        };
        if incoming.is_closed() {
            return refuse(SignalError::NotAccepting);
        }
        let Some(signaler) = self.shared.signaler() else { return refuse(SignalError::NotAccepting) };
        if let Err(e) = offer.verify(&from, &self.shared.node.peer_id()) {
            return refuse(e);
        }
        let (tx, rx) = mpsc::channel(SESSION_INBOX);
        if let Err(e) = self.shared.sessions().insert(from, session, Role::Answerer, tx, Instant::now()) {
            return refuse(e);
        }
        let guard = SessionGuard { shared: self.shared.clone(), peer: from, session };
        let shared = self.shared.clone();
        handle.spawn(async move {
            let sig = SessionSignals {
                keypair: &shared.node.config().keypair,
                peer: from,
                session,
                signaler: signaler.clone(),
                inbox: tokio::sync::Mutex::new(rx),
            };
            let result = bounded(&shared, from, async {
                let setup = PeerSetup::build(&shared.config, shared.runtime.clone()).await?;
                let est = setup.answer(&sig, offer.sdp).await?;
                Ok(connection(from, est, false).await)
            })
            .await;
            drop(guard);
            let item = match result {
                Ok(conn) => Incoming::Connection(conn),
                Err(error) => {
                    close_session(&signaler, from, session, &error.to_string()).await;
                    Incoming::Rejected { remote: format!("{from} via webrtc"), error }
                }
            };
            let _ = incoming.send(item).await;
        });
        Ok(())
    }

    fn send_close(&self, to: PeerId, session: u64, reason: &str) {
        let Some(signaler) = self.shared.signaler() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let reason = reason.to_string();
        handle.spawn(async move { close_session(&signaler, to, session, &reason).await });
    }
}

/// Tells the peer a session is abandoned (best effort).
async fn close_session(signaler: &Arc<dyn Signaler>, to: PeerId, session: u64, reason: &str) {
    let m = SignalMessage::unsigned(session, SignalKind::Close, reason.chars().take(200).collect(), None);
    if let Ok(p) = m.encode() {
        let _ = signaler.signal(to, p).await;
    }
}

/// Runs a set-up within the node's connect timeout.
async fn bounded<T>(
    shared: &Shared,
    peer: PeerId,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let after = shared.node.config().connect_timeout;
    tokio::time::timeout(after, f).await.unwrap_or_else(|_| {
        Err(TransportError::Timeout { what: format!("WebRTC set-up with {peer}"), after })
    })
}

/// Wraps an established peer connection as a Kizuna [`Connection`] to `peer`.
async fn connection(peer: PeerId, est: peer::Established, dialer: bool) -> Connection {
    let path = est.path().await;
    let stats = Arc::new(ConnStats::default());
    let backend = Arc::new(WebRtcBackend::start(est, stats.clone()));
    // No hello travels over WebRTC (a browser could not send one): the peer's identity
    // is the key that signed the SDP, and its capabilities are WebRTC's.
    let remote_hello = Hello {
        peer_id: peer,
        agent: "webrtc".into(),
        purpose: HelloPurpose::Session,
        capabilities: [(Protocol::WebRtc, Protocol::WebRtc.capabilities())].into_iter().collect(),
        listen_addrs: Vec::new(),
        observed_addr: None,
        // Without a hello there is no session layer: messages are sent as they are.
        session: None,
    };
    let parts = ConnectionParts {
        peer,
        remote_addr: TransportAddr::WebRtc,
        protocol: Protocol::WebRtc,
        path,
        remote_hello,
        dialer,
    };
    Connection::new(parts, backend, stats)
}

fn random_session() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    loop {
        if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
            // No OS randomness: fall back to the clock (sessions only need to differ).
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            b = (t.as_nanos() as u64).to_be_bytes();
        }
        // Below 2^53 so that a browser's JavaScript number holds it exactly.
        let s = u64::from_be_bytes(b) & ((1 << 53) - 1);
        if s != 0 {
            return s;
        }
    }
}

impl Transport for WebRtcTransport {
    fn protocol(&self) -> Protocol {
        Protocol::WebRtc
    }

    fn priority(&self) -> u8 {
        WEBRTC_PRIORITY
    }

    fn is_available(&self) -> bool {
        self.has_signaler()
    }

    fn connect<'a>(&'a self, addr: &'a TransportAddr, expected: PeerId) -> BoxFuture<'a, Result<Connection>> {
        Box::pin(async move {
            if *addr != TransportAddr::WebRtc {
                return Err(TransportError::UnsupportedProtocol(format!("WebRTC cannot dial {addr}")));
            }
            let signaler = self.shared.signaler().ok_or_else(|| {
                TransportError::UnsupportedProtocol(
                    "WebRTC has no signaling path (connect to the peer first, or configure --relay)".into(),
                )
            })?;
            let session = random_session();
            let (tx, rx) = mpsc::channel(SESSION_INBOX);
            self.shared
                .sessions()
                .insert(expected, session, Role::Offerer, tx, Instant::now())
                .map_err(|e| e.into_transport(expected))?;
            let _guard = SessionGuard { shared: self.shared.clone(), peer: expected, session };
            let sig = SessionSignals {
                keypair: &self.shared.node.config().keypair,
                peer: expected,
                session,
                signaler: signaler.clone(),
                inbox: tokio::sync::Mutex::new(rx),
            };
            let result = bounded(&self.shared, expected, async {
                let setup = PeerSetup::build(&self.shared.config, self.shared.runtime.clone()).await?;
                let est = setup.offer(&sig).await?;
                Ok(connection(expected, est, true).await)
            })
            .await;
            if let Err(e) = &result {
                close_session(&signaler, expected, session, &e.to_string()).await;
            }
            result
        })
    }

    fn listen<'a>(&'a self, addr: &'a TransportAddr) -> BoxFuture<'a, Result<Box<dyn Listener>>> {
        Box::pin(async move {
            if *addr != TransportAddr::WebRtc {
                return Err(TransportError::UnsupportedProtocol(format!("WebRTC cannot listen on {addr}")));
            }
            let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
            let handle = tokio::runtime::Handle::current();
            *self.shared.incoming.lock().unwrap_or_else(|e| e.into_inner()) = Some((tx, handle));
            let (stop_tx, mut stop_rx) = watch::channel(false);
            let shared = self.shared.clone();
            // Stops answering offers when the listener closes.
            let task = tokio::spawn(async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
                *shared.incoming.lock().unwrap_or_else(|e| e.into_inner()) = None;
            });
            self.shared.node.add_listen_addr(TransportAddr::WebRtc);
            let listener =
                ChannelListener::new(self.shared.node.clone(), TransportAddr::WebRtc, rx, stop_tx, task);
            Ok(Box::new(listener) as Box<dyn Listener>)
        })
    }
}
