//! The object-safe interface each transport implements behind a [`Connection`].

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;

use super::{BoxFuture, ByteStream};
use crate::{error::Result, wire::CloseCode};

/// Live counters of one connection, shared by its backend, its streams and its
/// [`Connection`](super::Connection) handle.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Payload bytes sent (messages and stream data).
    pub bytes_sent: AtomicU64,
    /// Payload bytes received.
    pub bytes_received: AtomicU64,
    /// Smoothed RTT in microseconds; 0 until measured.
    pub rtt_micros: AtomicU64,
    /// Bandwidth estimate in bytes per second; 0 until measured.
    pub bandwidth: AtomicU64,
    /// Streams of this connection alive now (counted by [`ByteStream`](super::ByteStream)).
    pub streams_open: AtomicU64,
}

impl ConnStats {
    /// Adds to the sent counter.
    pub fn sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds to the received counter.
    pub fn received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records a smoothed RTT.
    pub fn set_rtt(&self, rtt: Duration) {
        self.rtt_micros.store(rtt.as_micros().max(1) as u64, Ordering::Relaxed);
    }

    /// Streams of the connection alive now.
    pub fn open_streams(&self) -> u64 {
        self.streams_open.load(Ordering::Relaxed)
    }

    /// The smoothed RTT, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// What a transport implements to back a [`Connection`](super::Connection).
///
/// Implementations must be cancel safe in `recv_message`, `accept_stream` and
/// `recv_datagram` (dropping the future loses nothing) and bound every buffer.
pub trait ConnectionBackend: Send + Sync + 'static {
    /// Sends one message (reliable, ordered). Waits while the send buffer is full.
    fn send_message(&self, msg: Bytes) -> BoxFuture<'_, Result<()>>;

    /// Like [`send_message`](Self::send_message), but the message is never written (or
    /// encrypted) by the calling task: it is handed to the transport's own tasks. For
    /// callers running on threads that must not do bulk work (actor arbiters). By default
    /// the same as `send_message` (transports whose sends only enqueue).
    fn send_message_queued(&self, msg: Bytes) -> BoxFuture<'_, Result<()>> {
        self.send_message(msg)
    }

    /// Sends one message made of `head` then `body` (an upper layer's header and its
    /// payload) without joining them where the transport can; `queued` as in
    /// [`send_message_queued`](Self::send_message_queued). By default they are joined
    /// (one copy of `body`).
    fn send_message_parts(&self, head: Bytes, body: Bytes, queued: bool) -> BoxFuture<'_, Result<()>> {
        let mut joined = bytes::BytesMut::with_capacity(head.len() + body.len());
        joined.extend_from_slice(&head);
        joined.extend_from_slice(&body);
        let msg = joined.freeze();
        if queued {
            self.send_message_queued(msg)
        } else {
            self.send_message(msg)
        }
    }

    /// Queues one message (`head` then `body`) for the transport's own tasks if its send
    /// buffer has room now, without waiting: `None` when it is full, or when the transport
    /// cannot queue without waiting (the default); then nothing was sent.
    fn try_send_message_parts(&self, head: &Bytes, body: &Bytes) -> Option<Result<()>> {
        let _ = (head, body);
        None
    }

    /// Sends `msgs` in order, never written by the calling task (as
    /// [`send_message_queued`](Self::send_message_queued)); waits while the send buffer is
    /// full. By default one at a time; transports queue a batch under one lock.
    fn send_messages(&self, msgs: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            for m in msgs {
                self.send_message_queued(m).await?;
            }
            Ok(())
        })
    }

    /// Receives the next message; `Ok(None)` when the peer closed cleanly.
    fn recv_message(&self) -> BoxFuture<'_, Result<Option<Bytes>>>;

    /// Receives at least one and at most `limit` messages that have arrived, appending
    /// them to `buf`; `Ok(0)` when the peer closed cleanly. Cancel safe. By default one
    /// at a time.
    fn recv_messages<'a>(&'a self, buf: &'a mut Vec<Bytes>, limit: usize) -> BoxFuture<'a, Result<usize>> {
        let _ = limit;
        Box::pin(async move {
            Ok(match self.recv_message().await? {
                Some(m) => {
                    buf.push(m);
                    1
                }
                None => 0,
            })
        })
    }

    /// Opens a new bidirectional byte stream to the peer.
    fn open_stream(&self) -> BoxFuture<'_, Result<ByteStream>>;

    /// Waits for the peer to open a stream; `Ok(None)` when the connection closed.
    fn accept_stream(&self) -> BoxFuture<'_, Result<Option<ByteStream>>>;

    /// Sends an unreliable datagram, if the transport supports them.
    fn send_datagram(&self, data: Bytes) -> Result<()>;

    /// Receives the next unreliable datagram.
    fn recv_datagram(&self) -> BoxFuture<'_, Result<Bytes>>;

    /// Closes the connection, telling the peer why. Idempotent.
    fn close(&self, code: CloseCode, reason: &str) -> BoxFuture<'_, ()>;

    /// Whether the connection is still usable.
    fn is_connected(&self) -> bool;

    /// The local socket address, if any (may change under QUIC migration).
    fn local_addr(&self) -> Option<std::net::SocketAddr>;
}
