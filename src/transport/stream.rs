//! [`ByteStream`]: a bidirectional byte stream of a connection.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
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
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ByteStream")
    }
}

impl ByteStream {
    /// Wraps a transport's stream, counting into `stats`.
    pub fn new(inner: impl AsyncStream, stats: Arc<ConnStats>) -> Self {
        Self { inner: Box::pin(inner), stats }
    }
}

impl AsyncRead for ByteStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
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
        let r = self.inner.as_mut().poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.stats.sent(n);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}
