//! The hello: the first frame each side sends inside the secure channel.

use std::{collections::BTreeMap, time::Duration};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    frame::{decode_payload, encode_frame, Frame, FrameDecoder, HEADER_LEN},
    MAGIC, PROTOCOL_VERSION,
};
use crate::{
    address::{Protocol, TransportAddr, TransportCapabilities},
    error::{TransportError, WireError},
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
    pub capabilities: BTreeMap<Protocol, TransportCapabilities>,
    /// Addresses the sender listens on.
    pub listen_addrs: Vec<TransportAddr>,
    /// The address the sender sees the receiver at (for NAT discovery), if known.
    pub observed_addr: Option<TransportAddr>,
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
        rmp_serde::from_slice(&p[4..])
            .map_err(|e| WireError::Malformed { what: "hello", reason: e.to_string() })
    }
}

/// Reads one frame from `io`, allocating no more than the decoder's maximum.
///
/// `Ok(None)` means the stream ended cleanly before a frame began; a stream ending inside a
/// frame is [`WireError::Truncated`].
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
    let mut payload = BytesMut::zeroed(len);
    io.read_exact(&mut payload).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => TransportError::violation("peer", WireError::Truncated),
        _ => TransportError::Io(e),
    })?;
    decode_payload(ty, payload.freeze()).map(Some).map_err(|e| TransportError::violation("peer", e))
}

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
