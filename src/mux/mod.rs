//! Stream multiplexer: many flow-controlled byte streams plus messages and control frames
//! over one secure byte stream (TLS over TCP now; WebSocket and relayed circuits later).
//!
//! The idea is yamux's (and HTTP/2's): every stream has a per-direction credit; the
//! receiver grants more as its application consumes, so one slow stream never blocks the
//! others and no stream buffers more than its window. Split as the house style asks:
//!
//! * [`MuxState`] (`state.rs`) — the sans-IO core: stream table, ids, windows, the rules
//!   whose violation closes the connection ([`MuxError`]);
//! * [`Mux`] (`driver.rs`) — the async driver: a reader task, a writer task and a
//!   keep-alive timer around the core, implementing
//!   [`ConnectionBackend`](crate::transport::ConnectionBackend), with the reader task in
//!   `driver/read.rs`, the write role and writer task in `driver/write.rs`, and
//!   [`MuxStream`], one stream as `AsyncRead + AsyncWrite`, in `driver/stream.rs`.

mod driver;
mod state;
#[cfg(test)]
mod tests;

pub(crate) use driver::clone_wire_error;
pub use driver::{
    Mux, MuxConfig, MuxStream, DEFAULT_ACCEPT_BACKLOG, DEFAULT_CLOSE_TIMEOUT, DEFAULT_MAX_STREAMS,
};
pub use state::{
    Event, MuxError, MuxState, ReadOutcome, StateConfig, StreamClosed, INITIAL_STREAM_CREDIT, MAX_DATA_CHUNK,
    RESET_CANCELLED, RESET_REFUSED,
};
