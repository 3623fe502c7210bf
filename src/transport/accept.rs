//! What every TCP-based server shares (the TCP and WebSocket transports, the relay):
//! binding with a backlog, per-socket options, and an accept loop that never runs more
//! handshakes at once than it has slots for.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};

use tokio::{sync::mpsc, task::JoinHandle};

use tokio::io::{AsyncWrite, AsyncWriteExt};

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

/// Accepts TCP connections, each with a handshake slot: with every slot busy, new
/// clients wait in the kernel's backlog instead of piling up in memory.
#[derive(Debug)]
pub struct BoundedAccept {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    what: &'static str,
}

impl BoundedAccept {
    /// At most `slots` connections between `accept` and the release of their permit;
    /// stops once `shutdown` turns true. `what` names the server in logs.
    pub fn new(
        listener: TcpListener,
        slots: usize,
        shutdown: watch::Receiver<bool>,
        what: &'static str,
    ) -> Self {
        Self { listener, permits: Arc::new(Semaphore::new(slots.max(1))), shutdown, what }
    }

    /// The next connection and its slot (drop the permit when its handshake is over);
    /// `None` once shut down. Transient accept errors are logged and retried.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        loop {
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => p.ok()?,
                _ = self.shutdown.wait_for(|s| *s) => return None,
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = self.shutdown.wait_for(|s| *s) => return None,
            };
            match accepted {
                Ok((stream, remote)) => return Some((stream, remote, permit)),
                Err(e) => {
                    tracing::warn!("{} accept failed: {e}", self.what);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
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
