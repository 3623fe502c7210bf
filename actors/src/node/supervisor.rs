//! The [`Supervisor`]: a node's connection manager and the root of its supervision tree.
//!
//! ```text
//! Supervisor ─┬─ ListenerActor     (permanent: one per listen address)
//!             ├─ NegotiatorActor   (never restarted: one per outbound connect)
//!             ├─ ConnectionActor   (transient: one per live connection)
//!             └─ HolePunchActor    (never restarted: one per punch attempt and peer)
//! ```
//!
//! Hole punching is automatic: adopting a relayed connection this node dialed starts a
//! [`HolePunchActor`] as initiator (when the node has a QUIC socket and relays); a punch
//! `offer` from a peer connected through a relay starts one as responder. A direct QUIC
//! connection that results is adopted like any other, which upgrades the path
//! (`PathUpgraded`); a failure is reported as [`Event::HolePunchFailed`] and the initiator
//! tries again after [`PUNCH_RETRY`].
//!
//! It keeps the registry (listeners, connections per peer, pending connects, wanted peers),
//! answers the commands of [`crate::api`], routes messages to connection actors, and
//! restarts children per [`RestartPolicy`] with backoff and an intensity limit, emitting
//! [`Event::ActorRestarted`] and [`Event::ChildGivenUp`]. Children report exits through an
//! exit guard that fires even on panic, so one child's failure never takes the node down.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, MessageResult,
    Recipient, ResponseActFuture, ResponseFuture, StreamHandler, WrapFuture,
};
use kizuna::{
    negotiate::{resolve_duplicate, retire, Candidate, Keep, Retire},
    punch::{PunchDecodeError, PunchMessage, Role},
    relay::client::{RelayClientConfig, RelayEndpoint},
    transport::{
        quic::{demux::SideChannel, QuicTransport},
        webrtc::{WebRtcConfig, WebRtcTransport},
    },
    wire::CloseCode,
    Connection, ConnectionInfo, Incoming, LocalNode, NodeConfig, PathKind, PeerAddress, PeerId, Protocol,
    Transport, TransportAddr,
};
use tokio::sync::oneshot;

use crate::{
    api::*,
    node::child::{ChildExited, ChildId, Fault},
    node::connection::{CloseConnection, ConnectionActor, OpenStreamTo, SendMessage},
    node::early_signals::EarlySignals,
    node::events::EventBus,
    node::hole_punch::{HolePunchActor, PunchEnv, PunchFinished, PunchPorts, PunchSignal, SendSignal},
    node::listener::{Inbound, ListenerActor, ListenerPorts, ListenerReady, StopListener},
    node::negotiator::{Negotiated, NegotiatorActor},
    node::network_watch::{network_changes, NetworkChanged},
    node::relay_client::{RelayAddrs, RelayClientActor, RelayClientPorts, StopRelayClient},
    node::side_reader::{spawn_side_reader, PunchInboxes},
    node::supervision::{Decision, ExitReason, RestartLimits, RestartPolicy, RestartTracker},
    node::transports::build_transports,
    node::webrtc_signal::{RelaySignaler, WebRtcSignal},
    runtime::io_runtime,
};

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

/// List the supervisor's live children by name (e.g. `listener/tcp=127.0.0.1:4000`,
/// `connection/<peer id>`).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<String>")]
pub struct GetChildren;

enum ChildKind {
    Listener { transport: Arc<dyn Transport>, addr: TransportAddr, stop: Recipient<StopListener> },
    Connection { peer: PeerId },
    Negotiator { peer: PeerId },
    RelayClient { stop: Recipient<StopRelayClient> },
    HolePunch { peer: PeerId },
}

struct Child {
    name: String,
    kind: ChildKind,
    fault: Recipient<Fault>,
}

struct PeerEntry {
    conn: Connection,
    actor: Addr<ConnectionActor>,
    child: ChildId,
    established: Instant,
}

type Waiter = oneshot::Sender<Result<ConnectionInfo, NodeError>>;

/// How long a relayed connection replaced by a direct one that the peer dialed stays open
/// for the peer to retire it. 10 s: the peer adopts its dial within one negotiation, far
/// below this; past it the peer evidently will not close it, so this node does.
const RETIRE_GRACE: Duration = Duration::from_secs(10);

/// How long the node that dialed an upgrade's direct path waits before closing the
/// relayed one (`Retire::Shortly`). 2 s: the peer adopts the direct path within
/// milliseconds of this node's dial completing; the margin covers a loaded machine.
const UPGRADE_CLOSE_DELAY: Duration = Duration::from_secs(2);

/// How long after a failed hole-punch attempt the initiator tries again (while the
/// connection is still relayed). 60 s: NAT state and mappings may have changed by then,
/// and an impossible pair costs one short burst of probes per minute.
pub const PUNCH_RETRY: Duration = Duration::from_secs(60);

/// The connection manager actor. Start it with [`Supervisor::start`] inside an actix
/// system, then send it the messages of [`crate::api`].
pub struct Supervisor {
    node: Arc<LocalNode>,
    transports: Vec<Arc<dyn Transport>>,
    limits: RestartLimits,
    bus: EventBus,
    next_id: ChildId,
    children: HashMap<ChildId, Child>,
    trackers: HashMap<String, RestartTracker>,
    peers: HashMap<PeerId, PeerEntry>,
    wanted: HashMap<PeerId, PeerAddress>,
    pending: HashMap<PeerId, Vec<Waiter>>,
    listen_waiters: HashMap<ChildId, oneshot::Sender<Result<TransportAddr, NodeError>>>,
    listeners: HashMap<ChildId, TransportAddr>,
    stats: NodeStats,
    shutting_down: bool,
    relays: Vec<RelayEndpoint>,
    /// Hole punching: the QUIC transport, the relay client's signaling port, the live
    /// punch actors per peer, their datagram inboxes, the side channel being read, and
    /// punch signals that arrived before their relayed connection.
    quic: Option<Arc<QuicTransport>>,
    relay_signal: Option<Recipient<SendSignal>>,
    punches: HashMap<PeerId, (ChildId, Addr<HolePunchActor>)>,
    punch_inboxes: PunchInboxes,
    punch_reader: Option<Arc<SideChannel>>,
    early_signals: EarlySignals<Result<PunchMessage, PunchDecodeError>>,
    /// Sources of local punch candidates: configured STUN servers, what the relay
    /// reported, the interface addresses last seen.
    stun: Vec<SocketAddr>,
    relay_addrs: RelayAddrs,
    interfaces: Vec<IpAddr>,
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
        let (transports, quic, webrtc) = (built.all, built.quic, built.webrtc);
        Ok(Supervisor {
            node,
            transports,
            limits: config.restart,
            bus: EventBus::default(),
            next_id: 1,
            children: HashMap::new(),
            trackers: HashMap::new(),
            peers: HashMap::new(),
            wanted: HashMap::new(),
            pending: HashMap::new(),
            listen_waiters: HashMap::new(),
            listeners: HashMap::new(),
            stats: NodeStats::default(),
            shutting_down: false,
            relays: config.relays,
            quic,
            relay_signal: None,
            punches: HashMap::new(),
            punch_inboxes: PunchInboxes::default(),
            punch_reader: None,
            early_signals: EarlySignals::default(),
            stun: config.stun,
            relay_addrs: RelayAddrs { observed: None, stun: Vec::new() },
            interfaces: kizuna::nat::interfaces::interface_ips(),
            webrtc,
        }
        .start())
    }

    fn id(&mut self) -> ChildId {
        self.next_id += 1;
        self.next_id
    }

    fn transport_for(&self, addr: &TransportAddr) -> Option<Arc<dyn Transport>> {
        self.transports.iter().filter(|t| t.handles(addr)).max_by_key(|t| t.priority()).cloned()
    }

    fn spawn_relay_client(&mut self, id: ChildId, ctx: &mut Context<Self>) {
        let config = RelayClientConfig::new(self.relays.clone());
        let me = ctx.address();
        let ports = RelayClientPorts {
            inbound: me.clone().recipient(),
            punch: me.clone().recipient(),
            webrtc: me.clone().recipient(),
            addrs: me.clone().recipient(),
            exited: me.recipient(),
        };
        match RelayClientActor::new(id, self.node.clone(), config, self.bus.clone(), ports) {
            Ok(actor) => {
                let addr = actor.start();
                self.relay_signal = Some(addr.clone().recipient());
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

    fn spawn_negotiator(&mut self, peer: PeerAddress, ctx: &mut Context<Self>) {
        let id = self.id();
        let me = ctx.address();
        let pid = peer.peer_id;
        let timeout = self.node.config().connect_timeout;
        let actor = NegotiatorActor::new(
            id,
            peer,
            self.transports.clone(),
            timeout,
            me.clone().recipient(),
            me.recipient(),
        )
        .start();
        self.children.insert(
            id,
            Child {
                name: format!("negotiator/{pid}"),
                kind: ChildKind::Negotiator { peer: pid },
                fault: actor.recipient(),
            },
        );
    }

    /// Adopts a new connection, tie-breaking against an existing one to the same peer.
    /// Returns the info of the connection that survives.
    fn adopt(&mut self, conn: Connection, ctx: &mut Context<Self>) -> ConnectionInfo {
        let peer = conn.peer();
        if self.shutting_down {
            let info = conn.info();
            io_runtime().spawn(async move { conn.close(CloseCode::Shutdown, "node shutting down").await });
            return info;
        }
        let mut announce = true;
        if let Some(existing) = self.peers.get(&peer) {
            let old_side = Candidate {
                dialed_locally: existing.conn.is_dialer(),
                age: existing.established.elapsed(),
                path: existing.conn.info().path,
            };
            let new_side =
                Candidate { dialed_locally: conn.is_dialer(), age: Duration::ZERO, path: conn.info().path };
            match resolve_duplicate(self.node.peer_id(), peer, old_side, new_side) {
                Keep::Existing => {
                    tracing::debug!(%peer, "duplicate connection: keeping the existing one");
                    io_runtime()
                        .spawn(async move { conn.close(CloseCode::Replaced, "duplicate connection").await });
                    return existing.conn.info();
                }
                Keep::New => {
                    if let Some(old) = self.peers.remove(&peer) {
                        self.children.remove(&old.child);
                        let (from, to) = (old.conn.info(), conn.info());
                        let upgrade = from.path == PathKind::Relayed && to.path == PathKind::Direct;
                        let close = CloseConnection { code: CloseCode::Replaced, reason: "replaced".into() };
                        match retire(old_side, new_side) {
                            Retire::ByPeer => {
                                let actor = old.actor.clone();
                                ctx.run_later(RETIRE_GRACE, move |_, _| actor.do_send(close));
                            }
                            Retire::Shortly => {
                                let actor = old.actor.clone();
                                ctx.run_later(UPGRADE_CLOSE_DELAY, move |_, _| actor.do_send(close));
                            }
                            Retire::Now => old.actor.do_send(close),
                        }
                        if upgrade {
                            tracing::info!(%peer, protocol = %to.protocol, "path upgraded: relayed -> direct");
                            self.bus.publish_later(Event::PathUpgraded {
                                peer,
                                from: Box::new(from),
                                to: Box::new(to),
                            });
                            announce = false;
                        } else {
                            tracing::debug!(%peer, "duplicate connection: replacing the existing one");
                            self.bus.publish_later(Event::PeerDisconnected {
                                peer,
                                reason: DisconnectReason::Replaced,
                            });
                        }
                    }
                }
            }
        }
        let id = self.id();
        let actor =
            ConnectionActor::new(id, conn.clone(), self.bus.clone(), ctx.address().recipient(), announce)
                .start();
        self.children.insert(
            id,
            Child {
                name: format!("connection/{peer}"),
                kind: ChildKind::Connection { peer },
                fault: actor.clone().recipient(),
            },
        );
        let info = conn.info();
        let dialer = conn.is_dialer();
        self.peers.insert(peer, PeerEntry { conn, actor, child: id, established: Instant::now() });
        self.stats.connections_established += 1;
        if info.path == PathKind::Relayed {
            if dialer {
                self.start_punch(peer, Role::Initiator, ctx);
            } else {
                for message in self.early_signals.take(&peer, Instant::now()) {
                    self.on_punch_signal(PunchSignal { peer, message }, ctx);
                }
            }
        }
        info
    }

    /// Starts a hole-punch attempt with `peer` unless one runs already, the connection to
    /// it is not (or no longer) relayed, or this node cannot punch (no QUIC socket, no
    /// relay to signal through).
    fn start_punch(&mut self, peer: PeerId, role: Role, ctx: &mut Context<Self>) -> bool {
        let relayed = self.peers.get(&peer).is_some_and(|e| e.conn.info().path == PathKind::Relayed);
        if self.shutting_down || !relayed || self.punches.contains_key(&peer) {
            return false;
        }
        let (Some(quic), Some(signal)) = (self.quic.clone(), self.relay_signal.clone()) else { return false };
        let side = match quic.side_channel_or_bind() {
            Ok(side) => side,
            Err(e) => {
                tracing::warn!(%peer, "no hole punching: cannot open a QUIC socket: {e}");
                return false;
            }
        };
        if !self.punch_reader.as_ref().is_some_and(|r| Arc::ptr_eq(r, &side)) {
            spawn_side_reader(side.clone(), Arc::downgrade(&self.punch_inboxes));
            self.punch_reader = Some(side.clone());
        }
        let id = self.id();
        let me = ctx.address();
        let ports = PunchPorts {
            signal,
            finished: me.clone().recipient(),
            exited: me.clone().recipient(),
            inbound: me.recipient(),
            datagrams: self.punch_inboxes.clone(),
        };
        let actor = HolePunchActor::new(id, peer, role, self.punch_env(), quic, side, ports).start();
        self.punches.insert(peer, (id, actor.clone()));
        self.children.insert(
            id,
            Child {
                name: format!("hole-punch/{peer}"),
                kind: ChildKind::HolePunch { peer },
                fault: actor.recipient(),
            },
        );
        tracing::debug!(%peer, ?role, "hole punch started");
        true
    }

    /// What a punch attempt starting now may use for its local candidates.
    fn punch_env(&self) -> PunchEnv {
        let mut stun = self.stun.clone();
        for s in &self.relay_addrs.stun {
            if !stun.contains(s) {
                stun.push(*s);
            }
        }
        PunchEnv {
            stun,
            interfaces: self.interfaces.clone(),
            relay_observed: self.relay_addrs.observed.map(|a| a.ip()),
            tcp: self.transports.iter().any(|t| t.protocol() == Protocol::Tcp).then(|| self.node.clone()),
        }
    }

    /// Looks at the interface addresses (when the interface watcher says they may have
    /// changed); when they did (a network change: new Wi-Fi, VPN up, DHCP renewal), every
    /// relayed connection this node dialed tries to punch again at once instead of
    /// waiting for [`PUNCH_RETRY`].
    fn check_network(&mut self, ctx: &mut Context<Self>) {
        let now = kizuna::nat::interfaces::interface_ips();
        if now == self.interfaces {
            return;
        }
        tracing::info!(before = ?self.interfaces, after = ?now, "network changed: retrying hole punches");
        self.interfaces = now;
        self.retry_punches(ctx);
    }

    /// Starts an attempt for every relayed connection this node dialed that has none.
    fn retry_punches(&mut self, ctx: &mut Context<Self>) {
        let relayed: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| e.conn.is_dialer() && e.conn.info().path == PathKind::Relayed)
            .map(|(p, _)| *p)
            .collect();
        for peer in relayed {
            self.start_punch(peer, Role::Initiator, ctx);
        }
    }

    /// Routes a punch message from `peer` to its session; an `offer` on a relayed
    /// connection starts the responder's session.
    fn on_punch_signal(&mut self, msg: PunchSignal, ctx: &mut Context<Self>) {
        let peer = msg.peer;
        if !self.punches.contains_key(&peer) {
            let offer = matches!(msg.message, Ok(PunchMessage::Offer { .. }));
            if !self.peers.contains_key(&peer) {
                // The offerer adopted the relayed connection before this node did: keep its
                // offer and what follows it (the `ping` sent right behind it, which is never
                // repeated) for when this node adopts the connection.
                self.early_signals.keep(peer, msg.message, offer, Instant::now());
                return;
            }
            if !offer {
                return;
            }
            if !self.start_punch(peer, Role::Responder, ctx) {
                return;
            }
        }
        if let Some((_, actor)) = self.punches.get(&peer) {
            if actor.try_send(msg).is_err() {
                tracing::debug!(%peer, "punch signal dropped: session busy or ended");
            }
        }
    }

    /// A hole-punch attempt failed: report it; the side that dialed the relayed
    /// connection tries again later.
    fn punch_failed(&mut self, peer: PeerId, reason: String, ctx: &mut Context<Self>) {
        tracing::info!(%peer, %reason, "hole punch failed; the connection stays relayed");
        self.bus.publish_later(Event::HolePunchFailed { peer, reason });
        ctx.run_later(PUNCH_RETRY, move |act, ctx| {
            if act.peers.get(&peer).is_some_and(|e| e.conn.is_dialer()) {
                act.start_punch(peer, Role::Initiator, ctx);
            }
        });
    }

    fn restart_decision(
        &mut self,
        name: &str,
        policy: RestartPolicy,
        reason: &ExitReason,
        wanted: bool,
    ) -> Decision {
        let limits = self.limits;
        let tracker = self.trackers.entry(name.to_string()).or_insert_with(|| RestartTracker::new(limits));
        let d = tracker.on_exit(Instant::now(), policy, reason, wanted);
        match &d {
            Decision::Restart { after, attempt } => {
                self.stats.restarts += 1;
                tracing::info!(child = name, %reason, attempt, ?after, "restarting");
                self.bus.publish_later(Event::ActorRestarted {
                    child: name.to_string(),
                    attempt: *attempt,
                    after: *after,
                });
            }
            Decision::GiveUp => {
                self.stats.given_up += 1;
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

    fn connection_failed(&mut self, peer: PeerId, reason: ExitReason, ctx: &mut Context<Self>) {
        let wanted = self.wanted.contains_key(&peer) && !self.shutting_down;
        let name = format!("connection/{peer}");
        match self.restart_decision(&name, RestartPolicy::Transient, &reason, wanted) {
            Decision::Restart { after, .. } => {
                ctx.run_later(after, move |act, ctx| {
                    if act.peers.contains_key(&peer) || act.pending.contains_key(&peer) || act.shutting_down {
                        return;
                    }
                    if let Some(addr) = act.wanted.get(&peer).cloned() {
                        act.pending.insert(peer, Vec::new());
                        act.spawn_negotiator(addr, ctx);
                    }
                });
            }
            Decision::GiveUp => {
                self.wanted.remove(&peer);
            }
            Decision::Stop => {}
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Commands queue here; beyond 256 the callers' `send` waits.
        ctx.set_mailbox_capacity(256);
        if !self.relays.is_empty() {
            let id = self.id();
            self.spawn_relay_client(id, ctx);
            // Hole punching is possible: watch for network changes (interface events).
            ctx.add_stream(network_changes());
        }
        if let Some(w) = self.webrtc.clone() {
            // Answer WebRTC offers (from nodes and browsers) for as long as the node runs.
            let id = self.id();
            self.spawn_listener(id, Arc::new(w), TransportAddr::WebRtc, ctx);
        }
        tracing::info!(peer = %self.node.peer_id(), "supervisor started");
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
        let id = self.id();
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
        self.node.add_listen_addr(msg.addr.clone());
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
                self.adopt(conn, ctx);
            }
            Incoming::Rejected { remote, error } => {
                tracing::warn!(%remote, %error, "inbound handshake rejected");
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

impl Handler<Connect> for Supervisor {
    type Result = ResponseFuture<Result<ConnectionInfo, NodeError>>;
    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Box::pin(async { Err(NodeError::ShuttingDown) });
        }
        let peer = msg.addr.peer_id;
        let mut addr = msg.addr;
        // The configured relays are the last resort for every peer (and the only route
        // to a peer known by its id alone).
        for r in &self.relays {
            let route = TransportAddr::Relay(r.url.clone());
            if !addr.addrs.contains(&route) {
                addr.addrs.push(route);
            }
        }
        let msg = Connect { addr };
        self.wanted.insert(peer, msg.addr.clone());
        let mut target = msg.addr;
        if let Some(e) = self.peers.get(&peer) {
            let info = e.conn.info();
            let direct: Vec<_> =
                target.addrs.iter().filter(|a| !matches!(a, TransportAddr::Relay(_))).cloned().collect();
            if info.path == PathKind::Direct || direct.is_empty() {
                return Box::pin(async move { Ok(info) });
            }
            // Connected through a relay, and direct addresses are known: try them. A
            // direct connection replaces the relayed one (the upgrade hook, see `adopt`);
            // if none works, the relayed connection stays and is the answer.
            target = PeerAddress::new(peer, direct);
        }
        let (tx, rx) = oneshot::channel();
        match self.pending.get_mut(&peer) {
            Some(waiters) => waiters.push(tx),
            None => {
                self.pending.insert(peer, vec![tx]);
                self.spawn_negotiator(target, ctx);
            }
        }
        Box::pin(async move { rx.await.unwrap_or(Err(NodeError::ShuttingDown)) })
    }
}

impl Handler<Negotiated> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Negotiated, ctx: &mut Context<Self>) {
        let waiters = self.pending.remove(&msg.peer).unwrap_or_default();
        let reconnect = waiters.is_empty();
        let reply: Result<ConnectionInfo, NodeError> = match msg.result {
            Ok(conn) => Ok(self.adopt(conn, ctx)),
            Err(e) => {
                self.stats.connects_failed += 1;
                self.bus.publish_later(Event::ConnectFailed { peer: msg.peer, error: e.to_string() });
                if reconnect {
                    self.connection_failed(msg.peer, ExitReason::Failed(e.to_string()), ctx);
                } else if !self.peers.contains_key(&msg.peer) {
                    self.wanted.remove(&msg.peer);
                }
                // An inbound connection may have arrived meanwhile.
                match self.peers.get(&msg.peer) {
                    Some(entry) => Ok(entry.conn.info()),
                    None => Err(e),
                }
            }
        };
        for w in waiters {
            let _ = w.send(reply.clone());
        }
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
                    self.node.remove_listen_addr(&bound);
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
                match self.restart_decision(&child.name, RestartPolicy::Permanent, &reason, true) {
                    Decision::Restart { after, .. } => {
                        ctx.run_later(after, move |act, ctx| {
                            if !act.shutting_down {
                                act.spawn_listener(msg.id, transport, addr, ctx);
                            }
                        });
                    }
                    Decision::GiveUp | Decision::Stop => {}
                }
            }
            ChildKind::Connection { peer } => {
                let Some(entry) = self.peers.remove(&peer) else { return };
                if entry.child != msg.id {
                    self.peers.insert(peer, entry);
                    return;
                }
                let conn = entry.conn;
                io_runtime()
                    .spawn(async move { conn.close(CloseCode::Normal, "connection actor exited").await });
                let why = match &reason {
                    ExitReason::Normal if self.shutting_down => DisconnectReason::Local,
                    ExitReason::Normal => DisconnectReason::Remote("closed".into()),
                    ExitReason::Failed(e) => DisconnectReason::Failed(e.clone()),
                    other => DisconnectReason::ActorFailed(other.to_string()),
                };
                self.bus.publish_later(Event::PeerDisconnected { peer, reason: why });
                self.connection_failed(peer, reason, ctx);
            }
            ChildKind::RelayClient { .. } => {
                if self.shutting_down {
                    return;
                }
                match self.restart_decision(&child.name, RestartPolicy::Permanent, &reason, true) {
                    Decision::Restart { after, .. } => {
                        ctx.run_later(after, move |act, ctx| {
                            if !act.shutting_down {
                                act.spawn_relay_client(msg.id, ctx);
                            }
                        });
                    }
                    Decision::GiveUp | Decision::Stop => {}
                }
            }
            ChildKind::HolePunch { peer } => {
                if self.punches.get(&peer).is_some_and(|(id, _)| *id == msg.id) {
                    self.punches.remove(&peer);
                }
                if reason.is_abnormal() && !self.shutting_down {
                    self.punch_failed(peer, format!("hole-punch actor {reason}"), ctx);
                }
            }
            ChildKind::Negotiator { peer } => {
                if reason.is_abnormal() {
                    // It died without reporting: fail whoever waits for it.
                    for w in self.pending.remove(&peer).unwrap_or_default() {
                        let _ = w.send(Err(NodeError::ActorGone(format!("negotiator {reason}"))));
                    }
                }
            }
        }
    }
}

impl Handler<RelayAddrs> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: RelayAddrs, ctx: &mut Context<Self>) {
        let moved =
            self.relay_addrs.observed.is_some_and(|old| msg.observed.is_some_and(|new| new.ip() != old.ip()));
        self.relay_addrs = msg;
        if moved {
            // The public IP changed under a live reservation: a network change.
            tracing::info!(observed = ?self.relay_addrs.observed, "public address changed: retrying hole punches");
            self.retry_punches(ctx);
        }
    }
}

impl StreamHandler<NetworkChanged> for Supervisor {
    fn handle(&mut self, _: NetworkChanged, ctx: &mut Context<Self>) {
        self.check_network(ctx);
    }

    /// The stream never ends; should it, the supervisor goes on (the default stops it).
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<PunchSignal> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PunchSignal, ctx: &mut Context<Self>) {
        self.on_punch_signal(msg, ctx);
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
            Some(e) => e.conn.send_datagram(msg.data).map_err(NodeError::from),
            None => Err(NodeError::NotConnected(msg.peer)),
        }
    }
}

impl Handler<PunchFinished> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PunchFinished, ctx: &mut Context<Self>) {
        if self.punches.get(&msg.peer).is_some_and(|(id, _)| *id == msg.id) {
            self.punches.remove(&msg.peer);
        }
        match msg.result {
            // Direct beats relayed: adopting it upgrades the path (`PathUpgraded`).
            Ok(Some(conn)) => {
                self.adopt(conn, ctx);
            }
            Ok(None) => {}
            Err(reason) if !self.shutting_down => self.punch_failed(msg.peer, reason, ctx),
            Err(_) => {}
        }
    }
}

impl Handler<Send> for Supervisor {
    type Result = ResponseFuture<Result<(), NodeError>>;
    fn handle(&mut self, msg: Send, _: &mut Context<Self>) -> Self::Result {
        match self.peers.get(&msg.peer) {
            Some(e) => {
                let actor = e.actor.clone();
                Box::pin(async move { actor.send(SendMessage(msg.data)).await? })
            }
            None => Box::pin(async move { Err(NodeError::NotConnected(msg.peer)) }),
        }
    }
}

impl Handler<OpenStream> for Supervisor {
    type Result = ResponseFuture<Result<kizuna::ByteStream, NodeError>>;
    fn handle(&mut self, msg: OpenStream, _: &mut Context<Self>) -> Self::Result {
        match self.peers.get(&msg.peer) {
            Some(e) => {
                let actor = e.actor.clone();
                Box::pin(async move { actor.send(OpenStreamTo).await? })
            }
            None => Box::pin(async move { Err(NodeError::NotConnected(msg.peer)) }),
        }
    }
}

impl Handler<GetSender> for Supervisor {
    type Result = Result<PeerSender, NodeError>;
    fn handle(&mut self, msg: GetSender, _: &mut Context<Self>) -> Self::Result {
        self.peers
            .get(&msg.peer)
            .map(|e| PeerSender { conn: e.conn.clone() })
            .ok_or(NodeError::NotConnected(msg.peer))
    }
}

impl Handler<Disconnect> for Supervisor {
    type Result = ResponseFuture<Result<(), NodeError>>;
    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) -> Self::Result {
        self.wanted.remove(&msg.peer);
        match self.peers.get(&msg.peer) {
            Some(e) => {
                let actor = e.actor.clone();
                Box::pin(async move {
                    actor
                        .send(CloseConnection { code: CloseCode::Normal, reason: "disconnect".into() })
                        .await?;
                    Ok(())
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
        let mut s = self.stats.clone();
        s.connections = self.peers.values().map(|e| e.conn.info()).collect();
        s.listeners = self.listeners.values().cloned().collect();
        s.handshakes = self.node.handshake_stats();
        MessageResult(s)
    }
}

impl Handler<GetAddress> for Supervisor {
    type Result = MessageResult<GetAddress>;
    fn handle(&mut self, _: GetAddress, _: &mut Context<Self>) -> Self::Result {
        let mut addrs: Vec<TransportAddr> = self.listeners.values().map(dialable).collect();
        addrs.extend(self.relays.iter().map(|r| TransportAddr::Relay(r.url.clone())));
        addrs.sort_by_key(|a| std::cmp::Reverse(self.transport_for(a).map(|t| t.priority()).unwrap_or(0)));
        MessageResult(PeerAddress::new(self.node.peer_id(), addrs))
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
    type Result = bool;
    fn handle(&mut self, msg: InjectFault, _: &mut Context<Self>) -> bool {
        match self.children.values().find(|c| c.name == msg.child) {
            Some(c) => {
                c.fault.do_send(msg.fault);
                true
            }
            None => false,
        }
    }
}

impl Handler<GetChildren> for Supervisor {
    type Result = MessageResult<GetChildren>;
    fn handle(&mut self, _: GetChildren, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.children.values().map(|c| c.name.clone()).collect())
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        self.wanted.clear();
        for child in self.children.values() {
            match &child.kind {
                ChildKind::Listener { stop, .. } => stop.do_send(StopListener),
                ChildKind::RelayClient { stop } => stop.do_send(StopRelayClient),
                _ => {}
            }
        }
        let closes: Vec<_> = self
            .peers
            .values()
            .map(|e| {
                e.actor
                    .send(CloseConnection { code: CloseCode::Shutdown, reason: "node shutting down".into() })
            })
            .collect();
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
