//! Test harness for applications and for Kizuna's own tests: start nodes on loopback with
//! seeded identities, connect them, wait for events with a timeout (no bare sleeps),
//! record messages with probe actors, inject faults and assert on supervision, and put
//! forwarders between nodes that delay a path or make it die silently ([`TcpProxy`],
//! [`UdpProxy`]), and run a real TURN server ([`Coturn`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kizuna_actors::testing::{TestNode, secs};
//! let mut a = TestNode::start(1).await?;
//! let mut b = TestNode::start(2).await?;
//! a.connect(&b).await?;
//! b.wait_for(|e| matches!(e, kizuna_actors::Event::PeerConnected { .. }), secs(5)).await?;
//! # Ok(()) }
//! ```

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix::{Actor, Addr, Context, Handler, Message};
use kizuna::{ConnectionInfo, Keypair, PeerAddress, PeerId, Protocol, TransportAddr};
use tokio::sync::Notify;

mod crowd;
mod tcp_proxy;
mod turn;
mod udp_proxy;

pub use crowd::crowd;
pub use tcp_proxy::TcpProxy;
pub use turn::{Coturn, TURN_PASS, TURN_USER};
pub use udp_proxy::UdpProxy;

use crate::{
    api::{Connect, Event, GetAddress, GetStats, Listen, NodeError, NodeStats, Shutdown, Subscribe},
    events::EventStream,
    node::child::Fault,
    node::supervisor::{GetChildren, InjectFault, Supervisor, SupervisorConfig},
    supervision::RestartLimits,
};

/// Sends the node's logs to the test's output, filtered by `RUST_LOG` (nothing when it is
/// unset). Called by [`TestNode::start_with`]; calling it again is harmless.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `Duration::from_secs`, for terse timeouts in tests.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A harness failure.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// `wait_for` timed out; carries the events seen meanwhile.
    #[error("no matching event within {timeout:?}; saw {} events: {seen}", count)]
    Timeout {
        /// The bound.
        timeout: Duration,
        /// How many events arrived meanwhile.
        count: usize,
        /// Their short descriptions.
        seen: String,
    },
    /// The node's event stream ended.
    #[error("the node stopped")]
    Stopped,
    /// A node command failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The supervisor is gone.
    #[error("supervisor unreachable: {0}")]
    Mailbox(#[from] actix::MailboxError),
}

/// The key pair of test node `seed` (deterministic).
pub fn seeded_keypair(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

/// One node under test: its supervisor, identity, ticket, and a recording event stream.
pub struct TestNode {
    /// The node's supervisor.
    pub addr: Addr<Supervisor>,
    /// The node's peer id.
    pub peer: PeerId,
    events: EventStream,
    /// Every event seen so far by [`TestNode::wait_for`], in order.
    pub history: Vec<Event>,
}

impl fmt::Debug for TestNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TestNode({})", self.peer.short())
    }
}

impl TestNode {
    /// Starts a node with identity `seed`, listening on TCP and QUIC on loopback.
    pub async fn start(seed: u8) -> Result<Self, HarnessError> {
        Self::start_with(seed, |_| {}).await
    }

    /// Starts a node after letting `configure` adjust its configuration; listens on
    /// loopback for each configured protocol that has a socket address.
    pub async fn start_with(
        seed: u8,
        configure: impl FnOnce(&mut SupervisorConfig),
    ) -> Result<Self, HarnessError> {
        init_tracing();
        let mut config = SupervisorConfig::new(seeded_keypair(seed));
        config.restart = RestartLimits::default();
        configure(&mut config);
        let protocols = config.protocols.clone();
        let addr = Supervisor::start(config)?;
        let events = addr.send(Subscribe { capacity: 4096 }).await?;
        let node = Self { addr, peer: seeded_keypair(seed).peer_id(), events, history: Vec::new() };
        for p in protocols {
            let loopback = "127.0.0.1:0".parse().map_err(|_| NodeError::NoTransport("loopback".into()))?;
            let a = match p {
                Protocol::Tcp => TransportAddr::Tcp(loopback),
                Protocol::Quic => TransportAddr::Quic(loopback),
                Protocol::WebSocket => TransportAddr::Ws("ws://127.0.0.1:0".into()),
                _ => continue,
            };
            node.addr.send(Listen { addr: a }).await??;
        }
        Ok(node)
    }

    /// Waits until the node holds a reservation at a relay (configured through
    /// `SupervisorConfig::relays`); returns the relay's URL.
    pub async fn wait_reserved(&mut self, timeout: Duration) -> Result<String, HarnessError> {
        match self.wait_for(|e| matches!(e, Event::RelayReserved { .. }), timeout).await? {
            Event::RelayReserved { url } => Ok(url),
            _ => unreachable!("wait_for returned a non-matching event"),
        }
    }

    /// The node's ticket.
    pub async fn ticket(&self) -> Result<PeerAddress, HarnessError> {
        Ok(self.addr.send(GetAddress).await?)
    }

    /// The node's ticket restricted to one protocol.
    pub async fn ticket_for(&self, p: Protocol) -> Result<PeerAddress, HarnessError> {
        let t = self.ticket().await?;
        Ok(PeerAddress::new(t.peer_id, t.addrs.into_iter().filter(|a| a.protocol() == p).collect()))
    }

    /// Connects this node to `other` (all its transports).
    pub async fn connect(&self, other: &TestNode) -> Result<ConnectionInfo, HarnessError> {
        let t = other.ticket().await?;
        Ok(self.addr.send(Connect { addr: t }).await??)
    }

    /// Waits until an event matching `pred` arrives (events before it are recorded in
    /// [`TestNode::history`]). Fails after `timeout`.
    pub async fn wait_for(
        &mut self,
        mut pred: impl FnMut(&Event) -> bool,
        timeout: Duration,
    ) -> Result<Event, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let start = self.history.len();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    self.history.push(ev.clone());
                    if pred(&ev) {
                        return Ok(ev);
                    }
                }
                Ok(None) => return Err(HarnessError::Stopped),
                Err(_) => {
                    let seen: Vec<String> = self.history[start..].iter().map(describe).collect();
                    return Err(HarnessError::Timeout { timeout, count: seen.len(), seen: seen.join(", ") });
                }
            }
        }
    }

    /// Names of the supervisor's live children.
    pub async fn children(&self) -> Result<Vec<String>, HarnessError> {
        Ok(self.addr.send(GetChildren).await?)
    }

    /// The name of the first live child whose name starts with `prefix`.
    pub async fn child(&self, prefix: &str) -> Result<Option<String>, HarnessError> {
        Ok(self.children().await?.into_iter().find(|c| c.starts_with(prefix)))
    }

    /// Injects `fault` into the named child; `false` if there is no such child.
    pub async fn inject(&self, child: &str, fault: Fault) -> Result<bool, HarnessError> {
        Ok(self.addr.send(InjectFault { child: child.to_string(), fault }).await?)
    }

    /// Statistics of the node.
    pub async fn stats(&self) -> Result<NodeStats, HarnessError> {
        Ok(self.addr.send(GetStats).await?)
    }

    /// Waits for [`Event::ActorRestarted`] of a child whose name starts with `prefix`.
    pub async fn assert_restarted(&mut self, prefix: &str, timeout: Duration) -> Result<u32, HarnessError> {
        let p = prefix.to_string();
        match self
            .wait_for(
                move |e| matches!(e, Event::ActorRestarted { child, .. } if child.starts_with(&p)),
                timeout,
            )
            .await?
        {
            Event::ActorRestarted { attempt, .. } => Ok(attempt),
            _ => unreachable!("wait_for returned a non-matching event"),
        }
    }

    /// Shuts the node down gracefully.
    pub async fn shutdown(&self) -> Result<(), HarnessError> {
        Ok(self.addr.send(Shutdown).await?)
    }
}

/// A one-line description of an event, for failure messages.
pub fn describe(e: &Event) -> String {
    match e {
        Event::PeerConnected { info } => format!("PeerConnected({}, {})", info.peer.short(), info.protocol),
        Event::PeerDisconnected { peer, reason } => format!("PeerDisconnected({}, {reason})", peer.short()),
        Event::MessageReceived { peer, data } => {
            format!("MessageReceived({}, {} B)", peer.short(), data.len())
        }
        Event::StreamOpened { peer, .. } => format!("StreamOpened({})", peer.short()),
        Event::DatagramReceived { peer, data } => {
            format!("DatagramReceived({}, {} B)", peer.short(), data.len())
        }
        Event::ListenerStarted { addr } => format!("ListenerStarted({addr})"),
        Event::ListenerFailed { addr, error } => format!("ListenerFailed({addr}: {error})"),
        Event::ConnectFailed { peer, error } => format!("ConnectFailed({}: {error})", peer.short()),
        Event::ActorRestarted { child, attempt, .. } => format!("ActorRestarted({child} #{attempt})"),
        Event::ChildGivenUp { child, .. } => format!("ChildGivenUp({child})"),
        Event::LimitHit { limit, .. } => format!("LimitHit({limit})"),
        Event::PathChanged { peer, from, to, reason } => {
            format!(
                "PathChanged({}, {} {} -> {} {}, {})",
                peer.short(),
                from.protocol,
                from.path,
                to.protocol,
                to.path,
                reason.name()
            )
        }
        Event::PathDegraded { peer, path, loss, .. } => {
            format!("PathDegraded({}, {} {}, loss {loss:.2})", peer.short(), path.protocol, path.path)
        }
        Event::HolePunchFailed { peer, reason } => format!("HolePunchFailed({}: {reason})", peer.short()),
        Event::RelayReserved { url } => format!("RelayReserved({url})"),
        Event::RelayFailed { url, reason } => format!("RelayFailed({url}: {reason})"),
        Event::SignalReceived { peer, payload } => {
            format!("SignalReceived({}, {} B)", peer.short(), payload.len())
        }
    }
}

/// A probe actor that records every message of type `M` it receives; use its address
/// (or `Recipient<M>`) where a real actor would go.
pub struct Probe<M: Message<Result = ()> + Clone + Send + 'static> {
    log: ProbeLog<M>,
}

/// The shared record of a [`Probe`].
pub struct ProbeLog<M> {
    seen: Arc<Mutex<Vec<M>>>,
    notify: Arc<Notify>,
}

impl<M> Clone for ProbeLog<M> {
    fn clone(&self) -> Self {
        Self { seen: self.seen.clone(), notify: self.notify.clone() }
    }
}

impl<M: Clone> ProbeLog<M> {
    /// Everything recorded so far.
    pub fn messages(&self) -> Vec<M> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until at least `n` messages were recorded; `false` on timeout.
    pub async fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.seen.lock().unwrap_or_else(|e| e.into_inner()).len() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }
}

impl<M: Message<Result = ()> + Clone + Send + 'static> Probe<M> {
    /// Starts a probe; returns its address and its log.
    pub fn start() -> (Addr<Self>, ProbeLog<M>) {
        let log = ProbeLog { seen: Arc::default(), notify: Arc::default() };
        (Probe { log: log.clone() }.start(), log)
    }
}

impl<M: Message<Result = ()> + Clone + Send + 'static> Actor for Probe<M> {
    type Context = Context<Self>;
}

impl<M: Message<Result = ()> + Clone + Send + 'static> Handler<M> for Probe<M> {
    type Result = ();
    fn handle(&mut self, msg: M, _: &mut Context<Self>) {
        self.log.seen.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
        self.log.notify.notify_waiters();
    }
}
