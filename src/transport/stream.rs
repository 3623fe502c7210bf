//! [`ByteStream`]: a bidirectional byte stream of a connection.

use std::{
    collections::HashMap,
    fmt, io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ConnStats;

/// Anything that can back a [`ByteStream`].
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + 'static> AsyncStream for T {}

/// A bidirectional, flow-controlled byte stream to a peer: `read`, `write`, `flush`, and
/// `shutdown` (close the sending side) through tokio's `AsyncReadExt`/`AsyncWriteExt`.
///
/// Bytes are counted into the owning connection's statistics.
pub struct ByteStream {
    inner: Pin<Box<dyn AsyncStream>>,
    stats: Arc<ConnStats>,
    abort: Option<(Arc<StreamAbort>, u64)>,
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ByteStream")
    }
}

impl ByteStream {
    /// Wraps a transport's stream, counting into `stats` (bytes, and the stream itself
    /// while it lives: [`ConnStats::open_streams`]).
    pub fn new(inner: impl AsyncStream, stats: Arc<ConnStats>) -> Self {
        stats.streams_open.fetch_add(1, Ordering::Relaxed);
        Self { inner: Box::pin(inner), stats, abort: None }
    }

    /// Makes the stream fail (every read and write, at once, waking a blocked one) once
    /// `abort` is triggered: for a stream whose path died while the connection under it
    /// lingers.
    pub fn abortable(mut self, abort: Arc<StreamAbort>) -> Self {
        let id = abort.next.fetch_add(1, Ordering::Relaxed);
        self.abort = Some((abort, id));
        self
    }

    /// The abort's error, once triggered; else registers to be woken by it.
    fn aborted(&self, cx: &Context<'_>) -> Option<io::Error> {
        let (abort, id) = self.abort.as_ref()?;
        let mut st = abort.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &st.reason {
            return Some(io::Error::new(io::ErrorKind::ConnectionAborted, reason.clone()));
        }
        match st.wakers.get_mut(id) {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => {
                st.wakers.insert(*id, cx.waker().clone());
            }
        }
        None
    }
}

impl Drop for ByteStream {
    fn drop(&mut self) {
        self.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
        if let Some((abort, id)) = &self.abort {
            abort.state.lock().unwrap_or_else(|e| e.into_inner()).wakers.remove(id);
        }
    }
}

/// A switch that fails every [`ByteStream`] made [`abortable`](ByteStream::abortable)
/// with it: the runtime triggers it when a path dies, so that streams on it fail with an
/// error naming the path instead of hanging on a connection that no longer carries
/// anything.
#[derive(Debug, Default)]
pub struct StreamAbort {
    state: Mutex<AbortState>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct AbortState {
    reason: Option<String>,
    /// The wakers of blocked streams, by stream (one each).
    wakers: HashMap<u64, Waker>,
}

impl StreamAbort {
    /// A switch not yet triggered.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Fails every stream using this switch with `reason` (an
    /// [`io::ErrorKind::ConnectionAborted`] error); later triggers keep the first reason.
    pub fn trigger(&self, reason: impl Into<String>) {
        let wakers: Vec<Waker> = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.reason.get_or_insert_with(|| reason.into());
            st.wakers.drain().map(|(_, w)| w).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Whether it was triggered.
    pub fn is_triggered(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).reason.is_some()
    }
}

impl AsyncRead for ByteStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.aborted(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = self.inner.as_mut().poll_read(cx, buf);
        self.stats.received(buf.filled().len() - before);
        r
    }
}

impl AsyncWrite for ByteStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.aborted(cx) {
            return Poll::Ready(Err(e));
        }
        let r = self.inner.as_mut().poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.stats.sent(n);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.aborted(cx) {
            return Poll::Ready(Err(e));
        }
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.aborted(cx) {
            return Poll::Ready(Err(e));
        }
        self.inner.as_mut().poll_shutdown(cx)
    }
}
