//! `ConnectionActor`: one per live connection (one path to a peer).
//!
//! * **Owns** one core [`Connection`] and what arrives on it. Framing, keep-alive and RTT
//!   run inside the connection on the I/O runtime; this actor reads it.
//! * **Reads** session frames (`docs/protocol.md` §11) when the peer speaks the session
//!   layer: `HELLO`, `DATA` (through the peer's [`PeerLink`], which publishes each message
//!   once and in order), `ACK`, `PROBE` (answered at once on this path), `PROBE_REPLY` and
//!   `SIGNAL` (to the peer's actor). Without the session layer every message is published
//!   as it is. Streams and datagrams are published too; streams fail with an error naming
//!   the path once the peer's actor declares it dead.
//! * **Sends** control frames (acks, probe answers, probes, signals) through a small
//!   bounded queue to a writer task, never waiting: a full queue drops a frame (acks are
//!   cumulative, a dropped probe answer looks like loss).
//! * **Backpressure:** messages are published with an awaited send into each subscriber's
//!   bounded buffer; while a subscriber is full this actor takes nothing more from the
//!   connection, whose bounded queue then stops reading the socket.
//! * **Supervised** by the peer's [`PeerActor`](super::peer::PeerActor); its exit is the
//!   path going down.
//! * **Stops** when the peer closes, the connection fails, or it is told to close.

use std::{sync::Arc, time::Instant};

use actix::{
    fut::wrap_future, Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message,
    Recipient, ResponseActFuture, WrapFuture,
};
use bytes::Bytes;
use kizuna::{
    peer::{FrameError, PathId, SessionFrame},
    wire::CloseCode,
    Connection, StreamAbort,
};
use tokio::sync::mpsc;

use crate::{
    api::{Event, IncomingStream},
    node::child::{ChildExited, ChildId, ExitGuard, Fault},
    node::events::EventBus,
    node::link::PeerLink,
    node::supervision::ExitReason,
    runtime::io_runtime,
};

/// Control frames queued for a path's writer task. 32: a handful per round trip (an ack, a
/// probe, its answer, a signal); beyond that the path is not draining and frames drop.
const CONTROL_QUEUE: usize = 32;

/// Messages taken from the connection per wake-up of the reader. 64: a wake-up then costs
/// little per message under load, and the batch (at most 64 references to received
/// buffers) is handled before more is taken.
const RECV_BATCH: usize = 64;

/// Close the connection gracefully, flushing what is queued.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct CloseConnection {
    pub(crate) code: CloseCode,
    pub(crate) reason: String,
}

/// A probe answer arrived on a path (to the peer's actor).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ProbeAnswered {
    pub(crate) path: PathId,
    pub(crate) nonce: u64,
    pub(crate) at: Instant,
}

/// A signaling message arrived on a path (to the peer's actor).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct PathSignal {
    pub(crate) path: PathId,
    pub(crate) tag: u8,
    pub(crate) payload: Bytes,
}

/// Where a connection actor reports.
#[derive(Clone)]
pub(crate) struct PathPorts {
    pub(crate) exited: Recipient<ChildExited>,
    pub(crate) probes: Recipient<ProbeAnswered>,
    pub(crate) signals: Recipient<PathSignal>,
}

/// A path's queue of control frames (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct Control(mpsc::Sender<SessionFrame>);

impl Control {
    /// Queues `frame` without waiting; `false` if it was dropped.
    pub(crate) fn send(&self, frame: SessionFrame) -> bool {
        self.0.try_send(frame).is_ok()
    }
}

/// Starts the writer task of a path's control frames.
pub(crate) fn control_writer(conn: Connection) -> Control {
    let (tx, mut rx) = mpsc::channel::<SessionFrame>(CONTROL_QUEUE);
    io_runtime().spawn(async move {
        while let Some(f) = rx.recv().await {
            if conn.send_queued(f.encode()).await.is_err() {
                break;
            }
        }
    });
    Control(tx)
}

/// Drives one path.
pub struct ConnectionActor {
    conn: Connection,
    path: PathId,
    /// The peer speaks the session layer on it.
    session: bool,
    link: Arc<PeerLink>,
    bus: EventBus,
    control: Control,
    abort: Arc<StreamAbort>,
    ports: PathPorts,
    guard: ExitGuard,
}

impl ConnectionActor {
    #[allow(clippy::too_many_arguments)] // One path's whole context, set once.
    pub(crate) fn new(
        id: ChildId,
        conn: Connection,
        path: PathId,
        session: bool,
        link: Arc<PeerLink>,
        bus: EventBus,
        control: Control,
        abort: Arc<StreamAbort>,
        ports: PathPorts,
    ) -> Self {
        let guard = ExitGuard::new(id, ports.exited.clone());
        Self { conn, path, session, link, bus, control, abort, ports, guard }
    }
}

/// Why reading a path stopped.
fn read_error(e: impl std::fmt::Display) -> ExitReason {
    ExitReason::Failed(e.to_string())
}

/// Reads session frames until the connection ends or the peer breaks the protocol.
async fn read_session(
    conn: Connection,
    path: PathId,
    link: Arc<PeerLink>,
    control: Control,
    ports: PathPorts,
) -> ExitReason {
    let mut epoch: Option<u64> = None;
    let mut ack_due: Option<Instant> = None;
    let mut batch = Vec::with_capacity(RECV_BATCH);
    loop {
        let sleep = async {
            match ack_due {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let got = tokio::select! {
            n = conn.recv_many(&mut batch, RECV_BATCH) => n,
            _ = sleep => {
                let (ack, next) = link.poll_ack(Instant::now()).await;
                if let Some(delivered) = ack {
                    control.send(SessionFrame::Ack { delivered });
                }
                ack_due = next;
                continue;
            }
        };
        match got {
            Ok(0) => return ExitReason::Normal,
            Ok(_) => {}
            Err(e) => return read_error(e),
        }
        let now = Instant::now();
        for msg in batch.drain(..) {
            let frame = match SessionFrame::decode(&msg) {
                Ok(f) => f,
                // Later versions may add kinds: skip them.
                Err(FrameError::UnknownKind(_)) => continue,
                Err(e) => return violation(&conn, path, e.to_string()).await,
            };
            match frame {
                SessionFrame::Hello { epoch: e, seen, delivered, base } => {
                    epoch = Some(e);
                    link.on_hello(e, seen, delivered, base).await;
                }
                SessionFrame::Data { seq, payload } => {
                    let Some(e) = epoch else {
                        return violation(&conn, path, "DATA before HELLO".into()).await;
                    };
                    link.data_on(path);
                    match link.on_data(e, seq, payload, now).await {
                        Ok((ack, next)) => {
                            if let Some(delivered) = ack {
                                control.send(SessionFrame::Ack { delivered });
                            }
                            ack_due = next;
                        }
                        Err(why) => return violation(&conn, path, why).await,
                    }
                }
                SessionFrame::Ack { delivered } => {
                    if let Err(e) = link.on_ack(delivered) {
                        return violation(&conn, path, e.to_string()).await;
                    }
                }
                SessionFrame::Probe { nonce } => {
                    control.send(SessionFrame::ProbeReply { nonce });
                }
                SessionFrame::ProbeReply { nonce } => {
                    // Bounded by the actor's mailbox: a flood of answers is dropped here.
                    let _ = ports.probes.try_send(ProbeAnswered { path, nonce, at: now });
                }
                SessionFrame::Signal { tag, payload } => {
                    let _ = ports.signals.try_send(PathSignal { path, tag, payload });
                }
            }
        }
    }
}

/// The peer broke the session protocol on `path`: close it.
async fn violation(conn: &Connection, path: PathId, detail: String) -> ExitReason {
    tracing::info!(peer = %conn.peer(), %path, "session protocol violation: {detail}");
    conn.close(CloseCode::ProtocolError, &detail).await;
    ExitReason::Failed(format!("session protocol violation: {detail}"))
}

/// Reads a connection without the session layer: every message is the application's.
async fn read_plain(conn: Connection, bus: EventBus) -> ExitReason {
    let peer = conn.peer();
    loop {
        match conn.recv().await {
            Ok(Some(data)) => bus.publish(Event::MessageReceived { peer, data }).await,
            Ok(None) => return ExitReason::Normal,
            Err(e) => return read_error(e),
        }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Mailbox bound: senders wait (backpressure) once 64 commands are queued.
        ctx.set_mailbox_capacity(64);
        let info = self.conn.info();
        tracing::debug!(peer = %info.peer, protocol = %info.protocol, path = %info.path, id = %self.path, "path up");

        let conn = self.conn.clone();
        let receive = if self.session {
            let (path, link, control, ports) =
                (self.path, self.link.clone(), self.control.clone(), self.ports.clone());
            futures_util::future::Either::Left(read_session(conn, path, link, control, ports))
        } else {
            futures_util::future::Either::Right(read_plain(conn, self.bus.clone()))
        };
        ctx.spawn(wrap_future::<_, Self>(receive).map(|reason, act, ctx| {
            act.guard.set(reason);
            ctx.stop();
        }));

        let (conn, bus) = (self.conn.clone(), self.bus.clone());
        let peer = conn.peer();
        let datagrams = async move {
            // Ends at once on transports without datagrams (their `recv_datagram` fails).
            while let Ok(data) = conn.recv_datagram().await {
                bus.publish(Event::DatagramReceived { peer, data }).await;
            }
        };
        ctx.spawn(wrap_future(datagrams));

        let (conn, bus, abort, link) =
            (self.conn.clone(), self.bus.clone(), self.abort.clone(), self.link.clone());
        let streams = async move {
            while let Ok(Some(s)) = conn.accept_stream().await {
                link.note_traffic();
                let stream = IncomingStream::new(s.abortable(abort.clone()));
                bus.publish(Event::StreamOpened { peer, stream }).await;
            }
        };
        ctx.spawn(wrap_future(streams));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // However the actor ends, the connection must not outlive it.
        if self.conn.is_connected() {
            let conn = self.conn.clone();
            io_runtime().spawn(async move { conn.close(CloseCode::Normal, "actor stopped").await });
        }
    }
}

impl Handler<CloseConnection> for ConnectionActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        // Closing sends nothing more but keeps delivering what the peer sent before it
        // saw the close; the receive loop ends (and stops this actor) once the peer's
        // side is done too, so no message in flight is lost.
        let close = async move { conn.close(msg.code, &msg.reason).await };
        Box::pin(close.into_actor(self).map(|_, act, _| {
            act.guard.set(ExitReason::Normal);
        }))
    }
}

impl Handler<Fault> for ConnectionActor {
    type Result = ();
    fn handle(&mut self, fault: Fault, ctx: &mut Context<Self>) {
        match fault {
            Fault::Panic => panic!("injected panic in connection to {}", self.conn.peer()),
            Fault::Kill => {
                self.guard.set(ExitReason::Killed);
                ctx.stop();
            }
            Fault::DropConnection => {
                // Looks like a network failure to the peer's actor.
                self.guard.set(ExitReason::Failed("connection dropped (injected fault)".into()));
                let conn = self.conn.clone();
                io_runtime().spawn(async move { conn.close(CloseCode::ProtocolError, "dropped").await });
            }
        }
    }
}
