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
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::Instant,
};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle};
use bytes::Bytes;
use kizuna::{
    punch::{
        Candidate, CandidateKind, Event as PunchEvent, MappingHint, Output, PunchConfig, PunchSession, Role,
    },
    transport::quic::{demux::SideChannel, QuicTransport},
    Connection, PeerId,
};
use ring::rand::SecureRandom;

use crate::{
    child::{ChildExited, ChildId, ExitGuard, Fault},
    runtime::io_runtime,
    supervision::ExitReason,
};

/// First byte of a relay signal that carries a punch message (the rest is the encoded
/// [`kizuna::punch::PunchMessage`]). Other signals are published as `SignalReceived`.
pub(crate) const PUNCH_SIGNAL_TAG: u8 = 0x13;

/// A punch message from `peer`, relayed (the tag byte already removed).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct PunchSignal {
    pub(crate) peer: PeerId,
    pub(crate) payload: Bytes,
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
}

/// Drives one [`PunchSession`] with one peer. See the module documentation.
pub(crate) struct HolePunchActor {
    peer: PeerId,
    session: PunchSession,
    side: Arc<SideChannel>,
    quic: Arc<QuicTransport>,
    ports: PunchPorts,
    guard: ExitGuard,
    timer: Option<SpawnHandle>,
}

impl HolePunchActor {
    /// A session with `peer` in `role`, punching from `quic`'s socket (`side`). Local
    /// candidates: the socket's own address (host candidate) when it is usable, i.e. bound
    /// to a specific IP.
    pub(crate) fn new(
        id: ChildId,
        peer: PeerId,
        role: Role,
        quic: Arc<QuicTransport>,
        side: Arc<SideChannel>,
        ports: PunchPorts,
    ) -> Self {
        let local = side
            .local_addr()
            .ok()
            .filter(|a| kizuna::punch::candidates::is_usable(*a))
            .map(|a| vec![Candidate::new(CandidateKind::Host, a, 0)])
            .unwrap_or_default();
        let mut seed = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut seed).is_err() {
            // No OS randomness: the token must still differ between sessions.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
                ^ u128::from(std::process::id());
            seed[..16].copy_from_slice(&t.to_le_bytes());
            seed[16..].copy_from_slice(&peer.as_bytes()[..16]);
        }
        let session = PunchSession::new(
            role,
            Instant::now(),
            PunchConfig::default(),
            local,
            MappingHint::Unknown,
            seed,
        );
        let guard = ExitGuard::new(id, ports.exited.clone());
        Self { peer, session, side, quic, ports, guard, timer: None }
    }

    /// Performs the session's outputs, then re-arms the timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(out) = self.session.poll_output() {
            match out {
                Output::SendMessage(m) => {
                    let mut payload = vec![PUNCH_SIGNAL_TAG];
                    payload.extend_from_slice(&m.encode());
                    let send = self.ports.signal.send(SendSignal { to: self.peer, payload });
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
                Output::Event(PunchEvent::Failed { reason }) => self.finish(Err(reason.to_string()), ctx),
                _ => {}
            }
        }
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if let Some(at) = self.session.poll_timeout() {
            let after = at.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(after, |act, ctx| {
                act.timer = None;
                act.session.handle_timeout(Instant::now());
                act.drain(ctx);
            }));
        }
    }

    fn succeeded(&mut self, remote: SocketAddr, ctx: &mut Context<Self>) {
        tracing::info!(peer = %self.peer, %remote, role = ?self.session.role(), "hole punched");
        if self.session.role() == Role::Responder {
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

    fn finish(&mut self, result: Result<Option<Connection>, String>, ctx: &mut Context<Self>) {
        let (id, peer) = (self.guard.id(), self.peer);
        self.ports.finished.do_send(PunchFinished { id, peer, result });
        self.guard.set(ExitReason::Normal);
        ctx.stop();
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
}

impl Handler<PunchSignal> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: PunchSignal, ctx: &mut Context<Self>) {
        // A decode error ends the session; its `Failed` event is among the outputs.
        let _ = self.session.handle_message_bytes(Instant::now(), &msg.payload);
        self.drain(ctx);
    }
}

impl Handler<PunchDatagram> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: PunchDatagram, ctx: &mut Context<Self>) {
        if self.session.accepts(&msg.bytes) {
            self.session.handle_datagram(Instant::now(), msg.from, &msg.bytes);
            self.drain(ctx);
        }
    }
}

impl Handler<SignalFailed> for HolePunchActor {
    type Result = ();
    fn handle(&mut self, msg: SignalFailed, ctx: &mut Context<Self>) {
        if !self.session.is_finished() {
            self.session.close(Instant::now());
            while self.session.poll_output().is_some() {}
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
