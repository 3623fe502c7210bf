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
//!   carrying path (so punching never depends on the relay reservation).
//! * **Supervised** by the [`Supervisor`](super::supervisor::Supervisor) (restarted after
//!   a panic while the peer is wanted, with the same link). It supervises its children:
//!   a path that fails is re-dialed with backoff while the peer is wanted (restart
//!   intensity as for any child: 5 within 5 s, then given up).
//! * **Stops** when no path is left and the peer is not wanted, or on shutdown.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient,
    ResponseActFuture, SpawnHandle, WrapFuture,
};
use bytes::Bytes;
use kizuna::{
    negotiate::{resolve_duplicate, Candidate, Keep},
    peer::{Output, PathConfig, PathDesc, PathEvent, PathId, PathManager, SessionFrame, WindowLimits},
    punch::Role,
    relay::client::RelayEndpoint,
    wire::CloseCode,
    Connection, ConnectionInfo, Incoming, LocalNode, PathKind, PeerAddress, PeerId, StreamAbort, Transport,
    TransportAddr,
};
use tokio::sync::oneshot;

use crate::{
    api::{DisconnectReason, Event, NodeError, PathStats},
    node::{
        child::{ChildExited, ChildId, ExitGuard, Fault},
        connection::{
            control_writer, CloseConnection, ConnectionActor, Control, PathPorts, PathSignal, ProbeAnswered,
        },
        events::EventBus,
        hole_punch::{HolePunchActor, PunchFinished, PunchPorts, PunchSignal, SendSignal},
        link::{Carrier, LinkState, PeerLink, PeerStatus, TrafficStarted},
        listener::Inbound,
        negotiator::{Negotiated, NegotiatorActor, SharedDialHistory},
        punching::PunchCtx,
        supervision::{Decision, ExitReason, RestartLimits, RestartPolicy, RestartTracker},
    },
    runtime::io_runtime,
};

/// How often a peer's traffic counters are sampled while traffic flows (to feed the path
/// manager what was sent and heard). 250 ms: the active path's probe pace, so silence is
/// noticed within one sample of the 2 s bound.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How long a retired path may take to finish its streams before it is closed anyway.
/// 10 min: a stream started before the retirement (a file transfer) finishes on the path
/// it began on; a stream open far longer than that is not going to finish soon.
const DRAIN_MAX: Duration = Duration::from_secs(600);

/// How often a draining path's open streams are counted.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// What every peer actor of a node shares.
pub(crate) struct PeerCtx {
    pub(crate) node: Arc<LocalNode>,
    pub(crate) transports: Vec<Arc<dyn Transport>>,
    pub(crate) relays: Vec<RelayEndpoint>,
    pub(crate) bus: EventBus,
    pub(crate) limits: RestartLimits,
    pub(crate) counters: Arc<NodeCounters>,
    pub(crate) punch: PunchCtx,
    pub(crate) paths: PathConfig,
    pub(crate) window: WindowLimits,
    /// What dials to each peer measured: how dial orders are ranked.
    pub(crate) dials: SharedDialHistory,
    next_id: AtomicU64,
}

impl PeerCtx {
    #[allow(clippy::too_many_arguments)] // The node's shared context, built once.
    pub(crate) fn new(
        node: Arc<LocalNode>,
        transports: Vec<Arc<dyn Transport>>,
        relays: Vec<RelayEndpoint>,
        bus: EventBus,
        limits: RestartLimits,
        punch: PunchCtx,
        paths: PathConfig,
        window: WindowLimits,
    ) -> Self {
        Self {
            node,
            transports,
            relays,
            bus,
            limits,
            counters: Arc::default(),
            punch,
            paths,
            window,
            dials: SharedDialHistory::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// A node-wide unique child id.
    pub(crate) fn id(&self) -> ChildId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Counters of the whole node, kept by its actors.
#[derive(Debug, Default)]
pub(crate) struct NodeCounters {
    pub(crate) restarts: AtomicU64,
    pub(crate) given_up: AtomicU64,
    pub(crate) connections_established: AtomicU64,
    pub(crate) connects_failed: AtomicU64,
    pub(crate) path_changes: AtomicU64,
}

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

    // ----- paths -----

    fn add_path(&mut self, conn: Connection, ctx: &mut Context<Self>) {
        if self.shutting_down {
            io_runtime().spawn(async move { conn.close(CloseCode::Shutdown, "node shutting down").await });
            return;
        }
        let info = conn.info();
        // A duplicate of a path we have (same transport, same kind): one survives, the
        // same one on both sides (a simultaneous dial).
        let dup =
            self.paths.iter().find(|(_, p)| p.desc.protocol == info.protocol && p.desc.kind == info.path);
        if let Some((&old_id, old)) = dup {
            let old_side = Candidate {
                dialed_locally: old.conn.is_dialer(),
                age: old.established.elapsed(),
                path: old.desc.kind,
            };
            let new_side =
                Candidate { dialed_locally: conn.is_dialer(), age: Duration::ZERO, path: info.path };
            match resolve_duplicate(self.ctx.node.peer_id(), self.peer, old_side, new_side) {
                Keep::Existing => {
                    tracing::debug!(peer = %self.peer, "duplicate connection: keeping the existing one");
                    io_runtime()
                        .spawn(async move { conn.close(CloseCode::Replaced, "duplicate connection").await });
                    self.answer_waiters();
                    return;
                }
                Keep::New => {
                    tracing::debug!(peer = %self.peer, "duplicate connection: replacing the existing one");
                    old.actor
                        .do_send(CloseConnection { code: CloseCode::Replaced, reason: "replaced".into() });
                    let _ = old_id;
                }
            }
        }
        self.learn(conn.remote_hello().listen_addrs.clone());
        let session = conn.remote_hello().session.is_some();
        let link = self.link.clone();
        let hello_conn = conn.clone();
        // Our hello goes first on a session path, before the path can carry anything.
        let hello = async move {
            if session {
                let hello = link.hello().await;
                hello_conn.send_queued(hello.encode()).await.is_ok()
            } else {
                true
            }
        };
        ctx.wait(hello.into_actor(self).map(move |ok, act, ctx| {
            if ok {
                act.register_path(conn, session, ctx);
            } else {
                tracing::debug!(peer = %act.peer, "path closed before its hello");
            }
        }));
    }

    fn register_path(&mut self, conn: Connection, session: bool, ctx: &mut Context<Self>) {
        let id = PathId(self.next_path);
        self.next_path += 1;
        let child = self.ctx.id();
        let info = conn.info();
        let desc = PathDesc { kind: info.path, protocol: info.protocol, dialed_locally: conn.is_dialer() };
        let control = control_writer(conn.clone());
        let abort = StreamAbort::new();
        let me = ctx.address();
        let ports = PathPorts {
            exited: me.clone().recipient(),
            probes: me.clone().recipient(),
            signals: me.recipient(),
        };
        let actor = ConnectionActor::new(
            child,
            conn.clone(),
            id,
            session,
            self.link.clone(),
            self.ctx.bus.clone(),
            control.clone(),
            abort.clone(),
            ports,
        )
        .start();
        self.children.insert(
            child,
            Child {
                name: format!("connection/{}", self.peer),
                kind: ChildKind::Path(id),
                fault: actor.clone().recipient(),
            },
        );
        let seen = (
            conn.stats().bytes_sent.load(Ordering::Relaxed),
            conn.stats().bytes_received.load(Ordering::Relaxed),
        );
        self.paths.insert(
            id,
            PathEntry { conn, actor, desc, session, control, abort, established: Instant::now(), seen },
        );
        self.ctx.counters.connections_established.fetch_add(1, Ordering::Relaxed);
        self.link.set_state(LinkState::Open);
        tracing::debug!(peer = %self.peer, %id, protocol = %info.protocol, path = %info.path, "path added");
        if !self.announced {
            self.announced = true;
            self.ctx.bus.publish_later(Event::PeerConnected { info });
        }
        self.manager.handle_path_up(Self::now(), id, desc);
        self.drain(ctx);
        self.answer_waiters();
    }

    fn path_down(&mut self, id: PathId, reason: &ExitReason, ctx: &mut Context<Self>) {
        let Some(p) = self.paths.remove(&id) else { return };
        self.gone = Some((id, p.conn.info()));
        p.abort.trigger(format!("path {} to {} closed: {reason}", p.conn.info().protocol, self.peer));
        self.link.uncarry(id);
        let conn = p.conn;
        io_runtime().spawn(async move { conn.close(CloseCode::Normal, "path actor exited").await });
        if self.paths.is_empty() {
            self.last_exit = Some(match reason {
                ExitReason::Normal if self.shutting_down => DisconnectReason::Local,
                ExitReason::Normal => DisconnectReason::Remote("closed".into()),
                ExitReason::Failed(e) => DisconnectReason::Failed(e.clone()),
                other => DisconnectReason::ActorFailed(other.to_string()),
            });
        }
        self.manager.handle_path_down(Self::now(), id);
        self.drain(ctx);
        if reason.is_abnormal() && self.paths.is_empty() && !self.shutting_down {
            let name = format!("connection/{}", self.peer);
            match self.tracker.on_exit(Self::now(), RestartPolicy::Transient, reason, self.wanted) {
                Decision::Restart { after, attempt } => {
                    self.ctx.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(child = %name, %reason, attempt, ?after, "reconnecting");
                    self.ctx.bus.publish_later(Event::ActorRestarted { child: name, attempt, after });
                }
                Decision::GiveUp => {
                    self.ctx.counters.given_up.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(child = %name, %reason, "restart intensity exceeded: giving up");
                    self.ctx
                        .bus
                        .publish_later(Event::ChildGivenUp { child: name, last_error: reason.to_string() });
                    self.set_wanted(false);
                }
                Decision::Stop => {}
            }
        }
        self.maybe_stop(ctx);
    }

    fn set_wanted(&mut self, wanted: bool) {
        self.wanted = wanted;
        self.manager.set_wanted(Self::now(), wanted);
    }

    /// Performs the path manager's outputs and re-arms the timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(out) = self.manager.poll_output() {
            match out {
                Output::Probe { path, nonce } => self.probe(path, nonce, ctx),
                Output::Carry { path } => self.carry(path, ctx),
                Output::Retire { path } => self.retire(path, ctx),
                Output::Dial => self.dial(self.known.clone(), ctx),
                Output::StartPunch => {
                    self.start_punch(Role::Initiator, ctx);
                }
                Output::Event(e) => self.event(e),
            }
        }
        self.publish_status();
        self.arm_timer(ctx);
    }

    fn probe(&mut self, path: PathId, nonce: u64, ctx: &mut Context<Self>) {
        let Some(p) = self.paths.get(&path) else { return };
        if p.session {
            p.control.send(SessionFrame::Probe { nonce });
        } else if p.conn.is_connected() {
            // A path without the session layer cannot answer probes: it lives as long as its
            // connection does, at the RTT the transport measures.
            let rtt = p.conn.stats().rtt().unwrap_or(Duration::from_millis(50));
            ctx.run_later(rtt, move |act, ctx| {
                act.manager.handle_probe_reply(Self::now(), path, nonce);
                act.drain(ctx);
            });
        }
    }

    fn carry(&mut self, path: PathId, ctx: &mut Context<Self>) {
        let Some(p) = self.paths.get(&path) else { return };
        let carrier = Carrier::new(path, p.conn.clone(), p.session, p.abort.clone());
        let link = self.link.clone();
        ctx.spawn(async move { link.carry(carrier).await }.into_actor(self));
    }

    fn retire(&mut self, path: PathId, ctx: &mut Context<Self>) {
        let Some(p) = self.paths.get(&path) else { return };
        let (conn, actor) = (p.conn.clone(), p.actor.clone());
        tracing::debug!(peer = %self.peer, %path, "retiring path once its streams finish");
        let drain = async move {
            let until = Instant::now() + DRAIN_MAX;
            while conn.stats().open_streams() > 0 && Instant::now() < until && conn.is_connected() {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        };
        ctx.spawn(drain.into_actor(self).map(move |_, _, _| {
            actor.do_send(CloseConnection { code: CloseCode::Normal, reason: "path retired".into() });
        }));
    }

    fn event(&mut self, e: PathEvent) {
        match e {
            PathEvent::Changed { from, to, reason } => {
                self.ctx.counters.path_changes.fetch_add(1, Ordering::Relaxed);
                let to_info = self.paths.get(&to).map(|p| p.conn.info());
                let from_info = from.and_then(|f| {
                    self.paths.get(&f).map(|p| p.conn.info()).or_else(|| {
                        // A path that went down just now.
                        self.gone.as_ref().filter(|(id, _)| *id == f).map(|(_, i)| i.clone())
                    })
                });
                if let (Some(from), Some(to)) = (from_info, to_info) {
                    tracing::info!(peer = %self.peer, reason = reason.name(), "path {} {} -> {} {}", from.protocol, from.path, to.protocol, to.path);
                    self.ctx.bus.publish_later(Event::PathChanged {
                        peer: self.peer,
                        from: Box::new(from),
                        to: Box::new(to),
                        reason,
                    });
                }
            }
            PathEvent::Degraded { path, rtt, loss } => {
                if let Some(p) = self.paths.get(&path) {
                    let path = Box::new(p.conn.info());
                    self.ctx.bus.publish_later(Event::PathDegraded { peer: self.peer, path, rtt, loss });
                }
            }
            PathEvent::Dead { path } => {
                self.link.uncarry(path);
                if let Some(p) = self.paths.get_mut(&path) {
                    let info = p.conn.info();
                    tracing::info!(peer = %self.peer, %path, protocol = %info.protocol, "path stopped answering");
                    // Streams on it fail now, naming it; later streams (should it recover)
                    // get a fresh switch.
                    p.abort.trigger(format!(
                        "path {} {} to {} died (no answer)",
                        info.protocol, info.path, self.peer
                    ));
                    p.abort = StreamAbort::new();
                }
            }
            PathEvent::Lost => {
                self.announced = false;
                let reason =
                    self.last_exit.take().unwrap_or(DisconnectReason::Failed("no path answers".into()));
                self.ctx.bus.publish_later(Event::PeerDisconnected { peer: self.peer, reason });
                if !self.wanted {
                    self.link.set_state(LinkState::Closed);
                }
            }
        }
    }

    /// Reports the paths to the link, where `GetStats` reads them.
    fn publish_status(&self) {
        let active = self.manager.active();
        let health: HashMap<PathId, (Option<Duration>, f64, f64, bool)> = self
            .manager
            .paths()
            .map(|(id, _, h, alive)| (id, (h.srtt(), h.loss(), h.throughput(), alive)))
            .collect();
        let paths = self
            .paths
            .iter()
            .map(|(id, p)| {
                let (rtt, loss, throughput, alive) =
                    health.get(id).copied().unwrap_or((None, 0.0, 0.0, true));
                PathStats { info: p.conn.info(), active: Some(*id) == active, alive, rtt, loss, throughput }
            })
            .collect();
        self.link.set_status(PeerStatus { active: self.active_info(), paths });
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let mut at = self.manager.poll_timeout();
        if self.sampling {
            let s = Instant::now() + SAMPLE_EVERY;
            at = Some(at.map_or(s, |t| t.min(s)));
        }
        let Some(at) = at else {
            if let Some((_, h)) = self.timer.take() {
                ctx.cancel_future(h);
            }
            return;
        };
        if self.timer.as_ref().is_some_and(|(t, _)| *t == at) {
            return;
        }
        if let Some((_, h)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let delay = at.saturating_duration_since(Instant::now());
        let h = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.tick(ctx);
        });
        self.timer = Some((at, h));
    }

    /// Samples the paths' traffic counters, then runs the manager's timers.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Self::now();
        let mut moving = self.link.take_traffic();
        for (id, p) in self.paths.iter_mut() {
            let s = p.conn.stats();
            let cur = (s.bytes_sent.load(Ordering::Relaxed), s.bytes_received.load(Ordering::Relaxed));
            let (sent, recv) = (cur.0.saturating_sub(p.seen.0), cur.1.saturating_sub(p.seen.1));
            p.seen = cur;
            if sent > 0 {
                self.manager.handle_sent(now, *id);
            }
            if recv > 0 {
                self.manager.handle_heard(now, *id);
            }
            if sent + recv > 0 {
                moving = true;
                self.manager.handle_traffic(now, *id, sent + recv);
            }
        }
        self.sampling = moving;
        self.manager.handle_timeout(now);
        self.drain(ctx);
    }

    // ----- dialing -----

    fn dial(&mut self, target: PeerAddress, ctx: &mut Context<Self>) {
        if self.dialing.is_some() || self.shutting_down {
            return;
        }
        if target.addrs.is_empty() {
            self.manager.handle_dial_failed(Self::now());
            self.fail_waiters(NodeError::ConnectFailed { peer: self.peer, attempts: vec![] });
            self.maybe_stop(ctx);
            return;
        }
        let id = self.ctx.id();
        let me = ctx.address();
        let timeout = self.ctx.node.config().connect_timeout;
        let actor = NegotiatorActor::new(
            id,
            target,
            self.ctx.transports.clone(),
            self.ctx.dials.clone(),
            timeout,
            me.clone().recipient(),
            me.recipient(),
        )
        .start();
        self.children.insert(
            id,
            Child {
                name: format!("negotiator/{}", self.peer),
                kind: ChildKind::Negotiator,
                fault: actor.recipient(),
            },
        );
        self.dialing = Some(id);
    }

    fn answer_waiters(&mut self) {
        if let Some(info) = self.active_info() {
            for w in self.waiters.drain(..) {
                let _ = w.send(Ok(info.clone()));
            }
        }
    }

    fn fail_waiters(&mut self, e: NodeError) {
        match self.active_info() {
            Some(info) => {
                for w in self.waiters.drain(..) {
                    let _ = w.send(Ok(info.clone()));
                }
            }
            None => {
                for w in self.waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }

    // ----- punching -----

    fn start_punch(&mut self, role: Role, ctx: &mut Context<Self>) -> bool {
        let relayed = self.active_info().is_some_and(|i| i.path == PathKind::Relayed);
        if self.shutting_down || !relayed || self.punch.is_some() {
            return false;
        }
        let (quic, side) = match self.ctx.punch.side_channel() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %self.peer, "no hole punching: {e}");
                self.manager.handle_punch_finished(Self::now(), false);
                return false;
            }
        };
        let id = self.ctx.id();
        let me = ctx.address();
        let ports = PunchPorts {
            signal: me.clone().recipient(),
            finished: me.clone().recipient(),
            exited: me.clone().recipient(),
            inbound: me.recipient(),
            datagrams: self.ctx.punch.inboxes(),
        };
        let actor = HolePunchActor::new(id, self.peer, role, self.ctx.punch.env(), quic, side, ports).start();
        self.punch = Some((id, actor.clone()));
        self.children.insert(
            id,
            Child {
                name: format!("hole-punch/{}", self.peer),
                kind: ChildKind::Punch,
                fault: actor.recipient(),
            },
        );
        tracing::debug!(peer = %self.peer, ?role, "hole punch started");
        true
    }

    fn punch_ended(&mut self, succeeded: bool, reason: Option<String>, ctx: &mut Context<Self>) {
        if let Some(reason) = reason {
            tracing::info!(peer = %self.peer, %reason, "hole punch failed; the traffic stays relayed");
            self.ctx.bus.publish_later(Event::HolePunchFailed { peer: self.peer, reason });
        }
        self.manager.handle_punch_finished(Self::now(), succeeded);
        self.drain(ctx);
    }

    /// A punch message from the peer (decoded once, where it arrived): to the attempt, or
    /// an offer that starts the responder's.
    fn on_punch_signal(
        &mut self,
        message: Result<kizuna::punch::PunchMessage, kizuna::punch::PunchDecodeError>,
        ctx: &mut Context<Self>,
    ) {
        if self.punch.is_none() {
            let offer = matches!(message, Ok(kizuna::punch::PunchMessage::Offer { .. }));
            if !offer || !self.start_punch(Role::Responder, ctx) {
                return;
            }
        }
        if let Some((_, actor)) = &self.punch {
            if actor.try_send(PunchSignal { peer: self.peer, message }).is_err() {
                tracing::debug!(peer = %self.peer, "punch signal dropped: session busy or ended");
            }
        }
    }

    // ----- lifecycle -----

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
        self.link.set_waker(ctx.address().recipient());
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

impl Handler<Negotiated> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: Negotiated, ctx: &mut Context<Self>) {
        debug_assert_eq!(msg.peer, self.peer);
        self.dialing = None;
        match msg.result {
            Ok(conn) => {
                let info = conn.info();
                for w in self.path_waiters.drain(..) {
                    let _ = w.send(Ok(info.clone()));
                }
                self.add_path(conn, ctx)
            }
            Err(e) => {
                self.ctx.counters.connects_failed.fetch_add(1, Ordering::Relaxed);
                self.ctx.bus.publish_later(Event::ConnectFailed { peer: self.peer, error: e.to_string() });
                self.manager.handle_dial_failed(Self::now());
                for w in self.path_waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
                self.fail_waiters(e);
                self.drain(ctx);
                self.maybe_stop(ctx);
            }
        }
    }
}

impl Handler<PeerDialPath> for PeerActor {
    type Result = ResponseActFuture<Self, Result<ConnectionInfo, NodeError>>;
    fn handle(&mut self, msg: PeerDialPath, ctx: &mut Context<Self>) -> Self::Result {
        self.learn(msg.0.addrs.clone());
        let (tx, rx) = oneshot::channel();
        if self.dialing.is_some() {
            let _ = tx.send(Err(NodeError::ActorGone("a dial to this peer is in progress".into())));
        } else {
            self.path_waiters.push(tx);
            self.dial(msg.0, ctx);
        }
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

impl Handler<ProbeAnswered> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: ProbeAnswered, ctx: &mut Context<Self>) {
        self.manager.handle_probe_reply(msg.at, msg.path, msg.nonce);
        self.drain(ctx);
    }
}

impl Handler<PathSignal> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: PathSignal, ctx: &mut Context<Self>) {
        use kizuna::punch::signal::{Signal, SignalError};
        match Signal::decode_tagged(msg.tag, &msg.payload) {
            Ok(Signal::Punch(m)) => self.on_punch_signal(Ok(m), ctx),
            Err(SignalError::Punch(e)) => self.on_punch_signal(Err(e), ctx),
            other => {
                tracing::debug!(peer = %self.peer, path = %msg.path, tag = msg.tag, "signal dropped: {other:?}")
            }
        }
    }
}

impl Handler<PunchSignal> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: PunchSignal, ctx: &mut Context<Self>) {
        self.on_punch_signal(msg.message, ctx);
    }
}

impl Handler<SendSignal> for PeerActor {
    type Result = Result<(), kizuna::relay::client::ClientCommandError>;
    fn handle(&mut self, msg: SendSignal, _: &mut Context<Self>) -> Self::Result {
        // Punch messages travel on the carrying (relayed) path itself; the payload starts
        // with its tag, as for a relay signal.
        let path = self.manager.active().and_then(|a| self.paths.get(&a)).filter(|p| p.session);
        let payload = Bytes::from(msg.payload);
        let (tag, payload) = match payload.first() {
            Some(&t) => (t, payload.slice(1..)),
            None => (kizuna::punch::signal::PUNCH_SIGNAL_TAG, payload),
        };
        match path {
            Some(p) => {
                let frame = SessionFrame::Signal { tag, payload };
                if !p.control.send(frame) {
                    tracing::debug!(peer = %self.peer, "punch signal dropped: the path is not draining");
                }
                Ok(())
            }
            None => Err(kizuna::relay::client::ClientCommandError::NotReserved),
        }
    }
}

impl Handler<PunchFinished> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: PunchFinished, ctx: &mut Context<Self>) {
        debug_assert_eq!(msg.peer, self.peer);
        // The result may arrive after the actor's exit was reported: it counts either way.
        if self.punch.as_ref().is_some_and(|(id, _)| *id == msg.id) {
            self.punch = None;
        }
        match msg.result {
            Ok(Some(conn)) => {
                // The direct path first, so that the manager sees it before the result.
                self.add_path(conn, ctx);
                self.punch_ended(true, None, ctx);
            }
            Ok(None) => self.punch_ended(true, None, ctx),
            Err(reason) if !self.shutting_down => self.punch_ended(false, Some(reason), ctx),
            Err(_) => self.punch_ended(false, None, ctx),
        }
    }
}

impl Handler<NetworkChanged> for PeerActor {
    type Result = ();
    fn handle(&mut self, _: NetworkChanged, ctx: &mut Context<Self>) {
        self.manager.handle_network_change(Self::now());
        self.drain(ctx);
    }
}

impl Handler<TrafficStarted> for PeerActor {
    type Result = ();
    fn handle(&mut self, _: TrafficStarted, ctx: &mut Context<Self>) {
        if !self.sampling {
            self.sampling = true;
            if let Some(a) = self.manager.active() {
                self.manager.handle_sent(Self::now(), a);
            }
            self.arm_timer(ctx);
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
