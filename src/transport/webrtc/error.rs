//! [`SignalError`]: why a WebRTC signaling message was refused.

use crate::{error::TransportError, identity::PeerId};

/// Why an incoming WebRTC signaling message was refused. The message is dropped (and a
/// session it concerned, if any, is closed); the node keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The payload does not decode.
    #[error("malformed WebRTC signal: {0}")]
    Malformed(String),
    /// The payload is larger than a signal may be.
    #[error("WebRTC signal of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// An offer or answer whose signature is not the sender's over this message: the SDP
    /// (DTLS fingerprint) was altered or the sender is not who the relay says.
    #[error("WebRTC signal from {peer}: bad signature (SDP or fingerprint not signed by the peer)")]
    BadSignature {
        /// The relay-authenticated sender.
        peer: PeerId,
    },
    /// A message for a session this node does not know (or no longer knows).
    #[error("WebRTC signal for unknown session {session:#x} from {peer}")]
    UnknownSession {
        /// The sender.
        peer: PeerId,
        /// The session.
        session: u64,
    },
    /// A message that does not fit the session's state (e.g. an answer to an offer this
    /// node received).
    #[error("unexpected WebRTC {kind} for session {session:#x}")]
    Unexpected {
        /// The message kind.
        kind: &'static str,
        /// The session.
        session: u64,
    },
    /// A per-peer or per-node signaling limit.
    #[error("WebRTC signaling limit: {0}")]
    Limit(&'static str),
    /// This node does not accept WebRTC offers (no listener).
    #[error("WebRTC offers are not accepted by this node")]
    NotAccepting,
}

impl SignalError {
    pub(crate) fn malformed(e: impl ToString) -> Self {
        SignalError::Malformed(e.to_string())
    }

    /// This error as a transport error of a connect to `expected`.
    pub fn into_transport(self, expected: PeerId) -> TransportError {
        match self {
            SignalError::BadSignature { peer } => TransportError::AuthenticationFailed {
                expected,
                presented: format!("a WebRTC answer not signed by {peer} (tampered SDP or fingerprint)"),
            },
            SignalError::TooLarge { len, max } => TransportError::LimitExceeded {
                limit: "WebRTC signal size",
                max: max as u64,
                attempted: len as u64,
            },
            other => TransportError::connect_failed(format!("webrtc={expected}"), other),
        }
    }
}
