//! Relay control messages: one MessagePack map per WebSocket binary message.
//!
//! Every message is a map with a string field `"type"` naming it, followed by the
//! message's named fields in a fixed order (`docs/protocol.md`, "Relay protocol", has the
//! table and annotated bytes). Decoding is bounded and total: the payload is checked
//! against [`MAX_RELAY_MESSAGE_LEN`] and by the structural MessagePack validator before
//! rmp-serde sees it; any input yields a message or a [`WireError`], never a panic.
//! Maps whose `type` this version does not know decode as [`RelayMessage::Unknown`];
//! unknown fields of known messages are ignored; duplicate fields are malformed.

use crate::wire::tagged::{Tag, TypeTag};
use serde::{Deserialize, Serialize};

use std::net::SocketAddr;

use super::MAX_RELAY_MESSAGE_LEN;
use crate::{error::WireError, identity::PeerId};

/// The most STUN servers a `reserved` message advertises.
pub const MAX_ADVERTISED_STUN: usize = 4;

/// A circuit's id, allocated by the relay (never 0, never reused by one relay process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CircuitId(pub u64);

impl std::fmt::Display for CircuitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A typed relay error or close reason, a `u16` on the wire.
///
/// The WebSocket close code of a connection the relay closes is
/// [`WS_CLOSE_CODE_BASE`](super::WS_CLOSE_CODE_BASE) + the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `0`: normal close (the other end of a circuit went away, the client closed).
    Normal,
    /// `1`: the client did not prove its key (bad signature, no auth, handshake timeout).
    Unauthenticated,
    /// `2`: the client proved its key but no admission rule admits it.
    NotAllowed,
    /// `3`: the client's token does not verify (wrong secret, wrong peer, malformed).
    BadToken,
    /// `4`: the client's token has expired.
    ExpiredToken,
    /// `5`: the dialed or signaled peer holds no reservation here.
    TargetNotReserved,
    /// `6`: the target refused the circuit (or went away before answering).
    TargetRefused,
    /// `7`: one of the circuit's peers already has the maximum number of circuits.
    CircuitLimitPeer,
    /// `8`: the relay already has the maximum number of circuits.
    CircuitLimitTotal,
    /// `9`: the relay already has the maximum number of reservations.
    ReservationLimit,
    /// `10`: the circuit lived for its maximum duration.
    DurationLimit,
    /// `11`: the circuit carried its maximum number of bytes.
    DataCap,
    /// `12`: the client broke the relay protocol.
    ProtocolViolation,
    /// `13`: the target did not accept the circuit in time.
    PendingTimeout,
    /// `14`: the operation needs a reservation and the sender holds none.
    NotReserved,
    /// `15`: the circuit no longer exists (timed out, refused, or its dialer left).
    CircuitGone,
    /// `16`: a newer control connection of the same peer replaced this one.
    Replaced,
    /// `17`: the relay is shutting down.
    Shutdown,
    /// `18`: the circuit's ends did not complete an end-to-end handshake in time.
    CircuitHandshakeTimeout,
    /// `19`: too many circuits whose end-to-end handshake has not completed (from the
    /// dialer's key or address, or to the target), or this one made room for another.
    UnconfirmedCircuitLimit,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code's value on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            Self::Normal => 0,
            Self::Unauthenticated => 1,
            Self::NotAllowed => 2,
            Self::BadToken => 3,
            Self::ExpiredToken => 4,
            Self::TargetNotReserved => 5,
            Self::TargetRefused => 6,
            Self::CircuitLimitPeer => 7,
            Self::CircuitLimitTotal => 8,
            Self::ReservationLimit => 9,
            Self::DurationLimit => 10,
            Self::DataCap => 11,
            Self::ProtocolViolation => 12,
            Self::PendingTimeout => 13,
            Self::NotReserved => 14,
            Self::CircuitGone => 15,
            Self::Replaced => 16,
            Self::Shutdown => 17,
            Self::CircuitHandshakeTimeout => 18,
            Self::UnconfirmedCircuitLimit => 19,
            Self::Other(v) => v,
        }
    }

    /// The code of a wire value (unknown values become [`ErrorCode::Other`]).
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::Normal,
            1 => Self::Unauthenticated,
            2 => Self::NotAllowed,
            3 => Self::BadToken,
            4 => Self::ExpiredToken,
            5 => Self::TargetNotReserved,
            6 => Self::TargetRefused,
            7 => Self::CircuitLimitPeer,
            8 => Self::CircuitLimitTotal,
            9 => Self::ReservationLimit,
            10 => Self::DurationLimit,
            11 => Self::DataCap,
            12 => Self::ProtocolViolation,
            13 => Self::PendingTimeout,
            14 => Self::NotReserved,
            15 => Self::CircuitGone,
            16 => Self::Replaced,
            17 => Self::Shutdown,
            18 => Self::CircuitHandshakeTimeout,
            19 => Self::UnconfirmedCircuitLimit,
            other => Self::Other(other),
        }
    }

    /// The WebSocket close code for this reason (4000 + code, capped at 4999).
    pub fn ws_close_code(self) -> u16 {
        super::WS_CLOSE_CODE_BASE.saturating_add(self.as_u16().min(999))
    }
}

/// What an authenticated connection is for, declared right after `auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The long-lived control connection: reservation, signaling, incoming circuits.
    Control,
    /// Asking for a circuit to the reserved peer `target`.
    Dial {
        /// The peer to reach.
        target: PeerId,
    },
    /// Accepting circuit `circuit`, announced by an `incoming` on the control connection.
    Accept {
        /// The circuit.
        circuit: CircuitId,
    },
}

/// A relay control message. Which side may send which message is in `docs/protocol.md`;
/// a message arriving at the wrong side or at the wrong time is a protocol violation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayMessage {
    /// Relay → client, first message on every connection.
    Challenge {
        /// Fresh random bytes, never reused by the relay.
        nonce: [u8; 32],
        /// The relay's name as clients know it (its public URL), bound into the signature.
        relay: String,
    },
    /// Client → relay: the answer to the challenge.
    Auth {
        /// The client's identity.
        peer_id: PeerId,
        /// Ed25519 signature over `"kizuna-relay-auth-v1" || nonce || relay`.
        signature: [u8; 64],
        /// An admission token (`<expiry>.<mac>`), if the client has one.
        token: Option<String>,
    },
    /// Client → relay: purpose "control connection".
    Control,
    /// Client → relay: purpose "give me a circuit to `target`".
    Dial {
        /// The reserved peer to reach.
        target: PeerId,
    },
    /// Client → relay: purpose "I accept circuit `circuit`".
    Accept {
        /// The circuit announced by `incoming`.
        circuit: CircuitId,
    },
    /// Client → relay (control): create or renew the sender's reservation; `0` releases it.
    Reserve {
        /// Requested lifetime in seconds (the relay may shorten it).
        ttl_secs: u64,
    },
    /// Relay → client (control): the reservation stands for this many seconds.
    Reserved {
        /// Granted lifetime in seconds (`0`: released).
        expires_in_secs: u64,
        /// The address the relay sees this control connection come from (a TCP
        /// mapping: its IP is the client's public IP), if known.
        observed: Option<SocketAddr>,
        /// STUN servers the relay answers on (at most [`MAX_ADVERTISED_STUN`]): the
        /// client learns its UDP mapping from them for hole punching.
        stun: Vec<SocketAddr>,
    },
    /// Client → relay (control): forward `payload` to reserved peer `to`.
    Signal {
        /// The recipient.
        to: PeerId,
        /// Opaque bytes, at most [`MAX_SIGNAL_LEN`](super::MAX_SIGNAL_LEN).
        payload: Vec<u8>,
    },
    /// Relay → client (control): a signal from peer `from`.
    Signaled {
        /// The authenticated sender.
        from: PeerId,
        /// Opaque bytes.
        payload: Vec<u8>,
    },
    /// Relay → client (control): peer `from` asks for circuit `circuit` to you.
    Incoming {
        /// The circuit to accept (new `accept` connection) or refuse (`refuse`).
        circuit: CircuitId,
        /// The authenticated dialer.
        from: PeerId,
    },
    /// Client → relay (control): refuse an incoming circuit.
    Refuse {
        /// The circuit.
        circuit: CircuitId,
        /// Human-readable reason, relayed to the dialer.
        reason: String,
    },
    /// Relay → client (dial or accept connection): the circuit is open; every later
    /// binary message on this connection is the other end's opaque bytes.
    CircuitReady {
        /// The circuit.
        circuit: CircuitId,
        /// The peer at the other end.
        peer: PeerId,
        /// The circuit closes after this many seconds.
        max_duration_secs: u64,
        /// The circuit closes after carrying this many bytes (both directions together).
        max_bytes: u64,
    },
    /// Relay → client (dial connection): the target refused; the relay closes next.
    CircuitRefused {
        /// The target's reason.
        reason: String,
    },
    /// Relay → client: an error; if it ends the connection, the close follows.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// A message this version does not know. Encodes as `{"type": "unknown"}`.
    Unknown,
}

impl From<Purpose> for RelayMessage {
    fn from(p: Purpose) -> Self {
        match p {
            Purpose::Control => RelayMessage::Control,
            Purpose::Dial { target } => RelayMessage::Dial { target },
            Purpose::Accept { circuit } => RelayMessage::Accept { circuit },
        }
    }
}

impl RelayMessage {
    /// The purpose this message declares, if it is a purpose message.
    pub fn purpose(&self) -> Option<Purpose> {
        match self {
            RelayMessage::Control => Some(Purpose::Control),
            RelayMessage::Dial { target } => Some(Purpose::Dial { target: *target }),
            RelayMessage::Accept { circuit } => Some(Purpose::Accept { circuit: *circuit }),
            _ => None,
        }
    }

    /// The message's `type` string on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            RelayMessage::Challenge { .. } => "challenge",
            RelayMessage::Auth { .. } => "auth",
            RelayMessage::Control => "control",
            RelayMessage::Dial { .. } => "dial",
            RelayMessage::Accept { .. } => "accept",
            RelayMessage::Reserve { .. } => "reserve",
            RelayMessage::Reserved { .. } => "reserved",
            RelayMessage::Signal { .. } => "signal",
            RelayMessage::Signaled { .. } => "signaled",
            RelayMessage::Incoming { .. } => "incoming",
            RelayMessage::Refuse { .. } => "refuse",
            RelayMessage::CircuitReady { .. } => "circuit_ready",
            RelayMessage::CircuitRefused { .. } => "circuit_refused",
            RelayMessage::Error { .. } => "error",
            RelayMessage::Unknown => "unknown",
        }
    }

    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        RelayMessage::Error { code, message: message.into() }
    }

    /// Encodes the message as one MessagePack map with named fields.
    ///
    /// Fails with [`WireError::FrameTooLarge`] if the encoding exceeds
    /// [`MAX_RELAY_MESSAGE_LEN`] (only possible with oversized strings or payloads).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let t = TypeTag(self.type_name());
        let out = match self {
            RelayMessage::Challenge { nonce, relay } => {
                to_vec(&ChallengeBody { ty: t, nonce: *nonce, relay: relay.clone() })
            }
            RelayMessage::Auth { peer_id, signature, token } => {
                to_vec(&AuthBody { ty: t, peer_id: *peer_id, signature: *signature, token: token.clone() })
            }
            RelayMessage::Control | RelayMessage::Unknown => to_vec(&EmptyBody { ty: t }),
            RelayMessage::Dial { target } => to_vec(&DialBody { ty: t, target: *target }),
            RelayMessage::Accept { circuit } => to_vec(&CircuitBody { ty: t, circuit: *circuit }),
            RelayMessage::Reserve { ttl_secs } => to_vec(&ReserveBody { ty: t, ttl_secs: *ttl_secs }),
            RelayMessage::Reserved { expires_in_secs, observed, stun } => to_vec(&ReservedBody {
                ty: t,
                expires_in_secs: *expires_in_secs,
                observed: observed.map(|a| a.to_string()),
                stun: stun.iter().map(|a| a.to_string()).collect(),
            }),
            RelayMessage::Signal { to, payload } => {
                to_vec(&SignalBody { ty: t, to: *to, payload: payload.clone() })
            }
            RelayMessage::Signaled { from, payload } => {
                to_vec(&SignaledBody { ty: t, from: *from, payload: payload.clone() })
            }
            RelayMessage::Incoming { circuit, from } => {
                to_vec(&IncomingBody { ty: t, circuit: *circuit, from: *from })
            }
            RelayMessage::Refuse { circuit, reason } => {
                to_vec(&RefuseBody { ty: t, circuit: *circuit, reason: reason.clone() })
            }
            RelayMessage::CircuitReady { circuit, peer, max_duration_secs, max_bytes } => {
                to_vec(&ReadyBody {
                    ty: t,
                    circuit: *circuit,
                    peer: *peer,
                    max_duration_secs: *max_duration_secs,
                    max_bytes: *max_bytes,
                })
            }
            RelayMessage::CircuitRefused { reason } => to_vec(&RefusedBody { ty: t, reason: reason.clone() }),
            RelayMessage::Error { code, message } => {
                to_vec(&ErrorBody { ty: t, code: code.as_u16(), message: message.clone() })
            }
        }?;
        if out.len() > MAX_RELAY_MESSAGE_LEN {
            return Err(WireError::FrameTooLarge { len: out.len(), max: MAX_RELAY_MESSAGE_LEN });
        }
        Ok(out)
    }

    /// Decodes one relay message.
    ///
    /// Checks, in order: length ≤ [`MAX_RELAY_MESSAGE_LEN`] (else `FrameTooLarge`), the
    /// structural MessagePack rules (one value, nesting ≤ 16, declared lengths present),
    /// a map with a string `type`, then the fields of that type. Allocates at most a small
    /// multiple of `bytes.len()`.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_RELAY_MESSAGE_LEN {
            return Err(WireError::FrameTooLarge { len: bytes.len(), max: MAX_RELAY_MESSAGE_LEN });
        }
        crate::wire::msgpack::validate(bytes).map_err(malformed)?;
        if !crate::wire::msgpack::is_map(bytes) {
            return Err(malformed("not a MessagePack map"));
        }
        let tag: Tag<'_> = from_slice(bytes)?;
        Ok(match &*tag.ty {
            "challenge" => {
                let b: ChallengeBody = from_slice(bytes)?;
                RelayMessage::Challenge { nonce: b.nonce, relay: b.relay }
            }
            "auth" => {
                let b: AuthBody = from_slice(bytes)?;
                RelayMessage::Auth { peer_id: b.peer_id, signature: b.signature, token: b.token }
            }
            "control" => RelayMessage::Control,
            "dial" => RelayMessage::Dial { target: from_slice::<DialBody>(bytes)?.target },
            "accept" => RelayMessage::Accept { circuit: from_slice::<CircuitBody>(bytes)?.circuit },
            "reserve" => RelayMessage::Reserve { ttl_secs: from_slice::<ReserveBody>(bytes)?.ttl_secs },
            "reserved" => {
                let b: ReservedBody = from_slice(bytes)?;
                if b.stun.len() > MAX_ADVERTISED_STUN {
                    return Err(malformed(format!(
                        "{} STUN servers advertised, at most {MAX_ADVERTISED_STUN}",
                        b.stun.len()
                    )));
                }
                let addr =
                    |s: &str| s.parse::<SocketAddr>().map_err(|_| malformed(format!("bad address {s:?}")));
                RelayMessage::Reserved {
                    expires_in_secs: b.expires_in_secs,
                    observed: b.observed.as_deref().map(addr).transpose()?,
                    stun: b.stun.iter().map(|s| addr(s)).collect::<Result<_, _>>()?,
                }
            }
            "signal" => {
                let b: SignalBody = from_slice(bytes)?;
                RelayMessage::Signal { to: b.to, payload: b.payload }
            }
            "signaled" => {
                let b: SignaledBody = from_slice(bytes)?;
                RelayMessage::Signaled { from: b.from, payload: b.payload }
            }
            "incoming" => {
                let b: IncomingBody = from_slice(bytes)?;
                RelayMessage::Incoming { circuit: b.circuit, from: b.from }
            }
            "refuse" => {
                let b: RefuseBody = from_slice(bytes)?;
                RelayMessage::Refuse { circuit: b.circuit, reason: b.reason }
            }
            "circuit_ready" => {
                let b: ReadyBody = from_slice(bytes)?;
                RelayMessage::CircuitReady {
                    circuit: b.circuit,
                    peer: b.peer,
                    max_duration_secs: b.max_duration_secs,
                    max_bytes: b.max_bytes,
                }
            }
            "circuit_refused" => {
                RelayMessage::CircuitRefused { reason: from_slice::<RefusedBody>(bytes)?.reason }
            }
            "error" => {
                let b: ErrorBody = from_slice(bytes)?;
                RelayMessage::Error { code: ErrorCode::from_u16(b.code), message: b.message }
            }
            _ => RelayMessage::Unknown,
        })
    }
}

fn malformed(e: impl ToString) -> WireError {
    WireError::Malformed { what: "relay message", reason: e.to_string() }
}

fn to_vec<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec_named(v).map_err(malformed)
}

fn from_slice<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, WireError> {
    rmp_serde::from_slice(b).map_err(malformed)
}

// One body per message, fields in wire order. `deny_unknown_fields` is deliberately
// absent: newer versions may add fields.

#[derive(Serialize, Deserialize)]
struct EmptyBody {
    #[serde(rename = "type")]
    ty: TypeTag,
}

#[derive(Serialize, Deserialize)]
struct ChallengeBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    #[serde(with = "serde_bytes")]
    nonce: [u8; 32],
    relay: String,
}

#[derive(Serialize, Deserialize)]
struct AuthBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    peer_id: PeerId,
    #[serde(with = "serde_bytes")]
    signature: [u8; 64],
    token: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct DialBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    target: PeerId,
}

#[derive(Serialize, Deserialize)]
struct CircuitBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    circuit: CircuitId,
}

#[derive(Serialize, Deserialize)]
struct ReserveBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    ttl_secs: u64,
}

#[derive(Serialize, Deserialize)]
struct ReservedBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    expires_in_secs: u64,
    /// `"IP:PORT"`; absent when unknown (and from relays older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed: Option<String>,
    /// `"IP:PORT"` each; absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stun: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct SignalBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    to: PeerId,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct SignaledBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    from: PeerId,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct IncomingBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    circuit: CircuitId,
    from: PeerId,
}

#[derive(Serialize, Deserialize)]
struct RefuseBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    circuit: CircuitId,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct ReadyBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    circuit: CircuitId,
    peer: PeerId,
    max_duration_secs: u64,
    max_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct RefusedBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    ty: TypeTag,
    code: u16,
    message: String,
}
