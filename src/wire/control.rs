//! Control messages: MessagePack maps carried in `CONTROL` frames.

use serde::{Deserialize, Serialize};

use crate::error::WireError;

/// Why a connection was closed, carried in [`Control::Close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum CloseCode {
    /// Normal close by the application.
    Normal = 0,
    /// The node is shutting down.
    Shutdown = 1,
    /// The peer broke the protocol.
    ProtocolError = 2,
    /// A limit was exceeded.
    LimitExceeded = 3,
    /// Replaced by another connection to the same peer (duplicate or upgrade).
    Replaced = 4,
    /// Idle for too long.
    Idle = 5,
}

/// A control message. Unknown `type` values decode as [`Control::Unknown`] and are ignored,
/// so newer peers can add messages without breaking older ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Control {
    /// Keep-alive probe; the peer answers with [`Control::Pong`] carrying the same nonce.
    Ping {
        /// Echoed back in the pong.
        nonce: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The sender is closing the connection; no frames follow.
    Close {
        /// Why.
        code: CloseCode,
        /// Human-readable detail.
        reason: String,
    },
    /// A control message this version does not know.
    #[serde(other)]
    Unknown,
}

impl Control {
    /// MessagePack encoding (named fields).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        rmp_serde::to_vec_named(self)
            .map_err(|e| WireError::Malformed { what: "control message", reason: e.to_string() })
    }

    /// Decodes a control payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        rmp_serde::from_slice(bytes)
            .map_err(|e| WireError::Malformed { what: "control message", reason: e.to_string() })
    }
}
