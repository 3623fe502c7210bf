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
use crate::PathKind;

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
    path: Option<PathKind>,
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
        Self { inner: Box::pin(inner), stats, abort: None, path: None }
    }

    /// Tags the stream with the kind of path its connection runs over (a `Connection`
    /// does, for every stream it opens or accepts).
    pub fn on_path(mut self, path: PathKind) -> Self {
        self.path = Some(path);
        self
    }

    /// The kind of path the stream runs over (`None`: a transport's stream not yet handed
    /// out by a `Connection`). A stream stays on its path for its whole life.
    pub fn path(&self) -> Option<PathKind> {
        self.path
    }

    /// Makes the stream fail (every read and write, at once, waking a blocked one) once
    /// `abort` is triggered: for a stream whose path died while the connection under it
    /// lingers.
    pub fn abortable(mut self, abort: Arc<StreamAbort>) -> Self {
        let id = abort.next.fetch_add(1, Ordering::Relaxed);
        self.abort = Some((abort, id));
        self
    }

    /// The abort's error, once triggered for this stream; else registers to be woken.
    fn aborted(&self, cx: &Context<'_>) -> Option<io::Error> {
        let (abort, id) = self.abort.as_ref()?;
        let mut st = abort.state.lock().unwrap_or_else(|e| e.into_inner());
        if *id < st.aborted_below {
            let reason = st.reason.clone().unwrap_or_default();
            return Some(io::Error::new(io::ErrorKind::ConnectionAborted, reason));
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

/// A switch that fails the [`ByteStream`]s made [`abortable`](ByteStream::abortable)
/// with it: the runtime triggers it when a path dies, so that streams on it fail with an
/// error naming the path instead of hanging on a connection that no longer carries
/// anything. A trigger fails the streams registered before it; streams registered later
/// (on a path that recovered) are not affected until the next trigger.
#[derive(Debug, Default)]
pub struct StreamAbort {
    state: Mutex<AbortState>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct AbortState {
    /// Why the latest trigger fired.
    reason: Option<String>,
    /// Streams with an id below this were registered before the latest trigger: failed.
    aborted_below: u64,
    /// The wakers of blocked streams, by stream (one each).
    wakers: HashMap<u64, Waker>,
}

impl StreamAbort {
    /// A switch not yet triggered.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Fails every stream registered with this switch so far with `reason` (an
    /// [`io::ErrorKind::ConnectionAborted`] error).
    pub fn trigger(&self, reason: impl Into<String>) {
        let wakers: Vec<Waker> = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.reason = Some(reason.into());
            st.aborted_below = self.next.load(Ordering::Relaxed);
            st.wakers.drain().map(|(_, w)| w).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Whether it was ever triggered.
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn stream(abort: &Arc<StreamAbort>) -> (ByteStream, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1024);
        (ByteStream::new(a, Arc::default()).abortable(abort.clone()).on_path(PathKind::Direct), b)
    }

    #[tokio::test]
    async fn a_trigger_fails_the_streams_before_it_and_not_the_ones_after() {
        let abort = StreamAbort::new();
        let (mut old, _peer) = stream(&abort);
        // A blocked read is woken by the trigger.
        let blocked = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            (old.read(&mut buf).await, old)
        });
        tokio::task::yield_now().await;
        abort.trigger("path quic direct to x died (no answer)");
        let (r, mut old) = blocked.await.unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        assert!(e.to_string().contains("died"), "{e}");
        assert!(old.write_all(b"x").await.is_err(), "writes fail too");
        assert!(abort.is_triggered());
        // A stream registered after the trigger (the path recovered) works.
        let (mut new, mut peer) = stream(&abort);
        assert_eq!(new.path(), Some(PathKind::Direct));
        new.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // Until the next trigger.
        abort.trigger("died again");
        assert!(new.write_all(b"x").await.unwrap_err().to_string().contains("again"));
    }
}
