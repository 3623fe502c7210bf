//! [`MuxStream`]: one multiplexed stream as `AsyncRead + AsyncWrite`.

use super::*;

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
    pub(super) fn new(id: u32, handle: Arc<Handle>) -> Self {
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
        let mut copied = false;
        // Take chunks under the lock, copy them outside it: a 64 KiB copy under the lock
        // stalls the reader task's dispatch of the next frame.
        while buf.remaining() > 0 {
            let taken = {
                let mut sh = inner.lock();
                let taken = sh.state.take(self.id, buf.remaining());
                match taken {
                    Ok(_) if sh.state.wants_transmit() => sh.wake_writer(),
                    Ok(_) => {}
                    Err(_) if copied => {}
                    Err(ReadOutcome::Blocked) => match &sh.cause {
                        Some(c) => return Poll::Ready(Err(c.io_error(&inner.remote))),
                        None => {
                            sh.readers.insert(self.id, cx.waker().clone());
                            return Poll::Pending;
                        }
                    },
                    Err(ReadOutcome::Reset(code)) => {
                        return Poll::Ready(Err(stream_error(self.id, StreamClosed::Reset(code))))
                    }
                    Err(ReadOutcome::Unknown) => {
                        return Poll::Ready(Err(stream_error(self.id, StreamClosed::Unknown)))
                    }
                    Err(ReadOutcome::Eof | ReadOutcome::Data(_)) => {}
                }
                taken
            };
            match taken {
                Ok(chunk) => {
                    buf.put_slice(&chunk);
                    copied = true;
                }
                // End of stream, or what was there is read (the rest waits for next time).
                Err(_) => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let inner = self.inner();
        // Large writes try to take the write role (lock order: `io` before `shared`); if
        // the I/O half is in use, they queue a copy like small ones.
        let mut io = if buf.len() >= DIRECT_WRITE_MIN { inner.io.try_lock().ok() } else { None };
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
            if let Some(w) = io.as_mut().filter(|w| !sh.io_busy && n >= DIRECT_WRITE_MIN && !w.has_pending())
            {
                // Take the role, the credit, and everything queued before this frame in
                // one critical section, so that nothing queued later (a reset echo for
                // this stream) can be written before it.
                if let Err(e) = sh.state.consume_credit(self.id, n) {
                    return Poll::Ready(Err(stream_error(self.id, e)));
                }
                sh.io_busy = true;
                w.collect(&mut sh);
                drop(sh);
                w.encode_queued();
                encode_header(FrameType::StreamData, n + 4, &mut w.small);
                w.small.put_u32(self.id);
                return Poll::Ready(inner.write_direct(w, cx, &buf[..n]).map(|()| n));
            }
            if !sh.has_room(n, 1) {
                sh.blocked.push(cx.waker().clone());
                return Poll::Pending;
            }
            // Reserve room and credit now; copy outside the lock. Only this handle pushes
            // frames for this stream, so their order is kept.
            sh.out_bytes += n;
            n
        };
        drop(io);
        let data = Bytes::copy_from_slice(&buf[..n]);
        let mut sh = inner.lock();
        match sh.state.send(self.id, data) {
            Ok(frame) if sh.cause.is_none() => {
                sh.out.push_back(frame.into());
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
