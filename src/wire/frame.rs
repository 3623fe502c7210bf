//! Frame types, the encoder, and the bounded sans-IO decoder.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{control::Control, hello::Hello, MAX_CONTROL_LEN, MAX_FRAME_LEN, MAX_MESSAGE_LEN};
use crate::error::WireError;

/// Length of a frame header: 4-byte length, 1-byte type.
pub const HEADER_LEN: usize = 5;

/// The type byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// `0x01`: the hello, first frame in each direction.
    Hello = 0x01,
    /// `0x02`: one application message.
    Message = 0x02,
    /// `0x03`: a MessagePack control message.
    Control = 0x03,
    /// `0x10`: open a multiplexed stream.
    StreamOpen = 0x10,
    /// `0x11`: bytes on a stream.
    StreamData = 0x11,
    /// `0x12`: grant send credit on a stream.
    StreamWindow = 0x12,
    /// `0x13`: the sender finished writing a stream.
    StreamFin = 0x13,
    /// `0x14`: abort a stream.
    StreamReset = 0x14,
}

impl FrameType {
    /// The frame type of a type byte.
    pub fn from_byte(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0x01 => Self::Hello,
            0x02 => Self::Message,
            0x03 => Self::Control,
            0x10 => Self::StreamOpen,
            0x11 => Self::StreamData,
            0x12 => Self::StreamWindow,
            0x13 => Self::StreamFin,
            0x14 => Self::StreamReset,
            other => return Err(WireError::UnknownFrameType(other)),
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// The hello.
    Hello(Hello),
    /// An application message.
    Message(Bytes),
    /// A control message.
    Control(Control),
    /// Open stream `id`.
    StreamOpen {
        /// Stream id (odd: opened by the dialer, even: by the listener).
        id: u32,
    },
    /// Data on stream `id`.
    StreamData {
        /// Stream id.
        id: u32,
        /// The bytes.
        data: Bytes,
    },
    /// Grant `credit` more bytes of send window on stream `id`.
    StreamWindow {
        /// Stream id.
        id: u32,
        /// Additional bytes the receiver can take.
        credit: u32,
    },
    /// The sender of this frame finished writing stream `id`.
    StreamFin {
        /// Stream id.
        id: u32,
    },
    /// Abort stream `id`.
    StreamReset {
        /// Stream id.
        id: u32,
        /// Application-defined reason code.
        code: u32,
    },
}

impl Frame {
    /// The type byte of this frame.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Message(_) => FrameType::Message,
            Frame::Control(_) => FrameType::Control,
            Frame::StreamOpen { .. } => FrameType::StreamOpen,
            Frame::StreamData { .. } => FrameType::StreamData,
            Frame::StreamWindow { .. } => FrameType::StreamWindow,
            Frame::StreamFin { .. } => FrameType::StreamFin,
            Frame::StreamReset { .. } => FrameType::StreamReset,
        }
    }
}

/// Writes a frame header for a payload of `len` bytes.
pub fn encode_header(ty: FrameType, len: usize, out: &mut BytesMut) {
    out.put_u32(len as u32);
    out.put_u8(ty as u8);
}

/// Appends the encoding of `frame` to `out`.
///
/// Fails only if the frame would exceed its limit ([`MAX_FRAME_LEN`]; for messages
/// [`MAX_MESSAGE_LEN`]; for hello and control [`MAX_CONTROL_LEN`]), so a peer can never be
/// sent a frame it must reject. On failure `out` is left unchanged.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) -> Result<(), WireError> {
    let ty = frame.frame_type();
    match frame {
        Frame::Hello(h) => {
            let body = h.encode()?;
            check_len(body.len(), MAX_CONTROL_LEN)?;
            encode_header(ty, body.len(), out);
            out.extend_from_slice(&body);
        }
        Frame::Control(c) => {
            let body = c.encode()?;
            check_len(body.len(), MAX_CONTROL_LEN)?;
            encode_header(ty, body.len(), out);
            out.extend_from_slice(&body);
        }
        Frame::Message(m) => {
            check_len(m.len(), MAX_MESSAGE_LEN)?;
            encode_header(ty, m.len(), out);
            out.extend_from_slice(m);
        }
        Frame::StreamOpen { id } | Frame::StreamFin { id } => {
            encode_header(ty, 4, out);
            out.put_u32(*id);
        }
        Frame::StreamData { id, data } => {
            check_len(data.len() + 4, MAX_FRAME_LEN)?;
            encode_header(ty, data.len() + 4, out);
            out.put_u32(*id);
            out.extend_from_slice(data);
        }
        Frame::StreamWindow { id, credit: x } | Frame::StreamReset { id, code: x } => {
            encode_header(ty, 8, out);
            out.put_u32(*id);
            out.put_u32(*x);
        }
    }
    Ok(())
}

fn check_len(len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    Ok(())
}

/// How far [`FrameDecoder::decode`] reserves buffer space beyond the bytes received for
/// an incomplete frame: one maximal control frame. Larger frames grow the buffer as their
/// bytes arrive (amortized doubling in `BytesMut`).
const RESERVE_AHEAD: usize = MAX_CONTROL_LEN;

/// A bounded, incremental frame decoder (sans-IO).
///
/// Feed bytes into a `BytesMut` and call [`FrameDecoder::decode`] until it returns
/// `Ok(None)`. The decoder rejects a frame as soon as its header declares a length over the
/// limit, before any payload is buffered.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    max_frame_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self { max_frame_len: MAX_FRAME_LEN }
    }
}

impl FrameDecoder {
    /// A decoder accepting payloads up to `max_frame_len` (capped at [`MAX_FRAME_LEN`]).
    pub fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len: max_frame_len.min(MAX_FRAME_LEN) }
    }

    /// The largest payload this decoder accepts.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Checks a header and returns the frame type and payload length it declares.
    pub fn parse_header(&self, header: [u8; HEADER_LEN]) -> Result<(FrameType, usize), WireError> {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let ty = FrameType::from_byte(header[4])?;
        let max = match ty {
            FrameType::Hello | FrameType::Control => MAX_CONTROL_LEN.min(self.max_frame_len),
            FrameType::Message => MAX_MESSAGE_LEN.min(self.max_frame_len),
            _ => self.max_frame_len,
        };
        check_len(len, max)?;
        Ok((ty, len))
    }

    /// Decodes one frame from the front of `buf`, or returns `Ok(None)` if more bytes are
    /// needed. On error the connection must be closed; `buf` is left unspecified.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let frame = self.decode_split(buf)?;
        if frame.is_none() {
            // Make room for the rest of the frame, but at most one chunk ahead of the bytes
            // actually received: a bare header must not make us allocate 4 MiB.
            buf.reserve(Self::frame_len(buf).saturating_sub(buf.len()).min(RESERVE_AHEAD));
        }
        Ok(frame)
    }

    /// Like [`decode`](Self::decode), but never touches `buf`'s capacity, for a caller
    /// that manages its own read buffers and makes room once for a whole frame (see
    /// [`frame_len`](Self::frame_len)): a `reserve` on a buffer that decoded payloads
    /// still share moves the partial frame into a new allocation. The payload of a
    /// decoded frame shares `buf`'s allocation.
    pub fn decode_split(&self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[..HEADER_LEN]);
        let (ty, len) = self.parse_header(header)?;
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        decode_payload(ty, payload).map(Some)
    }

    /// The total length (header included) of the frame at the front of `buf`, or
    /// [`HEADER_LEN`] while the header is incomplete. Unchecked: call after
    /// [`decode_split`](Self::decode_split) returned `Ok(None)` for the same bytes.
    pub fn frame_len(buf: &[u8]) -> usize {
        match buf.first_chunk::<4>() {
            Some(len) if buf.len() >= HEADER_LEN => HEADER_LEN + u32::from_be_bytes(*len) as usize,
            _ => HEADER_LEN,
        }
    }
}

/// Decodes a frame's payload given its type.
pub(crate) fn decode_payload(ty: FrameType, mut p: Bytes) -> Result<Frame, WireError> {
    let fixed = |p: &Bytes, n: usize, what: &'static str| {
        if p.len() != n {
            return Err(WireError::Malformed {
                what,
                reason: format!("payload is {} bytes, expected {n}", p.len()),
            });
        }
        Ok(())
    };
    Ok(match ty {
        FrameType::Hello => Frame::Hello(Hello::decode(&p)?),
        FrameType::Control => Frame::Control(Control::decode(&p)?),
        FrameType::Message => Frame::Message(p),
        FrameType::StreamOpen => {
            fixed(&p, 4, "stream-open frame")?;
            Frame::StreamOpen { id: p.get_u32() }
        }
        FrameType::StreamFin => {
            fixed(&p, 4, "stream-fin frame")?;
            Frame::StreamFin { id: p.get_u32() }
        }
        FrameType::StreamData => {
            if p.len() < 4 {
                return Err(WireError::Malformed {
                    what: "stream-data frame",
                    reason: "shorter than its stream id".into(),
                });
            }
            let id = p.get_u32();
            Frame::StreamData { id, data: p }
        }
        FrameType::StreamWindow => {
            fixed(&p, 8, "stream-window frame")?;
            Frame::StreamWindow { id: p.get_u32(), credit: p.get_u32() }
        }
        FrameType::StreamReset => {
            fixed(&p, 8, "stream-reset frame")?;
            Frame::StreamReset { id: p.get_u32(), code: p.get_u32() }
        }
    })
}
