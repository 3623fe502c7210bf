//! Punch datagrams: the small UDP packets sent through the NATs.
//!
//! ```text
//! probe: magic "\x13kzp" (4) | version 1 (1) | kind 1 (1) | token (16) | txid (8)        = 30 B
//! ack:   magic "\x13kzp" (4) | version 1 (1) | kind 2 (1) | token (16) | txid (8)
//!        | family 4|6 (1) | observed IP (4|16) | observed port (2)                      = 37 | 49 B
//! ```
//!
//! A probe asks "do you hear me?"; the ack echoes its `txid` and reports the source
//! address the probe was seen from (like STUN's XOR-MAPPED-ADDRESS), which is how each
//! side learns the exact address the other must use. The `token` is the session's
//! random 16-byte token, known only to the two peers (it travels inside their end-to-end
//! encrypted relayed connection): datagrams without it are ignored.
//!
//! The magic's first byte, 0x13, lies in the range RFC 7983 assigns to neither STUN
//! (0–3) nor QUIC (whose fixed bit makes the first byte 64–127 or 192–255), so one UDP
//! socket can tell the three apart by the first byte ([`is_punch_datagram`]).

use std::net::SocketAddr;

use super::proto::{addr_from_bytes, addr_to_bytes};

/// The four bytes every punch datagram starts with.
pub const PUNCH_MAGIC: [u8; 4] = [0x13, b'k', b'z', b'p'];
/// The datagram format version.
pub const PUNCH_VERSION: u8 = 1;
/// Length of a probe.
pub const PROBE_LEN: usize = 30;
/// Largest punch datagram (an ack with an IPv6 address).
pub const MAX_DATAGRAM_LEN: usize = PROBE_LEN + 1 + 16 + 2;

const KIND_PROBE: u8 = 1;
const KIND_ACK: u8 = 2;

/// A decoded punch datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// "Do you hear me?"
    Probe {
        /// The session token.
        token: [u8; 16],
        /// Transaction id, echoed by the ack.
        txid: u64,
    },
    /// "I heard probe `txid`, from `observed`."
    Ack {
        /// The session token.
        token: [u8; 16],
        /// The probe's transaction id.
        txid: u64,
        /// The source address the probe arrived from.
        observed: SocketAddr,
    },
}

/// Whether `b` looks like a punch datagram (by its magic), for demultiplexing a socket
/// shared with STUN and QUIC. It may still fail to [`decode`](Datagram::decode).
pub fn is_punch_datagram(b: &[u8]) -> bool {
    b.len() >= PUNCH_MAGIC.len() && b[..PUNCH_MAGIC.len()] == PUNCH_MAGIC
}

impl Datagram {
    /// The token it carries.
    pub fn token(&self) -> &[u8; 16] {
        match self {
            Datagram::Probe { token, .. } | Datagram::Ack { token, .. } => token,
        }
    }

    /// Encodes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_DATAGRAM_LEN);
        b.extend_from_slice(&PUNCH_MAGIC);
        b.push(PUNCH_VERSION);
        match self {
            Datagram::Probe { token, txid } => {
                b.push(KIND_PROBE);
                b.extend_from_slice(token);
                b.extend_from_slice(&txid.to_be_bytes());
            }
            Datagram::Ack { token, txid, observed } => {
                b.push(KIND_ACK);
                b.extend_from_slice(token);
                b.extend_from_slice(&txid.to_be_bytes());
                b.push(if observed.is_ipv4() { 4 } else { 6 });
                addr_to_bytes(*observed, &mut b);
            }
        }
        b
    }

    /// Decodes a datagram; `None` for anything that is not exactly a well-formed punch
    /// datagram of this version (such input is simply ignored by sessions).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < PROBE_LEN || b.len() > MAX_DATAGRAM_LEN || !is_punch_datagram(b) || b[4] != PUNCH_VERSION
        {
            return None;
        }
        let mut token = [0u8; 16];
        token.copy_from_slice(&b[6..22]);
        let mut tx = [0u8; 8];
        tx.copy_from_slice(&b[22..30]);
        let txid = u64::from_be_bytes(tx);
        match (b[5], b.len()) {
            (KIND_PROBE, PROBE_LEN) => Some(Datagram::Probe { token, txid }),
            (KIND_ACK, len) if len > PROBE_LEN => {
                let expected = match b[PROBE_LEN] {
                    4 => 6,
                    6 => 18,
                    _ => return None,
                };
                let rest = &b[PROBE_LEN + 1..];
                if rest.len() != expected {
                    return None;
                }
                Some(Datagram::Ack { token, txid, observed: addr_from_bytes(rest)? })
            }
            _ => None,
        }
    }
}
