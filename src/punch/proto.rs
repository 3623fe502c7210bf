//! Punch messages, exchanged over the already-established relayed connection (which is
//! reliable, ordered and end-to-end authenticated): one MessagePack map per message,
//! with a string `"type"` and named fields, exactly like the relay's control messages.
//!
//! | type      | direction | fields                                    |
//! |-----------|-----------|-------------------------------------------|
//! | `offer`   | I → R     | `token` (bin 16), `mapping`, `candidates` |
//! | `answer`  | R → I     | `mapping`, `candidates`                   |
//! | `ping`    | either    | `seq` (u32), `sent_us` (u64)              |
//! | `pong`    | either    | `seq`, `sent_us` (both echoed)            |
//! | `sync`    | I → R     | `round` (u8), `rtt_us` (u64)              |
//! | `success` | I → R     | `remote` (addr)                           |
//! | `failure` | either    | `reason` (str ≤ 256 bytes)                |
//!
//! A candidate is a map `{kind: "host"|"srflx"|"relay", addr, priority: u32}`; an address
//! is a `bin` of 6 bytes (IPv4, port, big-endian) or 18 bytes (IPv6, port). `mapping` is
//! `"unknown"`, `"eim"`, `"adm"` or `"apdm"`.
//!
//! Decoding is bounded and total: length ≤ [`MAX_PUNCH_MESSAGE_LEN`], then the wire
//! layer's structural MessagePack validator (nesting, declared lengths present), then
//! rmp-serde. Any input yields a message or a [`PunchDecodeError`]. Unknown `type`s decode
//! as [`PunchMessage::Unknown`] and unknown fields are ignored (newer versions may add
//! some); candidates of unknown kinds are skipped for the same reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wire::tagged::{Tag, TypeTag};
use serde::{Deserialize, Serialize};

use super::{
    candidates::{is_usable, Candidate, CandidateKind, MappingHint},
    error::PunchDecodeError,
    MAX_CANDIDATES, MAX_PUNCH_MESSAGE_LEN, MAX_REASON_LEN,
};

/// A message of the punch protocol (see the module docs for the wire form).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PunchMessage {
    /// Initiator → responder: start a session; here are my candidates and the token every
    /// punch datagram of this session carries.
    Offer {
        /// The session token (random, from the initiator).
        token: [u8; 16],
        /// The initiator's NAT mapping behaviour.
        mapping: MappingHint,
        /// The initiator's candidates, at most [`MAX_CANDIDATES`].
        candidates: Vec<Candidate>,
    },
    /// Responder → initiator: my candidates.
    Answer {
        /// The responder's NAT mapping behaviour.
        mapping: MappingHint,
        /// The responder's candidates, at most [`MAX_CANDIDATES`].
        candidates: Vec<Candidate>,
    },
    /// An RTT probe over the relay.
    Ping {
        /// Sequence number, echoed.
        seq: u32,
        /// The sender's clock (µs since its session started), echoed.
        sent_us: u64,
    },
    /// The answer to a [`PunchMessage::Ping`], echoing its fields.
    Pong {
        /// The ping's sequence number.
        seq: u32,
        /// The ping's timestamp.
        sent_us: u64,
    },
    /// Initiator → responder: "punch round `round` now". The initiator starts the same
    /// round half an RTT later, when this message has arrived.
    Sync {
        /// The round, from 1.
        round: u8,
        /// The relayed RTT the initiator measured (informational), µs.
        rtt_us: u64,
    },
    /// Initiator → responder: a pair works both ways; expect the initiator's packets from
    /// `remote` (the address the responder itself saw its probe come from).
    Success {
        /// The initiator's address as the responder sees it.
        remote: SocketAddr,
    },
    /// Either side: this session failed and is over.
    Failure {
        /// Why, for humans (at most [`MAX_REASON_LEN`] bytes).
        reason: String,
    },
    /// A message this version does not know (encodes as `{"type": "unknown"}`).
    Unknown,
}

impl PunchMessage {
    /// The message's `type` on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            PunchMessage::Offer { .. } => "offer",
            PunchMessage::Answer { .. } => "answer",
            PunchMessage::Ping { .. } => "ping",
            PunchMessage::Pong { .. } => "pong",
            PunchMessage::Sync { .. } => "sync",
            PunchMessage::Success { .. } => "success",
            PunchMessage::Failure { .. } => "failure",
            PunchMessage::Unknown => "unknown",
        }
    }

    /// Encodes the message. Candidate lists are cut to [`MAX_CANDIDATES`] (keeping the
    /// first), candidates of kinds never offered are left out, and a failure reason is cut
    /// to [`MAX_REASON_LEN`] bytes at a character boundary, so every encoding stays far
    /// below [`MAX_PUNCH_MESSAGE_LEN`].
    pub fn encode(&self) -> Vec<u8> {
        let t = TypeTag(self.type_name());
        let r = match self {
            PunchMessage::Offer { token, mapping, candidates } => to_vec(&OfferBody {
                ty: t,
                token: *token,
                mapping: mapping.wire_name().into(),
                candidates: wire_candidates(candidates),
            }),
            PunchMessage::Answer { mapping, candidates } => to_vec(&AnswerBody {
                ty: t,
                mapping: mapping.wire_name().into(),
                candidates: wire_candidates(candidates),
            }),
            PunchMessage::Ping { seq, sent_us } | PunchMessage::Pong { seq, sent_us } => {
                to_vec(&PingBody { ty: t, seq: *seq, sent_us: *sent_us })
            }
            PunchMessage::Sync { round, rtt_us } => {
                to_vec(&SyncBody { ty: t, round: *round, rtt_us: *rtt_us })
            }
            PunchMessage::Success { remote } => to_vec(&SuccessBody { ty: t, remote: WireAddr(*remote) }),
            PunchMessage::Failure { reason } => {
                to_vec(&FailureBody { ty: t, reason: truncate(reason, MAX_REASON_LEN).to_owned() })
            }
            PunchMessage::Unknown => to_vec(&EmptyBody { ty: t }),
        };
        // Serializing these plain structs into a Vec cannot fail (rmp-serde only fails on
        // I/O errors of its writer or on maps of unknown length, neither possible here).
        r.unwrap_or_default()
    }

    /// Decodes one message (see the module docs for the checks, in order).
    pub fn decode(bytes: &[u8]) -> Result<Self, PunchDecodeError> {
        if bytes.len() > MAX_PUNCH_MESSAGE_LEN {
            return Err(PunchDecodeError::TooLarge { len: bytes.len(), max: MAX_PUNCH_MESSAGE_LEN });
        }
        crate::wire::msgpack::validate(bytes).map_err(PunchDecodeError::Malformed)?;
        if !crate::wire::msgpack::is_map(bytes) {
            return Err(PunchDecodeError::Malformed("not a MessagePack map".into()));
        }
        let tag: Tag<'_> = from_slice(bytes)?;
        Ok(match &*tag.ty {
            "offer" => {
                let b: OfferBody = from_slice(bytes)?;
                PunchMessage::Offer {
                    token: b.token,
                    mapping: MappingHint::from_wire_name(&b.mapping),
                    candidates: from_wire_candidates(b.candidates)?,
                }
            }
            "answer" => {
                let b: AnswerBody = from_slice(bytes)?;
                PunchMessage::Answer {
                    mapping: MappingHint::from_wire_name(&b.mapping),
                    candidates: from_wire_candidates(b.candidates)?,
                }
            }
            "ping" => {
                let b: PingBody = from_slice(bytes)?;
                PunchMessage::Ping { seq: b.seq, sent_us: b.sent_us }
            }
            "pong" => {
                let b: PingBody = from_slice(bytes)?;
                PunchMessage::Pong { seq: b.seq, sent_us: b.sent_us }
            }
            "sync" => {
                let b: SyncBody = from_slice(bytes)?;
                PunchMessage::Sync { round: b.round, rtt_us: b.rtt_us }
            }
            "success" => {
                let remote = from_slice::<SuccessBody>(bytes)?.remote.0;
                if !is_usable(remote) {
                    return Err(PunchDecodeError::UnusableAddress(remote));
                }
                PunchMessage::Success { remote }
            }
            "failure" => {
                let b: FailureBody = from_slice(bytes)?;
                if b.reason.len() > MAX_REASON_LEN {
                    return Err(PunchDecodeError::Malformed(format!(
                        "failure reason of {} bytes exceeds {MAX_REASON_LEN}",
                        b.reason.len()
                    )));
                }
                PunchMessage::Failure { reason: b.reason }
            }
            _ => PunchMessage::Unknown,
        })
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn wire_candidates(c: &[Candidate]) -> Vec<WireCandidate> {
    c.iter()
        .filter_map(|c| {
            Some(WireCandidate {
                kind: c.kind.wire_name()?.into(),
                addr: WireAddr(c.addr),
                priority: c.priority,
            })
        })
        .take(MAX_CANDIDATES)
        .collect()
}

fn from_wire_candidates(w: Vec<WireCandidate>) -> Result<Vec<Candidate>, PunchDecodeError> {
    if w.len() > MAX_CANDIDATES {
        return Err(PunchDecodeError::TooManyCandidates { count: w.len(), max: MAX_CANDIDATES });
    }
    let mut out = Vec::with_capacity(w.len());
    for c in w {
        let Some(kind) = CandidateKind::from_wire_name(&c.kind) else { continue };
        if !is_usable(c.addr.0) {
            return Err(PunchDecodeError::UnusableAddress(c.addr.0));
        }
        out.push(Candidate { kind, addr: c.addr.0, priority: c.priority });
    }
    Ok(out)
}

fn to_vec<T: Serialize>(v: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(v)
}

fn from_slice<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, PunchDecodeError> {
    rmp_serde::from_slice(b).map_err(|e| PunchDecodeError::Malformed(e.to_string()))
}

/// Encodes `addr` as 6 (IPv4) or 18 (IPv6) bytes: address, then port, big-endian.
pub(crate) fn addr_to_bytes(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// The inverse of [`addr_to_bytes`]; `None` unless `b` is exactly 6 or 18 bytes.
pub(crate) fn addr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => {
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([b[4], b[5]])))
        }
        18 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            Some(SocketAddr::new(Ipv6Addr::from(o).into(), u16::from_be_bytes([b[16], b[17]])))
        }
        _ => None,
    }
}

/// A socket address as a MessagePack `bin` (see [`addr_to_bytes`]).
struct WireAddr(SocketAddr);

impl Serialize for WireAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut b = Vec::with_capacity(18);
        addr_to_bytes(self.0, &mut b);
        s.serialize_bytes(&b)
    }
}

impl<'de> Deserialize<'de> for WireAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        addr_from_bytes(&b).map(WireAddr).ok_or_else(|| {
            serde::de::Error::custom(format!("address of {} bytes (expected 6 or 18)", b.len()))
        })
    }
}

// One body per message, fields in wire order; unknown fields are ignored.

#[derive(Serialize, Deserialize)]
struct WireCandidate {
    kind: String,
    addr: WireAddr,
    priority: u32,
}

#[derive(Serialize, Deserialize)]
struct EmptyBody {
    #[serde(rename = "type")]
    ty: TypeTag,
}

#[derive(Serialize, Deserialize)]
struct OfferBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    #[serde(with = "serde_bytes")]
    token: [u8; 16],
    mapping: String,
    candidates: Vec<WireCandidate>,
}

#[derive(Serialize, Deserialize)]
struct AnswerBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    mapping: String,
    candidates: Vec<WireCandidate>,
}

#[derive(Serialize, Deserialize)]
struct PingBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    seq: u32,
    sent_us: u64,
}

#[derive(Serialize, Deserialize)]
struct SyncBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    round: u8,
    rtt_us: u64,
}

#[derive(Serialize, Deserialize)]
struct SuccessBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    remote: WireAddr,
}

#[derive(Serialize, Deserialize)]
struct FailureBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    reason: String,
}
