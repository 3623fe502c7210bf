//! `NegotiatorActor`: one per outbound connect.
//!
//! * **Owns** one connect attempt to one peer: the address list ranked by the node's
//!   [`DialHistory`] ([`DialHistory::rank`]: capabilities, then what was measured dialing
//!   this peer before), and the transport dials in flight.
//! * **Does** happy-eyeballs: starts the best address, starts the next one after
//!   [`ATTEMPT_STAGGER`] or as soon as the previous fails, takes the first connection that
//!   completes (authentication and hello included), closes any later winner. The whole
//!   attempt is bounded by the connect timeout (10 s by default).
//! * **Records** every dial's outcome into the shared history, from the dial's own task:
//!   success with its connect time (and the RTT the transport measured, if any), or
//!   failure. A dial still running when another wins or the attempt times out is
//!   recorded when it ends (each transport bounds its connect by the connect timeout).
//! * **Out:** one `Negotiated` to the supervisor, then `ChildExited`.
//! * **Supervised** as a *never*-restarted, one-shot child; the supervisor decides about
//!   retries.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use actix::{
    fut::wrap_future, Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient,
};
use futures_util::{stream::FuturesUnordered, StreamExt};
use kizuna::{
    negotiate::{DialHistory, DialStats, ATTEMPT_STAGGER},
    Connection, PeerAddress, PeerId, Transport, TransportAddr, TransportError,
};

use crate::{
    api::NodeError,
    node::child::{ChildExited, ChildId, ExitGuard, Fault},
    node::supervision::ExitReason,
    runtime::io_runtime,
};

/// Outcome of a negotiation (sent to the supervisor).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Negotiated {
    pub(crate) peer: PeerId,
    pub(crate) result: Result<Connection, NodeError>,
}

/// The node's dial history, shared by the supervisor (which owns it) and the
/// negotiators' dial tasks. Held only for a record or a ranking, never across an await.
pub(crate) type SharedDialHistory = Arc<Mutex<DialHistory>>;

/// Locks the history; a panic while it was held leaves a consistent history (every
/// update is a few field writes), so a poisoned lock is taken over.
fn lock(history: &SharedDialHistory) -> MutexGuard<'_, DialHistory> {
    history.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the history holds, for diagnostics (`NodeStats::dials`).
pub(crate) fn dial_stats(history: &SharedDialHistory) -> Vec<(PeerId, kizuna::Protocol, DialStats)> {
    lock(history).entries().map(|(peer, protocol, s)| (peer, protocol, *s)).collect()
}

/// Connects to one peer over the best transport that works.
pub struct NegotiatorActor {
    peer: PeerAddress,
    transports: Vec<Arc<dyn Transport>>,
    history: SharedDialHistory,
    timeout: Duration,
    done: Recipient<Negotiated>,
    guard: ExitGuard,
}

impl NegotiatorActor {
    pub(crate) fn new(
        id: ChildId,
        peer: PeerAddress,
        transports: Vec<Arc<dyn Transport>>,
        history: SharedDialHistory,
        timeout: Duration,
        done: Recipient<Negotiated>,
        exited: Recipient<ChildExited>,
    ) -> Self {
        Self { peer, transports, history, timeout, done, guard: ExitGuard::new(id, exited) }
    }
}

/// Runs the staggered attempts; pure orchestration over the transports.
async fn negotiate(
    peer: PeerAddress,
    transports: Vec<Arc<dyn Transport>>,
    history: SharedDialHistory,
    timeout: Duration,
) -> Result<Connection, NodeError> {
    let order = lock(&history).rank(Instant::now(), &peer, |a| {
        transports.iter().filter(|t| t.is_available() && t.handles(a)).map(|t| t.priority()).max()
    });
    let id = peer.peer_id;
    if order.is_empty() {
        return Err(NodeError::ConnectFailed { peer: id, attempts: vec![] });
    }
    let dial = |addr: TransportAddr| {
        let t = transports.iter().filter(|t| t.handles(&addr)).max_by_key(|t| t.priority()).cloned();
        let history = history.clone();
        let handle = io_runtime().spawn(async move {
            let Some(t) = t else {
                return Err(TransportError::UnsupportedProtocol(addr.protocol().to_string()));
            };
            let started = Instant::now();
            let result = t.connect(&addr, id).await;
            record(&history, id, &addr, started, &result);
            result
        });
        async move {
            handle.await.unwrap_or_else(|e| Err(TransportError::Closed(format!("dial task failed: {e}"))))
        }
    };
    let mut attempts = Vec::new();
    let work = async {
        let mut pending = FuturesUnordered::new();
        let mut next = order.into_iter();
        let mut auth_failure = None;
        loop {
            if pending.is_empty() {
                match next.next() {
                    Some(a) => pending.push(tag(a.clone(), dial(a))),
                    None => break,
                }
            }
            tokio::select! {
                Some((addr, res)) = pending.next() => match res {
                    Ok(conn) => {
                        // Abandon the rest; a late winner's task finishes on the I/O runtime
                        // and its connection is dropped (closed) there.
                        drop(pending);
                        return Ok(conn);
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "attempt failed");
                        if matches!(e, TransportError::AuthenticationFailed { .. }) {
                            auth_failure = Some(e.to_string());
                        }
                        attempts.push((addr.to_string(), e.to_string()));
                        if let Some(a) = next.next() {
                            pending.push(tag(a.clone(), dial(a)));
                        }
                    }
                },
                _ = tokio::time::sleep(ATTEMPT_STAGGER) => {
                    if let Some(a) = next.next() {
                        pending.push(tag(a.clone(), dial(a)));
                    }
                }
            }
        }
        Err(auth_failure)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(Some(auth))) => Err(NodeError::AuthenticationFailed(auth)),
        Ok(Err(None)) => Err(NodeError::ConnectFailed { peer: id, attempts }),
        Err(_) => {
            attempts.push(("all".into(), format!("connect timed out after {timeout:?}")));
            Err(NodeError::ConnectFailed { peer: id, attempts })
        }
    }
}

/// Records one dial's outcome at `peer` over `addr`, started at `started`.
fn record(
    history: &SharedDialHistory,
    peer: PeerId,
    addr: &TransportAddr,
    started: Instant,
    result: &Result<Connection, TransportError>,
) {
    let now = Instant::now();
    match result {
        Ok(conn) => {
            let rtt = conn.info().rtt;
            let mut h = lock(history);
            h.record_success(now, peer, addr, now.saturating_duration_since(started));
            if let Some(rtt) = rtt {
                h.record_rtt(peer, addr, rtt);
            }
        }
        Err(_) => lock(history).record_failure(now, peer, addr),
    }
}

async fn tag<F: std::future::Future>(addr: TransportAddr, f: F) -> (TransportAddr, F::Output) {
    (addr, f.await)
}

impl Actor for NegotiatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let work = negotiate(self.peer.clone(), self.transports.clone(), self.history.clone(), self.timeout);
        ctx.spawn(wrap_future::<_, Self>(work).map(|result, act, ctx| {
            let peer = act.peer.peer_id;
            // A negotiation result is a rare control message that must not be lost.
            act.done.do_send(Negotiated { peer, result });
            act.guard.set(ExitReason::Normal);
            ctx.stop();
        }));
    }
}

impl Handler<Fault> for NegotiatorActor {
    type Result = ();
    fn handle(&mut self, fault: Fault, ctx: &mut Context<Self>) {
        match fault {
            Fault::Panic => panic!("injected panic in negotiator for {}", self.peer.peer_id),
            Fault::Kill | Fault::DropConnection => {
                self.guard.set(ExitReason::Killed);
                ctx.stop();
            }
        }
    }
}
