//! [`WebRtcBackend`]: the [`ConnectionBackend`] of one peer connection.
//!
//! * Messages: one data channel message on `kizuna-msg` per Kizuna message (reliable,
//!   ordered), read straight from the channel by `recv`. Sends wait while the channel's unacknowledged bytes exceed the send buffer
//!   limit (webrtc-rs's `with_data_channel_send_buffer_limit`): that is the backpressure.
//! * Datagrams: one message on `kizuna-dgram` (unordered, `maxRetransmits = 0`) each,
//!   queued to a writer task; dropped when the queue or the channel's buffer is full.
//! * Streams: one `kizuna-stream` channel each, opened by either side ([`DcStream`]).
//! * Close: waits (bounded) until the message channel's bytes are acknowledged, closes it
//!   (the peer's `recv` then ends), and closes the peer connection.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    sync::{mpsc, watch, Mutex},
    task::AbortHandle,
};
use webrtc::{
    data_channel::{DataChannel, DataChannelEvent},
    peer_connection::{PeerConnection, RTCPeerConnectionState},
};

use super::{
    channel::{opened, ChannelState, DcStream, PumpMode, ACK_POLL, LABEL_STREAM, STREAM_QUEUE},
    config::MAX_DATA_CHANNEL_MESSAGE,
    peer::{start_pump, Established},
};
use crate::{
    error::{Result, TransportError},
    transport::{BoxFuture, ByteStream, ConnStats, ConnectionBackend},
    wire::CloseCode,
};

/// Streams opened by the peer and not yet accepted. When full, the router waits, and
/// further channels wait in the peer connection's own bounded queue (then are closed).
const ACCEPT_QUEUE: usize = 16;
/// Datagrams queued for the writer task; beyond this they are dropped (unreliable).
const DATAGRAM_QUEUE: usize = 256;
/// Bound on a graceful close (queued messages acknowledged) and on a stream's opening.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The backend of one WebRTC connection; see the module docs.
pub(crate) struct WebRtcBackend {
    pc: Arc<dyn PeerConnection>,
    msg: Arc<dyn DataChannel>,
    /// Set once the message channel reported its close (the peer closed).
    msg_closed: AtomicBool,
    dgram_tx: mpsc::Sender<Bytes>,
    dgrams: Mutex<mpsc::Receiver<Bytes>>,
    streams: Mutex<mpsc::Receiver<ByteStream>>,
    pc_state: watch::Receiver<RTCPeerConnectionState>,
    stats: Arc<ConnStats>,
    closing: AtomicBool,
    tasks: Vec<AbortHandle>,
}

fn closed_error(what: impl std::fmt::Display) -> TransportError {
    TransportError::Closed(format!("WebRTC: {what}"))
}

impl WebRtcBackend {
    /// Starts the tasks of an established peer connection.
    pub(crate) fn start(est: Established, stats: Arc<ConnStats>) -> Self {
        let (dgram_tx, dgram_rx) = mpsc::channel(DATAGRAM_QUEUE);
        let (stx, srx) = mpsc::channel(ACCEPT_QUEUE);
        let tasks = vec![
            tokio::spawn(datagram_writer(est.datagrams.dc.clone(), dgram_rx)).abort_handle(),
            tokio::spawn(route_channels(est.channels, stx, stats.clone())).abort_handle(),
        ];
        Self {
            pc: est.pc,
            msg: est.messages.dc,
            msg_closed: AtomicBool::new(*est.messages.state.borrow() == ChannelState::Closed),
            dgram_tx,
            dgrams: Mutex::new(est.datagrams.rx),
            streams: Mutex::new(srx),
            pc_state: est.state,
            stats,
            closing: AtomicBool::new(false),
            tasks,
        }
    }
}

impl Drop for WebRtcBackend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let pc = self.pc.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

/// Sends queued datagrams without ever waiting for buffer room (a full buffer drops).
async fn datagram_writer(dc: Arc<dyn DataChannel>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(d) = rx.recv().await {
        match dc.try_send(BytesMut::from(d)).await {
            Ok(()) => {}
            Err(webrtc::error::Error::ErrSendBufferFull) => {
                tracing::trace!("WebRTC datagram dropped: buffer full")
            }
            Err(e) => {
                tracing::debug!("WebRTC datagram channel: {e}");
                return;
            }
        }
    }
}

/// Turns the peer's `kizuna-stream` channels into accepted streams; closes anything else.
async fn route_channels(
    mut channels: mpsc::Receiver<Arc<dyn DataChannel>>,
    tx: mpsc::Sender<ByteStream>,
    stats: Arc<ConnStats>,
) {
    while let Some(dc) = channels.recv().await {
        if dc.label().await.ok().as_deref() != Some(LABEL_STREAM) {
            tracing::debug!("closing a WebRTC data channel that is not a Kizuna stream");
            let _ = dc.close().await;
            continue;
        }
        let p = start_pump(dc, STREAM_QUEUE, PumpMode::Reliable);
        if tx.send(ByteStream::new(DcStream::new(p.dc, p.rx), stats.clone())).await.is_err() {
            return;
        }
    }
}

impl ConnectionBackend for WebRtcBackend {
    fn send_message(&self, msg: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.closing.load(Ordering::Acquire) {
                return Err(closed_error("connection closing"));
            }
            let n = msg.len();
            if n > MAX_DATA_CHANNEL_MESSAGE {
                return Err(TransportError::LimitExceeded {
                    limit: "WebRTC message size",
                    max: MAX_DATA_CHANNEL_MESSAGE as u64,
                    attempted: n as u64,
                });
            }
            self.msg.send(BytesMut::from(msg)).await.map_err(closed_error)?;
            self.stats.sent(n);
            Ok(())
        })
    }

    fn recv_message(&self) -> BoxFuture<'_, Result<Option<Bytes>>> {
        // The message channel is read directly (its pump stopped once it opened): the
        // driver's bounded event queue is the only queue, and not reading is what
        // applies backpressure. `poll` is cancel safe (a channel receive).
        Box::pin(async move {
            loop {
                match self.msg.poll().await {
                    Some(DataChannelEvent::OnMessage(m)) => {
                        self.stats.received(m.data.len());
                        return Ok(Some(m.data.freeze()));
                    }
                    Some(DataChannelEvent::OnClose) | None => {
                        self.msg_closed.store(true, Ordering::Release);
                        return Ok(None);
                    }
                    Some(_) => {}
                }
            }
        })
    }

    fn open_stream(&self) -> BoxFuture<'_, Result<ByteStream>> {
        Box::pin(async move {
            let dc = self.pc.create_data_channel(LABEL_STREAM, None).await.map_err(closed_error)?;
            let mut p = start_pump(dc, STREAM_QUEUE, PumpMode::Reliable);
            match tokio::time::timeout(STREAM_OPEN_TIMEOUT, opened(&mut p.state)).await {
                Ok(true) => Ok(ByteStream::new(DcStream::new(p.dc, p.rx), self.stats.clone())),
                Ok(false) => Err(closed_error("stream channel closed while opening")),
                Err(_) => Err(TransportError::Timeout {
                    what: "opening a WebRTC stream".into(),
                    after: STREAM_OPEN_TIMEOUT,
                }),
            }
        })
    }

    fn accept_stream(&self) -> BoxFuture<'_, Result<Option<ByteStream>>> {
        Box::pin(async move { Ok(self.streams.lock().await.recv().await) })
    }

    fn send_datagram(&self, data: Bytes) -> Result<()> {
        let n = data.len();
        if n > MAX_DATA_CHANNEL_MESSAGE {
            return Err(TransportError::LimitExceeded {
                limit: "WebRTC datagram size",
                max: MAX_DATA_CHANNEL_MESSAGE as u64,
                attempted: n as u64,
            });
        }
        match self.dgram_tx.try_send(data) {
            Ok(()) => {
                self.stats.sent(n);
                Ok(())
            }
            // Unreliable: a full queue drops, like a full socket buffer would.
            Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed_error("datagram channel closed")),
        }
    }

    fn recv_datagram(&self) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            match self.dgrams.lock().await.recv().await {
                Some(d) => {
                    self.stats.received(d.len());
                    Ok(d)
                }
                None => Err(closed_error("datagram channel closed")),
            }
        })
    }

    fn close(&self, _code: CloseCode, _reason: &str) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.closing.swap(true, Ordering::AcqRel) {
                return;
            }
            let drained = async {
                while self.msg.outstanding_bytes().await.unwrap_or(0) > 0 {
                    tokio::time::sleep(ACK_POLL).await;
                }
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, drained).await;
            let _ = self.msg.close().await;
            let _ = self.pc.close().await;
        })
    }

    fn is_connected(&self) -> bool {
        let pc_ok = !matches!(
            *self.pc_state.borrow(),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        );
        pc_ok && !self.msg_closed.load(Ordering::Acquire) && !self.closing.load(Ordering::Acquire)
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
}
