//! The hello: the first frame each side sends inside the secure channel.
//!
//! Payload: the magic `"KZ"`, the protocol version (u16 big-endian), then one MessagePack
//! map with named fields. Addresses travel in their ticket-entry text form
//! (`tcp=192.0.2.1:4000`) and capability maps are keyed by protocol short name (`tcp`),
//! so the encoding does not depend on Rust's serde representation of those types, and
//! entries for protocols this version does not know are skipped rather than rejected.
//! Layout and field table: `docs/protocol.md`, "The hello".

use std::{collections::BTreeMap, time::Duration};

use bytes::BytesMut;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    frame::{decode_payload, encode_frame, Frame, FrameDecoder, HEADER_LEN},
    msgpack, MAGIC, PROTOCOL_VERSION,
};
use crate::{
    address::{Protocol, TransportAddr, TransportCapabilities},
    error::{AddressError, TransportError, WireError},
    identity::PeerId,
};

/// What a connection is for, declared in the hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelloPurpose {
    /// A new connection between the two nodes.
    Session,
}

/// The hello exchanged after the secure channel is up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's peer id; must equal the identity the secure channel authenticated.
    pub peer_id: PeerId,
    /// Software name and version, e.g. `kizuna/0.1.0`.
    pub agent: String,
    /// What the sender is for.
    pub purpose: HelloPurpose,
    /// Protocols the sender supports and their capabilities.
    #[serde(with = "caps_codec")]
    pub capabilities: BTreeMap<Protocol, TransportCapabilities>,
    /// Addresses the sender listens on.
    #[serde(with = "addrs_codec")]
    pub listen_addrs: Vec<TransportAddr>,
    /// The address the sender sees the receiver at (for NAT discovery), if known.
    #[serde(with = "observed_codec")]
    pub observed_addr: Option<TransportAddr>,
    /// The version of the per-peer session layer the sender speaks on this connection
    /// (`docs/protocol.md` §11); absent: none (messages are the application's as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
}

impl Hello {
    /// Encodes the payload: magic, version (u16 BE), then the MessagePack map.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let body = rmp_serde::to_vec_named(self)
            .map_err(|e| WireError::Malformed { what: "hello", reason: e.to_string() })?;
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a hello payload, checking magic and version first.
    pub fn decode(p: &[u8]) -> Result<Self, WireError> {
        if p.len() < 4 {
            return Err(WireError::Truncated);
        }
        if p[..2] != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = u16::from_be_bytes([p[2], p[3]]);
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion { got: version, supported: PROTOCOL_VERSION });
        }
        let body = &p[4..];
        let malformed = |reason: String| WireError::Malformed { what: "hello", reason };
        // Structural check first: bounds what rmp-serde may pre-allocate (see `msgpack`).
        msgpack::validate(body).map_err(malformed)?;
        if !msgpack::is_map(body) {
            return Err(malformed("body is not a MessagePack map".into()));
        }
        let hello: Hello = rmp_serde::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        PeerId::from_public_key(*hello.peer_id.as_bytes()).map_err(|e| malformed(format!("peer_id: {e}")))?;
        Ok(hello)
    }
}

/// Reads one frame from `io`, allocating no more than the decoder's maximum.
///
/// `Ok(None)` means the stream ended cleanly before a frame began; a stream ending inside a
/// frame is [`WireError::Truncated`]. A header declaring a length over the decoder's
/// maximum fails with [`WireError::FrameTooLarge`] before any payload byte is read. The
/// payload buffer grows with the bytes actually received, so a header alone never makes
/// this allocate the declared length.
///
/// Not cancel safe: dropping the future mid-frame loses the bytes read so far.
pub async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    decoder: &FrameDecoder,
) -> Result<Option<Frame>, TransportError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = io.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(TransportError::violation("peer", WireError::Truncated))
            };
        }
        got += n;
    }
    let (ty, len) = decoder.parse_header(header).map_err(|e| TransportError::violation("peer", e))?;
    let mut payload = Vec::with_capacity(len.min(READ_CHUNK));
    (&mut *io).take(len as u64).read_to_end(&mut payload).await?;
    if payload.len() < len {
        return Err(TransportError::violation("peer", WireError::Truncated));
    }
    decode_payload(ty, payload.into()).map(Some).map_err(|e| TransportError::violation("peer", e))
}

/// Initial payload buffer of [`read_frame`]: a whole hello or control frame, or the first
/// 64 KiB of a larger one (the buffer then grows as bytes arrive).
const READ_CHUNK: usize = super::MAX_CONTROL_LEN;

/// Encodes and writes one frame (without flushing).
pub async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, frame: &Frame) -> Result<(), TransportError> {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf).map_err(|e| TransportError::violation("self", e))?;
    io.write_all(&buf).await?;
    Ok(())
}

/// Sends `ours` and reads the peer's hello, within `timeout`.
///
/// Checks that the peer's hello names `authenticated`, the identity its secure channel
/// proved. Both sides send first, so the exchange costs one round trip.
pub async fn exchange_hello<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
    authenticated: PeerId,
    remote: &str,
    timeout: Duration,
) -> Result<Hello, TransportError> {
    let work = async {
        write_frame(io, &Frame::Hello(ours.clone())).await?;
        io.flush().await?;
        let decoder = FrameDecoder::default();
        match read_frame(io, &decoder).await {
            Ok(Some(Frame::Hello(h))) => Ok(h),
            Ok(Some(other)) => Err(TransportError::violation(
                remote,
                WireError::Unexpected(format!("{:?} frame before hello", other.frame_type())),
            )),
            Ok(None) => Err(TransportError::violation(remote, WireError::Truncated)),
            Err(TransportError::ProtocolViolation { source, .. }) => {
                Err(TransportError::violation(remote, source))
            }
            Err(e) => Err(e),
        }
    };
    let theirs = tokio::time::timeout(timeout, work).await.map_err(|_| TransportError::Timeout {
        what: format!("hello exchange with {remote}"),
        after: timeout,
    })??;
    if theirs.peer_id != authenticated {
        return Err(TransportError::AuthenticationFailed {
            expected: authenticated,
            presented: format!("hello naming {}", theirs.peer_id),
        });
    }
    Ok(theirs)
}

/// Parses one address entry; `Ok(None)` for a protocol this version does not know.
fn parse_addr<E: serde::de::Error>(s: &str) -> Result<Option<TransportAddr>, E> {
    match s.parse::<TransportAddr>() {
        Ok(a) => Ok(Some(a)),
        Err(AddressError::UnknownProtocol(_)) => Ok(None),
        Err(e) => Err(E::custom(format!("address {s:?}: {e}"))),
    }
}

/// `Vec<TransportAddr>` as an array of ticket-entry strings; unknown protocols skipped.
mod addrs_codec {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(v: &[TransportAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| a.to_string()))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<TransportAddr>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<TransportAddr>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of address strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
                    out.extend(parse_addr(&s)?);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// `Option<TransportAddr>` as a string or nil; an unknown protocol reads as nil.
mod observed_codec {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(
        v: &Option<TransportAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<TransportAddr>, D::Error> {
        match Option::<std::borrow::Cow<'de, str>>::deserialize(d)? {
            Some(s) => parse_addr(&s),
            None => Ok(None),
        }
    }
}

/// Capabilities as a map keyed by protocol short name; unknown protocols skipped,
/// duplicate keys rejected.
mod caps_codec {
    use super::*;

    type Caps = BTreeMap<Protocol, TransportCapabilities>;

    pub(super) fn serialize<S: serde::Serializer>(v: &Caps, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(v.iter().map(|(p, c)| (p.name(), c)))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Caps, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Caps;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from protocol name to capabilities")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                use serde::de::Error as _;
                let mut out = Caps::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.parse::<Protocol>() {
                        Ok(p) => {
                            let caps = map.next_value::<TransportCapabilities>()?;
                            if out.insert(p, caps).is_some() {
                                return Err(A::Error::custom(format!("duplicate capabilities for {key:?}")));
                            }
                        }
                        Err(_) => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}
