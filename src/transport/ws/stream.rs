//! [`WsStream`]: a WebSocket connection as a plain byte stream (`AsyncRead + AsyncWrite`).
//!
//! Bytes travel in binary messages (see `docs/ws-binding.md`):
//!
//! * **writes** are coalesced into messages of at most [`MAX_CHUNK`] bytes; a message is
//!   handed to tungstenite when it is full or on `poll_flush`, and tungstenite's own buffer
//!   is flushed only on `poll_flush` (feeding then flushing once is ~20× faster than one
//!   `send` per message);
//! * **reads** drain one message at a time, so at most one message is buffered here;
//! * a **text** message, or any other misuse by the peer, is an `InvalidData` error (after
//!   a best-effort close frame); a **close** frame is the end of the stream;
//! * **keep-alive**: while the reader waits for data, a ping goes out after
//!   `keep_alive_interval` of silence, and the stream fails with `TimedOut` once nothing
//!   at all (data, ping or pong) has arrived for `idle_timeout`.
//!
//! # Who drives what
//!
//! The keep-alive is driven by `poll_read`: a stream whose reader is not polled sends no
//! pings and detects nothing (its peer's pings are also only answered while reading —
//! that is how tungstenite works). The idle clock only runs while the reader waits: when
//! the reader comes back after returning data it restarts, so an application that stops
//! reading for a while (backpressure) is never mistaken for a dead peer. The Kizuna
//! multiplexer always has a reader polling, and so does a relay forwarding loop.
//!
//! # Reader and writer in two tasks
//!
//! `tokio::io::split` serializes the halves, but tungstenite keeps one waker per direction
//! and a flush from the reader (to push out a ping) replaces the writer's. The stream
//! therefore remembers the writer's waker, never flushes from the reader while the writer
//! is itself waiting on the socket (its flush carries the ping too), and wakes the writer
//! after borrowing its slot so that it registers again.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};
use tokio_tungstenite::{
    tungstenite::{
        error::ProtocolError,
        protocol::{frame::coding::CloseCode as WsCloseCode, CloseFrame, WebSocketConfig},
        Error as WsError, Message,
    },
    WebSocketStream,
};

use super::WsOptions;

/// Largest payload this side puts in one binary message: 64 KiB. Big enough that per
/// message costs (a 2–14 byte header, masking setup, one tungstenite call) vanish next to
/// the payload, small enough that a relay buffering one message per circuit stays cheap.
/// Receivers accept a little more, see [`WsOptions::max_message_size`].
pub const MAX_CHUNK: usize = 64 * 1024;

/// Default limit on one received message (and frame): a full [`MAX_CHUNK`] plus 1 KiB.
/// The slack leaves room for a protocol that wraps a full chunk in a small header (the
/// relay's circuit frames) without another limit; anything larger is a peer breaking the
/// binding, and tungstenite refuses it before buffering it.
pub const DEFAULT_MAX_MESSAGE: usize = MAX_CHUNK + 1024;

/// Bytes tungstenite reads from the socket at a time, allocated once per connection.
/// 64 KiB: one full message per read at bulk rates; tungstenite's default (128 KiB)
/// doubles the memory of every idle relay connection for no measurable gain here.
const READ_BUFFER: usize = 64 * 1024;

/// Bytes tungstenite buffers before writing to the socket without a flush. 64 KiB: a full
/// chunk goes out at once (no extra copy waiting for company), small messages wait for
/// `poll_flush`.
const WRITE_BUFFER: usize = 64 * 1024;

/// How far tungstenite's write buffer may grow past [`WRITE_BUFFER`]: the buffer only
/// exceeds its target while the socket is full, and the adapter then waits for it to
/// drain before handing over another message, so one message, a pong, a close and a ping
/// (each under 200 bytes) are all that can be added. Twice a message keeps that true with
/// margin; a breach would be a bug and surfaces as an error, never as growth.
const WRITE_BUFFER_SLACK: usize = 2 * (MAX_CHUNK + 1024);

/// Longest close reason: a close frame's payload is at most 125 bytes (RFC 6455 §5.5),
/// two of which are the status code.
const MAX_CLOSE_REASON: usize = 123;

/// Reason sent in the close frame when the peer sends a text message.
const TEXT_REFUSED: &str = "Kizuna carries only binary messages";

/// tungstenite's configuration for a Kizuna byte stream with these options.
pub(super) fn ws_config(opts: &WsOptions) -> WebSocketConfig {
    let max = opts.max_message_size.max(1);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + WRITE_BUFFER_SLACK.max(2 * max))
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// A WebSocket connection carrying a byte stream in binary messages, with ping/pong
/// keep-alive and dead-peer detection. Made by [`ws_connect`](super::ws_connect) or
/// [`ws_accept`](super::ws_accept).
///
/// Reading yields the payload bytes of binary messages in order; `Ok(0)` after the peer's
/// close frame. Writing coalesces into messages of up to [`MAX_CHUNK`] bytes; call
/// `flush` to send what is buffered. `shutdown` flushes and sends a close frame (a
/// WebSocket cannot be half-closed: after it, nothing more can be written).
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    read_buf: Bytes,
    read_eof: bool,
    /// Bytes written but not yet handed to tungstenite, at most `MAX_CHUNK`.
    write_buf: BytesMut,
    keep_alive: KeepAlive,
    /// The writer's waker while it waits on tungstenite (see the module docs).
    writer_waker: Option<Waker>,
    writer_blocked: bool,
    /// A ping was queued by the reader but its flush did not complete.
    ping_unflushed: bool,
    /// Request path, on the server side.
    path: Option<String>,
}

impl<S> fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsStream")
            .field("buffered_in", &self.read_buf.len())
            .field("buffered_out", &self.write_buf.len())
            .field("eof", &self.read_eof)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The ping schedule and the idle clock.
struct KeepAlive {
    interval: Duration,
    idle: Duration,
    last_heard: Instant,
    last_ping: Instant,
    nonce: u64,
    /// The reader last returned data; its next poll restarts the idle clock.
    reader_away: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
    armed_for: Option<Instant>,
}

/// What the keep-alive asks of the reader.
enum Due {
    Nothing,
    Ping(u64),
    Dead,
}

impl KeepAlive {
    fn new(interval: Duration, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            interval,
            idle,
            last_heard: now,
            last_ping: now,
            nonce: 0,
            reader_away: false,
            timer: Box::pin(tokio::time::sleep_until(now)),
            armed_for: None,
        }
    }

    /// What is due at `now`, and arms the timer for what comes next.
    fn poll(&mut self, mut now: Instant, cx: &mut Context<'_>) -> Due {
        loop {
            if !self.idle.is_zero() && now.saturating_duration_since(self.last_heard) >= self.idle {
                return Due::Dead;
            }
            let ping_at =
                (!self.interval.is_zero()).then(|| self.last_heard.max(self.last_ping) + self.interval);
            if let Some(at) = ping_at {
                if now >= at {
                    self.last_ping = now;
                    self.nonce = self.nonce.wrapping_add(1);
                    return Due::Ping(self.nonce);
                }
            }
            let dead_at = (!self.idle.is_zero()).then(|| self.last_heard + self.idle);
            let next = match (ping_at, dead_at) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return Due::Nothing,
            };
            if self.armed_for != Some(next) {
                self.timer.as_mut().reset(next);
                self.armed_for = Some(next);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Due::Nothing,
                // The deadline passed while arming: evaluate again. The timer's word is
                // final, so the clock is taken as at least the deadline (no spinning).
                Poll::Ready(()) => {
                    self.armed_for = None;
                    now = Instant::now().max(next);
                }
            }
        }
    }
}

fn ws_io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket connection already closed")
        }
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "WebSocket peer closed the connection without a close frame",
        ),
        WsError::Protocol(p) => {
            io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket protocol: {p}"))
        }
        WsError::Capacity(c) => io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket limit: {c}")),
        other => io::Error::other(format!("WebSocket: {other}")),
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps a WebSocket whose handshake completed (with the `kizuna` subprotocol).
    pub(super) fn new(ws: WebSocketStream<S>, opts: &WsOptions, path: Option<String>) -> Self {
        Self {
            ws,
            read_buf: Bytes::new(),
            read_eof: false,
            write_buf: BytesMut::new(),
            keep_alive: KeepAlive::new(opts.keep_alive_interval, opts.idle_timeout),
            writer_waker: None,
            writer_blocked: false,
            ping_unflushed: false,
            path,
        }
    }

    /// The path the client asked for in its upgrade request (e.g. `/` or `/relay`), on
    /// streams made by [`ws_accept`](super::ws_accept); `None` on the client side.
    pub fn request_path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The transport under the WebSocket (TCP or TLS stream).
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// Hands the write buffer to tungstenite as one binary message.
    fn poll_emit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_ws_write(cx, |ws, cx| ws.poll_ready_unpin(cx)))?;
        let chunk = self.write_buf.split().freeze();
        self.ws.start_send_unpin(Message::Binary(chunk)).map_err(ws_io_error)?;
        Poll::Ready(Ok(()))
    }

    /// Runs a write-side tungstenite poll for the writer, tracking whether it waits.
    fn poll_ws_write(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut WebSocketStream<S>, &mut Context<'_>) -> Poll<Result<(), WsError>>,
    ) -> Poll<io::Result<()>> {
        match f(&mut self.ws, cx) {
            Poll::Pending => {
                self.writer_blocked = true;
                self.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Poll::Ready(r) => {
                self.writer_blocked = false;
                self.writer_waker = None;
                // A writer's flush also carried any ping the reader queued.
                self.ping_unflushed = false;
                Poll::Ready(r.map_err(ws_io_error))
            }
        }
    }

    /// Flushes tungstenite's buffer from the reader (for a ping), unless the writer is
    /// already waiting to do so. Errors are left for the next read or write to find.
    fn reader_flush(&mut self, cx: &mut Context<'_>) {
        if self.writer_blocked {
            // The writer's pending flush sends the ping as well.
            self.ping_unflushed = false;
            return;
        }
        match self.ws.poll_flush_unpin(cx) {
            Poll::Pending => {
                self.ping_unflushed = true;
                // We took the writer's waker slot: let it poll again and take it back.
                if let Some(w) = self.writer_waker.take() {
                    w.wake();
                }
            }
            Poll::Ready(_) => self.ping_unflushed = false,
        }
    }

    /// Fails the stream because the peer broke the binding, telling it why if possible.
    fn refuse(&mut self, cx: &mut Context<'_>, code: WsCloseCode, reason: &'static str) -> io::Error {
        let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        if self.ws.start_send_unpin(close).is_ok() {
            self.reader_flush(cx);
        }
        self.read_eof = true;
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket peer broke the Kizuna binding: {reason}"),
        )
    }

    fn keep_alive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.ping_unflushed {
            self.reader_flush(cx);
        }
        match self.keep_alive.poll(Instant::now(), cx) {
            Due::Nothing => Ok(()),
            Due::Dead => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "WebSocket peer silent for {:?} (no data, ping or pong): connection presumed dead",
                    self.keep_alive.idle
                ),
            )),
            Due::Ping(nonce) => {
                let ping = Message::Ping(Bytes::copy_from_slice(&nonce.to_be_bytes()));
                // A failed ping (e.g. we are closing) is not an error of the read side;
                // the idle clock decides.
                if self.ws.start_send_unpin(ping).is_ok() {
                    self.reader_flush(cx);
                }
                // Re-arm the timer for the next deadline.
                self.keep_alive(cx)
            }
        }
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The next non-empty binary message (keep-alive included); `None` after the peer's
    /// close frame or end of stream.
    fn poll_next_binary(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if self.read_eof {
            return Poll::Ready(Ok(None));
        }
        if std::mem::take(&mut self.keep_alive.reader_away) {
            self.keep_alive.last_heard = self.keep_alive.last_heard.max(Instant::now());
        }
        loop {
            match self.ws.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(msg))) => {
                    self.keep_alive.last_heard = Instant::now();
                    match msg {
                        Message::Binary(data) => {
                            if data.is_empty() {
                                continue;
                            }
                            self.keep_alive.reader_away = true;
                            return Poll::Ready(Ok(Some(data)));
                        }
                        // tungstenite queued the pong; the next poll_next sends it.
                        Message::Ping(_) | Message::Pong(_) => continue,
                        Message::Close(_) => {
                            self.read_eof = true;
                            return Poll::Ready(Ok(None));
                        }
                        Message::Text(_) => {
                            return Poll::Ready(Err(self.refuse(cx, WsCloseCode::Unsupported, TEXT_REFUSED)))
                        }
                        // Raw frames are only ever produced by writers, never by read.
                        Message::Frame(_) => {
                            return Poll::Ready(Err(self.refuse(
                                cx,
                                WsCloseCode::Protocol,
                                "unexpected raw frame",
                            )))
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.read_eof = true;
                    return Poll::Ready(Err(ws_io_error(e)));
                }
                Poll::Ready(None) => {
                    self.read_eof = true;
                    return Poll::Ready(Ok(None));
                }
                Poll::Pending => {
                    return match self.keep_alive(cx) {
                        Ok(()) => Poll::Pending,
                        Err(e) => {
                            self.read_eof = true;
                            Poll::Ready(Err(e))
                        }
                    };
                }
            }
        }
    }

    /// Message mode: receives one whole binary message (as the relay protocol's control
    /// phase needs); `Ok(None)` once the peer closed. Do not mix with byte reads that
    /// left part of a message unread (that remainder is returned first, as one message).
    pub async fn recv_message(&mut self) -> io::Result<Option<Bytes>> {
        if !self.read_buf.is_empty() {
            return Ok(Some(std::mem::take(&mut self.read_buf)));
        }
        std::future::poll_fn(|cx| self.poll_next_binary(cx)).await
    }

    /// Message mode: sends `data` as one binary message and flushes it (bytes written
    /// before are flushed first, as their own message).
    pub async fn send_message(&mut self, data: Bytes) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.flush().await?;
        std::future::poll_fn(|cx| self.poll_ws_write(cx, |ws, cx| ws.poll_ready_unpin(cx))).await?;
        self.ws.start_send_unpin(Message::Binary(data)).map_err(ws_io_error)?;
        std::future::poll_fn(|cx| self.poll_ws_write(cx, |ws, cx| ws.poll_flush_unpin(cx))).await
    }
    /// Message mode: flushes what is buffered, then sends a close frame with status
    /// `code` and `reason` (cut to the 123 bytes a close frame allows, at a character
    /// boundary) and flushes it. Nothing can be sent afterwards; the caller drops the
    /// stream (or reads until the peer's close) to end the connection. The relay uses it
    /// to close with its typed codes (4000 + error code).
    pub async fn close_with(&mut self, code: u16, reason: &str) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.flush().await?;
        let mut cut = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let frame = CloseFrame { code: WsCloseCode::from(code), reason: reason[..cut].to_owned().into() };
        std::future::poll_fn(|cx| self.poll_ws_write(cx, |ws, cx| ws.poll_ready_unpin(cx))).await?;
        self.ws.start_send_unpin(Message::Close(Some(frame))).map_err(ws_io_error)?;
        std::future::poll_fn(|cx| self.poll_ws_write(cx, |ws, cx| ws.poll_flush_unpin(cx))).await
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.read_buf.is_empty() {
            match std::task::ready!(this.poll_next_binary(cx))? {
                Some(data) => this.read_buf = data,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.read_buf.len().min(buf.remaining());
        buf.put_slice(&this.read_buf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_buf.len() >= MAX_CHUNK {
            std::task::ready!(this.poll_emit(cx))?;
        }
        let n = buf.len().min(MAX_CHUNK - this.write_buf.len());
        if this.write_buf.capacity() == 0 {
            this.write_buf.reserve(MAX_CHUNK);
        }
        this.write_buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_emit(cx))?;
        this.poll_ws_write(cx, |ws, cx| ws.poll_flush_unpin(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_emit(cx))?;
        this.poll_ws_write(cx, |ws, cx| ws.poll_close_unpin(cx))
    }
}
