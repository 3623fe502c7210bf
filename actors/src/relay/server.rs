//! `RelayServerActor`: one per relay.
//!
//! * **Owns** the [`RelayState`] (every decision), its single timer (re-armed from
//!   `poll_timeout` after every input), the registry of authenticated connections (the
//!   command channel of each connection task, or the circuit it was spliced into), the
//!   forwarders of open circuits, and the background tasks: accept loop, STUN
//!   responders, stats endpoint.
//! * **In:** from connection tasks [`ConnAuthenticated`] and [`ConnEvent`] (awaited
//!   sends); from forwarding tasks [`ForwardReport`] (awaited, batched); from forwarders
//!   [`ForwarderExited`]; from users [`GetRelayMetrics`] and [`StopRelay`].
//! * **Out:** executes the state's outputs — `Send`/`Close` to a connection's bounded
//!   channel (or to its circuit's forwarder once spliced), `Splice` starts a
//!   [`RelayForwarderActor`] and hands it both WebSockets, `RateChanged` goes to that
//!   forwarder; events are logged. Every 60 s (configurable) a JSON metrics line is
//!   logged.
//! * **Supervises** the forwarders: one per circuit, never restarted (a circuit cannot be
//!   resumed; its peers re-dial). It is itself started by
//!   [`RelayServer::start`](super::RelayServer::start) and not restarted: stopping it
//!   stops the relay.
//! * **Stops** on [`StopRelay`]: stops accepting, closes every connection and circuit
//!   with code 17 (`Shutdown`), waits for them (bounded), then stops.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use actix::{
    fut::wrap_future, Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseActFuture,
    SpawnHandle,
};
use bytes::Bytes;
use kizuna::{
    identity::PeerId,
    relay::{
        metrics::RelayMetrics,
        server::{CloseReason, ConnId, Direction, Output, RelayEvent, RelayState},
        CircuitId, ErrorCode, Purpose, RelayMessage,
    },
    transport::admission::HandshakeCounters,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    connection::{self, AcceptCtx, ConnCmd},
    forwarder::{FwdCmd, RelayForwarderActor, Side, StopForwarder, FORWARDER_QUEUE},
    stats, BoundSockets, RelayServerConfig,
};
use crate::runtime::io_runtime;

/// Longest a graceful stop waits for connections and circuits to close (connection tasks
/// and forwarding tasks both count as live until their sockets are closed). 3 s: each close
/// waits at most [`connection::CLOSE_LINGER`] (1 s) for the peer; the rest is margin.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How often a stopping relay checks whether everything has closed. 20 ms: shutdown is
/// rare, and this keeps it quick without busy waiting.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Returns a snapshot of the relay's metrics (the JSON of `--stats-addr`).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RelayMetrics")]
pub struct GetRelayMetrics;

/// Stops the relay gracefully: no new connections; every connection and circuit gets
/// `error 17` and close code 4017; answered once they closed (at most 3 s).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopRelay;

/// A connection task finished the relay handshake.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ConnAuthenticated {
    pub(crate) conn: ConnId,
    pub(crate) peer: PeerId,
    pub(crate) purpose: Purpose,
    pub(crate) remote: SocketAddr,
    /// The relay's address the connection reached (for advertising wildcard STUN IPs).
    pub(crate) local: Option<SocketAddr>,
    pub(crate) tx: mpsc::Sender<ConnCmd>,
}

/// What a connection task read.
#[derive(Debug)]
pub(crate) enum ConnInput {
    /// A decoded relay message.
    Message(RelayMessage),
    /// Something that is not a relay message (undecodable, oversized, text).
    Malformed(String),
    /// The socket ended.
    Closed,
}

/// Input from one connection task.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ConnEvent {
    pub(crate) conn: ConnId,
    pub(crate) input: ConnInput,
}

/// Bytes a circuit forwarded since the last report, and how its forwarding stands.
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub(crate) struct ForwardReport {
    pub(crate) circuit: Option<CircuitId>,
    /// Bytes forwarded from the dialer to the target.
    pub(crate) a_to_b: u64,
    /// Bytes forwarded from the target to the dialer.
    pub(crate) b_to_a: u64,
    /// Times the forwarder waited for its bucket.
    pub(crate) throttled: u64,
    /// A message that would cross the data cap (not forwarded).
    pub(crate) over_cap: Option<(Direction, u64)>,
    /// A side whose socket ended.
    pub(crate) ended: Option<Side>,
    /// The ends completed the three flights of an end-to-end handshake (reported once).
    pub(crate) handshake: bool,
}

/// A forwarder stopped.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ForwarderExited {
    pub(crate) circuit: CircuitId,
}

/// Where the relay reaches an authenticated connection.
#[derive(Debug)]
enum Link {
    /// Its connection task.
    Direct(mpsc::Sender<ConnCmd>),
    /// Spliced into this circuit: its forwarder owns the socket.
    Spliced(CircuitId, Side),
}

#[derive(Debug)]
struct ForwarderEntry {
    addr: actix::Addr<RelayForwarderActor>,
    ctl: mpsc::Sender<FwdCmd>,
    /// The circuit's current fair share (bytes per second). A latest-value channel, not
    /// a queued command: a burst of circuits opening changes every circuit's share once
    /// per new circuit, far faster than a forwarder busy with its handover or a write
    /// drains a queue, and only the newest share matters.
    rate: watch::Sender<u64>,
    a: ConnId,
    b: ConnId,
}

/// What [`RelayServer::start`](super::RelayServer::start) hands the actor.
pub(crate) struct ServerParts {
    pub(crate) state: RelayState,
    pub(crate) url: Arc<str>,
    pub(crate) config: RelayServerConfig,
    pub(crate) sockets: Option<BoundSockets>,
}

/// The relay server actor. See the module docs.
pub struct RelayServerActor {
    state: RelayState,
    url: Arc<str>,
    config: RelayServerConfig,
    sockets: Option<BoundSockets>,
    links: HashMap<ConnId, Link>,
    forwarders: HashMap<CircuitId, ForwarderEntry>,
    timer: Option<(Instant, SpawnHandle)>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    live: Arc<std::sync::atomic::AtomicUsize>,
    /// What happened to connections before they authenticated (WebSocket and stats).
    handshakes: Arc<HandshakeCounters>,
    stopping: bool,
}

impl std::fmt::Debug for RelayServerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServerActor")
            .field("url", &self.url)
            .field("connections", &self.links.len())
            .field("circuits", &self.forwarders.len())
            .finish_non_exhaustive()
    }
}

impl RelayServerActor {
    pub(crate) fn new(parts: ServerParts) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            state: parts.state,
            url: parts.url,
            config: parts.config,
            sockets: parts.sockets,
            links: HashMap::new(),
            forwarders: HashMap::new(),
            timer: None,
            shutdown,
            tasks: Vec::new(),
            live: Arc::default(),
            handshakes: Arc::default(),
            stopping: false,
        }
    }

    /// Performs every queued output of the state, then re-arms the timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(out) = self.state.poll_output() {
            match out {
                Output::Send { conn, msg } => self.send_to(conn, &msg),
                Output::Close { conn, reason } => self.close_conn(conn, reason),
                Output::Splice { circuit, a, b, limits } => self.splice(ctx, circuit, a, b, limits),
                Output::RateChanged { circuit, rate } => {
                    if let Some(f) = self.forwarders.get(&circuit) {
                        f.rate.send_replace(rate);
                    }
                }
                Output::Event(e) => log_event(&e),
                other => tracing::debug!(?other, "relay output not handled by this version"),
            }
        }
        self.rearm(ctx);
    }

    fn rearm(&mut self, ctx: &mut Context<Self>) {
        let next = self.state.poll_timeout();
        if self.timer.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let delay = at.saturating_duration_since(Instant::now());
            let handle = ctx.run_later(delay, |act, ctx| {
                act.timer = None;
                act.state.handle_timeout(Instant::now());
                act.drain(ctx);
            });
            self.timer = Some((at, handle));
        }
    }

    fn send_to(&mut self, conn: ConnId, msg: &RelayMessage) {
        let data = match msg.encode() {
            Ok(v) => Bytes::from(v),
            Err(e) => {
                tracing::error!(%conn, kind = msg.type_name(), "cannot encode relay message: {e}");
                return;
            }
        };
        match self.links.get(&conn) {
            Some(Link::Direct(tx)) => {
                let last = matches!(msg, RelayMessage::CircuitReady { .. });
                if tx.try_send(ConnCmd::Send { data, last }).is_err() {
                    // Full: the client does not read what it asked for. Drop it (closing
                    // the channel ends its task) and let the state forget it.
                    tracing::warn!(%conn, "relay client not reading its messages: dropped");
                    self.links.remove(&conn);
                    self.state.handle_closed(conn, Instant::now());
                }
            }
            Some(Link::Spliced(circuit, side)) => {
                let (circuit, side) = (*circuit, *side);
                self.command_forwarder(circuit, FwdCmd::Send(side, data));
            }
            None => {}
        }
    }

    fn close_conn(&mut self, conn: ConnId, reason: CloseReason) {
        let code = reason.code.ws_close_code();
        match self.links.remove(&conn) {
            Some(Link::Direct(tx)) => {
                // If the queue is full the channel is dropped, which drops the socket.
                let _ = tx.try_send(ConnCmd::Close { code, reason: reason.message });
            }
            Some(Link::Spliced(circuit, side)) => {
                self.command_forwarder(circuit, FwdCmd::Close(side, code, reason.message));
            }
            None => {}
        }
    }

    fn command_forwarder(&mut self, circuit: CircuitId, cmd: FwdCmd) {
        let Some(f) = self.forwarders.get(&circuit) else { return };
        if f.ctl.try_send(cmd).is_err() {
            // The forwarder is not taking commands (stuck on a peer that does not read):
            // stop it, which drops both sockets.
            tracing::warn!(%circuit, "circuit forwarder not responding: stopped");
            f.addr.do_send(StopForwarder);
        }
    }

    fn splice(
        &mut self,
        ctx: &mut Context<Self>,
        circuit: CircuitId,
        a: ConnId,
        b: ConnId,
        limits: kizuna::relay::server::CircuitLimits,
    ) {
        let mut handover = |conn: ConnId, side: Side| {
            let (tx, rx) = oneshot::channel();
            if let Some(Link::Direct(link)) = self.links.get(&conn) {
                // A failed handover drops `tx`: the forwarder then sees that side gone.
                let _ = link.try_send(ConnCmd::Handover(tx));
                self.links.insert(conn, Link::Spliced(circuit, side));
            }
            rx
        };
        let a_rx = handover(a, Side::A);
        let b_rx = handover(b, Side::B);
        let (ctl_tx, ctl_rx) = mpsc::channel(FORWARDER_QUEUE);
        let (rate_tx, rate_rx) = watch::channel(limits.rate);
        let me = ctx.address();
        let forwarder = RelayForwarderActor::new(super::forwarder::ForwarderSetup {
            circuit,
            a: a_rx,
            b: b_rx,
            limits,
            ctl: ctl_rx,
            rate: rate_rx,
            reports: me.clone().recipient(),
            exited: me.recipient(),
            tap: self.config.tap.clone(),
            live: connection::LiveGuard::new(self.live.clone()),
        });
        let addr = forwarder.start();
        self.forwarders.insert(circuit, ForwarderEntry { addr, ctl: ctl_tx, rate: rate_tx, a, b });
    }

    fn start_tasks(&mut self, ctx: &mut Context<Self>) {
        let Some(sockets) = self.sockets.take() else { return };
        let tls = self.config.ws.server_tls().cloned().map(tokio_rustls::TlsAcceptor::from);
        let accept = Arc::new(AcceptCtx {
            server: ctx.address(),
            admission: self.config.admission.clone(),
            relay_name: self.url.clone(),
            opts: self.config.ws_options(),
            tls,
            limits: self.config.handshake_limits,
            counters: self.handshakes.clone(),
            rng: ring::rand::SystemRandom::new(),
            live: self.live.clone(),
        });
        let rt = io_runtime();
        let shutdown = self.shutdown.subscribe();
        self.tasks.push(rt.spawn(connection::accept_loop(accept, sockets.listener, shutdown)));
        self.tasks.extend(sockets.stun.spawn(rt));
        if let Some(listener) = sockets.stats {
            self.tasks.push(rt.spawn(stats::serve(listener, ctx.address(), self.handshakes.clone())));
        }
        let every = self.config.metrics_log_interval;
        if !every.is_zero() {
            ctx.run_interval(every, |act, _| act.log_metrics());
        }
    }

    fn log_metrics(&self) {
        let m = self.state.metrics(Instant::now());
        let line = serde_json::json!({
            "connections": m.connections,
            "reservations": m.reservations,
            "circuits_pending": m.circuits_pending,
            "circuits_open": m.circuits_open,
            "circuit_rate": m.circuit_rate,
            "totals": m.totals,
            "limit_hits": m.limit_hits,
        });
        tracing::info!(target: "kizuna::relay::metrics", "{line}");
    }

    fn stop_tasks(&mut self) {
        self.shutdown.send_replace(true);
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Actor for RelayServerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_tasks(ctx);
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> actix::Running {
        self.stop_tasks();
        for f in self.forwarders.values() {
            f.addr.do_send(StopForwarder);
        }
        actix::Running::Stop
    }
}

impl Handler<ConnAuthenticated> for RelayServerActor {
    type Result = ();
    fn handle(&mut self, m: ConnAuthenticated, ctx: &mut Context<Self>) {
        if self.stopping {
            let _ = m.tx.try_send(ConnCmd::Close {
                code: ErrorCode::Shutdown.ws_close_code(),
                reason: "the relay is shutting down".into(),
            });
            return;
        }
        tracing::debug!(conn = %m.conn, peer = %m.peer, remote = %m.remote, purpose = ?m.purpose, "relay client authenticated");
        self.links.insert(m.conn, Link::Direct(m.tx));
        if let Some(local) = m.local {
            self.state.handle_addresses(m.conn, m.remote, local);
        }
        self.state.handle_authenticated(m.conn, m.peer, m.purpose, Instant::now());
        self.drain(ctx);
    }
}

impl Handler<ConnEvent> for RelayServerActor {
    type Result = ();
    fn handle(&mut self, m: ConnEvent, ctx: &mut Context<Self>) {
        let now = Instant::now();
        match m.input {
            ConnInput::Message(msg) => self.state.handle_message(m.conn, msg, now),
            ConnInput::Malformed(detail) => {
                self.state.handle_malformed(m.conn, detail, now);
                self.drain(ctx);
                // Unknown to the state (e.g. raced with a close): close it all the same.
                if let Some(Link::Direct(tx)) = self.links.remove(&m.conn) {
                    let _ = tx.try_send(ConnCmd::Close {
                        code: ErrorCode::ProtocolViolation.ws_close_code(),
                        reason: "not a relay message".into(),
                    });
                }
            }
            ConnInput::Closed => {
                if matches!(self.links.get(&m.conn), Some(Link::Direct(_))) {
                    self.links.remove(&m.conn);
                }
                self.state.handle_closed(m.conn, now);
            }
        }
        self.drain(ctx);
    }
}

impl Handler<ForwardReport> for RelayServerActor {
    type Result = ();
    fn handle(&mut self, r: ForwardReport, ctx: &mut Context<Self>) {
        let Some(circuit) = r.circuit else { return };
        let now = Instant::now();
        for (dir, n) in [(Direction::AToB, r.a_to_b), (Direction::BToA, r.b_to_a)] {
            if n > 0 {
                // An error here closes the circuit (the state queued the closes).
                let _ = self.state.record_forwarded(circuit, dir, n, now);
            }
        }
        for _ in 0..r.throttled {
            self.state.record_throttled(circuit);
        }
        if r.handshake {
            self.state.record_handshake(circuit);
        }
        if let Some((dir, n)) = r.over_cap {
            if let Err(e) = self.state.record_forwarded(circuit, dir, n, now) {
                tracing::info!(%circuit, "circuit closed: {e}");
            }
        }
        if let Some(side) = r.ended {
            if let Some(f) = self.forwarders.get(&circuit) {
                let conn = match side {
                    Side::A => f.a,
                    Side::B => f.b,
                };
                self.links.remove(&conn);
                self.state.handle_closed(conn, now);
            }
        }
        self.drain(ctx);
    }
}

impl Handler<ForwarderExited> for RelayServerActor {
    type Result = ();
    fn handle(&mut self, m: ForwarderExited, ctx: &mut Context<Self>) {
        let Some(f) = self.forwarders.remove(&m.circuit) else { return };
        let now = Instant::now();
        for conn in [f.a, f.b] {
            self.links.remove(&conn);
            self.state.handle_closed(conn, now);
        }
        self.drain(ctx);
    }
}

impl Handler<GetRelayMetrics> for RelayServerActor {
    type Result = actix::MessageResult<GetRelayMetrics>;
    fn handle(&mut self, _: GetRelayMetrics, _: &mut Context<Self>) -> Self::Result {
        let mut m = self.state.metrics(Instant::now());
        m.handshakes = self.handshakes.snapshot();
        actix::MessageResult(m)
    }
}

impl Handler<StopRelay> for RelayServerActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: StopRelay, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        self.stop_tasks();
        let reason = "the relay is shutting down";
        let error = RelayMessage::error(ErrorCode::Shutdown, reason).encode().ok().map(Bytes::from);
        let code = ErrorCode::Shutdown.ws_close_code();
        for (_, link) in self.links.drain() {
            if let Link::Direct(tx) = link {
                if let Some(data) = &error {
                    let _ = tx.try_send(ConnCmd::Send { data: data.clone(), last: false });
                }
                let _ = tx.try_send(ConnCmd::Close { code, reason: reason.into() });
            }
        }
        for f in self.forwarders.values() {
            for side in [Side::A, Side::B] {
                if let Some(data) = &error {
                    let _ = f.ctl.try_send(FwdCmd::Send(side, data.clone()));
                }
                let _ = f.ctl.try_send(FwdCmd::Close(side, code, reason.into()));
            }
        }
        let live = self.live.clone();
        let wait = async move {
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while live.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(STOP_POLL).await;
            }
        };
        Box::pin(wrap_future::<_, Self>(wait).map(|(), act, ctx| {
            tracing::info!(url = %act.url, "relay stopped");
            actix::ActorContext::stop(ctx);
        }))
    }
}

fn log_event(e: &RelayEvent) {
    match e {
        RelayEvent::ReservationAccepted { peer, renewed, ttl } => {
            tracing::info!(%peer, renewed, ?ttl, "reservation accepted")
        }
        RelayEvent::ReservationEnded { peer, expired } => tracing::info!(%peer, expired, "reservation ended"),
        RelayEvent::CircuitRequested { circuit, src, dst } => {
            tracing::info!(%circuit, %src, %dst, "circuit requested")
        }
        RelayEvent::CircuitOpened { circuit, src, dst } => {
            tracing::info!(%circuit, %src, %dst, "circuit opened")
        }
        RelayEvent::CircuitClosed { usage, code } => {
            let usage = serde_json::to_string(usage).unwrap_or_default();
            tracing::info!(code = code.as_u16(), %usage, "circuit closed")
        }
        RelayEvent::LimitHit { kind, peer } => tracing::warn!(?kind, %peer, "relay limit hit"),
        RelayEvent::ProtocolViolation { conn, peer, detail } => {
            tracing::warn!(%conn, %peer, %detail, "relay protocol violation")
        }
        RelayEvent::PeerGone { usage } => {
            let usage = serde_json::to_string(usage).unwrap_or_default();
            tracing::info!(%usage, "relay peer gone")
        }
        other => tracing::debug!(?other, "relay event"),
    }
}
