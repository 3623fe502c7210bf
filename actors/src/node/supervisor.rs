//! The [`Supervisor`]: a node's connection manager and the root of its supervision tree.
//!
//! ```text
//! Supervisor ─┬─ ListenerActor     (permanent: one per listen address)
//!             ├─ RelayClientActor  (permanent: with relays configured)
//!             └─ PeerActor         (transient: one per remote peer)
//!                 ├─ ConnectionActor   (one per path: direct, relayed, WebRTC)
//!                 ├─ NegotiatorActor   (one-shot: the pending dial)
//!                 └─ HolePunchActor    (one-shot: the punch attempt)
//! ```
//!
//! The supervisor keeps the registry (listeners, one [`PeerActor`] and one [`PeerLink`]
//! per peer), answers the commands of [`crate::api`] and restarts its children per
//! [`RestartPolicy`] with backoff and an intensity limit ([`Event::ActorRestarted`],
//! [`Event::ChildGivenUp`]). Everything about one peer — its paths, which one carries
//! the traffic, dials, punches, reconnects — is its peer actor's. Messages take one
//! mailbox: `Send` goes from here straight to the peer's link, which hands it to the
//! carrying connection's writer queue.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, MessageResult,
    Recipient, ResponseActFuture, ResponseFuture, WrapFuture,
};
use kizuna::{
    peer::{PathConfig, WindowLimits},
    relay::client::{RelayClientConfig, RelayEndpoint},
    transport::webrtc::{WebRtcConfig, WebRtcTransport},
    Incoming, LocalNode, NodeConfig, PeerAddress, PeerId, Protocol, Transport, TransportAddr,
};
use tokio::sync::oneshot;

use crate::{
    api::*,
    node::{
        child::{ChildExited, ChildId, Fault},
        events::EventBus,
        hole_punch::PunchSignal,
        link::PeerLink,
        listener::{Inbound, ListenerActor, ListenerPorts, ListenerReady, StopListener},
        negotiator::dial_stats,
        network_watch,
        peer::{
            AddPath, GetPeerChildren, InjectPeerFault, NetworkChanged, PeerActor, PeerConnect, PeerCtx,
            PeerDialPath, PeerDisconnect, PeerShutdown,
        },
        punching::PunchCtx,
        relay_client::{RelayAddrs, RelayClientActor, RelayClientPorts, StopRelayClient},
        supervision::{Decision, ExitReason, RestartLimits, RestartPolicy, RestartTracker},
        transports::build_transports,
        webrtc_signal::{RelaySignaler, WebRtcSignal},
    },
};

pub use kizuna::peer::manager::PUNCH_RETRY;

/// Configuration of a node's supervisor.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The core node configuration (identity, timeouts, windows).
    pub node: NodeConfig,
    /// Transports to enable. Default: QUIC and TCP.
    pub protocols: Vec<Protocol>,
    /// Restart intensity and backoff.
    pub restart: RestartLimits,
    /// Relays to hold a reservation at (failover order) and to dial through. Empty: none.
    pub relays: Vec<RelayEndpoint>,
    /// STUN servers for hole punching: the node learns its UDP socket's public mapping
    /// from them before each attempt. Those the relay advertises are used too.
    pub stun: Vec<SocketAddr>,
    /// WebRTC (used when `protocols` has [`Protocol::WebRtc`]): ICE servers, relay-only
    /// policy, bind addresses. Signaling goes through the relays, so WebRTC needs one.
    pub webrtc: WebRtcConfig,
    /// Path health and switching (probe interval, dead bounds, switch margin; see
    /// `kizuna::peer::manager`).
    pub paths: PathConfig,
    /// Each peer's window of unacknowledged messages (`kizuna::peer::session`).
    pub window: WindowLimits,
}

impl SupervisorConfig {
    /// Defaults for a node with identity `keypair`.
    pub fn new(keypair: kizuna::Keypair) -> Self {
        Self {
            node: NodeConfig::new(keypair),
            protocols: vec![Protocol::Quic, Protocol::Tcp],
            restart: RestartLimits::default(),
            relays: Vec::new(),
            stun: Vec::new(),
            webrtc: WebRtcConfig::default(),
            paths: PathConfig::default(),
            window: WindowLimits::default(),
        }
    }
}

/// Inject a fault into the named child (see [`crate::testing`]). Replies `false` if no
/// child has that name.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct InjectFault {
    /// The child's name, as listed by [`GetChildren`].
    pub child: String,
    /// What to do to it.
    pub fault: Fault,
}

/// List the node's live actors by name (e.g. `listener/tcp=127.0.0.1:4000`,
/// `peer/<id>`, `connection/<peer id>`).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<String>")]
pub struct GetChildren;

enum ChildKind {
    Listener { transport: Arc<dyn Transport>, addr: TransportAddr, stop: Recipient<StopListener> },
    RelayClient { stop: Recipient<StopRelayClient> },
    Peer { peer: PeerId },
}

struct Child {
    name: String,
    kind: ChildKind,
    fault: Recipient<Fault>,
}

struct PeerHandle {
    actor: Addr<PeerActor>,
    link: Arc<PeerLink>,
    child: ChildId,
}

/// The connection manager actor. Start it with [`Supervisor::start`] inside an actix
/// system, then send it the messages of [`crate::api`].
pub struct Supervisor {
    ctx: Arc<PeerCtx>,
    bus: EventBus,
    children: std::collections::HashMap<ChildId, Child>,
    trackers: std::collections::HashMap<String, RestartTracker>,
    peers: std::collections::HashMap<PeerId, PeerHandle>,
    listen_waiters: std::collections::HashMap<ChildId, oneshot::Sender<Result<TransportAddr, NodeError>>>,
    listeners: std::collections::HashMap<ChildId, TransportAddr>,
    shutting_down: bool,
    /// The WebRTC transport, if enabled: offers from peers are answered while its
    /// listener (started with the node) runs.
    webrtc: Option<WebRtcTransport>,
}

impl Supervisor {
    /// Builds the node (identity, TLS material, transports) and starts the supervisor on
    /// the current actix arbiter.
    pub fn start(config: SupervisorConfig) -> Result<Addr<Supervisor>, NodeError> {
        let node = LocalNode::new(config.node)?;
        let built = build_transports(&node, &config.protocols, &config.relays, &config.webrtc)?;
        let tcp = built.all.iter().any(|t| t.protocol() == Protocol::Tcp).then(|| node.clone());
        let punch = PunchCtx::new(built.quic, config.stun, kizuna::nat::interfaces::interface_ips(), tcp);
        let bus = EventBus::default();
        let ctx = PeerCtx::new(
            node,
            built.all,
            config.relays,
            bus.clone(),
            config.restart,
            punch,
            config.paths,
            config.window,
        );
        Ok(Supervisor {
            ctx: Arc::new(ctx),
            bus,
            children: Default::default(),
            trackers: Default::default(),
            peers: Default::default(),
            listen_waiters: Default::default(),
            listeners: Default::default(),
            shutting_down: false,
            webrtc: built.webrtc,
        }
        .start())
    }

    fn node(&self) -> &Arc<LocalNode> {
        &self.ctx.node
    }

    fn transport_for(&self, addr: &TransportAddr) -> Option<Arc<dyn Transport>> {
        self.ctx.transports.iter().filter(|t| t.handles(addr)).max_by_key(|t| t.priority()).cloned()
    }

    fn spawn_relay_client(&mut self, id: ChildId, ctx: &mut Context<Self>) {
        let config = RelayClientConfig::new(self.ctx.relays.clone());
        let me = ctx.address();
        let ports = RelayClientPorts {
            inbound: me.clone().recipient(),
            punch: me.clone().recipient(),
            webrtc: me.clone().recipient(),
            addrs: me.clone().recipient(),
            exited: me.recipient(),
        };
        match RelayClientActor::new(id, self.node().clone(), config, self.bus.clone(), ports) {
            Ok(actor) => {
                let addr = actor.start();
                if let Some(w) = &self.webrtc {
                    w.set_signaler(Arc::new(RelaySignaler(addr.clone().recipient())));
                }
                let kind = ChildKind::RelayClient { stop: addr.clone().recipient() };
                self.children
                    .insert(id, Child { name: "relay-client".into(), kind, fault: addr.recipient() });
            }
            Err(e) => tracing::error!("relay client not started: {e}"),
        }
    }

    fn spawn_listener(
        &mut self,
        id: ChildId,
        transport: Arc<dyn Transport>,
        addr: TransportAddr,
        ctx: &mut Context<Self>,
    ) {
        let me = ctx.address();
        let ports = ListenerPorts {
            ready: me.clone().recipient(),
            inbound: me.clone().recipient(),
            exited: me.recipient(),
        };
        let actor = ListenerActor::new(id, transport.clone(), addr.clone(), ports).start();
        let child = Child {
            name: format!("listener/{addr}"),
            kind: ChildKind::Listener { transport, addr, stop: actor.clone().recipient() },
            fault: actor.recipient(),
        };
        self.children.insert(id, child);
    }

    /// The peer's actor, started if it has none (not yet wanted: a `Connect` says so).
    fn peer_actor(&mut self, peer: PeerId, ctx: &mut Context<Self>) -> Addr<PeerActor> {
        if let Some(h) = self.peers.get(&peer) {
            return h.actor.clone();
        }
        let link = PeerLink::new(peer, random_epoch(), self.ctx.window, self.bus.clone());
        self.start_peer(peer, link, false, ctx)
    }

    fn start_peer(
        &mut self,
        peer: PeerId,
        link: Arc<PeerLink>,
        wanted: bool,
        ctx: &mut Context<Self>,
    ) -> Addr<PeerActor> {
        let id = self.ctx.id();
        let actor =
            PeerActor::new(id, peer, self.ctx.clone(), link.clone(), wanted, ctx.address().recipient())
                .start();
        self.children.insert(
            id,
            Child {
                name: format!("peer/{peer}"),
                kind: ChildKind::Peer { peer },
                fault: actor.clone().recipient(),
            },
        );
        self.peers.insert(peer, PeerHandle { actor: actor.clone(), link, child: id });
        actor
    }

    fn restart_decision(
        &mut self,
        name: &str,
        policy: RestartPolicy,
        reason: &ExitReason,
        wanted: bool,
    ) -> Decision {
        let limits = self.ctx.limits;
        let tracker = self.trackers.entry(name.to_string()).or_insert_with(|| RestartTracker::new(limits));
        let d = tracker.on_exit(Instant::now(), policy, reason, wanted);
        let counters = &self.ctx.counters;
        match &d {
            Decision::Restart { after, attempt } => {
                counters.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(child = name, %reason, attempt, ?after, "restarting");
                self.bus.publish_later(Event::ActorRestarted {
                    child: name.to_string(),
                    attempt: *attempt,
                    after: *after,
                });
            }
            Decision::GiveUp => {
                counters.given_up.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(child = name, %reason, "restart intensity exceeded: giving up");
                self.bus.publish_later(Event::ChildGivenUp {
                    child: name.to_string(),
                    last_error: reason.to_string(),
                });
            }
            Decision::Stop => {}
        }
        d
    }

    /// Every peer actor hears of a network change (they punch again at once).
    fn network_changed(&self) {
        for h in self.peers.values() {
            h.actor.do_send(NetworkChanged);
        }
    }

    fn check_network(&mut self) {
        if self.ctx.punch.set_interfaces(kizuna::nat::interfaces::interface_ips()) {
            self.network_changed();
        }
    }
}

/// A random, nonzero session epoch (`kizuna::peer::session`).
fn random_epoch() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b).max(1)
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Commands queue here; beyond 256 the callers' `send` waits.
        ctx.set_mailbox_capacity(256);
        if !self.ctx.relays.is_empty() {
            let id = self.ctx.id();
            self.spawn_relay_client(id, ctx);
            // Hole punching is possible: watch for network changes (interface events).
            ctx.add_stream(network_watch::network_changes());
        }
        if let Some(w) = self.webrtc.clone() {
            // Answer WebRTC offers (from nodes and browsers) for as long as the node runs.
            let id = self.ctx.id();
            self.spawn_listener(id, Arc::new(w), TransportAddr::WebRtc, ctx);
        }
        tracing::info!(peer = %self.node().peer_id(), "supervisor started");
    }
}

impl actix::StreamHandler<network_watch::NetworkChanged> for Supervisor {
    fn handle(&mut self, _: network_watch::NetworkChanged, _: &mut Context<Self>) {
        self.check_network();
    }
}

impl Handler<Listen> for Supervisor {
    type Result = ResponseFuture<Result<TransportAddr, NodeError>>;
    fn handle(&mut self, msg: Listen, ctx: &mut Context<Self>) -> Self::Result {
        let Some(t) = self.transport_for(&msg.addr) else {
            let p = msg.addr.protocol().to_string();
            return Box::pin(async move { Err(NodeError::NoTransport(p)) });
        };
        if self.shutting_down {
            return Box::pin(async { Err(NodeError::ShuttingDown) });
        }
        let id = self.ctx.id();
        let (tx, rx) = oneshot::channel();
        self.listen_waiters.insert(id, tx);
        self.spawn_listener(id, t, msg.addr, ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(NodeError::ShuttingDown)) })
    }
}

impl Handler<ListenerReady> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ListenerReady, _: &mut Context<Self>) {
        if let Some(Child { kind: ChildKind::Listener { addr, .. }, name, .. }) =
            self.children.get_mut(&msg.id)
        {
            // Restarts re-bind the port actually bound, so tickets stay valid.
            *addr = msg.addr.clone();
            *name = format!("listener/{}", msg.addr);
        }
        self.node().add_listen_addr(msg.addr.clone());
        self.listeners.insert(msg.id, msg.addr.clone());
        self.bus.publish_later(Event::ListenerStarted { addr: msg.addr.clone() });
        if let Some(w) = self.listen_waiters.remove(&msg.id) {
            let _ = w.send(Ok(msg.addr));
        }
    }
}

impl Handler<Inbound> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        match msg.0 {
            Incoming::Connection(conn) => {
                tracing::debug!(peer = %conn.peer(), protocol = %conn.protocol(), "inbound connection");
                if self.shutting_down {
                    kizuna_close(conn);
                    return;
                }
                self.peer_actor(conn.peer(), ctx).do_send(AddPath(conn));
            }
            Incoming::Rejected { remote, error } => {
                tracing::debug!(%remote, %error, "inbound handshake rejected");
                if let kizuna::TransportError::LimitExceeded { limit, .. } = &error {
                    self.bus.publish_later(Event::LimitHit {
                        limit: limit.to_string(),
                        detail: error.to_string(),
                    });
                }
            }
        }
    }
}

fn kizuna_close(conn: kizuna::Connection) {
    crate::runtime::io_runtime()
        .spawn(async move { conn.close(kizuna::wire::CloseCode::Shutdown, "node shutting down").await });
}

impl Handler<Connect> for Supervisor {
    type Result = ResponseFuture<Result<kizuna::ConnectionInfo, NodeError>>;
    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Box::pin(async { Err(NodeError::ShuttingDown) });
        }
        let actor = self.peer_actor(msg.addr.peer_id, ctx);
        Box::pin(async move { actor.send(PeerConnect(msg.addr)).await? })
    }
}

impl Handler<DialPath> for Supervisor {
    type Result = ResponseFuture<Result<kizuna::ConnectionInfo, NodeError>>;
    fn handle(&mut self, msg: DialPath, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Box::pin(async { Err(NodeError::ShuttingDown) });
        }
        let actor = self.peer_actor(msg.addr.peer_id, ctx);
        Box::pin(async move { actor.send(PeerDialPath(msg.addr)).await? })
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let Some(child) = self.children.remove(&msg.id) else { return };
        let reason = msg.reason;
        tracing::debug!(child = %child.name, %reason, "child exited");
        match child.kind {
            ChildKind::Listener { transport, addr, .. } => {
                if let Some(bound) = self.listeners.remove(&msg.id) {
                    self.node().remove_listen_addr(&bound);
                }
                if let Some(w) = self.listen_waiters.remove(&msg.id) {
                    // Failed before it ever bound: a configuration problem, reported to
                    // the caller rather than retried.
                    self.bus.publish_later(Event::ListenerFailed {
                        addr: addr.clone(),
                        error: reason.to_string(),
                    });
                    let _ = w.send(Err(NodeError::ListenFailed {
                        addr: addr.to_string(),
                        reason: reason.to_string(),
                    }));
                    return;
                }
                if self.shutting_down {
                    return;
                }
                self.bus
                    .publish_later(Event::ListenerFailed { addr: addr.clone(), error: reason.to_string() });
                if let Decision::Restart { after, .. } =
                    self.restart_decision(&child.name, RestartPolicy::Permanent, &reason, true)
                {
                    ctx.run_later(after, move |act, ctx| {
                        if !act.shutting_down {
                            act.spawn_listener(msg.id, transport, addr, ctx);
                        }
                    });
                }
            }
            ChildKind::RelayClient { .. } => {
                if self.shutting_down {
                    return;
                }
                if let Decision::Restart { after, .. } =
                    self.restart_decision(&child.name, RestartPolicy::Permanent, &reason, true)
                {
                    ctx.run_later(after, move |act, ctx| {
                        if !act.shutting_down {
                            act.spawn_relay_client(msg.id, ctx);
                        }
                    });
                }
            }
            ChildKind::Peer { peer } => {
                let Some(h) = self.peers.remove(&peer) else { return };
                if h.child != msg.id {
                    self.peers.insert(peer, h);
                    return;
                }
                if reason.is_abnormal() && !self.shutting_down {
                    // The peer's actor failed (its paths closed with it): a new one takes
                    // over the same session, and re-dials.
                    self.bus.publish_later(Event::PeerDisconnected {
                        peer,
                        reason: DisconnectReason::ActorFailed(reason.to_string()),
                    });
                    if let Decision::Restart { after, .. } =
                        self.restart_decision(&child.name, RestartPolicy::Transient, &reason, true)
                    {
                        let link = h.link;
                        ctx.run_later(after, move |act, ctx| {
                            if !act.shutting_down && !act.peers.contains_key(&peer) {
                                act.start_peer(peer, link, true, ctx);
                            }
                        });
                    }
                }
            }
        }
    }
}

impl Handler<RelayAddrs> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: RelayAddrs, _: &mut Context<Self>) {
        if self.ctx.punch.set_relay_addrs(msg) {
            // The public IP changed under a live reservation: a network change.
            tracing::info!("public address changed: retrying hole punches");
            self.network_changed();
        }
    }
}

impl Handler<PunchSignal> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PunchSignal, _: &mut Context<Self>) {
        // Punch messages normally travel on the relayed path itself; one through the relay
        // goes to the peer's actor if there is one.
        match self.peers.get(&msg.peer) {
            Some(h) => h.actor.do_send(msg),
            None => tracing::debug!(peer = %msg.peer, "punch signal for an unknown peer dropped"),
        }
    }
}

impl Handler<WebRtcSignal> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: WebRtcSignal, _: &mut Context<Self>) {
        let Some(w) = &self.webrtc else {
            tracing::debug!(peer = %msg.peer, "WebRTC signal ignored: WebRTC is not enabled");
            return;
        };
        // Refused signals are dropped (a refused offer is answered with a `close`); the
        // node keeps serving.
        if let Err(e) = w.handle_signal_message(msg.peer, msg.message) {
            tracing::debug!(peer = %msg.peer, error = %e, "WebRTC signal refused");
        }
    }
}

impl Handler<SendDatagram> for Supervisor {
    type Result = Result<(), NodeError>;
    fn handle(&mut self, msg: SendDatagram, _: &mut Context<Self>) -> Self::Result {
        match self.peers.get(&msg.peer) {
            Some(h) => h.link.send_datagram(msg.data),
            None => Err(NodeError::NotConnected(msg.peer)),
        }
    }
}

impl Handler<Send> for Supervisor {
    type Result = ResponseFuture<Result<(), NodeError>>;
    fn handle(&mut self, msg: Send, _: &mut Context<Self>) -> Self::Result {
        match self.peers.get(&msg.peer) {
            Some(h) => {
                let link = h.link.clone();
                // Runs on this arbiter but never encrypts here: the frame is handed to the
                // connection's writer task (`send_queued`).
                Box::pin(async move { link.send(msg.data, true).await })
            }
            None => Box::pin(async move { Err(NodeError::NotConnected(msg.peer)) }),
        }
    }
}

impl Handler<OpenStream> for Supervisor {
    type Result = ResponseFuture<Result<kizuna::ByteStream, NodeError>>;
    fn handle(&mut self, msg: OpenStream, _: &mut Context<Self>) -> Self::Result {
        match self.peers.get(&msg.peer) {
            Some(h) => {
                let link = h.link.clone();
                Box::pin(async move { link.open_stream().await })
            }
            None => Box::pin(async move { Err(NodeError::NotConnected(msg.peer)) }),
        }
    }
}

impl Handler<GetSender> for Supervisor {
    type Result = Result<PeerSender, NodeError>;
    fn handle(&mut self, msg: GetSender, _: &mut Context<Self>) -> Self::Result {
        match self.peers.get(&msg.peer) {
            Some(h) if h.link.carrier().is_some() => Ok(PeerSender { link: h.link.clone() }),
            _ => Err(NodeError::NotConnected(msg.peer)),
        }
    }
}

impl Handler<Disconnect> for Supervisor {
    type Result = ResponseFuture<Result<(), NodeError>>;
    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) -> Self::Result {
        match self.peers.get(&msg.peer) {
            Some(h) if h.link.carrier().is_some() => {
                let actor = h.actor.clone();
                Box::pin(async move {
                    actor.send(PeerDisconnect).await?;
                    Ok(())
                })
            }
            Some(h) => {
                let actor = h.actor.clone();
                Box::pin(async move {
                    let _ = actor.send(PeerDisconnect).await;
                    Err(NodeError::NotConnected(msg.peer))
                })
            }
            None => Box::pin(async move { Err(NodeError::NotConnected(msg.peer)) }),
        }
    }
}

impl Handler<Subscribe> for Supervisor {
    type Result = MessageResult<Subscribe>;
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.bus.subscribe(msg.capacity))
    }
}

impl Handler<GetStats> for Supervisor {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.ctx.counters;
        let mut s = NodeStats {
            restarts: c.restarts.load(Relaxed),
            given_up: c.given_up.load(Relaxed),
            connections_established: c.connections_established.load(Relaxed),
            connects_failed: c.connects_failed.load(Relaxed),
            path_changes: c.path_changes.load(Relaxed),
            listeners: self.listeners.values().cloned().collect(),
            handshakes: self.node().handshake_stats(),
            dials: dial_stats(&self.ctx.dials),
            ..NodeStats::default()
        };
        for h in self.peers.values() {
            let st = h.link.status();
            s.connections.extend(st.active);
            s.paths.extend(st.paths);
        }
        MessageResult(s)
    }
}

impl Handler<GetAddress> for Supervisor {
    type Result = MessageResult<GetAddress>;
    fn handle(&mut self, _: GetAddress, _: &mut Context<Self>) -> Self::Result {
        let mut addrs: Vec<TransportAddr> = self.listeners.values().map(dialable).collect();
        addrs.extend(self.ctx.relays.iter().map(|r| TransportAddr::Relay(r.url.clone())));
        addrs.sort_by_key(|a| std::cmp::Reverse(self.transport_for(a).map(|t| t.priority()).unwrap_or(0)));
        MessageResult(PeerAddress::new(self.node().peer_id(), addrs))
    }
}

/// A listen address as others can dial it: an unspecified IP becomes loopback.
fn dialable(a: &TransportAddr) -> TransportAddr {
    let fix = |s: std::net::SocketAddr| {
        let mut s = s;
        if s.ip().is_unspecified() {
            s.set_ip(if s.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        s
    };
    match a {
        TransportAddr::Tcp(s) => TransportAddr::Tcp(fix(*s)),
        TransportAddr::Quic(s) => TransportAddr::Quic(fix(*s)),
        other => other.clone(),
    }
}

impl Handler<InjectFault> for Supervisor {
    type Result = ResponseFuture<bool>;
    fn handle(&mut self, msg: InjectFault, _: &mut Context<Self>) -> Self::Result {
        if let Some(c) = self.children.values().find(|c| c.name == msg.child) {
            c.fault.do_send(msg.fault);
            return Box::pin(async { true });
        }
        // A peer's child (`connection/<peer>`, `negotiator/<peer>`, `hole-punch/<peer>`).
        let peer = msg.child.split_once('/').and_then(|(_, id)| id.parse::<PeerId>().ok());
        match peer.and_then(|p| self.peers.get(&p)) {
            Some(h) => {
                let actor = h.actor.clone();
                Box::pin(async move {
                    actor.send(InjectPeerFault { child: msg.child, fault: msg.fault }).await.unwrap_or(false)
                })
            }
            None => Box::pin(async { false }),
        }
    }
}

impl Handler<GetChildren> for Supervisor {
    type Result = ResponseFuture<Vec<String>>;
    fn handle(&mut self, _: GetChildren, _: &mut Context<Self>) -> Self::Result {
        let mut names: Vec<String> = self.children.values().map(|c| c.name.clone()).collect();
        let asks: Vec<_> = self.peers.values().map(|h| h.actor.send(GetPeerChildren)).collect();
        Box::pin(async move {
            for a in asks {
                names.extend(a.await.unwrap_or_default());
            }
            names
        })
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        for child in self.children.values() {
            match &child.kind {
                ChildKind::Listener { stop, .. } => stop.do_send(StopListener),
                ChildKind::RelayClient { stop } => stop.do_send(StopRelayClient),
                ChildKind::Peer { .. } => {}
            }
        }
        let closes: Vec<_> = self.peers.values().map(|h| h.actor.send(PeerShutdown)).collect();
        Box::pin(
            async move {
                for c in closes {
                    let _ = c.await;
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| {
                tracing::info!("supervisor shut down");
                ctx.stop();
            }),
        )
    }
}
