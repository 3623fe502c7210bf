//! `HolePunchActor`: drives one hole-punch attempt with a peer already reached through a
//! relay (see `docs/punch.md`).
//!
//! * **Owns** one sans-IO [`PunchSession`], its one timer, and the QUIC transport's side
//!   channel (the non-QUIC half of the UDP socket QUIC uses, so the hole punched is the
//!   hole QUIC then uses).
//! * **In:** [`PunchSignal`] (the peer's punch messages, relayed signaling, routed by the
//!   supervisor), [`PunchDatagram`] (datagrams from the side channel, filtered with
//!   [`PunchSession::accepts`]), [`Fault`] (tests).
//! * **Out:** punch messages as [`SendSignal`] to the relay client, punch datagrams from
//!   the side channel, and one [`PunchFinished`] to the supervisor: on success the
//!   initiator's QUIC connection to the punched address (the supervisor adopts it, which
//!   upgrades the relayed connection and emits `PathUpgraded`); the responder just
//!   reports success (its QUIC listener accepts the initiator's dial).
//! * **Supervised** as a child with restart policy *never*: the supervisor itself retries
//!   a failed attempt later.
//! * **Stops** when the session ends (after the initiator's dial).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle};
use bytes::Bytes;
use kizuna::{
    nat::{Gatherer, ProbeConfig},
    punch::{
        candidates::{local_candidates, tcp_candidates},
        signal::encode_punch,
        Event as PunchEvent, MappingHint, Output, PathRace, PunchConfig, PunchDecodeError, PunchMessage,
        PunchSession, RaceStep, Role, TcpPhase,
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

/// A non-QUIC datagram that arrived on the QUIC socket.
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
}

/// What a node knows about its network when a punch starts: the sources of its local
/// candidates (see [`local_candidates`]).
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

/// How long TCP simultaneous open is tried, from the moment the peer's TCP candidates
/// are known. 8 s: longer than the UDP punch's three rounds, so a TCP path can still
/// rescue a pair whose UDP punch failed.
const TCP_WINDOW: Duration = Duration::from_secs(8);

/// STUN retransmission while gathering: requests at 0, 200 and 600 ms, given up at 1 s.
/// Shorter than NAT discovery's: gathering delays the punch, and a server that does not
/// answer within a second (UDP blocked, server down) is not worth waiting for.
const GATHER_PROBE: ProbeConfig =
    ProbeConfig { initial_rto: Duration::from_millis(200), max_transmissions: 3, last_wait: 2 };

/// Punch messages kept while gathering (the peer's offer, its retransmissions).
const MAX_EARLY: usize = 8;

/// Where the attempt is: learning the socket's public mapping, then punching.
enum Stage {
    Gathering {
        gatherer: Gatherer,
        early: Vec<Result<PunchMessage, PunchDecodeError>>,
        seed: [u8; 32],
    },
    Punching(Box<PunchSession>),
    /// Between the two (never observed outside `start_session`).
    Moving,
}

/// Drives one [`PunchSession`] with one peer. See the module documentation.
pub(crate) struct HolePunchActor {
    peer: PeerId,
    role: Role,
    stage: Stage,
    env: PunchEnv,
    tcp: TcpSide,
    side: Arc<SideChannel>,
    quic: Arc<QuicTransport>,
    ports: PunchPorts,
    guard: ExitGuard,
    timer: Option<SpawnHandle>,
}

/// Fresh randomness for session tokens and STUN transaction ids.
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
    /// A session with `peer` in `role`, punching from `quic`'s socket (`side`). It first
    /// gathers the socket's server-reflexive addresses from `env.stun` (through the same
    /// socket, so the mapping learned is the one punched), then offers every local
    /// candidate `env` allows.
    pub(crate) fn new(
        id: ChildId,
        peer: PeerId,
        role: Role,
        env: PunchEnv,
        quic: Arc<QuicTransport>,
        side: Arc<SideChannel>,
        ports: PunchPorts,
    ) -> Self {
        let gather_seed = random_seed(&peer);
        let servers: Vec<SocketAddr> = match side.local_addr() {
            Ok(bound) => env.stun.iter().copied().filter(|s| s.is_ipv4() == bound.is_ipv4()).collect(),
            Err(_) => Vec::new(),
        };
        let gatherer = Gatherer::new(&servers, Instant::now(), GATHER_PROBE, gather_seed);
        let stage = Stage::Gathering { gatherer, early: Vec::new(), seed: random_seed(&peer) };
        let guard = ExitGuard::new(id, ports.exited.clone());
        Self { peer, role, stage, env, tcp: TcpSide::default(), side, quic, ports, guard, timer: None }
    }

    /// Gathering is over: build the candidates and start the session, replaying the
    /// messages that arrived meanwhile.
    fn start_session(&mut self) {
        let Stage::Gathering { gatherer, early, seed } = std::mem::replace(&mut self.stage, Stage::Moving)
        else {
            return;
        };
        let gathered = gatherer.result();
        self.tcp.local_mapping = gathered.mapping;
        let mut local = match self.side.local_addr() {
            Ok(bound) => {
                local_candidates(bound, &self.env.interfaces, &gathered.reflexive, self.env.relay_observed)
            }
            Err(_) => Vec::new(),
        };
        if self.env.tcp.is_some() {
            // Registered with the I/O runtime, where the attempt runs.
            let _rt = io_runtime().enter();
            match TcpPunch::bind(IpAddr::from([0, 0, 0, 0])) {
                Ok(p) => {
                    local.extend(tcp_candidates(
                        p.local_addr(),
                        &self.env.interfaces,
                        self.env.relay_observed,
                    ));
                    self.tcp.reserved = Some(p);
                }
                Err(e) => tracing::debug!("no TCP simultaneous open: cannot reserve a port: {e}"),
            }
        }
        tracing::debug!(peer = %self.peer, ?local, mapping = ?gathered.mapping, "punch candidates gathered");
        let now = Instant::now();
        let mut session =
            PunchSession::new(self.role, now, PunchConfig::default(), local, gathered.mapping, seed);
        for m in early {
            match m {
                Ok(m) => session.handle_message(now, m),
                // Ends the session; its `Failed` event is among the outputs.
                Err(e) => session.handle_undecodable(now, e),
            }
        }
        self.stage = Stage::Punching(Box::new(session));
    }

    /// Sends the gatherer's requests; moves on to punching once it is done.
    fn drain_gathering(&mut self) {
        let Stage::Gathering { gatherer, .. } = &mut self.stage else { return };
        while let Some((to, bytes)) = gatherer.poll_transmit() {
            let side = self.side.clone();
            io_runtime().spawn(async move {
                if let Err(e) = side.send_to(&bytes, to).await {
                    tracing::debug!(%to, "STUN request not sent: {e}");
                }
            });
        }
        if gatherer.is_done() {
            self.start_session();
        }
    }

    /// Performs the session's outputs, then re-arms the timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        self.drain_gathering();
        self.maybe_start_tcp(ctx);
        while let Some(out) = self.session_mut().and_then(|s| s.poll_output()) {
            match out {
                Output::SendMessage(m) => {
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
                Output::SendDatagram { to, bytes } => {
                    let side = self.side.clone();
                    io_runtime().spawn(async move {
                        if let Err(e) = side.send_to(&bytes, to).await {
                            tracing::debug!(%to, "punch datagram not sent: {e}");
                        }
                    });
                }
                Output::Event(PunchEvent::Succeeded { remote }) => self.succeeded(remote, ctx),
                Output::Event(PunchEvent::Failed { reason }) => self.udp_failed(reason.to_string(), ctx),
                _ => {}
            }
        }
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let next = match &self.stage {
            Stage::Gathering { gatherer, .. } => gatherer.poll_timeout(),
            Stage::Punching(session) => session.poll_timeout(),
            Stage::Moving => None,
        };
        if let Some(at) = next {
            let after = at.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(after, |act, ctx| {
                act.timer = None;
                let now = Instant::now();
                match &mut act.stage {
                    Stage::Gathering { gatherer, .. } => gatherer.handle_timeout(now),
                    Stage::Punching(session) => session.handle_timeout(now),
                    Stage::Moving => {}
                }
                act.drain(ctx);
            }));
        }
    }

    fn session_mut(&mut self) -> Option<&mut PunchSession> {
        match &mut self.stage {
            Stage::Punching(s) => Some(s),
            _ => None,
        }
    }

    fn succeeded(&mut self, remote: SocketAddr, ctx: &mut Context<Self>) {
        tracing::info!(peer = %self.peer, %remote, role = ?self.role, "hole punched");
        if self.role == Role::Responder {
            self.finish(Ok(None), ctx);
            return;
        }
        // Dial from the punched socket; the supervisor adopts the result.
        let (quic, peer, id, finished) =
            (self.quic.clone(), self.peer, self.guard.id(), self.ports.finished.clone());
        io_runtime().spawn(async move {
            let result = match quic.connect_with_info(remote, peer).await {
                Ok((conn, _)) => Ok(Some(conn)),
                Err(e) => Err(format!("QUIC over the punched path to {remote} failed: {e}")),
            };
            let _ = finished.send(PunchFinished { id, peer, result }).await;
        });
        self.guard.set(ExitReason::Normal);
        ctx.stop();
    }

    /// The UDP punch failed: finish, unless TCP simultaneous open may still deliver.
    fn udp_failed(&mut self, reason: String, ctx: &mut Context<Self>) {
        let step = self.tcp.race.udp_failed(reason);
        self.step(step, ctx);
    }

    /// Does what the UDP/TCP race decided.
    fn step(&mut self, step: RaceStep, ctx: &mut Context<Self>) {
        match step {
            RaceStep::Wait => {}
            RaceStep::UseTcp { udp_reason } => self.use_tcp(udp_reason, ctx),
            RaceStep::EndUdpSession => {
                tracing::debug!(peer = %self.peer, "UDP blocked at one end: using the TCP path now");
                // The session's `Failed` event then hands over to the TCP stream.
                if let Some(session) = self.session_mut() {
                    session.close(Instant::now());
                }
                self.drain(ctx);
            }
            RaceStep::Fail(reason) => self.finish(Err(reason), ctx),
            RaceStep::Succeed => self.finish(Ok(None), ctx),
        }
    }

    /// Starts TCP simultaneous open once the peer's TCP candidates are known.
    fn maybe_start_tcp(&mut self, ctx: &mut Context<Self>) {
        if self.tcp.race.tcp_phase() != TcpPhase::Idle || self.tcp.reserved.is_none() {
            return;
        }
        let remotes = match &self.stage {
            Stage::Punching(s) => s.remote_tcp(),
            _ => return,
        };
        if remotes.is_empty() {
            return;
        }
        let (Some(punch), Some(node)) = (self.tcp.reserved.take(), self.env.tcp.clone()) else { return };
        self.tcp.race.tcp_started();
        let (tx, mut rx) = mpsc::channel(4);
        let me = ctx.address();
        let (role, peer, inbound) = (self.role, self.peer, self.ports.inbound.clone());
        let rt = io_runtime();
        let search = rt.spawn(async move {
            punch.open(&remotes, TCP_WINDOW, tx).await;
        });
        let deliver = rt.spawn(async move {
            let mut handshakes = tokio::task::JoinSet::new();
            let mut searching = true;
            while searching || !handshakes.is_empty() {
                tokio::select! {
                    found = rx.recv(), if searching => match found {
                        Some((stream, remote)) if role == Role::Initiator => {
                            // The first stream is the one; the actor decides whether to use it.
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

    /// Initiator: the UDP punch failed and a TCP stream is there: secure it and hand it
    /// to the supervisor.
    fn use_tcp(&mut self, udp_reason: String, ctx: &mut Context<Self>) {
        let Some((stream, remote)) = self.tcp.stream.take() else {
            return self.finish(Err(udp_reason), ctx);
        };
        let Some(node) = self.env.tcp.clone() else { return };
        let (peer, id, finished) = (self.peer, self.guard.id(), self.ports.finished.clone());
        io_runtime().spawn(async move {
            let result = match punched_connection(&node, stream, remote, true, peer).await {
                Ok(conn) => {
                    tracing::info!(%peer, %remote, "TCP simultaneous open succeeded");
                    Ok(Some(conn))
                }
                Err(e) => Err(format!("{udp_reason}; TCP over the punched path to {remote} failed: {e}")),
            };
            let _ = finished.send(PunchFinished { id, peer, result }).await;
        });
        self.guard.set(ExitReason::Normal);
        ctx.stop();
    }

    fn finish(&mut self, result: Result<Option<Connection>, String>, ctx: &mut Context<Self>) {
        let (id, peer) = (self.guard.id(), self.peer);
        self.ports.finished.do_send(PunchFinished { id, peer, result });
        self.guard.set(ExitReason::Normal);
        ctx.stop();
    }
}

/// TCP simultaneous open: what the actor holds.
#[derive(Default)]
struct TcpSide {
    /// The port reserved for the session, until the attempt starts.
    reserved: Option<TcpPunch>,
    /// The race between the UDP punch and this attempt (the decisions).
    race: PathRace,
    /// Initiator: the stream found, kept until the UDP punch's outcome is known.
    stream: Option<(TcpStream, SocketAddr)>,
    /// This side's mapping hint from gathering ([`MappingHint::UdpBlocked`] makes the
    /// initiator use a TCP path at once).
    local_mapping: MappingHint,
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
        let (udp_open, remote) = match &self.stage {
            Stage::Punching(s) => (!s.is_finished(), s.remote_mapping()),
            _ => (false, MappingHint::Unknown),
        };
        let step = self.tcp.race.tcp_found(udp_open, self.tcp.local_mapping, remote);
        self.step(step, ctx);
    }
}

impl Handler<TcpEnded> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: TcpEnded, ctx: &mut Context<Self>) {
        let step = self.tcp.race.tcp_ended(msg.connected);
        self.step(step, ctx);
    }
}

/// Relay signaling failed: the session cannot continue.
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
        match &mut self.stage {
            Stage::Gathering { early, .. } => {
                if early.len() < MAX_EARLY {
                    early.push(msg.message);
                }
            }
            Stage::Punching(session) => match msg.message {
                Ok(m) => session.handle_message(Instant::now(), m),
                // Ends the session; its `Failed` event is among the outputs.
                Err(e) => session.handle_undecodable(Instant::now(), e),
            },
            Stage::Moving => {}
        }
        self.drain(ctx);
    }
}

impl Handler<PunchDatagram> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: PunchDatagram, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let used = match &mut self.stage {
            Stage::Gathering { gatherer, .. } => gatherer.handle_datagram(now, msg.from, &msg.bytes),
            Stage::Punching(session) if session.accepts(&msg.bytes) => {
                session.handle_datagram(now, msg.from, &msg.bytes);
                true
            }
            _ => false,
        };
        if used {
            self.drain(ctx);
        }
    }
}

impl Handler<SignalFailed> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: SignalFailed, ctx: &mut Context<Self>) {
        let finished = self.session_mut().is_some_and(|s| s.is_finished());
        if !finished {
            if let Some(session) = self.session_mut() {
                session.close(Instant::now());
                while session.poll_output().is_some() {}
            }
            self.finish(Err(format!("relay signaling failed: {}", msg.0)), ctx);
        }
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

/// The live punch actors' datagram inboxes, shared with the side channel's reader.
/// Keyed by the actor's child id.
pub(crate) type PunchInboxes = Arc<Mutex<InboxList>>;

/// The punch actors' inboxes, by child id.
pub(crate) type InboxList = Vec<(ChildId, Recipient<PunchDatagram>)>;

/// Reads the side channel of one QUIC socket and hands every datagram to each live punch
/// actor (each keeps only those carrying its session token). Ends when the socket goes
/// away or the supervisor that owns `inboxes` has stopped. Datagrams an actor has no room
/// for are dropped (UDP is lossy; the session retries).
pub(crate) fn spawn_side_reader(side: Arc<SideChannel>, inboxes: Weak<Mutex<InboxList>>) {
    io_runtime().spawn(async move {
        while let Some((from, bytes)) = side.recv_from().await {
            let Some(inboxes) = inboxes.upgrade() else { return };
            let list = inboxes.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (_, r) in list {
                let _ = r.try_send(PunchDatagram { from, bytes: bytes.clone() });
            }
        }
    });
}
