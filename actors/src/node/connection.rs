//! `ConnectionActor`: one per live connection.
//!
//! * **Owns** one core [`Connection`] (whatever the transport). Framing, keep-alive and RTT
//!   run inside the connection on the I/O runtime; this actor steers it.
//! * **In:** `SendMessage`, `OpenStreamTo`, `CloseConnection`, [`Fault`].
//! * **Out:** events on the [`EventBus`] (`PeerConnected` first, then every
//!   `MessageReceived` / `StreamOpened` in order, and `DatagramReceived` where the
//!   transport has datagrams), `ChildExited` to the supervisor.
//! * **Backpressure:** received messages are published with an awaited send into each
//!   subscriber's bounded buffer; while a subscriber is full this actor takes no further
//!   message from the connection, whose bounded queue then stops reading the socket, so
//!   the remote sender waits. Nothing on this path is unbounded, and nothing uses `do_send`.
//! * **Supervised** as a *transient* child: after an abnormal exit the supervisor
//!   reconnects with backoff if the peer is still wanted.
//! * **Stops** when the peer closes, the connection fails, or it is told to close.

use actix::{
    fut::wrap_future, Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message,
    ResponseActFuture, ResponseFuture, WrapFuture,
};
use bytes::Bytes;
use kizuna::{wire::CloseCode, ByteStream, Connection};

use crate::{
    api::{Event, IncomingStream, NodeError},
    node::child::{ChildExited, ChildId, ExitGuard, Fault},
    node::events::EventBus,
    node::supervision::ExitReason,
};

/// Queue one message on the connection.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), NodeError>")]
pub(crate) struct SendMessage(pub(crate) Bytes);

/// Open a stream on the connection.
#[derive(Debug, Message)]
#[rtype(result = "Result<ByteStream, NodeError>")]
pub(crate) struct OpenStreamTo;

/// Close the connection gracefully, flushing what is queued.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct CloseConnection {
    pub(crate) code: CloseCode,
    pub(crate) reason: String,
}

/// Drives one connection.
pub struct ConnectionActor {
    conn: Connection,
    bus: EventBus,
    guard: ExitGuard,
    /// Sends in flight hold a read guard, taken when their command is handled (so in
    /// mailbox order); a close takes the write guard first, so every send the actor
    /// accepted before the close is queued on the connection (and flushed by the graceful
    /// close) instead of failing because the close overtook it.
    in_flight: std::sync::Arc<tokio::sync::RwLock<()>>,
    /// Whether to publish `PeerConnected` (not for a path upgrade, announced as
    /// `PathUpgraded` instead).
    announce: bool,
}

impl ConnectionActor {
    pub(crate) fn new(
        id: ChildId,
        conn: Connection,
        bus: EventBus,
        exited: actix::Recipient<ChildExited>,
        announce: bool,
    ) -> Self {
        Self { conn, bus, guard: ExitGuard::new(id, exited), announce, in_flight: Default::default() }
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Mailbox bound: senders wait (backpressure) once 64 commands are queued.
        ctx.set_mailbox_capacity(64);
        let bus = self.bus.clone();
        let info = self.conn.info();
        tracing::debug!(peer = %info.peer, protocol = %info.protocol, path = %info.path, "connection up");
        if self.announce {
            ctx.wait(wrap_future(async move { bus.publish(Event::PeerConnected { info }).await }));
        }

        let (conn, bus) = (self.conn.clone(), self.bus.clone());
        let peer = conn.peer();
        let receive = async move {
            loop {
                match conn.recv().await {
                    Ok(Some(data)) => bus.publish(Event::MessageReceived { peer, data }).await,
                    Ok(None) => return ExitReason::Normal,
                    Err(e) => return ExitReason::Failed(e.to_string()),
                }
            }
        };
        ctx.spawn(wrap_future::<_, Self>(receive).map(|reason, act, ctx| {
            act.guard.set(reason);
            ctx.stop();
        }));

        let (conn, bus) = (self.conn.clone(), self.bus.clone());
        let datagrams = async move {
            // Ends at once on transports without datagrams (their `recv_datagram` fails).
            while let Ok(data) = conn.recv_datagram().await {
                bus.publish(Event::DatagramReceived { peer, data }).await;
            }
        };
        ctx.spawn(wrap_future(datagrams));

        let (conn, bus) = (self.conn.clone(), self.bus.clone());
        let streams = async move {
            while let Ok(Some(s)) = conn.accept_stream().await {
                bus.publish(Event::StreamOpened { peer, stream: IncomingStream::new(s) }).await;
            }
        };
        ctx.spawn(wrap_future(streams));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // However the actor ends, the connection must not outlive it.
        if self.conn.is_connected() {
            let conn = self.conn.clone();
            crate::runtime::io_runtime()
                .spawn(async move { conn.close(CloseCode::Normal, "actor stopped").await });
        }
    }
}

impl Handler<SendMessage> for ConnectionActor {
    type Result = ResponseFuture<Result<(), NodeError>>;
    fn handle(&mut self, msg: SendMessage, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        let gate = self.in_flight.clone();
        // Taken now, in mailbox order; only fails once a close has begun.
        let held = gate.clone().try_read_owned().ok();
        Box::pin(async move {
            let _held = match held {
                Some(g) => g,
                None => gate.read_owned().await,
            };
            conn.send(msg.0).await.map_err(NodeError::from)
        })
    }
}

impl Handler<OpenStreamTo> for ConnectionActor {
    type Result = ResponseFuture<Result<ByteStream, NodeError>>;
    fn handle(&mut self, _: OpenStreamTo, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        Box::pin(async move { conn.open_stream().await.map_err(NodeError::from) })
    }
}

impl Handler<CloseConnection> for ConnectionActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) -> Self::Result {
        let conn = self.conn.clone();
        let gate = self.in_flight.clone();
        // Closing sends nothing more but keeps delivering what the peer sent before it
        // saw the close; the receive loop ends (and stops this actor) once the peer's
        // side is done too, so no message in flight is lost.
        // Sends accepted earlier are queued first (see `in_flight`).
        let close = async move {
            let _all_sent = gate.write_owned().await;
            conn.close(msg.code, &msg.reason).await
        };
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
                // Looks like a network failure to the supervisor.
                self.guard.set(ExitReason::Failed("connection dropped (injected fault)".into()));
                let conn = self.conn.clone();
                crate::runtime::io_runtime()
                    .spawn(async move { conn.close(CloseCode::ProtocolError, "dropped").await });
            }
        }
    }
}
