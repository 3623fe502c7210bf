//! The sans-IO core of the multiplexer: stream table, ids, flow-control windows and the
//! stream state rules. No sockets, no clock, no async: the driver feeds it frames and
//! application calls, and sends what it returns.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::wire::Frame;

/// Receive credit every stream starts with in each direction, before any
/// `StreamWindow`. A protocol constant rather than a setting, so two nodes with different
/// `stream_window` settings agree on it; each side then grows its receive window to its
/// configured size with one `StreamWindow` right after the open. 256 KiB, yamux's initial
/// window: enough for small request/response streams to never wait for a window update.
pub const INITIAL_STREAM_CREDIT: u32 = 256 * 1024;

/// Largest payload of one `StreamData` frame. 64 KiB: large enough that the 9 bytes of
/// framing are noise and TLS records stay full, small enough that one stream cannot hog
/// the connection's writer for long.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// `StreamReset` code: the local handle was dropped before the stream finished.
pub const RESET_CANCELLED: u32 = 0;
/// `StreamReset` code: the stream was refused (too many streams, or accept backlog full).
pub const RESET_REFUSED: u32 = 1;

/// Largest send credit a peer may grant on one stream. Windows are u32; anything beyond
/// one full u32 window outstanding is a broken or hostile peer.
const MAX_SEND_CREDIT: u64 = u32::MAX as u64;

/// A protocol violation by the peer detected by the stream multiplexer. Any of these
/// closes the whole connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// The peer sent more bytes on a stream than the credit it was granted.
    #[error("stream {id}: peer sent {len} bytes with only {credit} bytes of credit")]
    CreditExceeded {
        /// Stream id.
        id: u32,
        /// Bytes in the offending frame.
        len: usize,
        /// Credit the peer had left.
        credit: u64,
    },
    /// A frame named a stream that was never opened.
    #[error("{frame} frame on unknown stream {id}")]
    UnknownStream {
        /// Stream id.
        id: u32,
        /// Frame kind.
        frame: &'static str,
    },
    /// A frame arrived on a stream whose sending side the peer had already finished or
    /// reset.
    #[error("{frame} frame on stream {id}, which the peer already closed")]
    ClosedStream {
        /// Stream id.
        id: u32,
        /// Frame kind.
        frame: &'static str,
    },
    /// The peer opened a stream id it had already used, a lower one, or one of our
    /// parity.
    #[error("stream open with invalid or reused id {id}")]
    BadOpen {
        /// Stream id.
        id: u32,
    },
    /// The peer granted credit past the largest window.
    #[error("stream {id}: window update overflows the send credit")]
    WindowOverflow {
        /// Stream id.
        id: u32,
    },
    /// The peer keeps opening streams without answering the resets that refused them.
    #[error("more than {max} refused or reset streams awaiting the peer's acknowledgement")]
    TooManyPendingResets {
        /// The bound.
        max: usize,
    },
}

/// Why a local stream operation cannot proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamClosed {
    /// This side already finished (or reset) its sending half.
    Finished,
    /// The peer reset the stream with this code.
    Reset(u32),
    /// The stream is not in the table (a bug in the caller or a closed connection).
    Unknown,
}

/// What [`MuxState::read`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were copied.
    Data(usize),
    /// The peer finished the stream and every byte was read.
    Eof,
    /// The peer reset the stream with this code.
    Reset(u32),
    /// Nothing buffered yet: wait for [`Event::Readable`].
    Blocked,
    /// The stream is not in the table.
    Unknown,
}

/// What an inbound stream frame changed, for the driver to wake the right task.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Nothing the application waits on changed.
    None,
    /// The peer opened a stream; it is queued for [`MuxState::poll_accept`].
    Accept(u32),
    /// Data or end-of-stream became readable on the stream.
    Readable(u32),
    /// Send credit became available on the stream.
    Writable(u32),
    /// The peer reset the stream. If `echo` is set, the driver must send it *after* any
    /// data it already queued for this stream, so that the peer, which waits for it,
    /// knows no more data follows.
    Reset {
        /// Stream id.
        id: u32,
        /// The peer's reset code.
        code: u32,
        /// Our acknowledging reset, if one is owed.
        echo: Option<Frame>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecvState {
    /// The peer may send data.
    Open,
    /// The peer sent `StreamFin`.
    Finished,
    /// The peer sent `StreamReset` with this code.
    Reset(u32),
    /// We reset (or refused) the stream and wait for the peer's `StreamFin` or
    /// `StreamReset`; data still in flight is discarded (but credit-checked).
    Discarding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendState {
    Open,
    Finished,
    Reset,
}

#[derive(Debug)]
struct Stream {
    recv: RecvState,
    send: SendState,
    /// Whether an application handle (or the accept queue) still refers to the stream.
    handle: bool,
    buf: VecDeque<Bytes>,
    buffered: usize,
    /// Bytes the peer may still send before we grant more.
    peer_credit: u64,
    /// Bytes the application consumed that we have not re-granted yet.
    unreported: u64,
    /// Bytes we may still send.
    send_credit: u64,
}

impl Stream {
    fn new(send_credit: u64) -> Self {
        Self {
            recv: RecvState::Open,
            send: SendState::Open,
            handle: true,
            buf: VecDeque::new(),
            buffered: 0,
            peer_credit: INITIAL_STREAM_CREDIT as u64,
            unreported: 0,
            send_credit,
        }
    }

    #[cfg(test)]
    fn is_tombstone(&self) -> bool {
        self.recv == RecvState::Discarding && !self.handle
    }

    /// No frame can concern this stream any more and nobody holds it.
    fn is_done(&self) -> bool {
        !self.handle
            && self.send != SendState::Open
            && matches!(self.recv, RecvState::Finished | RecvState::Reset(_))
    }
}

/// Limits of a [`MuxState`].
#[derive(Clone, Copy, Debug)]
pub struct StateConfig {
    /// Receive window per stream, in bytes (at least [`INITIAL_STREAM_CREDIT`]).
    pub window: u32,
    /// Maximum concurrently open streams, both directions together.
    pub max_streams: usize,
    /// Maximum peer-opened streams waiting in the accept queue.
    pub accept_backlog: usize,
}

/// The stream table of one multiplexed connection.
///
/// Stream ids: the dialer opens odd ids (1, 3, ...), the listener even ids (2, 4, ...),
/// each strictly increasing, never reused. Each direction of a stream has a credit of
/// [`INITIAL_STREAM_CREDIT`] at open, raised to the receiver's window by `StreamWindow`;
/// the receiver re-grants consumed bytes once they reach half its window, so a stream
/// never buffers more than one window. Closing: `StreamFin` ends one direction;
/// `StreamReset` aborts both, and the side receiving a reset for a stream it still sends
/// on answers with a reset, so the resetting side knows when in-flight data has ended.
#[derive(Debug)]
pub struct MuxState {
    dialer: bool,
    config: StateConfig,
    next_local: u32,
    /// Highest id the peer opened (0: none yet).
    max_remote: u32,
    streams: HashMap<u32, Stream>,
    /// Live (non-tombstone) streams.
    live: usize,
    tombstones: usize,
    accept: VecDeque<u32>,
    /// Streams with credit to (re)grant, in order of need.
    grants: VecDeque<u32>,
    /// Refusals to send (unordered control frames).
    refusals: VecDeque<u32>,
}

impl MuxState {
    /// An empty table; `dialer` picks the parity of locally opened ids.
    pub fn new(dialer: bool, config: StateConfig) -> Self {
        let config = StateConfig { window: config.window.max(INITIAL_STREAM_CREDIT), ..config };
        Self {
            dialer,
            config,
            next_local: if dialer { 1 } else { 2 },
            max_remote: 0,
            streams: HashMap::new(),
            live: 0,
            tombstones: 0,
            accept: VecDeque::new(),
            grants: VecDeque::new(),
            refusals: VecDeque::new(),
        }
    }

    /// The effective receive window per stream.
    pub fn window(&self) -> u32 {
        self.config.window
    }

    /// Number of open streams (not counting reset streams awaiting acknowledgement).
    pub fn open_streams(&self) -> usize {
        self.live
    }

    fn is_local(&self, id: u32) -> bool {
        (id % 2 == 1) == self.dialer
    }

    fn ever_opened(&self, id: u32) -> bool {
        id != 0 && if self.is_local(id) { id < self.next_local } else { id <= self.max_remote }
    }

    /// The extra credit that raises a new stream's window from the initial one.
    fn extension(&self) -> u32 {
        self.config.window - INITIAL_STREAM_CREDIT
    }

    /// Opens a stream. Returns its id and the frames to send, in order, before any data
    /// on it.
    pub fn open(&mut self) -> Result<(u32, Vec<Frame>), crate::error::TransportError> {
        if self.live >= self.config.max_streams {
            return Err(crate::error::TransportError::LimitExceeded {
                limit: "concurrent streams per connection",
                max: self.config.max_streams as u64,
                attempted: self.live as u64 + 1,
            });
        }
        let id = self.next_local;
        let Some(next) = id.checked_add(2) else {
            return Err(crate::error::TransportError::LimitExceeded {
                limit: "stream ids per connection",
                max: u32::MAX as u64,
                attempted: id as u64 + 2,
            });
        };
        self.next_local = next;
        let mut stream = Stream::new(INITIAL_STREAM_CREDIT as u64);
        let mut frames = vec![Frame::StreamOpen { id }];
        let ext = self.extension();
        if ext > 0 {
            stream.peer_credit += ext as u64;
            frames.push(Frame::StreamWindow { id, credit: ext });
        }
        self.streams.insert(id, stream);
        self.live += 1;
        Ok((id, frames))
    }

    /// Handles one inbound stream frame (`StreamOpen`, `StreamData`, `StreamWindow`,
    /// `StreamFin`, `StreamReset`); other frames are ignored. An error means the peer
    /// broke the protocol and the connection must close.
    pub fn handle_frame(&mut self, frame: Frame) -> Result<Event, MuxError> {
        match frame {
            Frame::StreamOpen { id } => self.on_open(id),
            Frame::StreamData { id, data } => self.on_data(id, data),
            Frame::StreamWindow { id, credit } => self.on_window(id, credit),
            Frame::StreamFin { id } => self.on_fin(id),
            Frame::StreamReset { id, code } => self.on_reset(id, code),
            _ => Ok(Event::None),
        }
    }

    fn on_open(&mut self, id: u32) -> Result<Event, MuxError> {
        if id == 0 || self.is_local(id) || id <= self.max_remote {
            return Err(MuxError::BadOpen { id });
        }
        self.max_remote = id;
        if self.live >= self.config.max_streams || self.accept.len() >= self.config.accept_backlog {
            // Refuse: keep a tombstone to absorb data already in flight.
            let mut s = Stream::new(0);
            s.recv = RecvState::Discarding;
            s.send = SendState::Reset;
            s.handle = false;
            self.streams.insert(id, s);
            self.add_tombstone()?;
            self.refusals.push_back(id);
            return Ok(Event::None);
        }
        let mut s = Stream::new(INITIAL_STREAM_CREDIT as u64);
        let ext = self.extension();
        if ext > 0 {
            s.unreported = ext as u64;
            self.grants.push_back(id);
        }
        self.streams.insert(id, s);
        self.live += 1;
        self.accept.push_back(id);
        Ok(Event::Accept(id))
    }

    fn add_tombstone(&mut self) -> Result<(), MuxError> {
        self.tombstones += 1;
        if self.tombstones > self.config.max_streams {
            return Err(MuxError::TooManyPendingResets { max: self.config.max_streams });
        }
        Ok(())
    }

    fn unknown_or_closed(&self, id: u32, frame: &'static str) -> MuxError {
        if self.ever_opened(id) {
            MuxError::ClosedStream { id, frame }
        } else {
            MuxError::UnknownStream { id, frame }
        }
    }

    fn on_data(&mut self, id: u32, data: Bytes) -> Result<Event, MuxError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(self.unknown_or_closed(id, "stream-data"));
        };
        let len = data.len();
        match s.recv {
            RecvState::Open | RecvState::Discarding => {}
            RecvState::Finished | RecvState::Reset(_) => {
                return Err(MuxError::ClosedStream { id, frame: "stream-data" })
            }
        }
        if len as u64 > s.peer_credit {
            return Err(MuxError::CreditExceeded { id, len, credit: s.peer_credit });
        }
        s.peer_credit -= len as u64;
        if s.recv == RecvState::Discarding || len == 0 {
            return Ok(Event::None);
        }
        s.buffered += len;
        s.buf.push_back(data);
        Ok(Event::Readable(id))
    }

    fn on_window(&mut self, id: u32, credit: u32) -> Result<Event, MuxError> {
        let Some(s) = self.streams.get_mut(&id) else {
            // A grant racing with our close is normal; one for a stream never opened is not.
            return if self.ever_opened(id) {
                Ok(Event::None)
            } else {
                Err(MuxError::UnknownStream { id, frame: "stream-window" })
            };
        };
        let total = s.send_credit + credit as u64;
        if total > MAX_SEND_CREDIT {
            return Err(MuxError::WindowOverflow { id });
        }
        s.send_credit = total;
        if s.send == SendState::Open && credit > 0 {
            Ok(Event::Writable(id))
        } else {
            Ok(Event::None)
        }
    }

    fn on_fin(&mut self, id: u32) -> Result<Event, MuxError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(self.unknown_or_closed(id, "stream-fin"));
        };
        match s.recv {
            RecvState::Open => {
                s.recv = RecvState::Finished;
                self.maybe_remove(id);
                Ok(Event::Readable(id))
            }
            RecvState::Discarding => {
                self.remove(id);
                Ok(Event::None)
            }
            RecvState::Finished | RecvState::Reset(_) => {
                Err(MuxError::ClosedStream { id, frame: "stream-fin" })
            }
        }
    }

    fn on_reset(&mut self, id: u32, code: u32) -> Result<Event, MuxError> {
        let Some(s) = self.streams.get_mut(&id) else {
            // Answers to our resets may cross our close; a reset is always harmless.
            return if self.ever_opened(id) {
                Ok(Event::None)
            } else {
                Err(MuxError::UnknownStream { id, frame: "stream-reset" })
            };
        };
        match s.recv {
            RecvState::Discarding => {
                // The acknowledgement (or a crossing reset): nothing more will arrive.
                self.remove(id);
                return Ok(Event::None);
            }
            RecvState::Reset(_) => return Err(MuxError::ClosedStream { id, frame: "stream-reset" }),
            RecvState::Open | RecvState::Finished => {}
        }
        if s.recv == RecvState::Open {
            s.recv = RecvState::Reset(code);
            s.buf.clear();
            s.buffered = 0;
        }
        // A reset after the peer's own `StreamFin` only stops our sending (like QUIC's
        // STOP_SENDING): everything the peer sent before its FIN stays readable.
        let echo = if s.send == SendState::Open {
            s.send = SendState::Reset;
            Some(Frame::StreamReset { id, code })
        } else {
            None
        };
        self.maybe_remove(id);
        Ok(Event::Reset { id, code, echo })
    }

    /// The next peer-opened stream waiting to be accepted.
    pub fn poll_accept(&mut self) -> Option<u32> {
        self.accept.pop_front()
    }

    /// Copies buffered bytes of stream `id` into `dst`. After a read, call
    /// [`poll_transmit`](Self::poll_transmit): a window update may be due.
    pub fn read(&mut self, id: u32, dst: &mut [u8]) -> ReadOutcome {
        let mut n = 0;
        while n < dst.len() {
            match self.take(id, dst.len() - n) {
                Ok(chunk) => {
                    dst[n..n + chunk.len()].copy_from_slice(&chunk);
                    n += chunk.len();
                }
                Err(_) if n > 0 => break,
                Err(outcome) => return outcome,
            }
        }
        ReadOutcome::Data(n)
    }

    /// Takes up to `max` (> 0) buffered bytes of stream `id`, the front of one received
    /// chunk, without copying them (so that the caller can copy outside its lock); `Err`
    /// says why there are none. Window accounting as for [`read`](Self::read).
    pub fn take(&mut self, id: u32, max: usize) -> Result<Bytes, ReadOutcome> {
        let half = self.config.window as u64 / 2;
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(ReadOutcome::Unknown);
        };
        if let RecvState::Reset(code) = s.recv {
            return Err(ReadOutcome::Reset(code));
        }
        let Some(front) = s.buf.front_mut() else {
            return Err(match s.recv {
                RecvState::Open => ReadOutcome::Blocked,
                _ => ReadOutcome::Eof,
            });
        };
        let chunk =
            if front.len() <= max { s.buf.pop_front().unwrap_or_default() } else { front.split_to(max) };
        let n = chunk.len();
        s.buffered -= n;
        if s.recv == RecvState::Open {
            let was_queued = s.unreported >= half;
            s.unreported += n as u64;
            if !was_queued && s.unreported >= half {
                self.grants.push_back(id);
            }
        }
        Ok(chunk)
    }

    /// Bytes that may be sent on stream `id` right now (0: wait for
    /// [`Event::Writable`]).
    pub fn send_credit(&self, id: u32) -> Result<u64, StreamClosed> {
        let s = self.streams.get(&id).ok_or(StreamClosed::Unknown)?;
        if let RecvState::Reset(code) = s.recv {
            return Err(StreamClosed::Reset(code));
        }
        match s.send {
            SendState::Open => Ok(s.send_credit),
            _ => Err(StreamClosed::Finished),
        }
    }

    /// Takes `n` bytes (at most the credit) of data for stream `id` and returns the frame
    /// carrying them.
    pub fn send(&mut self, id: u32, data: Bytes) -> Result<Frame, StreamClosed> {
        self.consume_credit(id, data.len())?;
        Ok(Frame::StreamData { id, data })
    }

    /// Takes `len` bytes (at most the credit) of send credit on stream `id`, for data the
    /// caller frames and sends itself (in order with the stream's other frames).
    pub fn consume_credit(&mut self, id: u32, len: usize) -> Result<(), StreamClosed> {
        let credit = self.send_credit(id)?;
        if len as u64 > credit {
            return Err(StreamClosed::Unknown);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_credit -= len as u64;
        }
        Ok(())
    }

    /// Finishes the sending half of stream `id`; returns the `StreamFin` to send (in
    /// order after its data), or `None` if it was already finished.
    pub fn finish(&mut self, id: u32) -> Result<Option<Frame>, StreamClosed> {
        let s = self.streams.get_mut(&id).ok_or(StreamClosed::Unknown)?;
        if let RecvState::Reset(code) = s.recv {
            return Err(StreamClosed::Reset(code));
        }
        match s.send {
            SendState::Open => {
                s.send = SendState::Finished;
                Ok(Some(Frame::StreamFin { id }))
            }
            _ => Ok(None),
        }
    }

    /// The application dropped its handle to stream `id`. Returns the `StreamReset` to
    /// send (in order after its data) if the stream was not finished both ways.
    pub fn release(&mut self, id: u32) -> Option<Frame> {
        let s = self.streams.get_mut(&id)?;
        s.handle = false;
        s.buf.clear();
        s.buffered = 0;
        let peer_reset = matches!(s.recv, RecvState::Reset(_));
        let mut frame = None;
        if !peer_reset && (s.send == SendState::Open || s.recv == RecvState::Open) {
            frame = Some(Frame::StreamReset { id, code: RESET_CANCELLED });
            s.send = SendState::Reset;
        }
        if s.recv == RecvState::Open {
            // Wait for the peer's answer, discarding what is already in flight.
            s.recv = RecvState::Discarding;
            self.live -= 1;
            if let Err(e) = self.add_tombstone() {
                // Not an error yet: we caused this one. The next refusal of a peer that
                // never answers resets trips the bound in `on_open`.
                tracing::debug!("stream {id}: {e}");
            }
            return frame;
        }
        self.maybe_remove(id);
        frame
    }

    fn maybe_remove(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(Stream::is_done) {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            if s.recv == RecvState::Discarding && !s.handle {
                self.tombstones -= 1;
            } else if s.recv != RecvState::Discarding {
                self.live -= 1;
            }
        }
    }

    /// The next unordered control frame to send: window updates and refusals. Drain
    /// after every input.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if let Some(id) = self.refusals.pop_front() {
            return Some(Frame::StreamReset { id, code: RESET_REFUSED });
        }
        while let Some(id) = self.grants.pop_front() {
            let Some(s) = self.streams.get_mut(&id) else { continue };
            if s.recv != RecvState::Open || s.unreported == 0 {
                continue;
            }
            let credit = s.unreported.min(u32::MAX as u64) as u32;
            s.unreported -= credit as u64;
            s.peer_credit += credit as u64;
            return Some(Frame::StreamWindow { id, credit });
        }
        None
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something to send.
    pub fn wants_transmit(&self) -> bool {
        !self.refusals.is_empty() || !self.grants.is_empty()
    }

    /// Buffered, unread bytes of stream `id`.
    pub fn buffered(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.buffered)
    }

    /// Ids of all streams in the table (for waking them when the connection ends).
    pub fn stream_ids(&self) -> Vec<u32> {
        self.streams.keys().copied().collect()
    }

    /// Whether a tombstone for `id` exists (for tests).
    #[cfg(test)]
    fn is_tombstone(&self, id: u32) -> bool {
        self.streams.get(&id).is_some_and(Stream::is_tombstone)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    const W: u32 = 1024 * 1024;

    fn cfg() -> StateConfig {
        StateConfig { window: W, max_streams: 4, accept_backlog: 4 }
    }

    fn pair() -> (MuxState, MuxState) {
        (MuxState::new(true, cfg()), MuxState::new(false, cfg()))
    }

    /// Delivers every frame in `frames` to `to`, returning the events.
    fn deliver(to: &mut MuxState, frames: Vec<Frame>) -> Vec<Event> {
        frames.into_iter().map(|f| to.handle_frame(f).unwrap()).collect()
    }

    fn drain(s: &mut MuxState) -> Vec<Frame> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn data(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    /// Opens a stream on `a`, accepts it on `b`, and exchanges the window extensions.
    fn open(a: &mut MuxState, b: &mut MuxState) -> u32 {
        let (id, frames) = a.open().unwrap();
        let ev = deliver(b, frames);
        assert_eq!(ev[0], Event::Accept(id));
        assert_eq!(b.poll_accept(), Some(id));
        let grants = drain(b);
        assert_eq!(grants, vec![Frame::StreamWindow { id, credit: W - INITIAL_STREAM_CREDIT }]);
        deliver(a, grants);
        id
    }

    #[test]
    fn ids_have_parity_and_increase() {
        let (mut a, mut b) = pair();
        assert_eq!(open(&mut a, &mut b), 1);
        assert_eq!(open(&mut a, &mut b), 3);
        assert_eq!(open(&mut b, &mut a), 2);
        assert_eq!(open(&mut b, &mut a), 4);
    }

    #[test]
    fn credit_is_the_window_both_ways() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        assert_eq!(a.send_credit(id), Ok(W as u64));
        assert_eq!(b.send_credit(id), Ok(W as u64));
    }

    #[test]
    fn window_regranted_after_half_consumed() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        let f = a.send(id, data(W as usize)).unwrap();
        assert_eq!(a.send_credit(id), Ok(0));
        assert_eq!(b.handle_frame(f).unwrap(), Event::Readable(id));
        assert_eq!(b.buffered(id), W as usize);
        let mut buf = vec![0u8; W as usize / 2 - 1];
        assert_eq!(b.read(id, &mut buf), ReadOutcome::Data(buf.len()));
        assert!(drain(&mut b).is_empty(), "no update before half the window");
        let mut one = [0u8; 1];
        assert_eq!(b.read(id, &mut one), ReadOutcome::Data(1));
        let upd = drain(&mut b);
        assert_eq!(upd, vec![Frame::StreamWindow { id, credit: W / 2 }]);
        assert_eq!(deliver(&mut a, upd), vec![Event::Writable(id)]);
        assert_eq!(a.send_credit(id), Ok(W as u64 / 2));
    }

    #[test]
    fn credit_overrun_is_a_violation() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        b.handle_frame(Frame::StreamData { id, data: data(W as usize) }).unwrap();
        let e = b.handle_frame(Frame::StreamData { id, data: data(1) }).unwrap_err();
        assert_eq!(e, MuxError::CreditExceeded { id, len: 1, credit: 0 });
    }

    #[test]
    fn unknown_and_closed_streams() {
        let (mut a, mut b) = pair();
        assert!(matches!(
            b.handle_frame(Frame::StreamData { id: 9, data: data(1) }),
            Err(MuxError::UnknownStream { id: 9, .. })
        ));
        assert!(matches!(
            b.handle_frame(Frame::StreamWindow { id: 2, credit: 1 }),
            Err(MuxError::UnknownStream { id: 2, .. })
        ));
        let id = open(&mut a, &mut b);
        // Both finish, both release: the stream is gone.
        deliver(&mut b, vec![a.finish(id).unwrap().unwrap()]);
        deliver(&mut a, vec![b.finish(id).unwrap().unwrap()]);
        assert_eq!(a.release(id), None);
        assert_eq!(b.release(id), None);
        assert_eq!(b.open_streams(), 0);
        assert!(matches!(
            b.handle_frame(Frame::StreamData { id, data: data(1) }),
            Err(MuxError::ClosedStream { .. })
        ));
        // Late window updates and resets on a closed stream are tolerated.
        assert_eq!(b.handle_frame(Frame::StreamWindow { id, credit: 5 }), Ok(Event::None));
        assert_eq!(b.handle_frame(Frame::StreamReset { id, code: 0 }), Ok(Event::None));
    }

    #[test]
    fn data_after_fin_is_a_violation() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        b.handle_frame(Frame::StreamFin { id }).unwrap();
        assert!(matches!(
            b.handle_frame(Frame::StreamData { id, data: data(1) }),
            Err(MuxError::ClosedStream { .. })
        ));
    }

    #[test]
    fn duplicate_or_wrong_parity_open() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        assert_eq!(b.handle_frame(Frame::StreamOpen { id }), Err(MuxError::BadOpen { id }));
        assert_eq!(b.handle_frame(Frame::StreamOpen { id: 2 }), Err(MuxError::BadOpen { id: 2 }));
        assert_eq!(b.handle_frame(Frame::StreamOpen { id: 0 }), Err(MuxError::BadOpen { id: 0 }));
        // Skipping ids is allowed, going back is not.
        assert_eq!(b.handle_frame(Frame::StreamOpen { id: 7 }), Ok(Event::Accept(7)));
        assert_eq!(b.handle_frame(Frame::StreamOpen { id: 5 }), Err(MuxError::BadOpen { id: 5 }));
    }

    #[test]
    fn fin_then_eof_after_buffer() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        deliver(&mut b, vec![a.send(id, Bytes::from_static(b"hi")).unwrap(), a.finish(id).unwrap().unwrap()]);
        let mut buf = [0u8; 8];
        assert_eq!(b.read(id, &mut buf), ReadOutcome::Data(2));
        assert_eq!(&buf[..2], b"hi");
        assert_eq!(b.read(id, &mut buf), ReadOutcome::Eof);
        assert_eq!(a.send_credit(id), Err(StreamClosed::Finished));
        assert_eq!(a.finish(id), Ok(None));
    }

    #[test]
    fn drop_resets_and_tombstone_absorbs_in_flight_data() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        let in_flight = b.send(id, data(1000)).unwrap();
        let reset = a.release(id).unwrap();
        assert_eq!(reset, Frame::StreamReset { id, code: RESET_CANCELLED });
        assert!(a.is_tombstone(id));
        assert_eq!(a.open_streams(), 0);
        // Data sent before the peer saw the reset is discarded, not a violation.
        assert_eq!(a.handle_frame(in_flight), Ok(Event::None));
        // The peer answers the reset; the tombstone goes.
        let ev = b.handle_frame(reset).unwrap();
        let Event::Reset { id: rid, code, echo: Some(echo) } = ev else { panic!("{ev:?}") };
        assert_eq!((rid, code), (id, RESET_CANCELLED));
        let mut buf = [0u8; 4];
        assert_eq!(b.read(id, &mut buf), ReadOutcome::Reset(RESET_CANCELLED));
        assert_eq!(b.send_credit(id), Err(StreamClosed::Reset(RESET_CANCELLED)));
        assert_eq!(a.handle_frame(echo), Ok(Event::None));
        assert!(!a.is_tombstone(id));
        assert_eq!(b.release(id), None);
        assert!(a.stream_ids().is_empty() && b.stream_ids().is_empty());
    }

    #[test]
    fn crossing_resets_need_no_echo() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        let ra = a.release(id).unwrap();
        let rb = b.release(id).unwrap();
        assert_eq!(a.handle_frame(rb), Ok(Event::None));
        assert_eq!(b.handle_frame(ra), Ok(Event::None));
        assert!(a.stream_ids().is_empty() && b.stream_ids().is_empty());
    }

    #[test]
    fn excess_streams_are_refused_with_a_code() {
        let (mut a, mut b) = pair();
        for _ in 0..4 {
            open(&mut a, &mut b);
        }
        assert!(matches!(a.open(), Err(crate::error::TransportError::LimitExceeded { .. })));
        // A peer ignoring our limit gets a refusal, and its data is absorbed.
        assert_eq!(b.handle_frame(Frame::StreamOpen { id: 9 }), Ok(Event::None));
        assert_eq!(b.handle_frame(Frame::StreamData { id: 9, data: data(10) }), Ok(Event::None));
        assert_eq!(drain(&mut b), vec![Frame::StreamReset { id: 9, code: RESET_REFUSED }]);
        assert_eq!(b.handle_frame(Frame::StreamReset { id: 9, code: RESET_REFUSED }), Ok(Event::None));
        // One that keeps opening without ever answering is cut off.
        let mut id = 11;
        let err = loop {
            match b.handle_frame(Frame::StreamOpen { id }) {
                Ok(_) => id += 2,
                Err(e) => break e,
            }
        };
        assert_eq!(err, MuxError::TooManyPendingResets { max: 4 });
    }

    #[test]
    fn window_overflow() {
        let (mut a, mut b) = pair();
        let id = open(&mut a, &mut b);
        assert_eq!(
            a.handle_frame(Frame::StreamWindow { id, credit: u32::MAX }),
            Err(MuxError::WindowOverflow { id })
        );
    }

    #[test]
    fn accept_backlog_refuses() {
        let mut b = MuxState::new(false, StateConfig { window: W, max_streams: 100, accept_backlog: 2 });
        assert_eq!(b.handle_frame(Frame::StreamOpen { id: 1 }), Ok(Event::Accept(1)));
        assert_eq!(b.handle_frame(Frame::StreamOpen { id: 3 }), Ok(Event::Accept(3)));
        assert_eq!(b.handle_frame(Frame::StreamOpen { id: 5 }), Ok(Event::None));
        assert!(drain(&mut b).contains(&Frame::StreamReset { id: 5, code: RESET_REFUSED }));
    }

    #[test]
    fn reset_after_fin_keeps_the_peers_data_readable() {
        let mut b = MuxState::new(false, cfg());
        b.handle_frame(Frame::StreamOpen { id: 1 }).unwrap();
        let id = b.poll_accept().unwrap();
        b.handle_frame(Frame::StreamData { id, data: Bytes::from_static(b"reply") }).unwrap();
        b.handle_frame(Frame::StreamFin { id }).unwrap();
        b.handle_frame(Frame::StreamReset { id, code: RESET_CANCELLED }).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(b.read(id, &mut buf), ReadOutcome::Data(5));
        assert_eq!(&buf[..5], b"reply");
        assert_eq!(b.read(id, &mut buf), ReadOutcome::Eof);
    }
}
