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

/// First byte of a relay signal payload carrying a WebRTC signaling message (defined with
/// every other signal tag in [`crate::punch::signal`]).
pub use crate::punch::signal::WEBRTC_SIGNAL_TAG;

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
        match payload.split_first() {
            Some((&WEBRTC_SIGNAL_TAG, body)) => Self::decode_body(body),
            Some((tag, _)) => Err(SignalError::malformed(format!("tag 0x{tag:02x} is not 0x14"))),
            None => Err(SignalError::malformed("empty payload")),
        }
    }

    /// Decodes the body of a signal payload (what follows the tag byte, which
    /// [`crate::punch::signal::Signal::decode`] has already read).
    pub fn decode_body(body: &[u8]) -> Result<Self, SignalError> {
        let len = body.len().saturating_add(1);
        if len > MAX_SIGNAL_LEN {
            return Err(SignalError::TooLarge { len, max: MAX_SIGNAL_LEN });
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;

    fn peer(seed: u8) -> Keypair {
        Keypair::from_seed([seed; 32])
    }

    /// The transcript of docs/webrtc.md §2's test vector: peer 1 offers "v=0" to peer 2 in
    /// session 1.
    #[test]
    fn transcript_vector() {
        let t = transcript(1, &peer(2).peer_id(), SignalKind::Offer, "v=0");
        assert_eq!(hex(&t), "6b697a756e612d7765627274632d76310000000000000000018139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b3946f6666657200763d30");
        let m = SignalMessage::signed(&peer(1), &peer(2).peer_id(), 1, SignalKind::Offer, "v=0".into());
        assert_eq!(hex(&m.sig.unwrap()), "4cb6b6b7ec7760627d0cf4e04caeec3fa0e9b01d12f9e80efd4afd25fc8305d28ae0ea593bd00cc32d13ef5a8e7d3c2c82ba7bada471dd990a43806a3ece8e0b");
        assert_eq!(hex(&m.encode().unwrap()), "1485a773657373696f6e01a46b696e64a56f66666572a3736470a3763d30a36d6964c0a3736967c4404cb6b6b7ec7760627d0cf4e04caeec3fa0e9b01d12f9e80efd4afd25fc8305d28ae0ea593bd00cc32d13ef5a8e7d3c2c82ba7bada471dd990a43806a3ece8e0b");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn signed_messages_verify_only_for_their_sender_recipient_and_bytes() {
        let (a, b, c) = (peer(1), peer(2), peer(3));
        let m = SignalMessage::signed(
            &a,
            &b.peer_id(),
            42,
            SignalKind::Answer,
            "v=0\r\na=fingerprint:sha-256 AA".into(),
        );
        let back = SignalMessage::decode(&m.encode().unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(back.verify(&a.peer_id(), &b.peer_id()).is_ok());
        // Another sender, another recipient, another session, an altered SDP: all refused.
        assert!(back.verify(&c.peer_id(), &b.peer_id()).is_err());
        assert!(back.verify(&a.peer_id(), &c.peer_id()).is_err());
        let mut other = back.clone();
        other.session = 43;
        assert!(other.verify(&a.peer_id(), &b.peer_id()).is_err());
        other = back.clone();
        other.sdp = other.sdp.replace("AA", "AB");
        assert!(matches!(other.verify(&a.peer_id(), &b.peer_id()), Err(SignalError::BadSignature { .. })));
        // Candidates and closes are unsigned and always pass.
        let c = SignalMessage::unsigned(42, SignalKind::Candidate, String::new(), Some("0".into()));
        assert_eq!(SignalMessage::decode(&c.encode().unwrap()).unwrap(), c);
        assert!(c.verify(&a.peer_id(), &b.peer_id()).is_ok());
    }

    /// What a browser's MessagePack encoder may produce: keys in another order, a wide
    /// integer encoding, `mid` and `sig` absent, an unknown key.
    #[test]
    fn decodes_other_encoders_output() {
        #[derive(Serialize)]
        struct Js<'a> {
            extra: u8,
            kind: &'a str,
            sdp: &'a str,
            session: u64,
        }
        let mut p = vec![WEBRTC_SIGNAL_TAG];
        rmp_serde::encode::write_named(&mut p, &Js { extra: 1, kind: "close", sdp: "bye", session: 1 << 40 })
            .unwrap();
        let m = SignalMessage::decode(&p).unwrap();
        assert_eq!((m.session, m.kind, m.sdp.as_str(), m.mid), (1 << 40, SignalKind::Close, "bye", None));
        // An offer without its signature, a zero session, an unknown kind, a short sig.
        for bad in [
            Js { extra: 0, kind: "offer", sdp: "v=0", session: 1 },
            Js { extra: 0, kind: "close", sdp: "", session: 0 },
            Js { extra: 0, kind: "hello", sdp: "", session: 1 },
        ] {
            let mut p = vec![WEBRTC_SIGNAL_TAG];
            rmp_serde::encode::write_named(&mut p, &bad).unwrap();
            assert!(matches!(SignalMessage::decode(&p), Err(SignalError::Malformed(_))), "{}", bad.kind);
        }
    }
}
