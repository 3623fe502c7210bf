//! `HolePunchActor`: drives one hole-punch attempt with a peer already reached through a
//! relay (see `docs/punch.md`).
//!
//! * **Owns** one sans-IO [`PunchAttempt`] (gathering, the UDP punch and TCP simultaneous
//!   open: every decision is there), its one timer, the QUIC transport's side channel
//!   (the non-QUIC half of the UDP socket QUIC uses, so the hole punched is the hole QUIC
//!   then uses), the TCP punch port it reserves and the tasks that connect from it.
//! * **In:** [`PunchSignal`] (the peer's punch messages, decoded where they arrived and
//!   routed by the supervisor), [`PunchDatagram`] (side-channel datagrams carrying this
//!   attempt's STUN transaction ids or punch token, routed by the side reader), what its
//!   TCP tasks report, [`Fault`] (tests).
//! * **Out:** punch messages as [`SendSignal`] to the peer's actor (which sends them as
//!   `SIGNAL` frames on the relayed path), datagrams from the side channel, its routing
//!   keys in the side reader's table, and one [`PunchFinished`] to the peer's actor: on
//!   success the initiator's QUIC (or punched TCP) connection (a new direct path: the
//!   traffic moves to it, `PathChanged` with reason `upgrade`); the responder just
//!   reports success (its QUIC listener accepts the initiator's dial; a punched TCP
//!   connection goes to the peer's actor as `Inbound`).
//! * **Supervised** by the peer's actor, never restarted: the peer's path manager decides
//!   when to try again.
//! * **Stops** when the attempt finishes (after starting the initiator's dial).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle};
use bytes::Bytes;
use kizuna::{
    punch::{
        attempt::Output, signal::encode_punch, AttemptConfig, Finish, LocalEnv, PunchAttempt,
        PunchDecodeError, PunchMessage, Role, RouteKeys,
    },
    transport::quic::{demux::SideChannel, QuicTransport},
    transport::{tcp::punched_connection, tcp_punch::TcpPunch},
    Connection, Incoming, LocalNode, PeerId,
};
use ring::rand::SecureRandom;

use tokio::{net::TcpStream, sync::mpsc};

use crate::{
    node::child::{ChildExited, ChildId, ExitGuard, Fault},
    node::listener::Inbound,
    node::side_reader::{lock, PunchInboxes},
    node::supervision::ExitReason,
    runtime::io_runtime,
};

/// A punch message from `peer`, relayed and decoded once where it arrived
/// ([`kizuna::punch::Signal::decode`]); `Err` says why the one it sent did not decode
/// (the session then fails and tells the peer).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct PunchSignal {
    pub(crate) peer: PeerId,
    pub(crate) message: Result<PunchMessage, PunchDecodeError>,
}

/// A side-channel datagram routed to this attempt (see [`crate::node::side_reader`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct PunchDatagram {
    pub(crate) from: SocketAddr,
    pub(crate) bytes: Bytes,
}

/// Ask the relay client to signal `payload` to `to`.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), kizuna::relay::client::ClientCommandError>")]
pub(crate) struct SendSignal {
    pub(crate) to: PeerId,
    pub(crate) payload: Vec<u8>,
}

/// How an attempt ended, reported to the supervisor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct PunchFinished {
    pub(crate) id: ChildId,
    pub(crate) peer: PeerId,
    /// `Ok(Some(conn))`: the initiator's direct connection; `Ok(None)`: the responder
    /// succeeded (the peer dials it); `Err`: why no direct path was established.
    pub(crate) result: Result<Option<Connection>, String>,
}

/// Where a hole-punch actor sends its output.
pub(crate) struct PunchPorts {
    pub(crate) signal: Recipient<SendSignal>,
    pub(crate) finished: Recipient<PunchFinished>,
    pub(crate) exited: Recipient<ChildExited>,
    /// The responder's connections over a punched TCP path (adopted like any inbound).
    pub(crate) inbound: Recipient<Inbound>,
    /// The side reader's routing table, where the actor registers the keys of the
    /// datagrams it is waiting for.
    pub(crate) datagrams: PunchInboxes,
}

/// What a node knows about its network when a punch starts: the sources of its local
/// candidates (see [`LocalEnv`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct PunchEnv {
    /// STUN servers to learn the socket's public mapping from (configured ones first,
    /// then those the relay advertises).
    pub(crate) stun: Vec<SocketAddr>,
    /// The host's interface addresses (host candidates for a wildcard-bound socket).
    pub(crate) interfaces: Vec<IpAddr>,
    /// The IP the relay sees this node come from.
    pub(crate) relay_observed: Option<IpAddr>,
    /// The node, when it runs TCP: then TCP simultaneous open is tried in parallel.
    pub(crate) tcp: Option<Arc<LocalNode>>,
}

/// Drives one [`PunchAttempt`] with one peer. See the module documentation.
pub(crate) struct HolePunchActor {
    peer: PeerId,
    attempt: PunchAttempt,
    /// The node, when TCP simultaneous open is tried (it secures the punched stream).
    node: Option<Arc<LocalNode>>,
    tcp: TcpSide,
    side: Arc<SideChannel>,
    quic: Arc<QuicTransport>,
    ports: PunchPorts,
    /// This actor's entry in the side reader's table (removed when dropped).
    routes: RouteEntry,
    guard: ExitGuard,
    timer: Option<SpawnHandle>,
    /// Whether the gathered candidates were logged.
    logged_candidates: bool,
}

/// Fresh randomness for the attempt's STUN transaction ids and session token.
fn random_seed(peer: &PeerId) -> [u8; 32] {
    let mut seed = [0u8; 32];
    if ring::rand::SystemRandom::new().fill(&mut seed).is_err() {
        // No OS randomness: the seed must still differ between sessions.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            ^ u128::from(std::process::id());
        seed[..16].copy_from_slice(&t.to_le_bytes());
        seed[16..].copy_from_slice(&peer.as_bytes()[..16]);
    }
    seed
}

impl HolePunchActor {
    /// An attempt with `peer` in `role`, punching from `quic`'s socket (`side`). It first
    /// gathers the socket's server-reflexive addresses from `env.stun` (through the same
    /// socket, so the mapping learned is the one punched), then offers every local
    /// candidate `env` allows; with `env.tcp` it reserves a TCP port for simultaneous open.
    pub(crate) fn new(
        id: ChildId,
        peer: PeerId,
        role: Role,
        env: PunchEnv,
        quic: Arc<QuicTransport>,
        side: Arc<SideChannel>,
        ports: PunchPorts,
    ) -> Self {
        let mut tcp = TcpSide::default();
        if env.tcp.is_some() {
            // Registered with the I/O runtime, where the attempt runs.
            let _rt = io_runtime().enter();
            match TcpPunch::bind(IpAddr::from([0, 0, 0, 0])) {
                Ok(p) => tcp.reserved = Some(p),
                Err(e) => tracing::debug!("no TCP simultaneous open: cannot reserve a port: {e}"),
            }
        }
        let local = LocalEnv {
            udp: side.local_addr().ok(),
            stun: env.stun,
            interfaces: env.interfaces,
            relay_observed: env.relay_observed,
            tcp: tcp.reserved.as_ref().map(TcpPunch::local_addr),
        };
        let attempt =
            PunchAttempt::new(role, Instant::now(), AttemptConfig::default(), local, random_seed(&peer));
        let routes = RouteEntry { id, table: ports.datagrams.clone(), keys: None };
        let guard = ExitGuard::new(id, ports.exited.clone());
        Self {
            peer,
            attempt,
            node: env.tcp,
            tcp,
            side,
            quic,
            ports,
            routes,
            guard,
            timer: None,
            logged_candidates: false,
        }
    }

    /// After every input: updates the routing keys, performs the attempt's outputs, then
    /// re-arms the timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        self.routes.update(self.attempt.route_keys(), &ctx.address().recipient());
        if !self.logged_candidates {
            if let (Some(s), Some(g)) = (self.attempt.session(), self.attempt.gathered()) {
                self.logged_candidates = true;
                let local = s.local_candidates();
                tracing::debug!(peer = %self.peer, ?local, mapping = ?g.mapping, "punch candidates gathered");
            }
        }
        while let Some(out) = self.attempt.poll_output() {
            match out {
                Output::Transmit { to, bytes } => {
                    let side = self.side.clone();
                    io_runtime().spawn(async move {
                        if let Err(e) = side.send_to(&bytes, to).await {
                            tracing::debug!(%to, "side-channel datagram not sent: {e}");
                        }
                    });
                }
                Output::Signal(m) => {
                    let send =
                        self.ports.signal.send(SendSignal { to: self.peer, payload: encode_punch(&m) });
                    let me = ctx.address();
                    actix::spawn(async move {
                        let err = match send.await {
                            Ok(Ok(())) => return,
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                        };
                        me.do_send(SignalFailed(err));
                    });
                }
                Output::StartTcp { remotes, window } => self.start_tcp(remotes, window, ctx),
                Output::Finished(f) => self.finish(f, ctx),
                _ => {}
            }
        }
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if let Some(at) = self.attempt.poll_timeout() {
            let after = at.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(after, |act, ctx| {
                act.timer = None;
                act.attempt.handle_timeout(Instant::now());
                act.drain(ctx);
            }));
        }
    }

    /// Does what the attempt's end asks, reports it, and stops.
    fn finish(&mut self, finish: Finish, ctx: &mut Context<Self>) {
        let (peer, id, finished) = (self.peer, self.guard.id(), self.ports.finished.clone());
        match finish {
            Finish::DialQuic { remote } => {
                tracing::info!(%peer, %remote, "hole punched: dialing QUIC");
                // Dial from the punched socket; the supervisor adopts the result.
                let quic = self.quic.clone();
                io_runtime().spawn(async move {
                    let result = match quic.connect_with_info(remote, peer).await {
                        Ok((conn, _)) => Ok(Some(conn)),
                        Err(e) => Err(format!("QUIC over the punched path to {remote} failed: {e}")),
                    };
                    let _ = finished.send(PunchFinished { id, peer, result }).await;
                });
            }
            Finish::UseTcp { udp_reason } => {
                let (Some((stream, remote)), Some(node)) = (self.tcp.stream.take(), self.node.clone()) else {
                    finished.do_send(PunchFinished { id, peer, result: Err(udp_reason.to_string()) });
                    return self.stop(ctx);
                };
                io_runtime().spawn(async move {
                    let result = match punched_connection(&node, stream, remote, true, peer).await {
                        Ok(conn) => {
                            tracing::info!(%peer, %remote, "TCP simultaneous open succeeded");
                            Ok(Some(conn))
                        }
                        Err(e) => {
                            Err(format!("{udp_reason}; TCP over the punched path to {remote} failed: {e}"))
                        }
                    };
                    let _ = finished.send(PunchFinished { id, peer, result }).await;
                });
            }
            Finish::AcceptQuic { remote } => {
                tracing::info!(%peer, %remote, "hole punched: the peer dials QUIC");
                finished.do_send(PunchFinished { id, peer, result: Ok(None) });
            }
            Finish::TcpHandedOver => finished.do_send(PunchFinished { id, peer, result: Ok(None) }),
            Finish::Failed(e) => finished.do_send(PunchFinished { id, peer, result: Err(e.to_string()) }),
            _ => finished.do_send(PunchFinished { id, peer, result: Err(format!("{finish:?}")) }),
        }
        self.stop(ctx);
    }

    fn stop(&mut self, ctx: &mut Context<Self>) {
        self.guard.set(ExitReason::Normal);
        ctx.stop();
    }

    /// Starts TCP simultaneous open from the reserved port.
    fn start_tcp(&mut self, remotes: Vec<SocketAddr>, window: std::time::Duration, ctx: &mut Context<Self>) {
        let (Some(punch), Some(node)) = (self.tcp.reserved.take(), self.node.clone()) else {
            self.attempt.handle_tcp_ended(Instant::now(), false);
            return;
        };
        let (tx, mut rx) = mpsc::channel(4);
        let me = ctx.address();
        let (role, peer, inbound) = (self.attempt.role(), self.peer, self.ports.inbound.clone());
        let rt = io_runtime();
        let search = rt.spawn(async move {
            punch.open(&remotes, window, tx).await;
        });
        let deliver = rt.spawn(async move {
            let mut handshakes = tokio::task::JoinSet::new();
            let mut searching = true;
            while searching || !handshakes.is_empty() {
                tokio::select! {
                    found = rx.recv(), if searching => match found {
                        Some((stream, remote)) if role == Role::Initiator => {
                            // The first stream is the one; the attempt decides whether to use it.
                            me.do_send(TcpFound { stream, remote });
                            return;
                        }
                        // Responder: try the handshake on every stream; the initiator uses one.
                        Some((stream, remote)) => {
                            let node = node.clone();
                            handshakes.spawn(async move { punched_connection(&node, stream, remote, false, peer).await });
                        }
                        None => searching = false,
                    },
                    Some(done) = handshakes.join_next(), if !handshakes.is_empty() => match done {
                        Ok(Ok(conn)) => {
                            tracing::info!(%peer, remote = %conn.info().remote_addr, "TCP simultaneous open succeeded");
                            let _ = inbound.send(Inbound(Incoming::Connection(conn))).await;
                            me.do_send(TcpEnded { connected: true });
                            return;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TCP punch handshake failed: {e}"),
                        Err(_) => {}
                    },
                }
            }
            me.do_send(TcpEnded { connected: false });
        });
        self.tcp.tasks = vec![search, deliver];
    }
}

/// This actor's entry in the side reader's table: registered on the first update, its
/// keys replaced when they change, removed on drop — so also when the actor dies by
/// panic (actix then drops it without calling `stopped`).
struct RouteEntry {
    id: ChildId,
    table: PunchInboxes,
    /// The keys last registered.
    keys: Option<RouteKeys>,
}

impl RouteEntry {
    fn update(&mut self, keys: RouteKeys, inbox: &Recipient<PunchDatagram>) {
        if self.keys.as_ref() == Some(&keys) {
            return;
        }
        if let Err(e) = lock(&self.table).set(self.id, inbox, keys.clone()) {
            // The attempt then misses those datagrams and fails; the relayed path stays.
            tracing::warn!(id = self.id, "punch datagrams not routed: {e}");
        }
        self.keys = Some(keys);
    }
}

impl Drop for RouteEntry {
    fn drop(&mut self) {
        lock(&self.table).remove(self.id);
    }
}

/// TCP simultaneous open: what the actor holds (the decisions are the attempt's).
#[derive(Default)]
struct TcpSide {
    /// The port reserved for the session, until the attempt starts.
    reserved: Option<TcpPunch>,
    /// Initiator: the stream found, held until the attempt says whether to use it.
    stream: Option<(TcpStream, SocketAddr)>,
    /// The attempt's tasks, aborted when the actor stops.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Initiator: TCP simultaneous open established a stream.
#[derive(Message)]
#[rtype(result = "()")]
struct TcpFound {
    stream: TcpStream,
    remote: SocketAddr,
}

/// The TCP attempt ended; `connected`: the responder handed a connection over.
#[derive(Message)]
#[rtype(result = "()")]
struct TcpEnded {
    connected: bool,
}

impl Handler<TcpFound> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: TcpFound, ctx: &mut Context<Self>) {
        self.tcp.stream = Some((msg.stream, msg.remote));
        self.attempt.handle_tcp_found(Instant::now());
        self.drain(ctx);
    }
}

impl Handler<TcpEnded> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: TcpEnded, ctx: &mut Context<Self>) {
        self.attempt.handle_tcp_ended(Instant::now(), msg.connected);
        self.drain(ctx);
    }
}

/// Relay signaling failed: the attempt cannot continue.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct SignalFailed(String);

impl Actor for HolePunchActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Punch traffic is a few messages per round; bound the mailbox anyway.
        ctx.set_mailbox_capacity(64);
        self.drain(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for t in self.tcp.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Handler<PunchSignal> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: PunchSignal, ctx: &mut Context<Self>) {
        self.attempt.handle_signal(Instant::now(), msg.message);
        self.drain(ctx);
    }
}

impl Handler<PunchDatagram> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: PunchDatagram, ctx: &mut Context<Self>) {
        if self.attempt.handle_datagram(Instant::now(), msg.from, &msg.bytes) {
            self.drain(ctx);
        }
    }
}

impl Handler<SignalFailed> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: SignalFailed, ctx: &mut Context<Self>) {
        self.attempt.handle_signaling_failed(Instant::now(), msg.0);
        self.drain(ctx);
    }
}

impl Handler<Fault> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, fault: Fault, ctx: &mut Context<Self>) {
        match fault {
            Fault::Panic => panic!("injected panic in a hole-punch actor"),
            Fault::Kill | Fault::DropConnection => {
                self.guard.set(ExitReason::Killed);
                ctx.stop();
            }
        }
    }
}
