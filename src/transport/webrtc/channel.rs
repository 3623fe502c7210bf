//! Data channel plumbing: [`pump`] moves one channel's events into bounded queues, and
//! [`DcStream`] is a byte stream over one `kizuna-stream` channel.
//!
//! Receive-side backpressure: a pump waits when its queue is full and so stops polling the
//! channel; webrtc-rs then retains the channel's events and stops draining SCTP, the
//! receive window (`a_rwnd`) closes, and the peer's sends wait on its send buffer limit.
//! webrtc-rs applies this per connection, so an unread stream holds back the other
//! channels of its connection too.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{mpsc, watch},
};
use webrtc::data_channel::{DataChannel, DataChannelEvent};

/// Label of the reliable, ordered message channel (one message = one Kizuna message).
pub const LABEL_MESSAGES: &str = "kizuna-msg";
/// Label of the unordered, `maxRetransmits = 0` datagram channel.
pub const LABEL_DATAGRAMS: &str = "kizuna-dgram";
/// Label of every stream channel (reliable, ordered, raw bytes).
pub const LABEL_STREAM: &str = "kizuna-stream";

/// Largest chunk a stream writes as one data channel message. 64 KiB: SCTP fragments it
/// anyway; larger chunks only add latency per write, smaller ones per-message overhead.
const STREAM_CHUNK: usize = 64 * 1024;
/// How often a shutting-down stream checks whether its bytes were acknowledged. 5 ms:
/// a few loopback round trips; negligible next to any transfer worth shutting down.
pub(crate) const ACK_POLL: std::time::Duration = std::time::Duration::from_millis(5);
/// Received stream chunks queued before the pump stops polling (≤ 16 × 64 KiB = 1 MiB on
/// top of the SCTP window).
pub(crate) const STREAM_QUEUE: usize = 16;

/// Where a channel is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelState {
    Connecting,
    Open,
    Closed,
}

/// How a pump treats its channel's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PumpMode {
    /// Forward every message, waiting while the queue is full (backpressure).
    Reliable,
    /// Forward what fits, drop the rest (datagrams: unread ones never hold back the
    /// connection's other channels).
    Lossy,
    /// Only report the opening, then stop: the owner polls the channel itself (the
    /// message channel, one task hop shorter per message).
    UntilOpen,
}

/// Forwards `dc`'s messages to `tx` and its state to `state`, until the channel closes or
/// the receiver is dropped (see [`PumpMode`]).
pub(crate) async fn pump(
    dc: Arc<dyn DataChannel>,
    tx: mpsc::Sender<Bytes>,
    state: watch::Sender<ChannelState>,
    mode: PumpMode,
) {
    while let Some(ev) = dc.poll().await {
        let ended = match ev {
            DataChannelEvent::OnOpen => {
                let _ = state.send(ChannelState::Open);
                if mode == PumpMode::UntilOpen {
                    return;
                }
                false
            }
            DataChannelEvent::OnMessage(m) if mode == PumpMode::Lossy => {
                matches!(tx.try_send(m.data.freeze()), Err(mpsc::error::TrySendError::Closed(_)))
            }
            DataChannelEvent::OnMessage(m) => tx.send(m.data.freeze()).await.is_err(),
            DataChannelEvent::OnClose => true,
            _ => false,
        };
        if ended {
            break;
        }
    }
    let _ = state.send(ChannelState::Closed);
}

/// Waits until the channel behind `state` is open; `false` if it closed first.
pub(crate) async fn opened(state: &mut watch::Receiver<ChannelState>) -> bool {
    let s = state.wait_for(|s| *s != ChannelState::Connecting).await.map(|s| *s);
    matches!(s, Ok(ChannelState::Open))
}

type Pending = Pin<Box<dyn Future<Output = webrtc::error::Result<()>> + Send>>;

/// A bidirectional byte stream over one data channel (`AsyncRead + AsyncWrite`).
///
/// Writes are cut into messages of at most 64 KiB; each is handed to the channel, whose
/// send buffer limit makes the next write wait while the peer is slow. `shutdown` flushes
/// and closes the channel (both directions: a data channel has no half-close), after which
/// the peer reads end of stream once it has read everything sent before.
pub(crate) struct DcStream {
    dc: Arc<dyn DataChannel>,
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    pending: Option<Pending>,
    closing: Option<Pending>,
    closed: bool,
}

impl DcStream {
    /// A stream over `dc`, whose pump feeds `rx`.
    pub(crate) fn new(dc: Arc<dyn DataChannel>, rx: mpsc::Receiver<Bytes>) -> Self {
        Self { dc, rx, current: Bytes::new(), pending: None, closing: None, closed: false }
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(p) = self.pending.as_mut() {
            let r = ready!(p.as_mut().poll(cx));
            self.pending = None;
            r.map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, format!("WebRTC stream: {e}")))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for DcStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.current.is_empty() {
            match ready!(self.rx.poll_recv(cx)) {
                Some(b) => self.current = b,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DcStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if self.closing.is_some() || self.closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "WebRTC stream shut down")));
        }
        let n = buf.len().min(STREAM_CHUNK);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        let chunk = BytesMut::from(&buf[..n]);
        let dc = self.dc.clone();
        self.pending = Some(Box::pin(async move { dc.send(chunk).await }));
        // Start the send now (it may complete at once); errors surface on the next call.
        if let Some(p) = self.pending.as_mut() {
            if let Poll::Ready(r) = p.as_mut().poll(cx) {
                self.pending = None;
                r.map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, format!("WebRTC stream: {e}")))?;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_pending(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        if self.closing.is_none() {
            let dc = self.dc.clone();
            self.closing = Some(Box::pin(async move {
                // Closing resets the SCTP stream, which discards what the peer has not
                // acknowledged yet: wait until everything written is acknowledged.
                while dc.outstanding_bytes().await? > 0 {
                    tokio::time::sleep(ACK_POLL).await;
                }
                dc.close().await
            }));
        }
        if let Some(c) = self.closing.as_mut() {
            let r = ready!(c.as_mut().poll(cx));
            self.closing = None;
            self.closed = true;
            r.map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, format!("closing WebRTC stream: {e}")))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for DcStream {
    fn drop(&mut self) {
        if self.closing.is_none() && !self.closed {
            let dc = self.dc.clone();
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = dc.close().await;
                });
            }
        }
    }
}
