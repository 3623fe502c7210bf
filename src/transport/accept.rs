//! What every TCP-based server shares (the TCP and WebSocket transports, the relay):
//! binding with a backlog, per-socket options, and an accept loop that admits each
//! connection to its handshake by the rules of [`admission`](super::admission).

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::{AbortHandle, JoinHandle},
};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::admission::{
    Admission, AdmissionLimits, HandshakeAdmission, HandshakeCounters, HandshakeOutcome, Ticket,
};
use super::{BoxFuture, Connection, Incoming, Listener};
use crate::error::{Result, TransportError};
use crate::wire::{write_frame, CloseCode, Control, Frame};
use crate::{address::TransportAddr, node::LocalNode};

/// Idle time before the kernel sends TCP keep-alive probes, interval between probes, and
/// probes before the socket is declared dead. 30 s / 10 s / 3: a dead peer is noticed by
/// the kernel within about a minute even when the application-level keep-alive (15 s
/// pings, 45 s idle timeout) is stalled behind backpressure; the probes cost nothing on a
/// busy connection.
const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// Pause after a failed `accept(2)` (e.g. out of file descriptors) before retrying. 50 ms
/// keeps a persistent failure from spinning a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How long a client refused after its secure channel is up is given to read our close
/// frame. 100 ms: a courtesy for debugging the peer, never worth holding a handshake slot
/// longer.
const REJECT_LINGER: Duration = Duration::from_millis(100);

/// Tells a client refused after the secure channel why (a `Close` control frame), briefly,
/// then shuts the stream down; returns the error for the listener to report.
pub(crate) async fn reject<S: AsyncWrite + Unpin>(io: &mut S, e: TransportError) -> TransportError {
    let code = match e {
        TransportError::ProtocolViolation { .. } => CloseCode::ProtocolError,
        _ => CloseCode::Normal,
    };
    let close = Frame::Control(Control::Close { code, reason: e.to_string() });
    let _ = tokio::time::timeout(REJECT_LINGER, async {
        write_frame(io, &close).await?;
        io.shutdown().await?;
        Ok::<_, TransportError>(())
    })
    .await;
    e
}

/// Sets `TCP_NODELAY` (Kizuna batches its own writes) and kernel keep-alive probes on a
/// connected socket.
pub fn configure_tcp(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let ka = TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_TIME)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&ka)
}

/// A listening socket on `sa` with `SO_REUSEADDR` and `backlog`; `what` names it in the
/// error (e.g. `tcp=0.0.0.0:4000`).
pub fn bind_tcp(sa: SocketAddr, backlog: u32, what: &str) -> Result<TcpListener> {
    let fail = |e: std::io::Error| TransportError::Config(format!("cannot listen on {what}: {e}"));
    let socket =
        Socket::new(Domain::for_address(sa), Type::STREAM, Some(socket2::Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&sa.into()).map_err(fail)?;
    socket.listen(backlog.min(i32::MAX as u32) as i32).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

/// Accepts TCP connections and admits each to its handshake through a
/// [`HandshakeAdmission`]: per-address and total caps, eviction of silent handshakes when
/// full (see [`admission`](super::admission)). Refused connections are closed at once, so
/// a crowd never waits in the kernel's backlog in front of other clients.
#[derive(Debug)]
pub struct AdmittingAccept {
    listener: TcpListener,
    shared: Arc<AdmissionShared>,
    shutdown: watch::Receiver<bool>,
    what: &'static str,
}

#[derive(Debug)]
struct AdmissionShared {
    state: Mutex<AdmissionState>,
    counters: Arc<HandshakeCounters>,
    first_byte_timeout: Duration,
}

#[derive(Debug)]
struct AdmissionState {
    machine: HandshakeAdmission,
    /// How to abort each admitted handshake's task, should it be evicted.
    aborts: HashMap<Ticket, AbortHandle>,
}

impl AdmissionShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An admitted connection's slot: dropping it frees the slot (whatever the outcome).
#[derive(Debug)]
pub struct AdmissionPermit {
    shared: Arc<AdmissionShared>,
    ticket: Ticket,
}

impl AdmissionPermit {
    /// This handshake's ticket (to [`AdmittingAccept::track`] its task).
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }

    /// Waits (at most the first-byte deadline) for the client's first byte; counts and
    /// fails a client that sends nothing. Marks the handshake as talking.
    pub async fn first_byte(&self, stream: &TcpStream, label: &str) -> Result<()> {
        let within = self.shared.first_byte_timeout;
        let mut b = [0u8; 1];
        match tokio::time::timeout(within, stream.peek(&mut b)).await {
            Ok(Ok(n)) if n > 0 => {
                self.shared.lock().machine.heard(self.ticket);
                Ok(())
            }
            Ok(Ok(_)) => Err(TransportError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{label} closed before sending anything"),
            ))),
            Ok(Err(e)) => Err(TransportError::Io(e)),
            Err(_) => {
                self.record(HandshakeOutcome::Silent);
                Err(TransportError::Timeout { what: format!("first byte from {label}"), after: within })
            }
        }
    }

    /// The handshake completed: the slot stays taken until the permit is dropped, but is
    /// never evicted.
    pub fn established(&self) {
        self.shared.lock().machine.established(self.ticket);
        self.record(HandshakeOutcome::Completed);
    }

    /// Counts `outcome` for this server.
    pub fn record(&self, outcome: HandshakeOutcome) {
        self.shared.counters.record(outcome);
    }
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.machine.release(self.ticket);
        st.aborts.remove(&self.ticket);
    }
}

impl AdmittingAccept {
    /// Admits by `limits`, counting into `counters`; stops once `shutdown` turns true.
    /// `what` names the server in logs.
    pub fn new(
        listener: TcpListener,
        limits: AdmissionLimits,
        counters: Arc<HandshakeCounters>,
        shutdown: watch::Receiver<bool>,
        what: &'static str,
    ) -> Self {
        let state = AdmissionState { machine: HandshakeAdmission::new(limits), aborts: HashMap::new() };
        let shared = Arc::new(AdmissionShared {
            state: Mutex::new(state),
            counters,
            first_byte_timeout: limits.first_byte_timeout,
        });
        Self { listener, shared, shutdown, what }
    }

    /// The next admitted connection and its slot; `None` once shut down. Refused
    /// connections are closed and counted here; transient accept errors are logged and
    /// retried.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr, AdmissionPermit)> {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = self.shutdown.wait_for(|s| *s) => return None,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("{} accept failed: {e}", self.what);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let decision = {
                let mut st = self.shared.lock();
                let d = st.machine.admit(remote.ip());
                if let Admission::Admit { evict: Some(old), .. } = d {
                    if let Some(task) = st.aborts.remove(&old) {
                        task.abort();
                    }
                }
                d
            };
            match decision {
                Admission::Admit { ticket, evict } => {
                    if evict.is_some() {
                        self.shared.counters.record(HandshakeOutcome::Evicted);
                    }
                    self.shared.counters.record(HandshakeOutcome::Admitted);
                    return Some((stream, remote, AdmissionPermit { shared: self.shared.clone(), ticket }));
                }
                Admission::Refuse(why) => {
                    self.shared.counters.record(HandshakeOutcome::Refused(why));
                    tracing::debug!(%remote, "{} refused a connection: {why}", self.what);
                    refuse_now(stream);
                }
            }
        }
    }

    /// Registers the task running `ticket`'s handshake, so that an eviction can abort it.
    /// A handshake that already ended is not registered.
    pub fn track(&self, ticket: Ticket, task: AbortHandle) {
        let mut st = self.shared.lock();
        if st.machine.is_live(ticket) {
            st.aborts.insert(ticket, task);
        }
    }
}

/// Closes a refused connection at once, with a reset rather than a FIN so that neither
/// side keeps state for it (`SO_LINGER` 0).
fn refuse_now(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Runs an admitted connection's handshake: waits for its first byte (a silent client is
/// counted and dropped without a report: `None`), then runs `handshake` within `bound`
/// and counts the outcome. The permit stays with the caller, who drops it once the
/// result is handed over.
pub(crate) async fn admitted_handshake<F, Fut>(
    permit: &AdmissionPermit,
    stream: TcpStream,
    label: &str,
    bound: Duration,
    handshake: F,
) -> Option<Incoming>
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: Future<Output = Result<Connection>>,
{
    if let Err(e) = permit.first_byte(&stream, label).await {
        tracing::debug!(remote = %label, "inbound connection dropped before its handshake: {e}");
        return None;
    }
    let incoming = handshake_incoming(label, bound, handshake(stream)).await;
    match &incoming {
        Incoming::Connection(_) => permit.established(),
        Incoming::Rejected { error, .. } => permit.record(outcome_of(error)),
    }
    Some(incoming)
}

/// How a failed inbound handshake is counted.
pub fn outcome_of(error: &TransportError) -> HandshakeOutcome {
    match error {
        TransportError::Timeout { .. } => HandshakeOutcome::TimedOut,
        TransportError::AuthenticationFailed { .. } | TransportError::LimitExceeded { .. } => {
            HandshakeOutcome::AuthRefused
        }
        _ => HandshakeOutcome::Violation,
    }
}

/// Runs one inbound handshake within `bound` and reports it as the listener's
/// [`Incoming`]: the connection, or why `label` (the remote) was refused.
pub(crate) async fn handshake_incoming(
    label: &str,
    bound: Duration,
    handshake: impl Future<Output = Result<Connection>>,
) -> Incoming {
    let incoming = match tokio::time::timeout(bound, handshake).await {
        Ok(Ok(conn)) => Incoming::Connection(conn),
        Ok(Err(error)) => Incoming::Rejected { remote: label.to_string(), error },
        Err(_) => Incoming::Rejected {
            remote: label.to_string(),
            error: TransportError::Timeout { what: format!("handshake with {label}"), after: bound },
        },
    };
    if let Incoming::Rejected { error, .. } = &incoming {
        tracing::debug!(remote = %label, "inbound handshake rejected: {error}");
    }
    incoming
}

/// A [`Listener`] fed by an accept task through a bounded channel (the TCP and WebSocket
/// transports). Closing (or dropping) it stops the task and forgets the listen address.
pub(crate) struct ChannelListener {
    node: Arc<LocalNode>,
    local_addr: TransportAddr,
    rx: mpsc::Receiver<Incoming>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ChannelListener {
    /// A listener reporting `local_addr`, fed by `task` through `rx`; `shutdown` stops it.
    pub(crate) fn new(
        node: Arc<LocalNode>,
        local_addr: TransportAddr,
        rx: mpsc::Receiver<Incoming>,
        shutdown: watch::Sender<bool>,
        task: JoinHandle<()>,
    ) -> Self {
        Self { node, local_addr, rx, shutdown, task }
    }
}

impl Listener for ChannelListener {
    fn local_addr(&self) -> TransportAddr {
        self.local_addr.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, Option<Incoming>> {
        Box::pin(self.rx.recv())
    }

    fn close(&mut self) {
        if !self.shutdown.send_replace(true) {
            self.node.remove_listen_addr(&self.local_addr);
        }
        self.rx.close();
    }
}

impl Drop for ChannelListener {
    fn drop(&mut self) {
        self.close();
        self.task.abort();
    }
}
