//! The accept loop and the per-connection tasks of the relay (tasks, not actors).
//!
//! * The **accept loop** accepts TCP connections and admits each to its handshake by
//!   [`RelayServerConfig::handshake_limits`](super::RelayServerConfig) (per-address and
//!   total caps, eviction of silent connections: [`kizuna::transport::admission`]), then
//!   spawns its connection task. It stops on the shutdown signal from
//!   [`RelayServerActor`].
//! * A **connection task** owns one WebSocket: the first-byte deadline, TLS for `wss://`, the upgrade
//!   ([`ws_accept`] refuses clients without the `kizuna` subprotocol), the relay handshake
//!   ([`ServerHandshake`]: challenge, auth, purpose, all within its deadline), then it
//!   registers with the server actor ([`ConnAuthenticated`]) and serves until the
//!   connection ends: relay messages it reads go to the actor (awaited `send`, so a busy
//!   actor slows its readers), [`ConnCmd`]s from the actor (a bounded channel) are
//!   written. [`ConnCmd::Handover`] gives the WebSocket to a circuit forwarder.
//!
//! The handshake is decided by [`ServerHandshake`]; everything after it by
//! [`RelayState`](kizuna::relay::server::RelayState) in the actor. The task only moves
//! bytes, decodes, and closes when told (or when the socket ends, which it reports).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use actix::Addr;
use bytes::Bytes;
use kizuna::{
    identity::PeerId,
    relay::{
        auth::{Admission, HandshakeStep, ServerHandshake},
        server::ConnId,
        AuthError, ErrorCode, Purpose, RelayMessage,
    },
    transport::accept::{AdmissionPermit, AdmittingAccept},
    transport::admission::{AdmissionLimits, HandshakeCounters, HandshakeOutcome},
    transport::ws::{ws_accept, WsOptions, WsSocket, WsStream},
};
use ring::rand::SecureRandom;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
};
use tokio_rustls::TlsAcceptor;

use super::server::{ConnAuthenticated, ConnEvent, ConnInput, RelayServerActor};

/// A relay WebSocket.
pub(crate) type RelayWs = WsStream<WsSocket>;

/// Commands queued by the server actor for one connection task. 64: a control
/// connection receives a handful of messages per client action (reserved, incoming,
/// signaled); a client that lets 64 pile up is not reading and is dropped.
pub(crate) const CONN_QUEUE: usize = 64;

/// How long a closing connection waits for the peer's close reply after sending its
/// own. 1 s: enough for any live client on a real link, short enough that shutdown and
/// refusals never hang on a silent peer.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What the server actor tells a connection task.
#[derive(Debug)]
pub(crate) enum ConnCmd {
    /// Send one encoded relay message. `last`: it is `circuit_ready`, after which the
    /// connection carries circuit data: stop reading and wait for the handover.
    Send {
        /// The encoded message.
        data: Bytes,
        /// Stop reading after it.
        last: bool,
    },
    /// Close with this WebSocket status code and reason.
    Close {
        /// 4000 + the relay error code.
        code: u16,
        /// Human-readable reason.
        reason: String,
    },
    /// Hand the WebSocket over to a circuit forwarder and end the task.
    Handover(oneshot::Sender<RelayWs>),
}

/// What every connection task shares.
pub(crate) struct AcceptCtx {
    pub(crate) server: Addr<RelayServerActor>,
    pub(crate) admission: Admission,
    pub(crate) relay_name: Arc<str>,
    pub(crate) opts: WsOptions,
    pub(crate) tls: Option<TlsAcceptor>,
    /// Admission of unauthenticated connections.
    pub(crate) limits: AdmissionLimits,
    /// What happened to them (read by the server actor for the metrics).
    pub(crate) counters: Arc<HandshakeCounters>,
    pub(crate) rng: ring::rand::SystemRandom,
    /// Connection tasks alive (for a graceful stop).
    pub(crate) live: Arc<AtomicUsize>,
}

/// Accepts connections until `shutdown` turns true.
pub(crate) async fn accept_loop(ctx: Arc<AcceptCtx>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let mut next_conn: u64 = 1;
    let mut accept = AdmittingAccept::new(listener, ctx.limits, ctx.counters.clone(), shutdown, "relay");
    while let Some((tcp, remote, permit)) = accept.next().await {
        let conn = ConnId(next_conn);
        next_conn += 1;
        let live = LiveGuard::new(ctx.live.clone());
        let ticket = permit.ticket();
        let task = tokio::spawn(connection(ctx.clone(), tcp, remote, conn, permit, live));
        accept.track(ticket, task.abort_handle());
    }
    tracing::debug!("relay accept loop stopped");
}

/// Counts a live task holding relay sockets (connection or forwarder), for a graceful
/// stop.
#[derive(Debug)]
pub(crate) struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    pub(crate) fn new(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the handshake did not produce a peer.
enum HandshakeFail {
    /// Refused: tell the client the code, then close.
    Refused(AuthError),
    /// The socket ended or failed; nothing to tell.
    Gone(String),
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn encode(msg: &RelayMessage) -> Option<Bytes> {
    match msg.encode() {
        Ok(v) => Some(Bytes::from(v)),
        Err(e) => {
            // Only a bug (an oversized message built by the relay itself) gets here.
            tracing::error!(kind = msg.type_name(), "cannot encode relay message: {e}");
            None
        }
    }
}

/// Sends `close` with `code`, then waits (bounded) for the peer's close reply so that it
/// reads everything before the socket goes.
pub(crate) async fn close_ws(ws: &mut RelayWs, code: u16, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        ws.close_with(code, reason).await?;
        while let Some(_ignored) = ws.recv_message().await? {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// TLS (for `wss://`) and the WebSocket upgrade; a failure says how to count it.
async fn upgrade(ctx: &AcceptCtx, tcp: TcpStream) -> Result<RelayWs, (HandshakeOutcome, String)> {
    let _ = tcp.set_nodelay(true);
    let socket = match &ctx.tls {
        None => WsSocket::Plain(tcp),
        Some(acceptor) => {
            let tls = tokio::time::timeout(ctx.opts.handshake_timeout, acceptor.accept(tcp))
                .await
                .map_err(|_| (HandshakeOutcome::TimedOut, "TLS handshake timed out".to_string()))?
                .map_err(|e| (HandshakeOutcome::Violation, format!("TLS handshake failed: {e}")))?;
            WsSocket::TlsServer(Box::new(tls))
        }
    };
    ws_accept(socket, &ctx.opts).await.map_err(|e| (kizuna::transport::accept::outcome_of(&e), e.to_string()))
}

async fn handshake(ctx: &AcceptCtx, ws: &mut RelayWs) -> Result<(PeerId, Purpose), HandshakeFail> {
    let mut nonce = [0u8; 32];
    ctx.rng.fill(&mut nonce).map_err(|_| HandshakeFail::Gone("the system random generator failed".into()))?;
    let mut hs = ServerHandshake::new(nonce, &*ctx.relay_name, Instant::now());
    let challenge = encode(&hs.challenge()).ok_or_else(|| HandshakeFail::Gone("challenge".into()))?;
    ws.send_message(challenge).await.map_err(|e| HandshakeFail::Gone(e.to_string()))?;
    let deadline = tokio::time::Instant::from_std(hs.deadline());
    loop {
        let data = match tokio::time::timeout_at(deadline, ws.recv_message()).await {
            Err(_) => {
                let err = hs.handle_timeout(Instant::now()).err();
                return Err(match err {
                    Some(e) => HandshakeFail::Refused(e),
                    None => HandshakeFail::Gone("handshake timer".into()),
                });
            }
            Ok(Ok(Some(data))) => data,
            Ok(Ok(None)) => return Err(HandshakeFail::Gone("closed during the handshake".into())),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(HandshakeFail::Refused(AuthError::Protocol(e.to_string())))
            }
            Ok(Err(e)) => return Err(HandshakeFail::Gone(e.to_string())),
        };
        let msg = RelayMessage::decode(&data)
            .map_err(|e| HandshakeFail::Refused(AuthError::Protocol(format!("malformed message: {e}"))))?;
        match hs.handle_message(msg, &ctx.admission, unix_now()) {
            Ok(HandshakeStep::Done { peer, purpose }) => return Ok((peer, purpose)),
            Ok(_) => {}
            Err(e) => return Err(HandshakeFail::Refused(e)),
        }
    }
}

async fn connection(
    ctx: Arc<AcceptCtx>,
    tcp: TcpStream,
    remote: SocketAddr,
    conn: ConnId,
    permit: AdmissionPermit,
    _live: LiveGuard,
) {
    let local = tcp.local_addr().ok();
    if let Err(e) = permit.first_byte(&tcp, &remote.to_string()).await {
        tracing::debug!(%remote, "relay connection dropped before its handshake: {e}");
        return;
    }
    let mut ws = match upgrade(&ctx, tcp).await {
        Ok(ws) => ws,
        Err((outcome, e)) => {
            permit.record(outcome);
            tracing::debug!(%remote, "relay WebSocket upgrade refused: {e}");
            return;
        }
    };
    let (peer, purpose) = match handshake(&ctx, &mut ws).await {
        Ok(p) => p,
        Err(HandshakeFail::Refused(e)) => {
            permit.record(match e {
                AuthError::Timeout(_) => HandshakeOutcome::TimedOut,
                AuthError::Protocol(_) => HandshakeOutcome::Violation,
                _ => HandshakeOutcome::AuthRefused,
            });
            tracing::info!(%remote, "relay client refused: {e}");
            let code = e.code();
            if let Some(msg) = encode(&RelayMessage::error(code, e.to_string())) {
                let _ = ws.send_message(msg).await;
            }
            close_ws(&mut ws, code.ws_close_code(), &e.to_string()).await;
            return;
        }
        Err(HandshakeFail::Gone(e)) => {
            tracing::debug!(%remote, "relay handshake ended: {e}");
            return;
        }
    };
    permit.established();
    drop(permit);
    let (tx, rx) = mpsc::channel(CONN_QUEUE);
    let registered = ctx.server.send(ConnAuthenticated { conn, peer, purpose, remote, local, tx }).await;
    if registered.is_err() {
        let code = ErrorCode::Shutdown;
        if let Some(msg) = encode(&RelayMessage::error(code, "the relay is shutting down")) {
            let _ = ws.send_message(msg).await;
        }
        close_ws(&mut ws, code.ws_close_code(), "the relay is shutting down").await;
        return;
    }
    serve(&ctx, ws, conn, rx).await;
}

/// Reads relay messages and executes commands until the connection ends or is handed
/// over.
async fn serve(ctx: &AcceptCtx, mut ws: RelayWs, conn: ConnId, mut rx: mpsc::Receiver<ConnCmd>) {
    let report = |input| ctx.server.send(ConnEvent { conn, input });
    // Reading stops after `circuit_ready` (the rest is circuit data for the forwarder)
    // and after a violation (the close is on its way).
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            cmd = rx.recv() => match cmd {
                Some(ConnCmd::Send { data, last }) => {
                    if last {
                        reading = false;
                    }
                    if let Err(e) = ws.send_message(data).await {
                        tracing::debug!(%conn, "relay write failed: {e}");
                        let _ = report(ConnInput::Closed).await;
                        return;
                    }
                }
                Some(ConnCmd::Close { code, reason }) => {
                    close_ws(&mut ws, code, &reason).await;
                    return;
                }
                Some(ConnCmd::Handover(to)) => {
                    // If the forwarder is already gone the socket is dropped here; the
                    // forwarder's exit tells the actor.
                    let _ = to.send(ws);
                    return;
                }
                // The actor dropped this connection (slow reader, or the relay stopped).
                None => return,
            },
            r = ws.recv_message(), if reading => {
                let input = match r {
                    Ok(Some(data)) => match RelayMessage::decode(&data) {
                        Ok(msg) => ConnInput::Message(msg),
                        Err(e) => {
                            reading = false;
                            ConnInput::Malformed(format!("malformed relay message: {e}"))
                        }
                    },
                    Ok(None) => ConnInput::Closed,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        reading = false;
                        ConnInput::Malformed(e.to_string())
                    }
                    Err(e) => {
                        tracing::debug!(%conn, "relay read failed: {e}");
                        ConnInput::Closed
                    }
                };
                let closed = matches!(input, ConnInput::Closed);
                if report(input).await.is_err() || closed {
                    return;
                }
            }
        }
    }
}
