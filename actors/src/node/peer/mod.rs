//! `PeerActor`: one per remote peer — the peer as a first-class object.
//!
//! * **Owns** every path to the peer (one [`ConnectionActor`] each: direct QUIC, TCP,
//!   WebSocket, WebRTC, relayed), the pending dial ([`NegotiatorActor`]), the hole-punch
//!   attempt ([`HolePunchActor`]), and the sans-IO [`PathManager`] that decides which path
//!   carries the traffic, when a path is dead, when to probe, re-dial, punch or retire.
//!   The peer's data plane is its [`PeerLink`] (shared with the supervisor): switching
//!   paths is [`PeerLink::carry`], which resends what the peer has not acknowledged.
//! * **In:** [`AddPath`] (a new connection from a listener, a dial or a punch),
//!   [`PeerConnect`], [`PeerDisconnect`], [`PeerShutdown`], probe answers and signals
//!   from its paths, [`PunchSignal`]s routed by the supervisor, [`NetworkChanged`],
//!   children's exits and results; [`GetPeerChildren`] and [`InjectPeerFault`] for tests.
//! * **Out:** events — `PeerConnected` (first path, or first after all were lost),
//!   `PathChanged`, `PathDegraded`, `HolePunchFailed`, `ConnectFailed`,
//!   `PeerDisconnected` (no path left), `ActorRestarted` / `ChildGivenUp` (a failed
//!   connection re-dialed or given up); punch signals as session `SIGNAL` frames on the
//!   carrying path (so punching never depends on the relay reservation). Signals that
//!   arrive on its paths are decoded once here: punch messages to the attempt, WebRTC
//!   signaling to the WebRTC transport.
//! * **Supervised** by the [`Supervisor`](super::supervisor::Supervisor) (restarted after
//!   a panic while the peer is wanted, with the same link). It supervises its children:
//!   a path that fails is re-dialed with backoff while the peer is wanted (restart
//!   intensity as for any child: 5 within 5 s, then given up).
//! * **Stops** when no path is left and the peer is not wanted, or on shutdown.

mod ctx;
mod dial;
mod paths;
mod punch;
mod signal;

pub(crate) use ctx::PeerCtx;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient,
    ResponseActFuture, SpawnHandle, WrapFuture,
};
use bytes::Bytes;
use kizuna::{
    negotiate::{resolve_duplicate, Candidate, Keep},
    peer::{Output, PathDesc, PathEvent, PathId, PathManager, SessionFrame},
    punch::Role,
    wire::CloseCode,
    Connection, ConnectionInfo, Incoming, PathKind, PeerAddress, PeerId, StreamAbort, TransportAddr,
};
use tokio::sync::oneshot;

use crate::{
    api::{DisconnectReason, Event, NodeError, PathStats},
    node::{
        child::{ChildExited, ChildId, ExitGuard, Fault},
        connection::{
            control_writer, CloseConnection, ConnectionActor, Control, PathPorts, PathSignal, ProbeAnswered,
        },
        hole_punch::{HolePunchActor, PunchFinished, PunchPorts, PunchSignal, SendSignal},
        link::{Carrier, DataElsewhere, LinkState, PeerLink, PeerStatus, TrafficStarted},
        listener::Inbound,
        negotiator::{Negotiated, NegotiatorActor},
        supervision::{Decision, ExitReason, RestartPolicy, RestartTracker},
    },
    runtime::io_runtime,
};

/// A new connection to this peer.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct AddPath(pub(crate) Connection);

/// Keep the peer connected: dial if needed (at `addr`), answer with the carrying path.
#[derive(Debug, Message)]
#[rtype(result = "Result<ConnectionInfo, NodeError>")]
pub(crate) struct PeerConnect(pub(crate) PeerAddress);

/// Dial `addr` for an additional path ([`crate::api::DialPath`]).
#[derive(Debug, Message)]
#[rtype(result = "Result<ConnectionInfo, NodeError>")]
pub(crate) struct PeerDialPath(pub(crate) PeerAddress);

/// The peer is no longer wanted: close its paths gracefully.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct PeerDisconnect;

/// The node shuts down: close every path (queued messages flushed), then stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct PeerShutdown;

/// The local network changed: punch again at once.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(crate) struct NetworkChanged;

/// The names of this peer's children.
#[derive(Debug, Message)]
#[rtype(result = "Vec<String>")]
pub(crate) struct GetPeerChildren;

/// Inject a fault into the named child of this peer.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub(crate) struct InjectPeerFault {
    pub(crate) child: String,
    pub(crate) fault: Fault,
}

enum ChildKind {
    Path(PathId),
    Negotiator,
    Punch,
}

struct Child {
    name: String,
    kind: ChildKind,
    fault: Recipient<Fault>,
}

struct PathEntry {
    conn: Connection,
    actor: Addr<ConnectionActor>,
    desc: PathDesc,
    session: bool,
    control: Control,
    abort: Arc<StreamAbort>,
    established: Instant,
    /// Stats counters at the last sample: (sent, received).
    seen: (u64, u64),
}

type Waiter = oneshot::Sender<Result<ConnectionInfo, NodeError>>;

/// One remote peer (see the module docs).
pub(crate) struct PeerActor {
    peer: PeerId,
    ctx: Arc<PeerCtx>,
    link: Arc<PeerLink>,
    manager: PathManager,
    paths: BTreeMap<PathId, PathEntry>,
    children: HashMap<ChildId, Child>,
    next_path: u64,
    /// Where the peer can be dialed (what `Connect` gave, what its hellos listed, relays).
    known: PeerAddress,
    wanted: bool,
    waiters: Vec<Waiter>,
    /// Who asked for the dial in progress to add a path ([`PeerDialPath`]).
    path_waiters: Vec<Waiter>,
    dialing: Option<ChildId>,
    punch: Option<(ChildId, Addr<HolePunchActor>)>,
    tracker: RestartTracker,
    /// `PeerConnected` published since the last loss of every path.
    announced: bool,
    /// Why the last path went down (for `PeerDisconnected`).
    last_exit: Option<DisconnectReason>,
    shutting_down: bool,
    timer: Option<(Instant, SpawnHandle)>,
    sampling: bool,
    /// When traffic was last sampled (`None` while not sampling).
    last_sample: Option<Instant>,
    /// The last path that went down, for the event that names it.
    gone: Option<(PathId, ConnectionInfo)>,
    guard: ExitGuard,
}

impl PeerActor {
    pub(crate) fn new(
        id: ChildId,
        peer: PeerId,
        ctx: Arc<PeerCtx>,
        link: Arc<PeerLink>,
        wanted: bool,
        exited: Recipient<ChildExited>,
    ) -> Self {
        let manager = PathManager::new(ctx.paths, wanted);
        let tracker = RestartTracker::new(ctx.limits);
        Self {
            peer,
            known: PeerAddress::new(peer, Vec::new()),
            ctx,
            link,
            manager,
            paths: BTreeMap::new(),
            children: HashMap::new(),
            next_path: 1,
            wanted,
            waiters: Vec::new(),
            path_waiters: Vec::new(),
            dialing: None,
            punch: None,
            tracker,
            announced: false,
            last_exit: None,
            shutting_down: false,
            timer: None,
            sampling: false,
            last_sample: None,
            gone: None,
            guard: ExitGuard::new(id, exited),
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    /// The carrying path's connection info.
    fn active_info(&self) -> Option<ConnectionInfo> {
        self.manager.active().and_then(|a| self.paths.get(&a)).map(|p| p.conn.info())
    }

    /// Adds the relays as the last resort of every dial, and remembers `addrs`.
    fn learn(&mut self, addrs: impl IntoIterator<Item = TransportAddr>) {
        for a in addrs {
            if !self.known.addrs.contains(&a) {
                self.known.addrs.push(a);
            }
        }
        for r in &self.ctx.relays {
            let route = TransportAddr::Relay(r.url.clone());
            if !self.known.addrs.contains(&route) {
                self.known.addrs.push(route);
            }
        }
        // Relay routes last.
        self.known.addrs.sort_by_key(|a| matches!(a, TransportAddr::Relay(_)));
        self.link.set_known(self.known.addrs.clone());
    }

    fn set_wanted(&mut self, wanted: bool) {
        self.wanted = wanted;
        self.manager.set_wanted(Self::now(), wanted);
    }

    fn maybe_stop(&mut self, ctx: &mut Context<Self>) {
        let idle = self.paths.is_empty() && self.dialing.is_none();
        if idle && (!self.wanted || self.shutting_down) {
            self.link.set_state(LinkState::Closed);
            self.fail_waiters(NodeError::NotConnected(self.peer));
            self.guard.set(ExitReason::Normal);
            ctx.stop();
        }
    }

    /// Closes every path gracefully; the future ends once each has closed.
    fn close_all(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> impl std::future::Future<Output = ()> + 'static {
        let closes: Vec<_> = self
            .paths
            .values()
            .map(|p| p.actor.send(CloseConnection { code, reason: reason.to_string() }))
            .collect();
        async move {
            for c in closes {
                let _ = c.await;
            }
        }
    }
}

impl Drop for PeerActor {
    fn drop(&mut self) {
        // However the actor ends (a panic included), its paths must not outlive it.
        for p in self.paths.values() {
            let conn = p.conn.clone();
            io_runtime().spawn(async move { conn.close(CloseCode::Normal, "peer actor gone").await });
        }
    }
}

impl Actor for PeerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Commands queue here; beyond 256 senders wait.
        ctx.set_mailbox_capacity(256);
        self.link.set_wakers(ctx.address().recipient(), ctx.address().recipient());
        // A restarted actor takes over what its predecessor knew.
        self.learn(self.link.known());
        if self.wanted {
            self.manager.set_wanted(Self::now(), true);
            self.drain(ctx);
        }
    }
}

impl Handler<AddPath> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: AddPath, ctx: &mut Context<Self>) {
        self.add_path(msg.0, ctx);
    }
}

impl Handler<Inbound> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        if let Incoming::Connection(conn) = msg.0 {
            self.add_path(conn, ctx);
        }
    }
}

impl Handler<PeerConnect> for PeerActor {
    type Result = ResponseActFuture<Self, Result<ConnectionInfo, NodeError>>;
    fn handle(&mut self, msg: PeerConnect, ctx: &mut Context<Self>) -> Self::Result {
        self.learn(msg.0.addrs.clone());
        if !self.wanted {
            self.set_wanted(true);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        match self.active_info() {
            Some(info) => {
                let direct: Vec<TransportAddr> =
                    msg.0.addrs.iter().filter(|a| !matches!(a, TransportAddr::Relay(_))).cloned().collect();
                if info.path == PathKind::Direct || direct.is_empty() {
                    self.answer_waiters();
                } else {
                    // Relayed: try the direct addresses (an upgrade); the relayed path stays
                    // and is the answer if none works.
                    self.dial(PeerAddress::new(self.peer, direct), ctx);
                    if self.dialing.is_none() {
                        self.answer_waiters();
                    }
                }
            }
            None => {
                if self.dialing.is_none() {
                    self.dial(self.known.clone(), ctx);
                }
            }
        }
        self.drain(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(NodeError::ShuttingDown)) }.into_actor(self))
    }
}

impl Handler<ChildExited> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let Some(child) = self.children.remove(&msg.id) else { return };
        match child.kind {
            ChildKind::Path(id) => self.path_down(id, &msg.reason, ctx),
            ChildKind::Negotiator => {
                if self.dialing == Some(msg.id) {
                    // It died without reporting.
                    self.dialing = None;
                    self.manager.handle_dial_failed(Self::now());
                    self.fail_waiters(NodeError::ActorGone(format!("negotiator {}", msg.reason)));
                    self.drain(ctx);
                    self.maybe_stop(ctx);
                }
            }
            ChildKind::Punch => {
                if self.punch.as_ref().is_some_and(|(id, _)| *id == msg.id) {
                    let reason = (msg.reason.is_abnormal() && !self.shutting_down)
                        .then(|| format!("hole-punch actor {}", msg.reason));
                    self.punch_ended(false, reason, ctx);
                }
            }
        }
    }
}

impl Handler<PeerDisconnect> for PeerActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: PeerDisconnect, _: &mut Context<Self>) -> Self::Result {
        self.set_wanted(false);
        Box::pin(self.close_all(CloseCode::Normal, "disconnect").into_actor(self))
    }
}

impl Handler<PeerShutdown> for PeerActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: PeerShutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        self.set_wanted(false);
        Box::pin(self.close_all(CloseCode::Shutdown, "node shutting down").into_actor(self))
    }
}

impl Handler<GetPeerChildren> for PeerActor {
    type Result = actix::MessageResult<GetPeerChildren>;
    fn handle(&mut self, _: GetPeerChildren, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.children.values().map(|c| c.name.clone()).collect())
    }
}

impl Handler<InjectPeerFault> for PeerActor {
    type Result = bool;
    fn handle(&mut self, msg: InjectPeerFault, _: &mut Context<Self>) -> bool {
        // Paths first in order of the active one: `connection/<peer>` names every path.
        let active = self.manager.active();
        let mut matching: Vec<&Child> = self.children.values().filter(|c| c.name == msg.child).collect();
        matching.sort_by_key(|c| !matches!(c.kind, ChildKind::Path(p) if Some(p) == active));
        match matching.first() {
            Some(c) => {
                c.fault.do_send(msg.fault);
                true
            }
            None => false,
        }
    }
}

impl Handler<Fault> for PeerActor {
    type Result = ();
    fn handle(&mut self, fault: Fault, ctx: &mut Context<Self>) {
        match fault {
            Fault::Panic => panic!("injected panic in the actor of peer {}", self.peer),
            Fault::Kill | Fault::DropConnection => {
                self.guard.set(ExitReason::Killed);
                ctx.stop();
            }
        }
    }
}
