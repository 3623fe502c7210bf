//! The wire format spoken inside the secure channel: a hello, then length-prefixed frames.
//!
//! Byte-level specification: `docs/protocol.md`. Every frame is
//!
//! ```text
//! +----------------------+---------+-------------------+
//! | length: u32 big-end. | type: u8| payload (length B)|
//! +----------------------+---------+-------------------+
//! ```
//!
//! where `length` counts the payload only and never exceeds the decoder's maximum
//! ([`MAX_FRAME_LEN`] at most). Decoding is total: any byte string yields a frame, "need
//! more bytes", or a [`WireError`](crate::error::WireError) — never a panic, and never an
//! allocation larger than the maximum frame.

mod control;
mod frame;
mod hello;
pub(crate) mod msgpack;
pub(crate) mod tagged;
#[cfg(test)]
mod tests;

pub use control::{CloseCode, Control};
pub use frame::{encode_frame, encode_header, Frame, FrameDecoder, FrameType, HEADER_LEN};
pub use hello::{exchange_hello, read_frame, write_frame, Hello, HelloPurpose};

/// The protocol version this build speaks (carried in the hello).
pub const PROTOCOL_VERSION: u16 = 1;
/// The two magic bytes that open a hello payload.
pub const MAGIC: [u8; 2] = *b"KZ";
/// Largest application message, in bytes. Bulk data belongs on streams.
pub const MAX_MESSAGE_LEN: usize = 4 * 1024 * 1024;
/// Hard maximum frame payload length; no decoder accepts more.
///
/// A message plus the largest per-frame prefix (a stream id) fits.
pub const MAX_FRAME_LEN: usize = MAX_MESSAGE_LEN + 16;
/// Largest hello or control payload. Both are small MessagePack maps; anything larger is
/// an attack or a bug.
pub const MAX_CONTROL_LEN: usize = 64 * 1024;
