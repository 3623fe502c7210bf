//! [`Connection`]: the uniform handle to one authenticated connection.

use std::{
    fmt,
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use bytes::Bytes;

use super::{ByteStream, ConnStats, ConnectionBackend};
use crate::{
    address::{ConnectionInfo, PathKind, Protocol, TransportAddr},
    error::{Result, TransportError},
    identity::PeerId,
    wire::{CloseCode, Hello, MAX_MESSAGE_LEN},
};

/// An authenticated connection to one peer, over any transport.
///
/// Cheap to clone; all clones share the connection. Dropping the last clone does not
/// close it gracefully: call [`Connection::close`].
#[derive(Clone)]
pub struct Connection {
    backend: Arc<dyn ConnectionBackend>,
    stats: Arc<ConnStats>,
    meta: Arc<Meta>,
}

struct Meta {
    peer: PeerId,
    remote_addr: TransportAddr,
    protocol: Protocol,
    path: PathKind,
    established_at: SystemTime,
    remote_hello: Hello,
    dialer: bool,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.meta.peer)
            .field("protocol", &self.meta.protocol)
            .field("remote", &self.meta.remote_addr)
            .finish()
    }
}

/// Everything a transport knows about a connection when it hands it over.
#[derive(Debug)]
pub struct ConnectionParts {
    /// The authenticated peer.
    pub peer: PeerId,
    /// The remote address.
    pub remote_addr: TransportAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// Direct or relayed.
    pub path: PathKind,
    /// The peer's hello.
    pub remote_hello: Hello,
    /// Whether this side dialed.
    pub dialer: bool,
}

impl Connection {
    /// Wraps a transport backend. Transports call this once the hello is done.
    pub fn new(parts: ConnectionParts, backend: Arc<dyn ConnectionBackend>, stats: Arc<ConnStats>) -> Self {
        let meta = Meta {
            peer: parts.peer,
            remote_addr: parts.remote_addr,
            protocol: parts.protocol,
            path: parts.path,
            established_at: SystemTime::now(),
            remote_hello: parts.remote_hello,
            dialer: parts.dialer,
        };
        Self { backend, stats, meta: Arc::new(meta) }
    }

    /// The authenticated remote peer.
    pub fn peer(&self) -> PeerId {
        self.meta.peer
    }

    /// The protocol carrying this connection.
    pub fn protocol(&self) -> Protocol {
        self.meta.protocol
    }

    /// Whether this side dialed the connection.
    pub fn is_dialer(&self) -> bool {
        self.meta.dialer
    }

    /// The hello the peer sent (its capabilities, listen addresses, observed address).
    pub fn remote_hello(&self) -> &Hello {
        &self.meta.remote_hello
    }

    /// The live counters of this connection.
    pub fn stats(&self) -> &Arc<ConnStats> {
        &self.stats
    }

    /// A snapshot of the connection's state and statistics.
    pub fn info(&self) -> ConnectionInfo {
        let bw = self.stats.bandwidth.load(Ordering::Relaxed);
        ConnectionInfo {
            peer: self.meta.peer,
            local_addr: self.backend.local_addr(),
            remote_addr: self.meta.remote_addr.clone(),
            protocol: self.meta.protocol,
            path: self.meta.path,
            established_at: self.meta.established_at,
            bytes_sent: self.stats.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.stats.bytes_received.load(Ordering::Relaxed),
            rtt: self.stats.rtt(),
            bandwidth_estimate: (bw > 0).then_some(bw),
        }
    }

    /// Whether the connection is still usable.
    pub fn is_connected(&self) -> bool {
        self.backend.is_connected()
    }

    /// Sends one message (at most [`MAX_MESSAGE_LEN`] bytes). Waits while the peer is
    /// slow: this is where backpressure reaches the sender.
    pub async fn send(&self, msg: Bytes) -> Result<()> {
        check_len(&msg)?;
        self.backend.send_message(msg).await
    }

    /// [`send`](Self::send), but the message is always handed to the transport's own tasks
    /// (on the I/O runtime) rather than written and encrypted by the caller: for callers on
    /// actor arbiter threads.
    pub async fn send_queued(&self, msg: Bytes) -> Result<()> {
        check_len(&msg)?;
        self.backend.send_message_queued(msg).await
    }

    /// Sends one message made of `head` then `body` (together at most
    /// [`MAX_MESSAGE_LEN`] bytes) without copying `body` where the transport allows; an
    /// upper layer's header in front of the application's payload. `queued` as in
    /// [`send_queued`](Self::send_queued).
    pub async fn send_parts(&self, head: Bytes, body: Bytes, queued: bool) -> Result<()> {
        check_total(head.len() + body.len())?;
        self.backend.send_message_parts(head, body, queued).await
    }

    /// Queues one message (`head` then `body`) for the transport's tasks if there is room
    /// now, never waiting and never writing on the caller's task: `None` if it would have
    /// to wait (nothing was sent; use [`send_parts`](Self::send_parts)).
    pub fn try_send_parts(&self, head: &Bytes, body: &Bytes) -> Option<Result<()>> {
        if let Err(e) = check_total(head.len() + body.len()) {
            return Some(Err(e));
        }
        self.backend.try_send_message_parts(head, body)
    }

    /// Sends `msgs` in order (each at most [`MAX_MESSAGE_LEN`] bytes), handed to the
    /// transport's own tasks as [`send_queued`](Self::send_queued) does: a batch of
    /// small messages costs one hand-over, not one each.
    pub async fn send_many(&self, msgs: Vec<Bytes>) -> Result<()> {
        for m in &msgs {
            check_len(m)?;
        }
        self.backend.send_messages(msgs).await
    }

    /// Receives the next message; `Ok(None)` once the peer closed. Cancel safe.
    pub async fn recv(&self) -> Result<Option<Bytes>> {
        self.backend.recv_message().await
    }

    /// Receives what has arrived, at least one message and at most `limit`, appended to
    /// `buf`; `Ok(0)` once the peer closed. Cancel safe.
    pub async fn recv_many(&self, buf: &mut Vec<Bytes>, limit: usize) -> Result<usize> {
        self.backend.recv_messages(buf, limit.max(1)).await
    }

    /// Opens a bidirectional byte stream to the peer.
    pub async fn open_stream(&self) -> Result<ByteStream> {
        Ok(self.backend.open_stream().await?.on_path(self.meta.path))
    }

    /// Waits for a stream opened by the peer; `Ok(None)` once closed. Cancel safe.
    pub async fn accept_stream(&self) -> Result<Option<ByteStream>> {
        Ok(self.backend.accept_stream().await?.map(|s| s.on_path(self.meta.path)))
    }

    /// Sends an unreliable datagram (QUIC datagrams; an error where unsupported).
    pub fn send_datagram(&self, data: Bytes) -> Result<()> {
        self.backend.send_datagram(data)
    }

    /// Receives the next unreliable datagram. Cancel safe.
    pub async fn recv_datagram(&self) -> Result<Bytes> {
        self.backend.recv_datagram().await
    }

    /// Closes the connection gracefully (pending sends are flushed first).
    pub async fn close(&self, code: CloseCode, reason: &str) {
        self.backend.close(code, reason).await
    }
}

fn check_len(msg: &Bytes) -> Result<()> {
    check_total(msg.len())
}

fn check_total(len: usize) -> Result<()> {
    if len > MAX_MESSAGE_LEN {
        return Err(TransportError::LimitExceeded {
            limit: "message size",
            max: MAX_MESSAGE_LEN as u64,
            attempted: len as u64,
        });
    }
    Ok(())
}
