//! The reader task: the socket into [`ReadBuffers`], frames dispatched into the shared state.

use super::*;

/// What the reader should do after a frame.
enum Flow {
    Continue,
    Stop,
}

/// The reader's buffers. Decoded payloads share the buffer they were read into (no copy
/// between the TLS stream and the application), so a buffer can be reused only once the
/// application has consumed everything decoded from it. Two buffers alternate: by the
/// time one is full, the other has usually been consumed, so in steady state nothing is
/// allocated (fresh allocations of this size cost page faults).
struct ReadBuffers {
    current: BytesMut,
    /// The previous buffer (emptied), kept to be reclaimed when its payloads are gone.
    spare: BytesMut,
}

impl ReadBuffers {
    fn new() -> Self {
        Self { current: BytesMut::with_capacity(READ_CHUNK), spare: BytesMut::new() }
    }

    /// Makes room for the rest of a frame of `frame_len` bytes (header included) whose
    /// first bytes are in `current`, and for at least [`READ_CHUNK`] per read. Room
    /// beyond [`READ_BUFFER`] grows with the bytes actually received (a bare header
    /// claiming a 4 MiB frame must not make us allocate 4 MiB).
    fn make_room(&mut self, frame_len: usize) {
        let rest = frame_len.saturating_sub(self.current.len());
        let need = rest.min(READ_BUFFER.max(self.current.len())).max(READ_CHUNK);
        if self.current.capacity() - self.current.len() >= need {
            return;
        }
        let total = self.current.len() + need;
        // Reuse the current buffer in place (moving the partial frame to its front) if
        // nothing decoded from it is still held, else the spare one, else a new one.
        if self.current.try_reclaim(need) {
            return;
        }
        let mut next = std::mem::take(&mut self.spare);
        next.clear();
        if !next.try_reclaim(total) {
            next = BytesMut::with_capacity(total.max(READ_BUFFER));
        }
        next.extend_from_slice(&self.current);
        self.current.clear();
        self.spare = std::mem::replace(&mut self.current, next);
    }
}

pub(super) async fn read_loop<R: AsyncRead + Unpin>(inner: Arc<Inner>, rd: R, tx: mpsc::Sender<Bytes>) {
    let mut rd = rd;
    let decoder = FrameDecoder::default();
    let mut bufs = ReadBuffers::new();
    loop {
        let buf = &mut bufs.current;
        loop {
            match decoder.decode_split(buf) {
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
        bufs.make_room(FrameDecoder::frame_len(&bufs.current));
        let buf = &mut bufs.current;
        // At most one chunk per read, even into a large buffer: the reader decodes (and
        // may stop, for backpressure) after each read, so it never holds more than
        // this much unread data beyond a stalled frame.
        let n = match rd.read_buf(&mut buf.limit(READ_CHUNK)).await {
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
