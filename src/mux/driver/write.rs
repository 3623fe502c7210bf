//! The write role ([`WriteIo`]) and the writer task.

use super::*;

/// The write half, with what has been encoded for it but not yet written.
///
/// Writing is a role, taken under the shared lock ([`Shared::io_busy`]) by the writer
/// task, or by an application task writing a large stream chunk when nobody else is
/// writing: that task then encrypts and sends its data itself, without a copy and without
/// waking the writer (the raw TLS stream's cost). The holder writes everything queued
/// before its own frame, so frames keep their order. Before giving the role up it looks
/// for work queued meanwhile; an application task that cannot finish (socket full) leaves
/// the rest here and wakes the writer task, which keeps the role while it waits.
pub(super) struct WriteIo {
    pub(super) io: Pin<Box<dyn AsyncWrite + Send>>,
    /// Encoded bytes not yet accepted by `io`, in order: runs of headers and small frames
    /// split off `small`, and large payloads shared with their `Bytes`, never copied.
    pub(super) segs: VecDeque<Bytes>,
    /// Where headers, control frames and small payloads are encoded, so that they share
    /// TLS records instead of becoming records of their own.
    pub(super) small: BytesMut,
    /// Bytes went into `io` since it was last flushed.
    pub(super) dirty: bool,
    pub(super) control: Vec<Frame>,
    pub(super) batch: VecDeque<Out>,
}

impl WriteIo {
    pub(super) fn new(io: Pin<Box<dyn AsyncWrite + Send>>) -> Self {
        Self {
            io,
            segs: VecDeque::new(),
            small: BytesMut::with_capacity(SMALL_BUFFER),
            dirty: false,
            control: Vec::new(),
            batch: VecDeque::new(),
        }
    }

    /// Whether encoded bytes or an unflushed stream are left for the next holder.
    pub(super) fn has_pending(&self) -> bool {
        !self.segs.is_empty() || !self.small.is_empty() || self.dirty
    }

    /// Takes everything queued in `sh` (unordered control first); true if anything was.
    pub(super) fn collect(&mut self, sh: &mut Shared) -> bool {
        if let Some(nonce) = sh.pong.take() {
            self.control.push(Frame::Control(Control::Pong { nonce }));
        }
        if let Some(nonce) = sh.ping.take() {
            self.control.push(Frame::Control(Control::Ping { nonce }));
        }
        while let Some(f) = sh.state.poll_transmit() {
            self.control.push(f);
        }
        if !sh.out.is_empty() {
            std::mem::swap(&mut sh.out, &mut self.batch);
            sh.out_bytes = 0;
            sh.blocked.drain(..).for_each(Waker::wake);
        }
        !self.control.is_empty() || !self.batch.is_empty()
    }

    /// Encodes what [`collect`](Self::collect) took (outside the shared lock).
    pub(super) fn encode_queued(&mut self) {
        let mut control = std::mem::take(&mut self.control);
        let mut batch = std::mem::take(&mut self.batch);
        for f in control.drain(..).map(Out::Frame).chain(batch.drain(..)) {
            self.encode(f);
        }
        // Keep the allocations for the next round.
        self.control = control;
        self.batch = batch;
        self.seal();
    }

    pub(super) fn encode(&mut self, f: Out) {
        let f = match f {
            Out::Frame(f) => f,
            Out::Parts(head, body) => {
                encode_header(FrameType::Message, head.len() + body.len(), &mut self.small);
                self.small.extend_from_slice(&head);
                self.payload(body);
                return;
            }
        };
        match f {
            Frame::Message(m) => {
                encode_header(FrameType::Message, m.len(), &mut self.small);
                self.payload(m);
            }
            Frame::StreamData { id, data } => {
                encode_header(FrameType::StreamData, data.len() + 4, &mut self.small);
                self.small.put_u32(id);
                self.payload(data);
            }
            other => {
                // Control frames are small and always within bounds; an encoding error
                // would be our bug, so drop that frame rather than the connection.
                if let Err(e) = encode_frame(&other, &mut self.small) {
                    tracing::warn!("dropping unencodable frame: {e}");
                }
            }
        }
    }

    pub(super) fn payload(&mut self, data: Bytes) {
        if data.len() < COPY_MAX {
            self.small.extend_from_slice(&data);
        } else {
            self.seal();
            self.segs.push_back(data);
        }
    }

    /// Ends the current run of small bytes, so that what follows goes after it.
    pub(super) fn seal(&mut self) {
        if !self.small.is_empty() {
            self.segs.push_back(self.small.split().freeze());
        }
    }

    /// Drops `n` written bytes from the front of `segs`.
    pub(super) fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segs.front_mut() else { return };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.segs.pop_front();
        }
    }

    /// Writes `segs`, then `tail[*done..]`, advancing `done` over the bytes of `tail`
    /// written; ready when all of it is in `io` (not necessarily flushed).
    pub(super) fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        tail: &[u8],
        done: &mut usize,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            let mut from_segs = 0;
            for seg in self.segs.iter().take(MAX_IOVECS) {
                slices[count] = io::IoSlice::new(seg);
                from_segs += seg.len();
                count += 1;
            }
            if count < MAX_IOVECS && count == self.segs.len() && *done < tail.len() {
                slices[count] = io::IoSlice::new(&tail[*done..]);
                count += 1;
            }
            if count == 0 {
                return Poll::Ready(Ok(()));
            }
            let n = match self.io.as_mut().poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.dirty = true;
            self.advance(n.min(from_segs));
            *done += n.saturating_sub(from_segs);
        }
    }

    /// Writes and flushes everything queued, for the holder of the write role. Ready
    /// once nothing is left, with the role released; pending (role kept) while the
    /// socket is full. Batches are gathered until [`WRITE_COALESCE`] bytes or an empty
    /// queue before they are written, so that a trickle of small frames still makes
    /// full TLS records and few system calls.
    pub(super) fn poll_run(&mut self, inner: &Inner, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Write a full gathering before taking more (also when woken with the socket
            // writable again), so at most one queue's worth waits here beyond it.
            if self.segs.iter().map(Bytes::len).sum::<usize>() >= WRITE_COALESCE {
                std::task::ready!(self.poll_write_with(cx, &[], &mut 0))?;
            }
            let took = {
                let mut sh = inner.lock();
                let took = self.collect(&mut sh);
                if !took && !self.has_pending() {
                    sh.release_io(false);
                    return Poll::Ready(Ok(()));
                }
                took
            };
            if took {
                self.encode_queued();
                continue;
            }
            // The queue is momentarily empty: write everything and flush.
            std::task::ready!(self.poll_write_with(cx, &[], &mut 0))?;
            std::task::ready!(self.io.as_mut().poll_flush(cx))?;
            self.dirty = false;
        }
    }

    /// Writes what is left and the close frame, flushes and shuts the write half down.
    pub(super) fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        frame: &mut Option<Control>,
    ) -> Poll<io::Result<()>> {
        if let Some(frame) = frame.take() {
            self.encode(Out::Frame(Frame::Control(frame)));
            self.seal();
        }
        std::task::ready!(self.poll_write_with(cx, &[], &mut 0))?;
        std::task::ready!(self.io.as_mut().poll_flush(cx))?;
        self.dirty = false;
        self.io.as_mut().poll_shutdown(cx)
    }
}

pub(super) async fn write_loop(inner: Arc<Inner>) {
    loop {
        // Wait for work (or the close) and take the write role.
        let closing = std::future::poll_fn(|cx| {
            let mut sh = inner.lock();
            if !sh.io_busy {
                if sh.io_pending || sh.has_work() {
                    sh.io_busy = true;
                    return Poll::Ready(false);
                }
                if sh.cause.is_some() {
                    sh.io_busy = true;
                    return Poll::Ready(true);
                }
            }
            // Idle, or an application task holds the role: it wakes us if it leaves work.
            sh.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if closing {
            let mut frame = inner.lock().close_frame.take();
            let _ = std::future::poll_fn(|cx| inner.lock_io().poll_close(cx, &mut frame)).await;
            return;
        }
        let result = std::future::poll_fn(|cx| {
            let mut w = inner.lock_io();
            w.encode_queued();
            w.poll_run(&inner, cx)
        })
        .await;
        if let Err(e) = result {
            inner.write_failed(&e);
            return;
        }
    }
}
