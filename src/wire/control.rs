//! Control messages: MessagePack maps carried in `CONTROL` frames.
//!
//! Every control payload is one MessagePack map with a string field `"type"` naming the
//! message, plus the fields of that message (see `docs/protocol.md`, "Control messages").
//! Maps whose `type` this version does not know decode as [`Control::Unknown`] whatever
//! else they hold; unknown fields of known messages are ignored.

use serde::{de::IgnoredAny, Deserialize, Serialize};

use super::tagged::Tag;

use super::msgpack;
use crate::error::WireError;

/// Why a connection was closed, carried in [`Control::Close`] as an unsigned integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// `0`: normal close by the application.
    Normal = 0,
    /// `1`: the node is shutting down.
    Shutdown = 1,
    /// `2`: the peer broke the protocol.
    ProtocolError = 2,
    /// `3`: a limit was exceeded.
    LimitExceeded = 3,
    /// `4`: replaced by another connection to the same peer (duplicate or upgrade).
    Replaced = 4,
    /// `5`: idle for too long.
    Idle = 5,
}

impl CloseCode {
    /// The code's value on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code of a wire value, if this version knows it.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Normal,
            1 => Self::Shutdown,
            2 => Self::ProtocolError,
            3 => Self::LimitExceeded,
            4 => Self::Replaced,
            5 => Self::Idle,
            _ => return None,
        })
    }
}

/// A control message. Unknown `type` values decode as [`Control::Unknown`] and are ignored,
/// so newer peers can add messages without breaking older ones.
#[derive(Clone, Debug, PartialEq)]
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
    /// A control message this version does not know (including a `close` whose code
    /// this version does not know). Encodes as `{"type": "unknown"}`.
    Unknown,
}

#[derive(Serialize, Deserialize)]
struct NonceBody {
    #[serde(rename = "type")]
    ty: IgnoredTag,
    nonce: u64,
}

#[derive(Serialize, Deserialize)]
struct CloseBody {
    #[serde(rename = "type")]
    ty: IgnoredTag,
    code: u32,
    reason: String,
}

/// The `type` field when encoding a known message (a fixed string) and skipped when
/// decoding (the tag has already been read).
#[derive(Default)]
struct IgnoredTag(&'static str);

impl Serialize for IgnoredTag {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for IgnoredTag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| IgnoredTag::default())
    }
}

#[derive(Serialize)]
struct UnknownBody {
    #[serde(rename = "type")]
    ty: &'static str,
}

fn malformed(e: impl ToString) -> WireError {
    WireError::Malformed { what: "control message", reason: e.to_string() }
}

impl Control {
    /// MessagePack encoding (a map with named fields).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let out = match self {
            Control::Ping { nonce } => {
                rmp_serde::to_vec_named(&NonceBody { ty: IgnoredTag("ping"), nonce: *nonce })
            }
            Control::Pong { nonce } => {
                rmp_serde::to_vec_named(&NonceBody { ty: IgnoredTag("pong"), nonce: *nonce })
            }
            Control::Close { code, reason } => rmp_serde::to_vec_named(&CloseBody {
                ty: IgnoredTag("close"),
                code: code.as_u32(),
                reason: reason.clone(),
            }),
            Control::Unknown => rmp_serde::to_vec_named(&UnknownBody { ty: "unknown" }),
        };
        out.map_err(malformed)
    }

    /// Decodes a control payload.
    ///
    /// The payload must be exactly one MessagePack map (no trailing bytes, nesting at most
    /// 16 levels) with a string `type`. Never allocates more than a small multiple of
    /// `bytes.len()`.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        msgpack::validate(bytes).map_err(malformed)?;
        if !msgpack::is_map(bytes) {
            return Err(malformed("not a MessagePack map"));
        }
        let tag: Tag<'_> = rmp_serde::from_slice(bytes).map_err(malformed)?;
        Ok(match &*tag.ty {
            "ping" | "pong" => {
                let body: NonceBody = rmp_serde::from_slice(bytes).map_err(malformed)?;
                if tag.ty == "ping" {
                    Control::Ping { nonce: body.nonce }
                } else {
                    Control::Pong { nonce: body.nonce }
                }
            }
            "close" => {
                let body: CloseBody = rmp_serde::from_slice(bytes).map_err(malformed)?;
                match CloseCode::from_u32(body.code) {
                    Some(code) => Control::Close { code, reason: body.reason },
                    None => Control::Unknown,
                }
            }
            _ => Control::Unknown,
        })
    }
}
