//! WebRTC signaling messages (docs/webrtc.md §2): the payload of a relay `signal` /
//! `signaled` message whose first byte is [`WEBRTC_SIGNAL_TAG`], followed by one
//! MessagePack map with string keys:
//!
//! ```text
//! {"session": u64, "kind": "offer"|"answer"|"candidate"|"close", "sdp": str,
//!  "mid": str or nil, "sig": bin(64) or nil}
//! ```
//!
//! Offers and answers are signed by the sender's node key over [`transcript`], which binds
//! the whole SDP (and so the DTLS certificate fingerprint in it) to the sender's identity,
//! the session and the recipient. Candidates and closes are unsigned.
//!
//! Decoding is bounded and total: length ≤ [`MAX_SIGNAL_LEN`], the wire layer's
//! structural MessagePack validator, then rmp-serde; any input yields a message or a
//! [`SignalError`].

use serde::{Deserialize, Serialize};

use super::error::SignalError;
use crate::identity::{Keypair, PeerId};

/// First byte of a relay signal payload carrying a WebRTC signaling message (0x13 is the
/// hole-punch tag).
pub const WEBRTC_SIGNAL_TAG: u8 = 0x14;

/// Largest signal payload, tag included: the relay's signal payload bound (16 384 bytes,
/// docs/protocol.md §10.5). A data-channel-only SDP is about 1 KiB.
pub const MAX_SIGNAL_LEN: usize = 16 * 1024;

/// Domain separation prefix of the signed transcript (followed by one 0x00 byte).
const TRANSCRIPT_DOMAIN: &[u8] = b"kizuna-webrtc-v1";

/// What a signaling message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalKind {
    /// The offerer's SDP (signed).
    Offer,
    /// The answerer's SDP (signed).
    Answer,
    /// One trickled ICE candidate; an empty `sdp` ends the candidates.
    Candidate,
    /// The session is abandoned; `sdp` holds the reason.
    Close,
}

impl SignalKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Offer => "offer",
            SignalKind::Answer => "answer",
            SignalKind::Candidate => "candidate",
            SignalKind::Close => "close",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "offer" => SignalKind::Offer,
            "answer" => SignalKind::Answer,
            "candidate" => SignalKind::Candidate,
            "close" => SignalKind::Close,
            _ => return None,
        })
    }

    /// Whether messages of this kind carry a signature.
    pub fn is_signed(self) -> bool {
        matches!(self, SignalKind::Offer | SignalKind::Answer)
    }
}

/// One WebRTC signaling message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalMessage {
    /// The session, chosen by the offerer (random, never 0).
    pub session: u64,
    /// What this message is.
    pub kind: SignalKind,
    /// SDP (offer/answer), candidate string (candidate; empty = end), or reason (close).
    pub sdp: String,
    /// The candidate's `sdpMid`.
    pub mid: Option<String>,
    /// Ed25519 signature over [`transcript`] (offer/answer only).
    pub sig: Option<[u8; 64]>,
}

#[derive(Serialize)]
struct Wire<'a> {
    session: u64,
    kind: &'a str,
    sdp: &'a str,
    mid: Option<&'a str>,
    sig: Option<&'a serde_bytes::Bytes>,
}

#[derive(Deserialize)]
struct WireIn {
    session: u64,
    kind: String,
    sdp: String,
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    sig: Option<serde_bytes::ByteBuf>,
}

/// The bytes an offer or answer signature covers:
/// `"kizuna-webrtc-v1" 0x00 session(u64 BE) recipient(32) kind 0x00 sdp`.
pub fn transcript(session: u64, recipient: &PeerId, kind: SignalKind, sdp: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRANSCRIPT_DOMAIN.len() + 48 + sdp.len());
    t.extend_from_slice(TRANSCRIPT_DOMAIN);
    t.push(0);
    t.extend_from_slice(&session.to_be_bytes());
    t.extend_from_slice(recipient.as_bytes());
    t.extend_from_slice(kind.as_str().as_bytes());
    t.push(0);
    t.extend_from_slice(sdp.as_bytes());
    t
}

impl SignalMessage {
    /// A signed offer or answer from `keypair` to `recipient`.
    pub fn signed(
        keypair: &Keypair,
        recipient: &PeerId,
        session: u64,
        kind: SignalKind,
        sdp: String,
    ) -> Self {
        let sig = keypair.sign(&transcript(session, recipient, kind, &sdp));
        Self { session, kind, sdp, mid: None, sig: Some(sig) }
    }

    /// An unsigned message (candidate or close).
    pub fn unsigned(session: u64, kind: SignalKind, sdp: String, mid: Option<String>) -> Self {
        Self { session, kind, sdp, mid, sig: None }
    }

    /// Checks an offer's or answer's signature: it must be `from`'s, over this message sent
    /// to `recipient`. Other kinds always pass.
    pub fn verify(&self, from: &PeerId, recipient: &PeerId) -> Result<(), SignalError> {
        if !self.kind.is_signed() {
            return Ok(());
        }
        let sig = self.sig.ok_or(SignalError::BadSignature { peer: *from })?;
        if from.verify(&transcript(self.session, recipient, self.kind, &self.sdp), &sig) {
            Ok(())
        } else {
            Err(SignalError::BadSignature { peer: *from })
        }
    }

    /// The relay signal payload: the tag byte, then the map.
    pub fn encode(&self) -> Result<Vec<u8>, SignalError> {
        let sig = self.sig.as_ref().map(|s| serde_bytes::Bytes::new(s));
        let wire = Wire {
            session: self.session,
            kind: self.kind.as_str(),
            sdp: &self.sdp,
            mid: self.mid.as_deref(),
            sig,
        };
        let mut out = vec![WEBRTC_SIGNAL_TAG];
        rmp_serde::encode::write_named(&mut out, &wire).map_err(|e| SignalError::malformed(e.to_string()))?;
        if out.len() > MAX_SIGNAL_LEN {
            return Err(SignalError::TooLarge { len: out.len(), max: MAX_SIGNAL_LEN });
        }
        Ok(out)
    }

    /// Decodes a relay signal payload (tag byte included).
    pub fn decode(payload: &[u8]) -> Result<Self, SignalError> {
        if payload.len() > MAX_SIGNAL_LEN {
            return Err(SignalError::TooLarge { len: payload.len(), max: MAX_SIGNAL_LEN });
        }
        let body = match payload.split_first() {
            Some((&WEBRTC_SIGNAL_TAG, body)) => body,
            Some((tag, _)) => return Err(SignalError::malformed(format!("tag 0x{tag:02x} is not 0x14"))),
            None => return Err(SignalError::malformed("empty payload")),
        };
        crate::wire::msgpack::validate(body).map_err(SignalError::malformed)?;
        if !crate::wire::msgpack::is_map(body) {
            return Err(SignalError::malformed("not a MessagePack map"));
        }
        let w: WireIn = rmp_serde::from_slice(body).map_err(|e| SignalError::malformed(e.to_string()))?;
        let kind = SignalKind::parse(&w.kind)
            .ok_or_else(|| SignalError::malformed(format!("unknown kind {:?}", w.kind)))?;
        if w.session == 0 {
            return Err(SignalError::malformed("session 0"));
        }
        let sig = match w.sig {
            None => None,
            Some(b) => Some(
                <[u8; 64]>::try_from(b.as_slice())
                    .map_err(|_| SignalError::malformed(format!("sig of {} bytes, expected 64", b.len())))?,
            ),
        };
        if kind.is_signed() && sig.is_none() {
            return Err(SignalError::malformed(format!("{} without sig", kind.as_str())));
        }
        Ok(Self { session: w.session, kind, sdp: w.sdp, mid: w.mid, sig })
    }
}
