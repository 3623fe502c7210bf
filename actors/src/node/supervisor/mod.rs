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
        link::{random_epoch, PeerLink},
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
        webrtc_signal::{Links, NodeSignaler, RelayRoute, WebRtcSignal},
    },
};

pub use kizuna::peer::manager::PUNCH_RETRY;

mod children;
mod commands;
mod config;
mod faults;

pub use config::SupervisorConfig;
pub use faults::{GetChildren, InjectFault};

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
    /// Every peer's link, for WebRTC signaling over the peer's paths.
    links: Links,
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
        let ctx = PeerCtx {
            node,
            transports: built.all,
            relays: config.relays,
            bus: bus.clone(),
            limits: config.restart,
            counters: Arc::default(),
            punch,
            paths: config.paths,
            window: config.window,
            carry: config.carry,
            webrtc: built.webrtc.clone(),
            dials: Default::default(),
            next_id: std::sync::atomic::AtomicU64::new(1),
        };
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
            links: Links::default(),
        }
        .start())
    }

    fn node(&self) -> &Arc<LocalNode> {
        &self.ctx.node
    }

    /// The link of `peer`, if it has an actor.
    fn link(&self, peer: &PeerId) -> Result<Arc<PeerLink>, NodeError> {
        self.links.get(peer).map(|l| l.clone()).ok_or(NodeError::NotConnected(*peer))
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
                let actor_reserved = actor.reserved();
                let addr = actor.start();
                let relay = RelayRoute { send: addr.clone().recipient(), reserved: actor_reserved };
                self.set_signaler(Some(relay));
                let kind = ChildKind::RelayClient { stop: addr.clone().recipient() };
                self.children
                    .insert(id, Child { name: "relay-client".into(), kind, fault: addr.recipient() });
            }
            Err(e) => tracing::error!("relay client not started: {e}"),
        }
    }

    /// WebRTC signals go on the peer's paths, else through `relay`.
    fn set_signaler(&self, relay: Option<RelayRoute>) {
        if let Some(w) = &self.webrtc {
            w.set_signaler(Arc::new(NodeSignaler { links: self.links.clone(), relay }));
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
        self.links.insert(peer, link);
        self.peers.insert(peer, PeerHandle { actor: actor.clone(), child: id });
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
        self.ctx.report_restart(name, reason, &d);
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

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Commands queue here; beyond 256 the callers' `send` waits.
        ctx.set_mailbox_capacity(256);
        self.set_signaler(None);
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
