//! `RelayClientActor`: keeps this node reachable through a relay.
//!
//! * **Owns** the client's relay machine ([`RelayClientState`]: which relay, reservation
//!   renewal, backoff and failover — every decision is there), its one timer, and the
//!   control WebSocket to the current relay (a reader/writer task on the I/O runtime).
//! * **In:** `RelayIo` (messages and failures from the control connection's task),
//!   `SendSignal` (relay signaling: WebRTC offers and answers), [`Fault`] (tests).
//! * **Out:** accepted relayed circuits to the supervisor as `Inbound` connections, and
//!   what the relay reports at each reservation (`RelayAddrs`);
//!   events (`RelayReserved`, `RelayFailed`, `SignalReceived`) on the bus; signals are
//!   decoded once here (`kizuna::punch::Signal::decode`): punch messages and WebRTC
//!   signaling go to the supervisor decoded (`PunchSignal`, `WebRtcSignal`), payloads
//!   that are no Kizuna signal to the application (`SignalReceived`).
//! * **Supervised** as a *permanent* child of the [`Supervisor`](crate::Supervisor)
//!   (it recovers from relay failures by itself; only its own death needs a restart).
//! * **Stops** with the supervisor.

use std::{sync::Arc, time::Instant};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, Recipient, SpawnHandle};
use bytes::Bytes;
use kizuna::{
    punch::{Signal, SignalError},
    relay::{
        client::{ClientEvent, ClientOutput, RelayClientConfig, RelayClientState},
        RelayMessage,
    },
    transport::{
        relay::accept as accept_circuit,
        ws::{ws_connect, WsOptions},
    },
    Incoming, LocalNode, PeerId,
};
use tokio::sync::{mpsc, watch};

use crate::{
    api::Event,
    node::child::{ChildExited, ChildId, ExitGuard, Fault},
    node::events::EventBus,
    node::hole_punch::{PunchSignal, SendSignal},
    node::listener::Inbound,
    node::supervision::ExitReason,
    node::webrtc_signal::WebRtcSignal,
    runtime::io_runtime,
};

/// Control messages queued for the relay before the writer waits. 64: control traffic
/// is a renewal every few minutes plus refusals and signals.
const CONTROL_QUEUE: usize = 64;

/// What the control connection's task reports (generation-tagged, so reports from a
/// connection already abandoned are ignored).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) enum RelayIo {
    Connected { generation: u64, writer: mpsc::Sender<RelayMessage> },
    Message { generation: u64, msg: RelayMessage },
    Down { generation: u64, reason: String },
}

/// What the current relay told this node in its latest `reserved`: the address it sees
/// the node come from and the STUN servers it answers on (hole punching uses both).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct RelayAddrs {
    pub(crate) observed: Option<std::net::SocketAddr>,
    pub(crate) stun: Vec<std::net::SocketAddr>,
}

/// Where a relay client sends what it receives (all to the supervisor).
pub(crate) struct RelayClientPorts {
    /// Accepted relayed circuits.
    pub(crate) inbound: Recipient<Inbound>,
    /// Signals tagged as punch messages.
    pub(crate) punch: Recipient<PunchSignal>,
    /// Signals tagged as WebRTC signaling.
    pub(crate) webrtc: Recipient<WebRtcSignal>,
    /// What the relay reports at each reservation.
    pub(crate) addrs: Recipient<RelayAddrs>,
    /// The client's exit.
    pub(crate) exited: Recipient<ChildExited>,
}

/// Keeps a reservation at one of the configured relays.
pub struct RelayClientActor {
    node: Arc<LocalNode>,
    state: RelayClientState,
    opts: WsOptions,
    bus: EventBus,
    inbound: Recipient<Inbound>,
    punch: Recipient<PunchSignal>,
    addrs: Recipient<RelayAddrs>,
    webrtc: Recipient<WebRtcSignal>,
    guard: ExitGuard,
    generation: u64,
    writer: Option<mpsc::Sender<RelayMessage>>,
    timer: Option<SpawnHandle>,
    /// Whether the node holds a reservation now (signalers wait on it).
    reserved: watch::Sender<bool>,
}

impl RelayClientActor {
    pub(crate) fn new(
        id: ChildId,
        node: Arc<LocalNode>,
        config: RelayClientConfig,
        bus: EventBus,
        ports: RelayClientPorts,
    ) -> Result<Self, kizuna::relay::RelayConfigError> {
        let RelayClientPorts { inbound, punch, webrtc, addrs, exited } = ports;
        let seed = u64::from_le_bytes(node.peer_id().as_bytes()[..8].try_into().unwrap_or([7; 8]));
        let state = RelayClientState::new(node.config().keypair.clone(), config, seed)?;
        let opts = WsOptions::from_node(node.config());
        Ok(Self {
            node,
            state,
            opts,
            bus,
            inbound,
            punch,
            addrs,
            webrtc,
            guard: ExitGuard::new(id, exited),
            generation: 0,
            writer: None,
            timer: None,
            reserved: watch::Sender::new(false),
        })
    }

    /// Whether the node holds a reservation, as it changes.
    pub(crate) fn reserved(&self) -> watch::Receiver<bool> {
        self.reserved.subscribe()
    }

    /// Performs everything the machine asks for, then re-arms the timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(out) = self.state.poll_output() {
            match out {
                ClientOutput::Connect { url, .. } => self.connect(url, ctx),
                ClientOutput::Send(msg) => {
                    if let Some(w) = &self.writer {
                        if w.try_send(msg).is_err() {
                            tracing::warn!("relay control queue full: message dropped");
                        }
                    }
                }
                ClientOutput::Disconnect => {
                    self.generation += 1;
                    self.writer = None;
                }
                ClientOutput::Event(ev) => self.on_event(ev),
                _ => {}
            }
        }
        let reserved = self.state.is_reserved(Instant::now());
        self.reserved.send_if_modified(|r| std::mem::replace(r, reserved) != reserved);
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        if let Some(at) = self.state.poll_timeout() {
            let after = at.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(after, |act, ctx| {
                act.timer = None;
                act.state.handle_timeout(Instant::now());
                act.drain(ctx);
            }));
        }
    }

    fn connect(&mut self, url: String, ctx: &mut Context<Self>) {
        self.generation += 1;
        self.writer = None;
        let generation = self.generation;
        let me = ctx.address();
        let opts = self.opts.clone();
        io_runtime().spawn(control_connection(url, opts, generation, me));
    }

    fn on_event(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Reserved { url, ttl, observed, stun } => {
                tracing::info!(%url, ?ttl, ?observed, ?stun, "reserved at relay");
                self.addrs.do_send(RelayAddrs { observed, stun });
                self.bus.publish_later(Event::RelayReserved { url });
            }
            ClientEvent::RelayFailed { url, reason, next_url, retry_in, .. } => {
                tracing::warn!(%url, %reason, %next_url, ?retry_in, "relay failed");
                self.bus.publish_later(Event::RelayFailed { url, reason });
            }
            ClientEvent::RelayError { code, message } => {
                tracing::warn!(?code, %message, "relay error");
                self.bus.publish_later(Event::LimitHit { limit: format!("relay {code:?}"), detail: message });
            }
            ClientEvent::Incoming { url, circuit, from } => {
                let node = self.node.clone();
                let opts = self.opts.clone();
                let token = self.state.current_relay().token.clone();
                let inbound = self.inbound.clone();
                io_runtime().spawn(async move {
                    let incoming =
                        match accept_circuit(&node, &url, token.as_deref(), circuit, from, &opts).await {
                            Ok(conn) => Incoming::Connection(conn),
                            Err(error) => Incoming::Rejected { remote: format!("{from} via {url}"), error },
                        };
                    let _ = inbound.send(Inbound(incoming)).await;
                });
            }
            ClientEvent::Signaled { from, payload } => self.on_signal(from, payload),
            _ => {}
        }
    }
}

impl RelayClientActor {
    /// Decodes a signal once and routes it by kind: punch messages (and undecodable ones,
    /// which fail their session) and WebRTC signaling to the supervisor; what is not a
    /// Kizuna signal to the application, as `SignalReceived`.
    fn on_signal(&mut self, from: PeerId, payload: Vec<u8>) {
        let message = match Signal::decode(&payload) {
            Ok(Signal::Punch(m)) => Ok(m),
            Err(SignalError::Punch(e)) => Err(e),
            Ok(Signal::WebRtc(message)) => {
                if self.webrtc.try_send(WebRtcSignal { peer: from, message }).is_err() {
                    tracing::debug!(peer = %from, "WebRTC signal dropped: supervisor busy");
                }
                return;
            }
            Err(SignalError::WebRtc(e)) => {
                tracing::debug!(peer = %from, error = %e, "WebRTC signal refused");
                return;
            }
            Err(_) => {
                self.bus.publish_later(Event::SignalReceived { peer: from, payload: Bytes::from(payload) });
                return;
            }
            Ok(_) => return,
        };
        if self.punch.try_send(PunchSignal { peer: from, message }).is_err() {
            tracing::debug!(peer = %from, "punch signal dropped: supervisor busy");
        }
    }
}

/// The control connection: connect, then pump messages both ways until either side ends.
async fn control_connection(url: String, opts: WsOptions, generation: u64, me: Addr<RelayClientActor>) {
    let mut ws = match ws_connect(&url, &opts).await {
        Ok(ws) => ws,
        Err(e) => {
            me.do_send(RelayIo::Down { generation, reason: e.to_string() });
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<RelayMessage>(CONTROL_QUEUE);
    if me.send(RelayIo::Connected { generation, writer: tx }).await.is_err() {
        return;
    }
    let reason = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(msg) => match msg.encode() {
                    Ok(bytes) => {
                        if let Err(e) = ws.send_message(Bytes::from(bytes)).await {
                            break e.to_string();
                        }
                    }
                    Err(e) => tracing::warn!("unencodable relay message: {e}"),
                },
                // The actor let go of this connection (disconnect or newer generation).
                None => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut ws).await;
                    return;
                }
            },
            inbound = ws.recv_message() => match inbound {
                Ok(Some(bytes)) => match RelayMessage::decode(&bytes) {
                    Ok(msg) => {
                        if me.send(RelayIo::Message { generation, msg }).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break format!("malformed message from the relay: {e}"),
                },
                Ok(None) => break "the relay closed the connection".to_string(),
                Err(e) => break e.to_string(),
            },
        }
    };
    me.do_send(RelayIo::Down { generation, reason });
}

impl Actor for RelayClientActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.state.start(Instant::now());
        self.drain(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> actix::Running {
        self.state.stop();
        while let Some(out) = self.state.poll_output() {
            if let (ClientOutput::Send(msg), Some(w)) = (out, &self.writer) {
                let _ = w.try_send(msg);
            }
        }
        actix::Running::Stop
    }
}

impl Handler<RelayIo> for RelayClientActor {
    type Result = ();
    fn handle(&mut self, msg: RelayIo, ctx: &mut Context<Self>) {
        let now = Instant::now();
        match msg {
            RelayIo::Connected { generation, writer } if generation == self.generation => {
                self.writer = Some(writer);
                self.state.handle_connected(now);
            }
            RelayIo::Message { generation, msg } if generation == self.generation => {
                self.state.handle_message(msg, now);
            }
            RelayIo::Down { generation, reason } if generation == self.generation => {
                self.writer = None;
                self.state.handle_disconnected(now, &reason);
            }
            _ => return,
        }
        self.drain(ctx);
    }
}

impl Handler<SendSignal> for RelayClientActor {
    type Result = Result<(), kizuna::relay::client::ClientCommandError>;
    fn handle(&mut self, msg: SendSignal, ctx: &mut Context<Self>) -> Self::Result {
        let r = self.state.signal(msg.to, msg.payload, Instant::now());
        self.drain(ctx);
        r
    }
}

/// Release the reservation and stop (node shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopRelayClient;

impl Handler<StopRelayClient> for RelayClientActor {
    type Result = ();
    fn handle(&mut self, _: StopRelayClient, ctx: &mut Context<Self>) {
        self.guard.set(ExitReason::Normal);
        ctx.stop();
    }
}

impl Handler<Fault> for RelayClientActor {
    type Result = ();
    fn handle(&mut self, fault: Fault, ctx: &mut Context<Self>) {
        match fault {
            Fault::Panic => panic!("injected panic in the relay client"),
            Fault::Kill | Fault::DropConnection => {
                self.guard.set(ExitReason::Killed);
                ctx.stop();
            }
        }
    }
}
