//! `RelayForwarderActor`: one per open circuit.
//!
//! * **Owns** the circuit's forwarding task on the I/O runtime, which owns both
//!   WebSockets (handed over by their connection tasks) and the circuit's
//!   [`TokenBucket`].
//! * **In:** [`FwdCmd`]s from the server actor on a bounded channel (`Send` an `error`
//!   message, `Close` one side with a code); the circuit's fair share on a `watch`
//!   channel (latest value wins, so a burst of circuits opening, which changes every
//!   share once per new circuit, never fills the command queue); [`StopForwarder`] to
//!   abort.
//! * **Out:** [`ForwardReport`]s to the server actor (awaited sends, batched per 64 KiB
//!   or per 100 ms): bytes forwarded each way, bucket waits, a message that would cross
//!   the data cap, a side whose socket ended; [`ForwarderExited`] when it stops. With a
//!   tap configured, every forwarded message is copied to it.
//! * **Supervised** by [`RelayServerActor`](super::RelayServerActor), never restarted.
//! * **Stops** when both sides are closed (on the server's `Close` commands, which the
//!   state issues when a side leaves or a limit trips), or on [`StopForwarder`].
//!
//! Forwarding is message by message (WebSocket message mode) and unchanged: what one end
//! sends as one binary message the other receives as one binary message, in order.
//! Bytes only ever go to the circuit's other end. The data cap is enforced here exactly
//! (a message that would cross it is dropped and reported, and the state closes the
//! circuit); the duration limit by the state's timer. The task reads from one side at a
//! time and awaits the write to the other: a slow receiver slows its sender, and nothing
//! is buffered beyond one message.

use std::time::{Duration, Instant};

use actix::{
    fut::wrap_future, Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient,
};
use bytes::Bytes;
use kizuna::relay::{
    limits::{burst_for, TokenBucket},
    server::{CircuitLimits, Direction},
    unconfirmed::HandshakeFlights,
    CircuitId,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::AbortHandle,
};

use super::{
    connection::{close_ws, LiveGuard, RelayWs},
    server::{ForwardReport, ForwarderExited},
    TappedMessage,
};
use crate::runtime::io_runtime;

/// Commands the server actor can queue for one forwarder. 16: one state input yields at
/// most an `error` and a `Close` per side; the rest is margin. (Rate changes do not use
/// the queue.)
pub(crate) const FORWARDER_QUEUE: usize = 16;

/// Bytes forwarded before a report is sent. 64 KiB (one full message): the state's
/// counters lag by at most that much per circuit, and a bulk transfer costs one actor
/// round trip per 64 KiB.
const REPORT_BYTES: u64 = 64 * 1024;

/// Longest a report waits while bytes are pending. 100 ms keeps metrics fresh for slow
/// circuits.
const REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// How long a forwarder whose circuit stopped (one side ended, data cap crossed) waits
/// for the state's `Close` commands before closing the rest itself. 5 s: the commands
/// normally arrive within a millisecond; this only guards against a lost command.
const ORPHAN_WAIT: Duration = Duration::from_secs(5);

/// One end of a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The dialer.
    A,
    /// The target.
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// A command for a forwarder.
#[derive(Debug)]
pub(crate) enum FwdCmd {
    /// Send this encoded relay message to one side (an `error` before a close).
    Send(Side, Bytes),
    /// Close one side with this WebSocket status code and reason.
    Close(Side, u16, String),
}

/// Aborts the forwarding task (both sockets are dropped) and stops the actor.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub(crate) struct StopForwarder;

/// Everything a forwarder needs.
pub(crate) struct ForwarderSetup {
    pub(crate) circuit: CircuitId,
    pub(crate) a: oneshot::Receiver<RelayWs>,
    pub(crate) b: oneshot::Receiver<RelayWs>,
    pub(crate) limits: CircuitLimits,
    pub(crate) ctl: mpsc::Receiver<FwdCmd>,
    /// The circuit's fair share, bytes per second (starts at `limits.rate`).
    pub(crate) rate: watch::Receiver<u64>,
    pub(crate) reports: Recipient<ForwardReport>,
    pub(crate) exited: Recipient<ForwarderExited>,
    pub(crate) tap: Option<mpsc::Sender<TappedMessage>>,
    pub(crate) live: LiveGuard,
}

/// Forwards one circuit. See the module docs.
pub struct RelayForwarderActor {
    circuit: CircuitId,
    setup: Option<ForwarderSetup>,
    exited: Recipient<ForwarderExited>,
    task: Option<AbortHandle>,
}

impl std::fmt::Debug for RelayForwarderActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayForwarderActor").field("circuit", &self.circuit).finish_non_exhaustive()
    }
}

impl RelayForwarderActor {
    pub(crate) fn new(setup: ForwarderSetup) -> Self {
        Self { circuit: setup.circuit, exited: setup.exited.clone(), setup: Some(setup), task: None }
    }
}

impl Actor for RelayForwarderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(setup) = self.setup.take() else { return };
        let handle = io_runtime().spawn(forward(setup));
        self.task = Some(handle.abort_handle());
        ctx.spawn(wrap_future::<_, Self>(handle).map(|_, _, ctx| ctx.stop()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        // A rare control message that must not be lost: `do_send` ignores capacity.
        self.exited.do_send(ForwarderExited { circuit: self.circuit });
    }
}

impl Handler<StopForwarder> for RelayForwarderActor {
    type Result = ();
    fn handle(&mut self, _: StopForwarder, ctx: &mut Context<Self>) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        ctx.stop();
    }
}

/// The forwarding task's bookkeeping.
struct Forwarding {
    circuit: CircuitId,
    sides: [Option<RelayWs>; 2],
    bucket: TokenBucket,
    max_bytes: u64,
    /// Bytes forwarded (both directions), reported or not.
    total: u64,
    report: ForwardReport,
    reports: Recipient<ForwardReport>,
    /// Flights of the ends' handshake so far (the circuit is confirmed at the third).
    flights: HandshakeFlights,
    tap: Option<mpsc::Sender<TappedMessage>>,
    /// A message read but not yet forwarded (waiting for the bucket).
    held: Option<(Side, Bytes)>,
    /// The held message was already counted as a bucket wait.
    held_throttled: bool,
    wake: tokio::time::Instant,
    /// Forwarding ended (a side left or the cap was crossed): waiting for the closes.
    stopped_at: Option<tokio::time::Instant>,
}

fn direction(from: Side) -> Direction {
    match from {
        Side::A => Direction::AToB,
        Side::B => Direction::BToA,
    }
}

/// The next message from either side, or never if one is missing.
async fn recv_either(
    a: Option<&mut RelayWs>,
    b: Option<&mut RelayWs>,
) -> (Side, std::io::Result<Option<Bytes>>) {
    match (a, b) {
        (Some(a), Some(b)) => tokio::select! {
            r = a.recv_message() => (Side::A, r),
            r = b.recv_message() => (Side::B, r),
        },
        _ => std::future::pending().await,
    }
}

impl Forwarding {
    fn forwarding(&self) -> bool {
        self.stopped_at.is_none() && self.sides.iter().all(Option::is_some)
    }

    fn stop(&mut self) {
        self.held = None;
        self.stopped_at.get_or_insert_with(tokio::time::Instant::now);
    }

    async fn flush(&mut self) {
        let r = &self.report;
        let empty = r.a_to_b == 0 && r.b_to_a == 0 && r.throttled == 0;
        if empty && r.over_cap.is_none() && r.ended.is_none() && !r.handshake {
            return;
        }
        let report = std::mem::take(&mut self.report);
        // The server actor gone means the relay is stopping; the task ends on the ctl
        // channel closing.
        let _ = self.reports.send(ForwardReport { circuit: Some(self.circuit), ..report }).await;
    }

    async fn side_ended(&mut self, side: Side) {
        self.sides[side.index()] = None;
        self.stop();
        self.report.ended = Some(side);
        self.flush().await;
    }

    async fn command(&mut self, cmd: FwdCmd) {
        match cmd {
            FwdCmd::Send(side, data) => {
                if let Some(ws) = self.sides[side.index()].as_mut() {
                    let _ = ws.send_message(data).await;
                }
            }
            FwdCmd::Close(side, code, reason) => {
                self.stop();
                if let Some(mut ws) = self.sides[side.index()].take() {
                    close_ws(&mut ws, code, &reason).await;
                }
            }
        }
    }

    /// Forwards the held message if the cap and the bucket allow.
    async fn try_forward(&mut self) {
        let Some((from, data)) = self.held.take() else { return };
        let n = data.len() as u64;
        if self.total.saturating_add(n) > self.max_bytes {
            // Exact cap: this message is not forwarded; the state closes the circuit.
            self.stop();
            self.report.over_cap = Some((direction(from), n));
            self.flush().await;
            return;
        }
        if let Err(wait) = self.bucket.take(Instant::now(), n) {
            if !self.held_throttled {
                self.held_throttled = true;
                self.report.throttled += 1;
            }
            self.wake = tokio::time::Instant::now() + wait;
            self.held = Some((from, data));
            return;
        }
        self.held_throttled = false;
        if let Some(tap) = &self.tap {
            let tapped =
                TappedMessage { circuit: self.circuit, direction: direction(from), data: data.clone() };
            let _ = tap.send(tapped).await;
        }
        let to = match from {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        let Some(dest) = self.sides[to.index()].as_mut() else { return };
        if let Err(e) = dest.send_message(data).await {
            tracing::debug!(circuit = %self.circuit, "circuit write failed: {e}");
            self.side_ended(to).await;
            return;
        }
        self.total += n;
        match from {
            Side::A => self.report.a_to_b += n,
            Side::B => self.report.b_to_a += n,
        }
        // The state confirms the circuit at once (its handshake deadline is seconds).
        let confirmed = self.flights.observe(direction(from));
        self.report.handshake |= confirmed;
        if confirmed || self.report.a_to_b + self.report.b_to_a >= REPORT_BYTES {
            self.flush().await;
        }
    }
}

async fn forward(setup: ForwarderSetup) {
    let ForwarderSetup { circuit, a, b, limits, mut ctl, mut rate, reports, tap, live, .. } = setup;
    let _live = live;
    let now = Instant::now();
    let mut f = Forwarding {
        circuit,
        sides: [a.await.ok(), b.await.ok()],
        bucket: TokenBucket::new(limits.rate, burst_for(limits.rate), now),
        max_bytes: limits.max_bytes,
        total: 0,
        report: ForwardReport::default(),
        reports,
        flights: HandshakeFlights::default(),
        tap,
        held: None,
        held_throttled: false,
        wake: tokio::time::Instant::now(),
        stopped_at: None,
    };
    for side in [Side::A, Side::B] {
        if f.sides[side.index()].is_none() {
            f.side_ended(side).await;
        }
    }
    let mut ticker = tokio::time::interval(REPORT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The server actor dropping the rate sender means it is stopping (the ctl channel
    // closes too); stop watching so that `changed` does not fire forever.
    let mut rate_open = true;
    while f.sides.iter().any(Option::is_some) {
        let reading = f.forwarding() && f.held.is_none();
        let orphan_deadline = f.stopped_at.map(|t| t + ORPHAN_WAIT);
        let [sa, sb] = &mut f.sides;
        tokio::select! {
            biased;
            cmd = ctl.recv() => match cmd {
                Some(cmd) => f.command(cmd).await,
                None => break,
            },
            changed = rate.changed(), if rate_open => match changed {
                Ok(()) => {
                    let r = *rate.borrow_and_update();
                    f.bucket.set_rate(Instant::now(), r);
                    // A held message waits for the bucket: re-time it at the new rate.
                    if f.held.is_some() {
                        f.try_forward().await;
                    }
                }
                Err(_) => rate_open = false,
            },
            _ = tokio::time::sleep_until(f.wake), if f.held.is_some() => f.try_forward().await,
            (side, r) = recv_either(sa.as_mut(), sb.as_mut()), if reading => match r {
                Ok(Some(data)) => {
                    f.held = Some((side, data));
                    f.try_forward().await;
                }
                Ok(None) => f.side_ended(side).await,
                Err(e) => {
                    tracing::debug!(%circuit, "circuit read failed: {e}");
                    f.side_ended(side).await;
                }
            },
            _ = ticker.tick() => f.flush().await,
            _ = tokio::time::sleep_until(orphan_deadline.unwrap_or_else(tokio::time::Instant::now)),
                if orphan_deadline.is_some() => break,
        }
    }
    // Whatever is left (the relay stopped, or the closes never came) ends normally.
    for ws in f.sides.iter_mut() {
        if let Some(mut ws) = ws.take() {
            close_ws(&mut ws, kizuna::relay::ErrorCode::Normal.ws_close_code(), "circuit ended").await;
        }
    }
    f.flush().await;
}
