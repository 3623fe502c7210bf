//! The async driver of the multiplexer: [`Mux`] (here) and [`MuxStream`] (`stream.rs`).
//!
//! Three tasks per connection, plus one that supervises them:
//!
//! * the **reader** (`read.rs`) reads into two alternating buffers (`ReadBuffers`) that decoded
//!   payloads share, and decodes frames with a bounded [`FrameDecoder`], dispatching them:
//!   messages into a bounded queue (when it is full the reader *waits*, stops reading
//!   the socket, and TCP flow control slows the remote sender — the backpressure
//!   contract), stream frames into [`MuxState`], pings answered, pongs timed;
//! * the **writer** (`write.rs`) takes everything queued in one go (batching), encodes headers and
//!   small frames into one buffer (so they share TLS records) and hands large payloads
//!   to the TLS stream as their own slices of a vectored write, without copying; it
//!   flushes only when the queue is momentarily empty. Writing is a role (`WriteIo`):
//!   when nobody holds it, a large stream write or message is written by the
//!   application's own task, straight into the TLS stream — no copy, no wake-up of the
//!   writer — which is what brings a stream close to the raw TLS stream's throughput;
//! * the **keep-alive** timer feeds [`KeepAlive`]: a ping when the peer has been quiet,
//!   the connection closed with a timeout when it stays quiet;
//! * the **supervisor** waits for the close to begin, lets the writer flush (bounded),
//!   drains the reader until the peer's end of stream after a local close (so TLS never
//!   sees unread data turned into a reset), then releases the socket.
//!
//! Unordered control output (window updates, refusals, pongs, pings) is kept as state
//! and picked up by the writer, so the reader never waits on the outbound queue; that
//! would deadlock two peers whose writers are both blocked.

use std::{
    collections::{HashMap, VecDeque},
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::state::{Event, MuxState, ReadOutcome, StateConfig, StreamClosed, MAX_DATA_CHUNK};
use crate::{
    error::{Result, TransportError, WireError},
    health::KeepAlive,
    node::NodeConfig,
    transport::{BoxFuture, ByteStream, ConnStats, ConnectionBackend},
    wire::{
        encode_frame, encode_header, CloseCode, Control, Frame, FrameDecoder, FrameType, MAX_MESSAGE_LEN,
    },
};

mod read;
mod stream;
mod write;

use read::read_loop;
pub use stream::MuxStream;
use write::{write_loop, WriteIo};

/// Default bound on concurrently open streams per connection. 1024: far above what any
/// parallel transfer uses, while bounding a hostile peer's table to 1024 windows.
pub const DEFAULT_MAX_STREAMS: usize = 1024;
/// Default bound on peer-opened streams not yet accepted. 256, like the message queue:
/// an application that stops accepting sees further opens refused, not buffered.
pub const DEFAULT_ACCEPT_BACKLOG: usize = 256;
/// Outbound queue bound in frames. 1024 frames of 64 B messages are ~64 KiB, one
/// `BufWriter` load: enough for the writer to batch a whole buffer per wake-up.
const OUT_QUEUE_FRAMES: usize = 1024;
/// Outbound queue bound in payload bytes. 1 MiB: 16 chunks of 64 KiB in flight between
/// the application and the writer keeps the socket busy while the writer encrypts; a
/// single larger message is still admitted when the queue is empty.
const OUT_QUEUE_BYTES: usize = 1024 * 1024;
/// Stream writes of at least this many bytes are written by the application's own task
/// straight into the TLS stream when nobody else is writing (see [`WriteIo`]), with no
/// copy and no hand-off to the writer task. 16 KiB, one full TLS record: smaller writes
/// gain from being coalesced by the writer task into full records, larger ones fill
/// records on their own.
const DIRECT_WRITE_MIN: usize = 16 * 1024;
/// Payloads smaller than this are copied into the coalescing buffer with their headers;
/// larger ones are handed to the TLS stream as their own slice, without copying. 4 KiB:
/// with [`MAX_IOVECS`] slices per call that is still 64 KiB, rustls's default send buffer
/// limit, so a vectored write is never short of slices.
const COPY_MAX: usize = 4 * 1024;
/// Slices per vectored write. rustls takes at most its buffer limit (64 KiB) per call,
/// which 16 slices of at least [`COPY_MAX`] bytes already fill.
const MAX_IOVECS: usize = 16;
/// The writer task gathers queued frames until this many bytes (or an empty queue)
/// before writing them. 64 KiB, rustls's default send buffer limit: one write call's
/// worth, so small frames make full 16 KiB TLS records rather than one per batch.
const WRITE_COALESCE: usize = 64 * 1024;
/// Initial capacity of the coalescing buffer for headers and small frames. 16 KiB, one
/// TLS record; it grows (in place once its bytes are written) when batches are larger.
const SMALL_BUFFER: usize = 16 * 1024;
/// Bytes the reader asks the socket for per read (at most, and room for at least this
/// much is made before each read), and the initial read buffer. 64 KiB: several TLS
/// records per read, while a reader stalled by a slow message consumer holds at most
/// this much unread data (the backpressure bound); an idle connection keeps this small
/// buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Capacity of the read buffers allocated once traffic outgrows [`READ_CHUNK`]. Decoded
/// payloads share the buffer they were read into, so a buffer is reused only when the
/// application has consumed everything in it; otherwise the partial frame at its end is
/// moved to another buffer. 1 MiB: that move (at most one frame, 64 KiB) costs a few
/// per cent of a copy per buffer, where 256 KiB buffers cost 12% (and fresh 64 KiB
/// allocations per read, the previous scheme, cost page faults and a copy per frame).
const READ_BUFFER: usize = 1024 * 1024;
/// Default bound on a graceful close (flush, then wait for the peer's end of stream).
/// 5 s: generous for a flush on any live path; a dead peer must not hold the socket.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Tunables of one multiplexed connection.
#[derive(Clone, Debug)]
pub struct MuxConfig {
    /// Receive window per stream, in bytes.
    pub stream_window: u32,
    /// Maximum concurrently open streams (both directions together); excess opens by the
    /// peer are reset with [`RESET_REFUSED`](super::RESET_REFUSED).
    pub max_streams: usize,
    /// Maximum peer-opened streams waiting for [`ConnectionBackend::accept_stream`].
    pub accept_backlog: usize,
    /// Received messages queued for the application before reading stops.
    pub message_queue: usize,
    /// Keep-alive ping interval (see [`KeepAlive`]).
    pub keep_alive_interval: Duration,
    /// Silence after which the connection is dead.
    pub idle_timeout: Duration,
    /// Bound on a graceful close.
    pub close_timeout: Duration,
}

impl MuxConfig {
    /// The configuration a node's settings imply.
    pub fn from_node(config: &NodeConfig) -> Self {
        Self {
            stream_window: config.stream_window,
            max_streams: DEFAULT_MAX_STREAMS,
            accept_backlog: DEFAULT_ACCEPT_BACKLOG,
            message_queue: config.message_queue.max(1),
            keep_alive_interval: config.keep_alive_interval,
            idle_timeout: config.idle_timeout,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }
}

/// Why the connection ended (first cause wins).
#[derive(Clone, Debug)]
enum Cause {
    Local { code: CloseCode, reason: String },
    Remote { code: CloseCode, reason: String },
    Eof,
    Violation(ClonableWire),
    Timeout(Duration),
    Io(io::ErrorKind, String),
}

/// A [`WireError`] kept so that every caller can get its own copy.
#[derive(Debug)]
struct ClonableWire(WireError);

impl Clone for ClonableWire {
    fn clone(&self) -> Self {
        Self(clone_wire_error(&self.0))
    }
}

/// A copy of a wire error (the type is not `Clone`).
pub(crate) fn clone_wire_error(e: &WireError) -> WireError {
    match e {
        WireError::FrameTooLarge { len, max } => WireError::FrameTooLarge { len: *len, max: *max },
        WireError::Truncated => WireError::Truncated,
        WireError::UnknownFrameType(t) => WireError::UnknownFrameType(*t),
        WireError::UnsupportedVersion { got, supported } => {
            WireError::UnsupportedVersion { got: *got, supported: *supported }
        }
        WireError::BadMagic => WireError::BadMagic,
        WireError::Malformed { what, reason } => WireError::Malformed { what, reason: reason.clone() },
        WireError::Unexpected(s) => WireError::Unexpected(s.clone()),
        #[allow(unreachable_patterns)]
        other => WireError::Unexpected(other.to_string()),
    }
}

impl Cause {
    fn is_clean(&self) -> bool {
        matches!(self, Cause::Local { .. } | Cause::Remote { .. } | Cause::Eof)
    }

    fn error(&self, remote: &str) -> TransportError {
        match self {
            Cause::Local { code, reason } => {
                TransportError::Closed(format!("closed locally ({code:?}): {reason}"))
            }
            Cause::Remote { code, reason } => {
                TransportError::Closed(format!("closed by {remote} ({code:?}): {reason}"))
            }
            Cause::Eof => TransportError::Closed(format!("{remote} ended the connection")),
            Cause::Violation(w) => TransportError::violation(remote, w.clone().0),
            Cause::Timeout(after) => TransportError::Timeout {
                what: format!("keep-alive of connection to {remote}"),
                after: *after,
            },
            Cause::Io(kind, msg) => TransportError::Io(io::Error::new(*kind, msg.clone())),
        }
    }

    fn io_error(&self, remote: &str) -> io::Error {
        let kind = match self {
            Cause::Io(kind, _) => *kind,
            _ => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, self.error(remote))
    }
}

/// One queued outbound frame: a wire frame, or a message given as an upper layer's header
/// and its payload, written one after the other without joining them.
enum Out {
    Frame(Frame),
    Parts(Bytes, Bytes),
}

impl From<Frame> for Out {
    fn from(f: Frame) -> Self {
        Out::Frame(f)
    }
}

/// Everything the tasks and handles share, behind one mutex.
struct Shared {
    state: MuxState,
    keep_alive: KeepAlive,
    /// Ordered outbound frames (messages, stream frames).
    out: VecDeque<Out>,
    out_bytes: usize,
    ping: Option<u64>,
    pong: Option<u64>,
    writer: Option<Waker>,
    /// Senders waiting for room in `out`.
    blocked: Vec<Waker>,
    readers: HashMap<u32, Waker>,
    writers: HashMap<u32, Waker>,
    acceptors: Vec<Waker>,
    cause: Option<Cause>,
    close_frame: Option<Control>,
    reader_stalled: bool,
    /// The write role is taken: its holder (the writer task, or an application task
    /// writing directly) checks for queued work before giving it up, so pushing work
    /// needs no wake-up meanwhile.
    io_busy: bool,
    /// The last holder left encoded bytes in [`WriteIo`] or an unflushed TLS stream for
    /// the writer task.
    io_pending: bool,
}

impl Shared {
    fn has_room(&self, bytes: usize, frames: usize) -> bool {
        self.out.len() + frames <= OUT_QUEUE_FRAMES
            && (self.out_bytes == 0 || self.out_bytes + bytes <= OUT_QUEUE_BYTES)
    }

    fn push(&mut self, frame: impl Into<Out>, bytes: usize) {
        self.out_bytes += bytes;
        self.out.push_back(frame.into());
        self.wake_writer();
    }

    /// Tells the writer task about new work, unless the write role is taken (its holder
    /// looks for work before giving it up).
    fn wake_writer(&mut self) {
        if self.io_busy {
            return;
        }
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Whether frames wait to be encoded for the writer.
    fn has_work(&self) -> bool {
        !self.out.is_empty() || self.pong.is_some() || self.ping.is_some() || self.state.wants_transmit()
    }

    /// Gives up the write role; `pending` says whether the holder left work in
    /// [`WriteIo`]. The writer task is woken if anything is left to do.
    fn release_io(&mut self, pending: bool) {
        self.io_busy = false;
        self.io_pending = pending;
        if pending || self.has_work() || self.cause.is_some() {
            self.wake_writer();
        }
        // Senders blocked on a busy writer may now write directly.
        self.blocked.drain(..).for_each(Waker::wake);
    }

    fn wake_all(&mut self) {
        self.wake_writer();
        self.blocked.drain(..).for_each(Waker::wake);
        self.readers.drain().for_each(|(_, w)| w.wake());
        self.writers.drain().for_each(|(_, w)| w.wake());
        self.acceptors.drain(..).for_each(Waker::wake);
    }
}

struct Inner {
    shared: Mutex<Shared>,
    /// The write half. Locked only by the holder of the write role
    /// ([`Shared::io_busy`]), never while `shared` is held (lock order: `io`, then
    /// `shared`), so it is uncontended.
    io: Mutex<WriteIo>,
    messages: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    stats: Arc<ConnStats>,
    remote: String,
    local_addr: Option<SocketAddr>,
    config: MuxConfig,
    /// Set once the close begins (a lock-free copy of `cause.is_some()`).
    closed: AtomicBool,
    closing: watch::Sender<bool>,
    /// Set once the socket has been released.
    done: watch::Sender<bool>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the table half-updated in a way
        // that matters more than losing the connection; keep going.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_io(&self) -> MutexGuard<'_, WriteIo> {
        self.io.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what the caller collected into `w`, then `tail`, from the application's
    /// task; the caller holds the write role, which is given up here. Whatever the socket
    /// does not take now is copied into `w` (`tail`) or stays there (`Bytes`) for the
    /// writer task, so all of it is always accepted unless the connection fails.
    fn write_direct(&self, w: &mut WriteIo, cx: &mut Context<'_>, tail: &[u8]) -> io::Result<()> {
        w.encode_queued();
        let mut done = 0;
        let result = match w.poll_write_with(cx, tail, &mut done) {
            Poll::Ready(Ok(())) => match w.io.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    w.dirty = false;
                    Ok(())
                }
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Ok(()),
            },
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(()),
        };
        if let Err(e) = result {
            self.write_failed(&e);
            let sh = self.lock();
            return Err(sh.cause.as_ref().map_or(e, |c| c.io_error(&self.remote)));
        }
        if done < tail.len() {
            w.segs.push_back(Bytes::copy_from_slice(&tail[done..]));
        }
        let pending = w.has_pending();
        self.lock().release_io(pending);
        Ok(())
    }

    /// The write role's holder failed to write: the connection is broken.
    fn write_failed(&self, e: &io::Error) {
        let mut sh = self.lock();
        self.begin_close(&mut sh, Cause::Io(e.kind(), e.to_string()), None);
        sh.release_io(false);
    }

    /// Begins closing (once): records why, schedules the close frame, wakes everyone.
    fn begin_close(&self, sh: &mut Shared, cause: Cause, frame: Option<Control>) {
        if sh.cause.is_some() {
            return;
        }
        tracing::debug!(remote = %self.remote, ?cause, "multiplexed connection closing");
        if !matches!(cause, Cause::Local { .. }) {
            // Nobody will read what is queued: the peer is gone or broken.
            sh.out.clear();
            sh.out_bytes = 0;
        }
        sh.cause = Some(cause);
        sh.close_frame = frame;
        self.closed.store(true, Ordering::Release);
        sh.wake_all();
        self.closing.send_replace(true);
    }

    fn violation(&self, e: WireError) {
        let reason = e.to_string();
        let mut sh = self.lock();
        self.begin_close(
            &mut sh,
            Cause::Violation(ClonableWire(e)),
            Some(Control::Close { code: CloseCode::ProtocolError, reason }),
        );
    }

    fn closed_error(&self, sh: &Shared) -> TransportError {
        match &sh.cause {
            Some(c) => c.error(&self.remote),
            None => TransportError::Closed("connection closed".into()),
        }
    }
}

/// Closes the connection when the last application handle (connection or stream) goes.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut sh = self.inner.lock();
        let reason = "all handles dropped".to_string();
        self.inner.begin_close(
            &mut sh,
            Cause::Local { code: CloseCode::Normal, reason: reason.clone() },
            Some(Control::Close { code: CloseCode::Normal, reason }),
        );
    }
}

/// A multiplexed connection over one byte stream: messages, streams, keep-alive.
///
/// Implements [`ConnectionBackend`]; wrap it with
/// [`Connection::new`](crate::transport::Connection::new). Dropping every `Mux` handle
/// and every stream closes the connection (with [`CloseCode::Normal`]).
#[derive(Clone)]
pub struct Mux {
    handle: Arc<Handle>,
}

impl fmt::Debug for Mux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mux").field("remote", &self.handle.inner.remote).finish()
    }
}

impl Mux {
    /// Starts multiplexing over `io`, whose hello exchange is complete. `dialer` picks
    /// the stream-id parity; `remote` names the peer in errors. Spawns the driver tasks
    /// on the current tokio runtime (panics outside one, like `tokio::spawn`).
    pub fn new<S>(
        io: S,
        dialer: bool,
        config: MuxConfig,
        remote: impl Into<String>,
        local_addr: Option<SocketAddr>,
        stats: Arc<ConnStats>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let now = Instant::now();
        let state = MuxState::new(
            dialer,
            StateConfig {
                window: config.stream_window,
                max_streams: config.max_streams,
                accept_backlog: config.accept_backlog,
            },
        );
        let shared = Shared {
            state,
            keep_alive: KeepAlive::new(config.keep_alive_interval, config.idle_timeout, now),
            out: VecDeque::new(),
            out_bytes: 0,
            ping: None,
            pong: None,
            writer: None,
            blocked: Vec::new(),
            readers: HashMap::new(),
            writers: HashMap::new(),
            acceptors: Vec::new(),
            cause: None,
            close_frame: None,
            reader_stalled: false,
            io_busy: false,
            io_pending: false,
        };
        let (rd, wr) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(config.message_queue.max(1));
        let inner = Arc::new(Inner {
            shared: Mutex::new(shared),
            io: Mutex::new(WriteIo::new(Box::pin(wr))),
            messages: tokio::sync::Mutex::new(rx),
            stats,
            remote: remote.into(),
            local_addr,
            config,
            closed: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            done: watch::Sender::new(false),
        });
        let reader = tokio::spawn(read_loop(inner.clone(), rd, tx));
        let writer = tokio::spawn(write_loop(inner.clone()));
        let keep_alive = tokio::spawn(keep_alive_loop(inner.clone()));
        tokio::spawn(supervise(inner.clone(), reader, writer, keep_alive));
        Self { handle: Arc::new(Handle { inner }) }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// The connection's counters.
    pub fn stats(&self) -> &Arc<ConnStats> {
        &self.inner().stats
    }

    /// Waits until the connection has ended and its socket is released.
    pub async fn closed(&self) {
        let mut rx = self.inner().done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Why the connection ended, as an error (`None` while it is open or if it closed
    /// cleanly).
    pub fn close_error(&self) -> Option<TransportError> {
        let sh = self.inner().lock();
        sh.cause.as_ref().filter(|c| !c.is_clean()).map(|c| c.error(&self.inner().remote))
    }

    /// The next message; see [`ConnectionBackend::recv_message`].
    async fn recv(&self) -> Result<Option<Bytes>> {
        let inner = self.inner();
        let mut rx = inner.messages.lock().await;
        match rx.recv().await {
            Some(m) => Ok(Some(m)),
            None => {
                let sh = inner.lock();
                match &sh.cause {
                    Some(c) if !c.is_clean() => Err(c.error(&inner.remote)),
                    _ => Ok(None),
                }
            }
        }
    }

    async fn send(&self, msg: Bytes) -> Result<()> {
        self.send_with(Out::Frame(Frame::Message(msg)), true).await
    }

    /// Sends `msg`, one message (`Frame::Message` or `Parts`); `direct`: a large message
    /// may be written (and encrypted) by the calling task when the writer is idle, else it
    /// is always handed to the writer task.
    async fn send_with(&self, msg: Out, direct: bool) -> Result<()> {
        let len = match &msg {
            Out::Frame(Frame::Message(m)) => m.len(),
            Out::Parts(h, b) => h.len() + b.len(),
            Out::Frame(_) => 0,
        };
        if len > MAX_MESSAGE_LEN {
            return Err(TransportError::LimitExceeded {
                limit: "message size",
                max: MAX_MESSAGE_LEN as u64,
                attempted: len as u64,
            });
        }
        let inner = self.inner();
        let mut msg = Some(msg);
        std::future::poll_fn(|cx| {
            // Large messages are written by this task when nobody else is writing, like
            // large stream writes (see `MuxStream::poll_write`): no hand-off, no copy.
            let mut io = if direct && len >= DIRECT_WRITE_MIN { inner.io.try_lock().ok() } else { None };
            let mut sh = inner.lock();
            if sh.cause.is_some() {
                return Poll::Ready(Err(inner.closed_error(&sh)));
            }
            // Only when nothing is left over from an earlier partial write: the leftover
            // is unbounded by the queue's room, so it must drain before more bypasses it.
            if let Some(w) = io.as_mut().filter(|w| !sh.io_busy && !w.has_pending()) {
                sh.io_busy = true;
                w.collect(&mut sh);
                drop(sh);
                if let Some(m) = msg.take() {
                    w.batch.push_back(m);
                    inner.stats.sent(len);
                }
                return Poll::Ready(inner.write_direct(w, cx, &[]).map_err(TransportError::Io));
            }
            if !sh.has_room(len, 1) {
                sh.blocked.push(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(m) = msg.take() {
                sh.push(m, len);
                inner.stats.sent(len);
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Queues one message for the writer task if there is room now (see
    /// [`ConnectionBackend::try_send_message_parts`]).
    fn try_queue(&self, head: &Bytes, body: &Bytes) -> Option<Result<()>> {
        let len = head.len() + body.len();
        let inner = self.inner();
        let mut sh = inner.lock();
        if sh.cause.is_some() {
            return Some(Err(inner.closed_error(&sh)));
        }
        if !sh.has_room(len, 1) {
            return None;
        }
        sh.push(Out::Parts(head.clone(), body.clone()), len);
        inner.stats.sent(len);
        Some(Ok(()))
    }

    /// Queues `msgs` in order for the writer task, as many per lock as there is room for.
    async fn send_batch(&self, msgs: Vec<Bytes>) -> Result<()> {
        if let Some(m) = msgs.iter().find(|m| m.len() > MAX_MESSAGE_LEN) {
            return Err(TransportError::LimitExceeded {
                limit: "message size",
                max: MAX_MESSAGE_LEN as u64,
                attempted: m.len() as u64,
            });
        }
        let inner = self.inner();
        let mut msgs = msgs.into_iter().peekable();
        std::future::poll_fn(|cx| {
            let mut sh = inner.lock();
            loop {
                if sh.cause.is_some() {
                    return Poll::Ready(Err(inner.closed_error(&sh)));
                }
                let Some(len) = msgs.peek().map(Bytes::len) else { return Poll::Ready(Ok(())) };
                if !sh.has_room(len, 1) {
                    sh.blocked.push(cx.waker().clone());
                    return Poll::Pending;
                }
                if let Some(m) = msgs.next() {
                    sh.push(Frame::Message(m), len);
                    inner.stats.sent(len);
                }
            }
        })
        .await
    }

    /// Takes what has arrived, at least one message and at most `limit`.
    async fn recv_batch(&self, buf: &mut Vec<Bytes>, limit: usize) -> Result<usize> {
        let inner = self.inner();
        let mut rx = inner.messages.lock().await;
        match rx.recv_many(buf, limit).await {
            0 => {
                let sh = inner.lock();
                match &sh.cause {
                    Some(c) if !c.is_clean() => Err(c.error(&inner.remote)),
                    _ => Ok(0),
                }
            }
            n => Ok(n),
        }
    }

    async fn open(&self) -> Result<ByteStream> {
        let inner = self.inner();
        let id = std::future::poll_fn(|cx| {
            let mut sh = inner.lock();
            if sh.cause.is_some() {
                return Poll::Ready(Err(inner.closed_error(&sh)));
            }
            if !sh.has_room(0, 2) {
                sh.blocked.push(cx.waker().clone());
                return Poll::Pending;
            }
            let (id, frames) = sh.state.open()?;
            for f in frames {
                sh.push(f, 0);
            }
            Poll::Ready(Ok(id))
        })
        .await?;
        Ok(ByteStream::new(MuxStream::new(id, self.handle.clone()), inner.stats.clone()))
    }

    async fn accept(&self) -> Result<Option<ByteStream>> {
        let inner = self.inner();
        let id = std::future::poll_fn(|cx| {
            let mut sh = inner.lock();
            if let Some(id) = sh.state.poll_accept() {
                return Poll::Ready(Ok(Some(id)));
            }
            match &sh.cause {
                Some(c) if c.is_clean() => Poll::Ready(Ok(None)),
                Some(c) => Poll::Ready(Err(c.error(&inner.remote))),
                None => {
                    sh.acceptors.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await?;
        Ok(id.map(|id| ByteStream::new(MuxStream::new(id, self.handle.clone()), inner.stats.clone())))
    }

    async fn shutdown(&self, code: CloseCode, reason: &str) {
        let inner = self.inner();
        {
            let mut sh = inner.lock();
            inner.begin_close(
                &mut sh,
                Cause::Local { code, reason: reason.to_string() },
                Some(Control::Close { code, reason: reason.to_string() }),
            );
        }
        self.closed().await;
    }
}

impl ConnectionBackend for Mux {
    fn send_message(&self, msg: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.send(msg))
    }

    fn send_message_queued(&self, msg: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.send_with(Out::Frame(Frame::Message(msg)), false))
    }

    fn send_message_parts(&self, head: Bytes, body: Bytes, queued: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.send_with(Out::Parts(head, body), !queued))
    }

    fn try_send_message_parts(&self, head: &Bytes, body: &Bytes) -> Option<Result<()>> {
        self.try_queue(head, body)
    }

    fn send_messages(&self, msgs: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.send_batch(msgs))
    }

    fn recv_messages<'a>(&'a self, buf: &'a mut Vec<Bytes>, limit: usize) -> BoxFuture<'a, Result<usize>> {
        Box::pin(self.recv_batch(buf, limit))
    }

    fn recv_message(&self) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(self.recv())
    }

    fn open_stream(&self) -> BoxFuture<'_, Result<ByteStream>> {
        Box::pin(self.open())
    }

    fn accept_stream(&self) -> BoxFuture<'_, Result<Option<ByteStream>>> {
        Box::pin(self.accept())
    }

    fn send_datagram(&self, _data: Bytes) -> Result<()> {
        Err(TransportError::UnsupportedProtocol("datagrams need QUIC".into()))
    }

    fn recv_datagram(&self) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async { Err(TransportError::UnsupportedProtocol("datagrams need QUIC".into())) })
    }

    fn close(&self, code: CloseCode, reason: &str) -> BoxFuture<'_, ()> {
        let reason = reason.to_string();
        Box::pin(async move { self.shutdown(code, &reason).await })
    }

    fn is_connected(&self) -> bool {
        !self.inner().closed.load(Ordering::Acquire)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.inner().local_addr
    }
}

async fn keep_alive_loop(inner: Arc<Inner>) {
    loop {
        let deadline = inner.lock().keep_alive.poll_timeout();
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        let now = Instant::now();
        let mut sh = inner.lock();
        if sh.cause.is_some() {
            return;
        }
        if sh.reader_stalled {
            // We stopped reading on purpose; the peer's silence proves nothing.
            sh.keep_alive.on_receive(now);
        }
        if sh.keep_alive.is_dead(now) {
            let after = inner.config.idle_timeout;
            inner.begin_close(
                &mut sh,
                Cause::Timeout(after),
                Some(Control::Close {
                    code: CloseCode::Idle,
                    reason: format!("nothing received for {after:?}"),
                }),
            );
            return;
        }
        if let Some(nonce) = sh.keep_alive.poll_ping(now) {
            sh.ping = Some(nonce);
            sh.wake_writer();
        }
    }
}

async fn supervise(
    inner: Arc<Inner>,
    mut reader: JoinHandle<()>,
    mut writer: JoinHandle<()>,
    keep_alive: JoinHandle<()>,
) {
    let mut closing = inner.closing.subscribe();
    let _ = closing.wait_for(|c| *c).await;
    let deadline = tokio::time::Instant::now() + inner.config.close_timeout;
    let writer_done = tokio::time::timeout_at(deadline, &mut writer).await.is_ok();
    let local = matches!(inner.lock().cause, Some(Cause::Local { .. }));
    let mut reader_done = false;
    if local {
        // Read until the peer ends its side, so that no unread bytes turn our socket
        // close into a reset that could destroy our own last frames at the peer.
        reader_done = tokio::time::timeout_at(deadline, &mut reader).await.is_ok();
    }
    keep_alive.abort();
    let _ = keep_alive.await;
    if !reader_done {
        reader.abort();
        let _ = reader.await;
    }
    if !writer_done {
        writer.abort();
        let _ = writer.await;
    }
    inner.lock().wake_all();
    inner.done.send_replace(true);
}
