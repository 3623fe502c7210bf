//! The async driver of the multiplexer: [`Mux`] and [`MuxStream`].
//!
//! Three tasks per connection, plus one that supervises them:
//!
//! * the **reader** decodes frames with a bounded [`FrameDecoder`] and dispatches them:
//!   messages into a bounded queue (when it is full the reader *waits*, stops reading
//!   the socket, and TCP flow control slows the remote sender — the backpressure
//!   contract), stream frames into [`MuxState`], pings answered, pongs timed;
//! * the **writer** owns the write half behind a [`BufWriter`]; it takes everything
//!   queued in one go (batching), writes it, and flushes only when the queue is
//!   momentarily empty. Large payloads are written from their `Bytes` without copying
//!   into the frame;
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

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf},
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
/// Capacity of the writer's `BufWriter`. 256 KiB: four 64 KiB data frames and their headers
/// fit, so headers never become TLS records of their own (which halved throughput at
/// 64 KiB, measured with `examples/bench`).
const WRITE_BUFFER: usize = 256 * 1024;
/// Bytes the reader asks the socket for per read. 64 KiB, one TLS-over-TCP burst.
const READ_CHUNK: usize = 64 * 1024;
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

/// Everything the tasks and handles share, behind one mutex.
struct Shared {
    state: MuxState,
    keep_alive: KeepAlive,
    /// Ordered outbound frames (messages, stream frames).
    out: VecDeque<Frame>,
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
}

impl Shared {
    fn has_room(&self, bytes: usize, frames: usize) -> bool {
        self.out.len() + frames <= OUT_QUEUE_FRAMES
            && (self.out_bytes == 0 || self.out_bytes + bytes <= OUT_QUEUE_BYTES)
    }

    fn push(&mut self, frame: Frame, bytes: usize) {
        self.out_bytes += bytes;
        self.out.push_back(frame);
        self.wake_writer();
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
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
        };
        let (tx, rx) = mpsc::channel(config.message_queue.max(1));
        let inner = Arc::new(Inner {
            shared: Mutex::new(shared),
            messages: tokio::sync::Mutex::new(rx),
            stats,
            remote: remote.into(),
            local_addr,
            config,
            closed: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            done: watch::Sender::new(false),
        });
        let (rd, wr) = tokio::io::split(io);
        let reader = tokio::spawn(read_loop(inner.clone(), rd, tx));
        let writer = tokio::spawn(write_loop(inner.clone(), wr));
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
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(TransportError::LimitExceeded {
                limit: "message size",
                max: MAX_MESSAGE_LEN as u64,
                attempted: msg.len() as u64,
            });
        }
        let inner = self.inner();
        let mut msg = Some(msg);
        std::future::poll_fn(|cx| {
            let mut sh = inner.lock();
            if sh.cause.is_some() {
                return Poll::Ready(Err(inner.closed_error(&sh)));
            }
            let len = msg.as_ref().map_or(0, Bytes::len);
            if !sh.has_room(len, 1) {
                sh.blocked.push(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(m) = msg.take() {
                sh.push(Frame::Message(m), len);
                inner.stats.sent(len);
            }
            Poll::Ready(Ok(()))
        })
        .await
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

/// One multiplexed stream: `AsyncRead + AsyncWrite`.
///
/// Writes wait while the peer's window is exhausted and are cut into `StreamData`
/// frames of at most [`MAX_DATA_CHUNK`] bytes; `flush` returns at once (the writer task
/// flushes whenever its queue runs empty); `shutdown` sends `StreamFin`; dropping the
/// stream before both directions finished resets it.
pub struct MuxStream {
    id: u32,
    handle: Arc<Handle>,
}

impl fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

fn stream_error(id: u32, e: StreamClosed) -> io::Error {
    match e {
        StreamClosed::Finished => {
            io::Error::new(io::ErrorKind::BrokenPipe, format!("stream {id}: writing after shutdown"))
        }
        StreamClosed::Reset(code) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream {id} reset by the peer (code {code})"),
        ),
        StreamClosed::Unknown => {
            io::Error::new(io::ErrorKind::NotConnected, format!("stream {id} is closed"))
        }
    }
}

impl MuxStream {
    fn new(id: u32, handle: Arc<Handle>) -> Self {
        Self { id, handle }
    }

    /// The stream id (odd: opened by the dialer, even: by the listener).
    pub fn id(&self) -> u32 {
        self.id
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let inner = self.inner();
        let mut sh = inner.lock();
        let dst = buf.initialize_unfilled();
        match sh.state.read(self.id, dst) {
            ReadOutcome::Data(n) => {
                buf.advance(n);
                if sh.state.wants_transmit() {
                    sh.wake_writer();
                }
                Poll::Ready(Ok(()))
            }
            ReadOutcome::Eof => Poll::Ready(Ok(())),
            ReadOutcome::Reset(code) => Poll::Ready(Err(stream_error(self.id, StreamClosed::Reset(code)))),
            ReadOutcome::Blocked => match &sh.cause {
                Some(c) => Poll::Ready(Err(c.io_error(&inner.remote))),
                None => {
                    sh.readers.insert(self.id, cx.waker().clone());
                    Poll::Pending
                }
            },
            ReadOutcome::Unknown => Poll::Ready(Err(stream_error(self.id, StreamClosed::Unknown))),
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let inner = self.inner();
        let n = {
            let mut sh = inner.lock();
            if let Some(c) = &sh.cause {
                return Poll::Ready(Err(c.io_error(&inner.remote)));
            }
            let credit = match sh.state.send_credit(self.id) {
                Ok(c) => c,
                Err(e) => return Poll::Ready(Err(stream_error(self.id, e))),
            };
            if credit == 0 {
                sh.writers.insert(self.id, cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.len().min(MAX_DATA_CHUNK).min(credit as usize);
            if !sh.has_room(n, 1) {
                sh.blocked.push(cx.waker().clone());
                return Poll::Pending;
            }
            // Reserve room and credit now; copy outside the lock. Only this handle pushes
            // frames for this stream, so their order is kept.
            sh.out_bytes += n;
            n
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        let mut sh = inner.lock();
        match sh.state.send(self.id, data) {
            Ok(frame) if sh.cause.is_none() => {
                sh.out.push_back(frame);
                sh.wake_writer();
                Poll::Ready(Ok(n))
            }
            Ok(_) => {
                let e = sh.cause.as_ref().map(|c| c.io_error(&inner.remote));
                Poll::Ready(Err(e.unwrap_or_else(|| stream_error(self.id, StreamClosed::Unknown))))
            }
            Err(e) => {
                sh.out_bytes = sh.out_bytes.saturating_sub(n);
                Poll::Ready(Err(stream_error(self.id, e)))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = self.inner();
        let mut sh = inner.lock();
        match sh.state.finish(self.id) {
            Ok(Some(fin)) => {
                if let Some(c) = &sh.cause {
                    return Poll::Ready(Err(c.io_error(&inner.remote)));
                }
                // Small and once per stream: exempt from the queue bound.
                sh.push(fin, 0);
                Poll::Ready(Ok(()))
            }
            Ok(None) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(stream_error(self.id, e))),
        }
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let id = self.id;
        let inner = self.inner();
        let mut sh = inner.lock();
        sh.readers.remove(&id);
        sh.writers.remove(&id);
        if let Some(reset) = sh.state.release(id) {
            if sh.cause.is_none() {
                // Once per stream, after its data: exempt from the queue bound.
                sh.push(reset, 0);
            }
        }
    }
}

/// What the reader should do after a frame.
enum Flow {
    Continue,
    Stop,
}

async fn read_loop<R: AsyncRead + Unpin>(inner: Arc<Inner>, rd: R, tx: mpsc::Sender<Bytes>) {
    let mut rd = rd;
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Flow::Stop = dispatch(&inner, frame, &tx).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if !inner.closed.load(Ordering::Acquire) {
                        inner.violation(e);
                    }
                    return;
                }
            }
        }
        buf.reserve(READ_CHUNK);
        let n = match rd.read_buf(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let mut sh = inner.lock();
                inner.begin_close(&mut sh, Cause::Io(e.kind(), e.to_string()), None);
                return;
            }
        };
        if n == 0 {
            if buf.is_empty() {
                let mut sh = inner.lock();
                inner.begin_close(&mut sh, Cause::Eof, None);
            } else if !inner.closed.load(Ordering::Acquire) {
                inner.violation(WireError::Truncated);
            }
            return;
        }
        inner.lock().keep_alive.on_receive(Instant::now());
    }
}

async fn dispatch(inner: &Inner, frame: Frame, tx: &mpsc::Sender<Bytes>) -> Flow {
    if inner.closed.load(Ordering::Acquire) {
        // Closing locally: we send nothing more, but the peer's messages sent before it
        // saw our close are still delivered (a graceful close loses no message in either
        // direction), until its own close or end of stream. Everything else is discarded.
        return match frame {
            Frame::Message(m) => {
                inner.stats.received(m.len());
                // Bounded by the close timeout: `supervise` stops this task at the deadline.
                let _ = tx.send(m).await;
                Flow::Continue
            }
            Frame::Control(Control::Close { .. }) => Flow::Stop,
            _ => Flow::Continue,
        };
    }
    match frame {
        Frame::Message(m) => {
            inner.stats.received(m.len());
            match tx.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => {
                    // Backpressure: stop reading the socket until the application reads.
                    inner.lock().reader_stalled = true;
                    let mut closing = inner.closing.subscribe();
                    let send = tx.send(m);
                    tokio::pin!(send);
                    let interrupted = tokio::select! {
                        _ = &mut send => false,
                        _ = closing.wait_for(|c| *c) => true,
                    };
                    // A local close began while waiting: still deliver this one (see
                    // above). Any other close means nobody will read it.
                    if interrupted && matches!(inner.lock().cause, Some(Cause::Local { .. })) {
                        let _ = send.await;
                    }
                    inner.lock().reader_stalled = false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
            Flow::Continue
        }
        Frame::Control(Control::Ping { nonce }) => {
            let mut sh = inner.lock();
            sh.pong = Some(nonce);
            sh.wake_writer();
            Flow::Continue
        }
        Frame::Control(Control::Pong { nonce }) => {
            let mut sh = inner.lock();
            if sh.keep_alive.on_pong(nonce, Instant::now()).is_some() {
                if let Some(srtt) = sh.keep_alive.srtt() {
                    inner.stats.set_rtt(srtt);
                }
            }
            Flow::Continue
        }
        Frame::Control(Control::Close { code, reason }) => {
            let mut sh = inner.lock();
            inner.begin_close(&mut sh, Cause::Remote { code, reason }, None);
            Flow::Stop
        }
        Frame::Control(_) => Flow::Continue,
        Frame::Hello(_) => {
            inner.violation(WireError::Unexpected("hello after the handshake".into()));
            Flow::Stop
        }
        stream_frame => {
            let mut sh = inner.lock();
            match sh.state.handle_frame(stream_frame) {
                Ok(event) => {
                    match event {
                        Event::None => {}
                        Event::Accept(_) => sh.acceptors.drain(..).for_each(Waker::wake),
                        Event::Readable(id) => {
                            if let Some(w) = sh.readers.remove(&id) {
                                w.wake();
                            }
                        }
                        Event::Writable(id) => {
                            if let Some(w) = sh.writers.remove(&id) {
                                w.wake();
                            }
                        }
                        Event::Reset { id, echo, .. } => {
                            if let Some(w) = sh.readers.remove(&id) {
                                w.wake();
                            }
                            if let Some(w) = sh.writers.remove(&id) {
                                w.wake();
                            }
                            if let Some(echo) = echo {
                                // Once per stream, after its data: exempt from the bound.
                                sh.push(echo, 0);
                            }
                        }
                    }
                    if sh.state.wants_transmit() {
                        sh.wake_writer();
                    }
                    Flow::Continue
                }
                Err(e) => {
                    drop(sh);
                    inner.violation(WireError::Unexpected(e.to_string()));
                    Flow::Stop
                }
            }
        }
    }
}

/// What the writer found in the shared state.
enum Step {
    Write,
    Flush,
    Close(Option<Control>),
}

async fn write_loop<W: AsyncWrite + Unpin>(inner: Arc<Inner>, wr: W) {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, wr);
    let mut batch: VecDeque<Frame> = VecDeque::new();
    let mut control: Vec<Frame> = Vec::new();
    let mut scratch = BytesMut::with_capacity(256);
    let mut dirty = false;
    loop {
        let step = std::future::poll_fn(|cx| {
            let mut sh = inner.lock();
            if let Some(nonce) = sh.pong.take() {
                control.push(Frame::Control(Control::Pong { nonce }));
            }
            if let Some(nonce) = sh.ping.take() {
                control.push(Frame::Control(Control::Ping { nonce }));
            }
            while let Some(f) = sh.state.poll_transmit() {
                control.push(f);
            }
            if !sh.out.is_empty() {
                std::mem::swap(&mut sh.out, &mut batch);
                sh.out_bytes = 0;
                sh.blocked.drain(..).for_each(Waker::wake);
            }
            if !control.is_empty() || !batch.is_empty() {
                return Poll::Ready(Step::Write);
            }
            if dirty {
                return Poll::Ready(Step::Flush);
            }
            if sh.cause.is_some() {
                return Poll::Ready(Step::Close(sh.close_frame.take()));
            }
            sh.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let result = match step {
            Step::Write => {
                dirty = true;
                write_batch(&mut w, &mut control, &mut batch, &mut scratch).await
            }
            Step::Flush => {
                dirty = false;
                w.flush().await
            }
            Step::Close(frame) => {
                if let Some(frame) = frame {
                    control.push(Frame::Control(frame));
                    let _ = write_batch(&mut w, &mut control, &mut batch, &mut scratch).await;
                }
                let _ = w.flush().await;
                let _ = w.shutdown().await;
                return;
            }
        };
        if let Err(e) = result {
            let mut sh = inner.lock();
            inner.begin_close(&mut sh, Cause::Io(e.kind(), e.to_string()), None);
            return;
        }
    }
}

async fn write_batch<W: AsyncWrite + Unpin>(
    w: &mut W,
    control: &mut Vec<Frame>,
    batch: &mut VecDeque<Frame>,
    scratch: &mut BytesMut,
) -> io::Result<()> {
    for f in control.drain(..).chain(batch.drain(..)) {
        scratch.clear();
        match f {
            Frame::Message(m) => {
                encode_header(FrameType::Message, m.len(), scratch);
                w.write_all(scratch).await?;
                w.write_all(&m).await?;
            }
            Frame::StreamData { id, data } => {
                encode_header(FrameType::StreamData, data.len() + 4, scratch);
                scratch.put_u32(id);
                w.write_all(scratch).await?;
                w.write_all(&data).await?;
            }
            other => {
                // Control frames are small and always within bounds; an encoding error
                // would be our bug, so drop that frame rather than the connection.
                if let Err(e) = encode_frame(&other, scratch) {
                    tracing::warn!("dropping unencodable frame: {e}");
                    continue;
                }
                w.write_all(scratch).await?;
            }
        }
    }
    Ok(())
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
