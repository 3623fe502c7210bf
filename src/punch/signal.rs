//! Signals: the payloads Kizuna's own protocols exchange between two peers over a path
//! they already share (a relay `signal` / `signaled` message, or a session-layer `SIGNAL`
//! frame, [`crate::peer::frame`]). Every kind's tag byte is defined here, next to the one
//! decoder that tells them apart.
//!
//! ```text
//! payload = tag (1 byte) | body
//!   0x13  hole punching: one PunchMessage (MessagePack map, docs/punch.md)
//!   0x14  WebRTC signaling: one SignalMessage (MessagePack map, docs/webrtc.md §2)
//!   other an application's signal: not Kizuna's ([`SignalError::UnknownTag`])
//! ```
//!
//! [`Signal::decode`] is total: any byte string yields a decoded [`Signal`] or a
//! [`SignalError`], and a body is decoded exactly once, here, at the edge where it
//! arrives (the relay client): receivers route the decoded value, never the bytes.

use crate::transport::webrtc::{SignalError as WebRtcSignalError, SignalMessage};

use super::{error::PunchDecodeError, proto::PunchMessage};

/// First byte of a signal carrying a hole-punch message; the rest is the encoded
/// [`PunchMessage`]. The value is the one deployed nodes use (it is also the byte that
/// opens the punch datagram's magic, [`PUNCH_MAGIC`](super::packet::PUNCH_MAGIC));
/// changing it breaks signaling with them.
pub const PUNCH_SIGNAL_TAG: u8 = 0x13;

/// First byte of a signal carrying WebRTC signaling; the rest is one WebRTC
/// [`SignalMessage`] map. 0x14: the value after the punch tag, as deployed nodes and the
/// browser client (docs/webrtc.md §2) use it.
pub const WEBRTC_SIGNAL_TAG: u8 = 0x14;

/// A decoded signal.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// A hole-punch message ([`PUNCH_SIGNAL_TAG`]).
    Punch(PunchMessage),
    /// A WebRTC signaling message ([`WEBRTC_SIGNAL_TAG`]); its signature, if it carries
    /// one, is not checked here (the WebRTC transport checks it against the sender).
    WebRtc(SignalMessage),
}

/// Why a payload is not a signal Kizuna understands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The payload is empty (no tag byte).
    #[error("empty signal payload")]
    Empty,
    /// The tag is none of Kizuna's: an application's signal, or a later version's kind.
    #[error("signal tag {0:#04x} is not a Kizuna signal")]
    UnknownTag(u8),
    /// A punch-tagged payload whose body does not decode.
    #[error("undecodable punch signal: {0}")]
    Punch(#[from] PunchDecodeError),
    /// A WebRTC-tagged payload whose body does not decode.
    #[error("undecodable WebRTC signal: {0}")]
    WebRtc(#[from] WebRtcSignalError),
}

impl Signal {
    /// Decodes one signal payload: the tag byte, then that kind's body (see the module
    /// docs). Never panics; allocates at most what the kind's own bounded decoder does.
    pub fn decode(payload: &[u8]) -> Result<Self, SignalError> {
        let (&tag, body) = payload.split_first().ok_or(SignalError::Empty)?;
        Self::decode_tagged(tag, body)
    }

    /// Decodes a signal whose tag and body arrived apart (a session-layer `SIGNAL` frame
    /// carries them as two fields).
    pub fn decode_tagged(tag: u8, body: &[u8]) -> Result<Self, SignalError> {
        match tag {
            PUNCH_SIGNAL_TAG => Ok(Signal::Punch(PunchMessage::decode(body)?)),
            WEBRTC_SIGNAL_TAG => Ok(Signal::WebRtc(SignalMessage::decode_body(body)?)),
            other => Err(SignalError::UnknownTag(other)),
        }
    }

    /// The kind's tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Signal::Punch(_) => PUNCH_SIGNAL_TAG,
            Signal::WebRtc(_) => WEBRTC_SIGNAL_TAG,
        }
    }

    /// Encodes the signal: its tag, then its body. Fails only for a WebRTC message too
    /// large to be a signal ([`WebRtcSignalError::TooLarge`]); punch messages always
    /// encode (see [`encode_punch`]).
    pub fn encode(&self) -> Result<Vec<u8>, SignalError> {
        match self {
            Signal::Punch(m) => Ok(encode_punch(m)),
            Signal::WebRtc(m) => Ok(m.encode()?),
        }
    }
}

/// The signal payload carrying punch message `msg` ([`PUNCH_SIGNAL_TAG`], then the
/// message). Infallible: punch messages are bounded far below every signal limit.
pub fn encode_punch(msg: &PunchMessage) -> Vec<u8> {
    let body = msg.encode();
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(PUNCH_SIGNAL_TAG);
    out.extend_from_slice(&body);
    out
}
