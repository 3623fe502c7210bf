//! `ListenerActor`: one per listening transport address.
//!
//! * **Owns** one core [`Listener`] (bound in `started`, on the I/O runtime).
//! * **In:** [`Fault`] (tests).
//! * **Out (to the supervisor):** `ListenerReady` once bound, `Inbound` for each
//!   accepted connection or rejected handshake (awaited: a busy supervisor slows accepts
//!   rather than queueing without bound), `ChildExited` when it stops.
//! * **Supervised** by the [`Supervisor`](crate::Supervisor) as a *permanent* child:
//!   restarted (re-bound to the same address) with backoff after any exit, until the
//!   restart intensity is exceeded.
//! * **Stops** when its listener closes or fails, or when the supervisor stops it.

use std::sync::Arc;

use actix::{
    fut::wrap_future, Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient,
};
use kizuna::{transport::Listener, Incoming, Transport, TransportAddr};

use crate::{
    node::child::{ChildExited, ChildId, ExitGuard, Fault},
    node::supervision::ExitReason,
    runtime::on_io,
};

/// A listener is bound (sent to the supervisor).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ListenerReady {
    pub(crate) id: ChildId,
    pub(crate) addr: TransportAddr,
}

/// An inbound connection or rejected handshake (sent to the supervisor).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Inbound(pub(crate) Incoming);

/// Stop listening (normal exit).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopListener;

/// Where a listener reports.
#[derive(Clone)]
pub(crate) struct ListenerPorts {
    pub(crate) ready: Recipient<ListenerReady>,
    pub(crate) inbound: Recipient<Inbound>,
    pub(crate) exited: Recipient<ChildExited>,
}

/// Accepts connections on one transport address.
pub struct ListenerActor {
    transport: Arc<dyn Transport>,
    addr: TransportAddr,
    ports: ListenerPorts,
    guard: ExitGuard,
}

impl ListenerActor {
    pub(crate) fn new(
        id: ChildId,
        transport: Arc<dyn Transport>,
        addr: TransportAddr,
        ports: ListenerPorts,
    ) -> Self {
        let guard = ExitGuard::new(id, ports.exited.clone());
        Self { transport, addr, ports, guard }
    }

    fn accept_loop(&self, ctx: &mut Context<Self>, mut listener: Box<dyn Listener>) {
        let inbound = self.ports.inbound.clone();
        let fut = async move {
            while let Some(incoming) = listener.accept().await {
                if inbound.send(Inbound(incoming)).await.is_err() {
                    return Ok(());
                }
            }
            Err("listener closed".to_string())
        };
        ctx.spawn(wrap_future::<_, Self>(fut).map(|res, act, ctx| {
            act.guard.set(match res {
                Ok(()) => ExitReason::Normal,
                Err(e) => ExitReason::Failed(e),
            });
            ctx.stop();
        }));
    }
}

impl Actor for ListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let transport = self.transport.clone();
        let addr = self.addr.clone();
        let bind = on_io(async move { transport.listen(&addr).await });
        ctx.wait(wrap_future::<_, Self>(bind).map(|res, act, ctx| match res {
            Ok(Ok(listener)) => {
                let bound = listener.local_addr();
                tracing::info!(addr = %bound, "listening");
                act.ports.ready.do_send(ListenerReady { id: act.guard.id(), addr: bound });
                act.accept_loop(ctx, listener);
            }
            Ok(Err(e)) => {
                act.guard.set(ExitReason::Failed(e.to_string()));
                ctx.stop();
            }
            Err(e) => {
                act.guard.set(ExitReason::Failed(e.to_string()));
                ctx.stop();
            }
        }));
    }
}

impl Handler<StopListener> for ListenerActor {
    type Result = ();
    fn handle(&mut self, _: StopListener, ctx: &mut Context<Self>) {
        self.guard.set(ExitReason::Normal);
        ctx.stop();
    }
}

impl Handler<Fault> for ListenerActor {
    type Result = ();
    fn handle(&mut self, fault: Fault, ctx: &mut Context<Self>) {
        match fault {
            Fault::Panic => panic!("injected panic in listener {}", self.addr),
            Fault::Kill | Fault::DropConnection => {
                self.guard.set(ExitReason::Killed);
                ctx.stop();
            }
        }
    }
}
