//! [`QuicBackend`]: the [`ConnectionBackend`] of one QUIC connection.
//!
//! * Messages travel as `Frame::Message` frames on the *primary* stream (the first
//!   bidirectional stream, opened by the dialer, which also carried the hellos). A writer
//!   task owns its sending half and batches queued frames into one `write_all_chunks`
//!   call; a reader task decodes the receiving half into a bounded queue. When the queue
//!   is full the reader stops reading, the stream's receive window stops opening, and the
//!   peer's sends wait: QUIC flow control carries the backpressure.
//! * Application streams are further bidirectional streams whose first byte is
//!   [`STREAM_HEADER`], written by the opener at once so the peer sees the stream; an
//!   acceptor task checks it and resets streams that start with anything else.
//! * Datagrams are QUIC datagrams (RFC 9221).
//! * Closing sends `Control::Close` on the primary stream, finishes it, waits (bounded)
//!   for the peer to close the connection in answer, then closes it locally.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, ReadError, SendDatagramError, VarInt};
use tokio::{
    sync::{mpsc, oneshot, Mutex},
    task::AbortHandle,
};

use super::stream::QuicBiStream;
use crate::{
    error::{Result, TransportError, WireError},
    transport::{BoxFuture, ByteStream, ConnStats, ConnectionBackend},
    wire::{encode_frame, encode_header, CloseCode, Control, Frame, FrameDecoder, FrameType, HEADER_LEN},
};

/// First byte of every application stream. A versioned tag rather than nothing, so later
/// stream kinds can be added; anything else is refused.
pub(crate) const STREAM_HEADER: u8 = 0x00;
/// Application error code of a stream refused for its header.
const BAD_STREAM_HEADER: VarInt = VarInt::from_u32(1);
/// Frames queued for the writer task. 32 × 64 KiB messages = 2 MiB waiting on top of
/// quinn's send buffer: enough to keep a batch ready while the previous one is written,
/// small enough that the queue adds no noticeable latency.
const WRITE_QUEUE: usize = 32;
/// Most frames the writer hands to quinn in one call. Equal to the queue: one call can
/// drain everything that accumulated while the previous write was in progress.
const WRITE_BATCH: usize = WRITE_QUEUE;
/// Messages up to this size are copied into one coalescing buffer (one chunk per batch);
/// larger ones are handed to quinn without copying.
const COALESCE_MAX: usize = 4 * 1024;
/// Accepted application streams not yet taken by the application. When full, the
/// acceptor waits and QUIC's stream limit holds the peer back.
const ACCEPT_QUEUE: usize = 16;
/// How long an accepted stream may take to deliver its header byte. The opener writes it
/// immediately, so only a broken or hostile peer hits this; it stalls only its own
/// connection's acceptor. 10 s, the node's default handshake bound.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often RTT and bandwidth estimates are copied into [`ConnStats`]. Once a second is
/// what a user-facing `info()` needs and costs nothing.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on a graceful close: queued frames and the `Close` frame must reach the peer and
/// the peer must answer by closing. Two seconds is many RTTs on any sane path, and what an
/// unresponsive peer costs a closing application.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

enum WriteCmd {
    Message(Bytes),
    Control(Control),
    Finish(oneshot::Sender<()>),
}

#[derive(Default)]
struct State {
    /// Why the connection failed, if it did (first error wins).
    failure: OnceLock<String>,
    closing: AtomicBool,
}

/// The backend of one QUIC connection; see the module docs.
pub(crate) struct QuicBackend {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    stats: Arc<ConnStats>,
    writer: mpsc::Sender<WriteCmd>,
    inbox: Mutex<mpsc::Receiver<Bytes>>,
    streams: Mutex<mpsc::Receiver<ByteStream>>,
    state: Arc<State>,
    tasks: Vec<AbortHandle>,
}

impl QuicBackend {
    /// Starts the tasks of an established connection whose hellos went over `primary`.
    pub(crate) fn start(
        conn: quinn::Connection,
        endpoint: quinn::Endpoint,
        primary: QuicBiStream,
        stats: Arc<ConnStats>,
        message_queue: usize,
    ) -> Self {
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
        let (itx, irx) = mpsc::channel(message_queue.max(1));
        let (stx, srx) = mpsc::channel(ACCEPT_QUEUE);
        let state = Arc::new(State::default());
        stats.set_rtt(conn.rtt());
        let reader = Reader { inbox: itx, writer: wtx.clone(), stats: stats.clone() };
        let tasks = vec![
            tokio::spawn(write_loop(primary.send, wrx, state.clone())).abort_handle(),
            tokio::spawn(read_loop(primary.recv, reader, conn.clone(), state.clone())).abort_handle(),
            tokio::spawn(accept_loop(conn.clone(), stx, stats.clone())).abort_handle(),
            tokio::spawn(monitor(conn.clone(), stats.clone())).abort_handle(),
        ];
        Self {
            conn,
            endpoint,
            stats,
            writer: wtx,
            inbox: Mutex::new(irx),
            streams: Mutex::new(srx),
            state,
            tasks,
        }
    }

    fn closed_error(&self) -> TransportError {
        if let Some(f) = self.state.failure.get() {
            return TransportError::Closed(f.clone());
        }
        match self.conn.close_reason() {
            Some(reason) => TransportError::Closed(reason.to_string()),
            None => TransportError::Closed("connection closing".into()),
        }
    }
}

impl Drop for QuicBackend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.conn.close(VarInt::from_u32(CloseCode::Normal as u32), b"connection dropped");
    }
}

fn connection_error(e: ConnectionError) -> TransportError {
    TransportError::Closed(e.to_string())
}

impl ConnectionBackend for QuicBackend {
    fn send_message(&self, msg: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.state.closing.load(Ordering::Acquire) {
                return Err(self.closed_error());
            }
            let n = msg.len();
            self.writer.send(WriteCmd::Message(msg)).await.map_err(|_| self.closed_error())?;
            self.stats.sent(n);
            Ok(())
        })
    }

    fn recv_message(&self) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(async move {
            let mut inbox = self.inbox.lock().await;
            match inbox.recv().await {
                Some(m) => Ok(Some(m)),
                None => match self.state.failure.get() {
                    Some(f) => Err(TransportError::Closed(f.clone())),
                    None => Ok(None),
                },
            }
        })
    }

    fn open_stream(&self) -> BoxFuture<'_, Result<ByteStream>> {
        Box::pin(async move {
            let (mut send, recv) = self.conn.open_bi().await.map_err(connection_error)?;
            send.write_all(&[STREAM_HEADER])
                .await
                .map_err(|e| TransportError::Closed(format!("opening a QUIC stream: {e}")))?;
            Ok(ByteStream::new(QuicBiStream::new(send, recv), self.stats.clone()))
        })
    }

    fn accept_stream(&self) -> BoxFuture<'_, Result<Option<ByteStream>>> {
        Box::pin(async move { Ok(self.streams.lock().await.recv().await) })
    }

    fn send_datagram(&self, data: Bytes) -> Result<()> {
        let n = data.len();
        self.conn.send_datagram(data).map_err(|e| match e {
            SendDatagramError::TooLarge => TransportError::LimitExceeded {
                limit: "QUIC datagram size",
                max: self.conn.max_datagram_size().unwrap_or(0) as u64,
                attempted: n as u64,
            },
            SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled => {
                TransportError::UnsupportedProtocol(format!("QUIC datagrams: {e}"))
            }
            SendDatagramError::ConnectionLost(e) => connection_error(e),
        })?;
        self.stats.sent(n);
        Ok(())
    }

    fn recv_datagram(&self) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            let d = self.conn.read_datagram().await.map_err(connection_error)?;
            self.stats.received(d.len());
            Ok(d)
        })
    }

    fn close(&self, code: CloseCode, reason: &str) -> BoxFuture<'_, ()> {
        let reason = reason.to_string();
        Box::pin(async move {
            if self.state.closing.swap(true, Ordering::AcqRel) {
                return;
            }
            let graceful = async {
                let (done_tx, done_rx) = oneshot::channel();
                let close = Control::Close { code, reason: reason.clone() };
                self.writer.send(WriteCmd::Control(close)).await.ok()?;
                self.writer.send(WriteCmd::Finish(done_tx)).await.ok()?;
                done_rx.await.ok()?;
                // The peer closes the connection as soon as it reads our Close.
                self.conn.closed().await;
                Some(())
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, graceful).await;
            self.conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
        })
    }

    fn is_connected(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.local_addr().ok()
    }
}

/// Writes queued frames to the primary stream, batching whatever accumulated.
async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<WriteCmd>, state: Arc<State>) {
    let mut chunks: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH * 2 + 1);
    let mut scratch = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut finish = None;
        let mut next = Some(first);
        let mut count = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                WriteCmd::Message(m) => {
                    encode_header(FrameType::Message, m.len(), &mut scratch);
                    if m.len() <= COALESCE_MAX {
                        scratch.extend_from_slice(&m);
                    } else {
                        chunks.push(scratch.split().freeze());
                        chunks.push(m);
                    }
                }
                WriteCmd::Control(c) => {
                    if let Err(e) = encode_frame(&Frame::Control(c), &mut scratch) {
                        tracing::warn!("dropping unencodable control frame: {e}");
                    }
                }
                WriteCmd::Finish(done) => {
                    finish = Some(done);
                    break;
                }
            }
            count += 1;
            if count < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !scratch.is_empty() {
            chunks.push(scratch.split().freeze());
        }
        if let Err(e) = send.write_all_chunks(&mut chunks).await {
            let _ = state.failure.set(format!("sending on the QUIC primary stream: {e}"));
            return;
        }
        chunks.clear();
        if scratch.capacity() < HEADER_LEN * WRITE_BATCH {
            scratch.reserve(64 * 1024);
        }
        if let Some(done) = finish {
            let _ = send.finish();
            let _ = done.send(());
            return;
        }
    }
}

struct Reader {
    inbox: mpsc::Sender<Bytes>,
    writer: mpsc::Sender<WriteCmd>,
    stats: Arc<ConnStats>,
}

enum ReadEnd {
    /// The stream ended cleanly, or the application stopped listening.
    Finished,
    /// The peer sent `Control::Close`.
    PeerClosed(CloseCode, String),
}

async fn read_loop(mut recv: quinn::RecvStream, reader: Reader, conn: quinn::Connection, state: Arc<State>) {
    match reader.run(&mut recv).await {
        Ok(ReadEnd::Finished) => {}
        Ok(ReadEnd::PeerClosed(code, reason)) => {
            // Answer the peer's Close by closing; it waits for this (see `close`).
            conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
        }
        Err(e) => {
            let violation = matches!(e, TransportError::ProtocolViolation { .. });
            let _ = state.failure.set(e.to_string());
            if violation {
                conn.close(VarInt::from_u32(CloseCode::ProtocolError as u32), b"protocol violation");
            }
        }
    }
    // Dropping `reader.inbox` here ends the application's `recv` once it drained the queue.
}

impl Reader {
    async fn run(&self, recv: &mut quinn::RecvStream) -> Result<ReadEnd> {
        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let violation = |e: WireError| TransportError::violation("QUIC peer", e);
        loop {
            while let Some(frame) = decoder.decode(&mut buf).map_err(violation)? {
                match frame {
                    Frame::Message(m) => {
                        self.stats.received(m.len());
                        if self.inbox.send(m).await.is_err() {
                            return Ok(ReadEnd::Finished);
                        }
                    }
                    Frame::Control(Control::Ping { nonce }) => {
                        // Never wait for the writer here: it may be blocked on the peer's
                        // flow control, which only our reading can open. A pong dropped
                        // under load is retried by the pinger.
                        let _ = self.writer.try_send(WriteCmd::Control(Control::Pong { nonce }));
                    }
                    Frame::Control(Control::Close { code, reason }) => {
                        return Ok(ReadEnd::PeerClosed(code, reason))
                    }
                    Frame::Control(_) => {}
                    other => {
                        return Err(violation(WireError::Unexpected(format!(
                            "{:?} frame on the QUIC primary stream",
                            other.frame_type()
                        ))))
                    }
                }
            }
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                Ok(None) if buf.is_empty() => return Ok(ReadEnd::Finished),
                Ok(None) => return Err(violation(WireError::Truncated)),
                Err(ReadError::ConnectionLost(ConnectionError::LocallyClosed)) => {
                    return Ok(ReadEnd::Finished)
                }
                Err(ReadError::ConnectionLost(ConnectionError::ApplicationClosed(c)))
                    if c.error_code == VarInt::from_u32(CloseCode::Normal as u32) =>
                {
                    return Ok(ReadEnd::Finished)
                }
                Err(e) => return Err(TransportError::Closed(format!("QUIC primary stream: {e}"))),
            }
        }
    }
}

/// Hands validated application streams to `accept_stream`.
async fn accept_loop(conn: quinn::Connection, tx: mpsc::Sender<ByteStream>, stats: Arc<ConnStats>) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let mut header = [0u8; 1];
        match tokio::time::timeout(STREAM_HEADER_TIMEOUT, recv.read_exact(&mut header)).await {
            Ok(Ok(())) if header[0] == STREAM_HEADER => {
                if tx.send(ByteStream::new(QuicBiStream::new(send, recv), stats.clone())).await.is_err() {
                    return;
                }
            }
            outcome => {
                tracing::debug!("refusing QUIC stream: bad or missing header ({outcome:?}, byte {header:?})");
                let _ = send.reset(BAD_STREAM_HEADER);
                let _ = recv.stop(BAD_STREAM_HEADER);
            }
        }
    }
}

/// Copies quinn's RTT and a bandwidth estimate (congestion window per RTT) into the stats.
async fn monitor(conn: quinn::Connection, stats: Arc<ConnStats>) {
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            _ = tick.tick() => {
                let rtt = conn.rtt();
                stats.set_rtt(rtt);
                let window = conn.congestion_state().window() as u128;
                let bw = window * 1_000_000 / rtt.as_micros().max(1);
                stats.bandwidth.store(bw.min(u64::MAX as u128) as u64, Ordering::Relaxed);
            }
        }
    }
}
