//! The QUIC listener: an accept loop that handshakes each inbound connection concurrently.

use std::{net::SocketAddr, sync::Arc};

use futures_util::FutureExt;
use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinSet,
};

use super::{peer_of, stream::QuicBiStream, Shared};
use crate::{
    address::TransportAddr,
    error::{Result, TransportError, WireError},
    transport::{BoxFuture, Connection, Incoming, Listener},
    wire::{read_frame, write_frame, Frame, FrameDecoder},
};

/// Finished inbound connections and rejections not yet taken by `accept`. 32: the
/// application normally drains this at once; when it does not, handshakes wait holding
/// their slot and further clients are refused instead of queued without bound.
const INCOMING_QUEUE: usize = 32;

/// A listening QUIC endpoint; see [`QuicTransport::listen`](super::QuicTransport).
pub(crate) struct QuicListener {
    local: SocketAddr,
    rx: mpsc::Receiver<Incoming>,
    task: Option<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl QuicListener {
    pub(crate) fn start(shared: Arc<Shared>, endpoint: quinn::Endpoint, local: SocketAddr) -> Self {
        let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
        let task = tokio::spawn(accept_loop(shared.clone(), endpoint, tx));
        Self { local, rx, task: Some(task), shared }
    }
}

impl Listener for QuicListener {
    fn local_addr(&self) -> TransportAddr {
        TransportAddr::Quic(self.local)
    }

    fn accept(&mut self) -> BoxFuture<'_, Option<Incoming>> {
        Box::pin(self.rx.recv())
    }

    fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            self.shared.stop_listening(self.local);
        }
        self.rx.close();
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.close();
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint, tx: mpsc::Sender<Incoming>) {
    let max = shared.node.config().max_pending_handshakes.max(1);
    let slots = Arc::new(Semaphore::new(max));
    // Dropping the set (when this task is aborted) aborts every pending handshake.
    let mut pending = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => return,
            },
            Some(_) = pending.join_next(), if !pending.is_empty() => continue,
        };
        let remote = incoming.remote_address();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let (shared, tx, endpoint) = (shared.clone(), tx.clone(), endpoint.clone());
                pending.spawn(async move {
                    let item = match handshake(&shared, endpoint, incoming).await {
                        Ok(conn) => Incoming::Connection(conn),
                        Err(error) => {
                            shared
                                .counters
                                .inbound_rejected
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Incoming::Rejected { remote: remote.to_string(), error }
                        }
                    };
                    // Hold the slot until the application took the result (backpressure).
                    let _ = tx.send(item).await;
                    drop(permit);
                });
            }
            Err(_) => {
                incoming.refuse();
                let error = TransportError::LimitExceeded {
                    limit: "pending QUIC handshakes",
                    max: max as u64,
                    attempted: max as u64 + 1,
                };
                // Never block the accept loop on a slow application.
                let _ = tx.try_send(Incoming::Rejected { remote: remote.to_string(), error });
            }
        }
    }
}

/// Completes one inbound connection within the handshake bound.
async fn handshake(
    shared: &Shared,
    endpoint: quinn::Endpoint,
    incoming: quinn::Incoming,
) -> Result<Connection> {
    let remote = incoming.remote_address();
    let bound = shared.node.config().handshake_timeout;
    match tokio::time::timeout(bound, handshake_inner(shared, endpoint, incoming)).await {
        Ok(r) => r,
        Err(_) => {
            Err(TransportError::Timeout { what: format!("QUIC handshake with {remote}"), after: bound })
        }
    }
}

async fn handshake_inner(
    shared: &Shared,
    endpoint: quinn::Endpoint,
    incoming: quinn::Incoming,
) -> Result<Connection> {
    let remote = incoming.remote_address();
    let label = remote.to_string();
    let failed =
        |e: quinn::ConnectionError| TransportError::Quic(format!("handshake with {remote} failed: {e}"));
    let connecting = incoming.accept().map_err(failed)?;
    // Servers always get a 0.5-RTT connection (quinn's `into_0rtt` never fails for them);
    // `established` resolves once the handshake completed (the client proved its
    // identity) or failed.
    let (conn, established) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Some(accepted)),
        Err(connecting) => (connecting.await.map_err(failed)?, None),
    };
    let result = async {
        // The dialer's first stream is the primary one; its first frame is the hello
        // (possibly sent as 0-RTT data).
        let (send, recv) = conn.accept_bi().await.map_err(failed)?;
        let mut primary = QuicBiStream::new(send, recv);
        // Stream data readable before the handshake completed came as 0-RTT data, which
        // only an accepted 0-RTT attempt delivers. (quinn's own 0-RTT flag is meaningful
        // for clients only.) The driver signals completion before it wakes stream readers,
        // so a handshake finished by the same packet is seen as finished here.
        let pending_handshake = match established {
            Some(mut done) => match (&mut done).now_or_never() {
                Some(_) => None,
                None => Some(done),
            },
            None => None,
        };
        let zero_rtt = pending_handshake.is_some();
        // Our hello leaves as 0.5-RTT data, before the client is authenticated: it holds
        // only what any client completing a handshake learns, and it saves the dialer a
        // round trip. Nothing the client sent is trusted before `established`.
        let ours = shared.node.hello(Some(TransportAddr::Quic(remote)));
        write_frame(&mut primary, &Frame::Hello(ours)).await?;
        tokio::io::AsyncWriteExt::flush(&mut primary).await?;
        if let Some(done) = pending_handshake {
            done.await;
        }
        if let Some(reason) = conn.close_reason() {
            return Err(failed(reason));
        }
        if zero_rtt {
            shared.counters.zero_rtt_inbound.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let peer = peer_of(&conn)?;
        let theirs = match read_frame(&mut primary, &FrameDecoder::default()).await {
            Ok(Some(Frame::Hello(h))) => h,
            Ok(Some(other)) => {
                return Err(TransportError::violation(
                    &label,
                    WireError::Unexpected(format!("{:?} frame before hello", other.frame_type())),
                ))
            }
            Ok(None) => return Err(TransportError::violation(&label, WireError::Truncated)),
            Err(TransportError::ProtocolViolation { source, .. }) => {
                return Err(TransportError::violation(&label, source))
            }
            Err(e) => return Err(e),
        };
        if theirs.peer_id != peer {
            return Err(TransportError::AuthenticationFailed {
                expected: peer,
                presented: format!("hello naming {}", theirs.peer_id),
            });
        }
        Ok(super::quic_connection(&shared.node, conn.clone(), endpoint, primary, peer, theirs, false))
    }
    .await;
    if let Err(e) = &result {
        conn.close(super::handshake_error_code(e), e.to_string().as_bytes());
    }
    result
}
