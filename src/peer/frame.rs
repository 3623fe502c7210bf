//! The frames of the per-peer session layer, carried as Kizuna messages on every path of
//! a peer whose hello announced the session layer (`docs/protocol.md` §11).
//!
//! Each frame is one message: a kind byte, then fixed big-endian fields, then (for `DATA`
//! and `SIGNAL`) the payload to the end of the message.
//!
//! ```text
//! DATA        0x00  seq: u64                         payload…   an application message
//! ACK         0x01  delivered: u64                              cumulative acknowledgement
//! HELLO       0x02  epoch: u64  seen: u64  delivered: u64  base: u64   first on each path
//! PROBE       0x03  nonce: u64                                  path health probe
//! PROBE_REPLY 0x04  nonce: u64                                  its answer, on the same path
//! SIGNAL      0x05  tag: u8                          payload…   signaling (punch, WebRTC)
//! ```
//!
//! Decoding is total: any byte string yields a [`SessionFrame`] or a [`FrameError`]; an
//! unknown kind is [`FrameError::UnknownKind`] (the receiver ignores it, so later versions
//! can add kinds). Payloads are zero-copy slices of the message.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes a `DATA` frame adds in front of the application's message.
pub const DATA_HEADER_LEN: usize = 9;

/// Largest application message a `DATA` frame carries: the wire's message limit minus the
/// header.
pub const MAX_PAYLOAD: usize = crate::wire::MAX_MESSAGE_LEN - DATA_HEADER_LEN;

const DATA: u8 = 0x00;
const ACK: u8 = 0x01;
const HELLO: u8 = 0x02;
const PROBE: u8 = 0x03;
const PROBE_REPLY: u8 = 0x04;
const SIGNAL: u8 = 0x05;

/// One session-layer frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionFrame {
    /// Application message number `seq` (from 1, per sender epoch).
    Data {
        /// Sequence number.
        seq: u64,
        /// The application's bytes.
        payload: Bytes,
    },
    /// Every message up to and including `delivered` reached the application.
    Ack {
        /// The highest sequence number delivered in order.
        delivered: u64,
    },
    /// Sent first on every path: the sender's epoch (a random id of its session state), the
    /// epoch it last received from the peer (`0`: none), what it delivered of it, and the
    /// number of the oldest message it still holds for the peer (where a receiver that
    /// does not know `epoch` yet starts).
    Hello {
        /// The sender's epoch.
        epoch: u64,
        /// The peer's epoch the sender knows.
        seen: u64,
        /// Highest sequence number of `seen` delivered to the application.
        delivered: u64,
        /// The sender's oldest unacknowledged number (1 for a fresh session).
        base: u64,
    },
    /// A probe; the receiver answers with [`SessionFrame::ProbeReply`] on the same path.
    Probe {
        /// Echoed in the reply.
        nonce: u64,
    },
    /// The answer to a probe.
    ProbeReply {
        /// The probe's nonce.
        nonce: u64,
    },
    /// A signaling message (hole punching, WebRTC) carried on a Kizuna connection.
    Signal {
        /// What it is for (see [`crate::punch::signal`]).
        tag: u8,
        /// Its bytes.
        payload: Bytes,
    },
}

/// Why a message is not a session frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message is empty.
    #[error("empty session frame")]
    Empty,
    /// The message ends before the frame's fixed fields.
    #[error("session frame of kind {kind:#04x} truncated: {len} bytes, needs {need}")]
    Truncated {
        /// The kind byte.
        kind: u8,
        /// Bytes present.
        len: usize,
        /// Bytes its fixed fields need.
        need: usize,
    },
    /// Fixed-size frames must not carry trailing bytes.
    #[error("session frame of kind {kind:#04x} has {extra} trailing bytes")]
    Trailing {
        /// The kind byte.
        kind: u8,
        /// Bytes beyond the frame.
        extra: usize,
    },
    /// A kind this version does not know (ignored by receivers).
    #[error("unknown session frame kind {0:#04x}")]
    UnknownKind(u8),
    /// `DATA` with sequence number 0, which is never sent.
    #[error("DATA frame with sequence number 0")]
    ZeroSeq,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl SessionFrame {
    /// Decodes one message.
    pub fn decode(msg: &Bytes) -> Result<Self, FrameError> {
        let Some(&kind) = msg.first() else { return Err(FrameError::Empty) };
        let need = match kind {
            DATA | ACK | PROBE | PROBE_REPLY => 9,
            HELLO => 33,
            SIGNAL => 2,
            other => return Err(FrameError::UnknownKind(other)),
        };
        if msg.len() < need {
            return Err(FrameError::Truncated { kind, len: msg.len(), need });
        }
        if !matches!(kind, DATA | SIGNAL) && msg.len() > need {
            return Err(FrameError::Trailing { kind, extra: msg.len() - need });
        }
        Ok(match kind {
            DATA => {
                let seq = u64_at(msg, 1);
                if seq == 0 {
                    return Err(FrameError::ZeroSeq);
                }
                SessionFrame::Data { seq, payload: msg.slice(DATA_HEADER_LEN..) }
            }
            ACK => SessionFrame::Ack { delivered: u64_at(msg, 1) },
            HELLO => SessionFrame::Hello {
                epoch: u64_at(msg, 1),
                seen: u64_at(msg, 9),
                delivered: u64_at(msg, 17),
                base: u64_at(msg, 25),
            },
            PROBE => SessionFrame::Probe { nonce: u64_at(msg, 1) },
            PROBE_REPLY => SessionFrame::ProbeReply { nonce: u64_at(msg, 1) },
            _ => SessionFrame::Signal { tag: msg[1], payload: msg.slice(2..) },
        })
    }

    /// Encodes the frame as one message.
    pub fn encode(&self) -> Bytes {
        match self {
            SessionFrame::Data { seq, payload } => encode_data(*seq, payload),
            SessionFrame::Ack { delivered } => fixed(ACK, &[*delivered]),
            SessionFrame::Hello { epoch, seen, delivered, base } => {
                fixed(HELLO, &[*epoch, *seen, *delivered, *base])
            }
            SessionFrame::Probe { nonce } => fixed(PROBE, &[*nonce]),
            SessionFrame::ProbeReply { nonce } => fixed(PROBE_REPLY, &[*nonce]),
            SessionFrame::Signal { tag, payload } => {
                let mut b = BytesMut::with_capacity(2 + payload.len());
                b.put_u8(SIGNAL);
                b.put_u8(*tag);
                b.put_slice(payload);
                b.freeze()
            }
        }
    }
}

/// Encodes `DATA` for `seq` and `payload` (one copy of the payload).
pub fn encode_data(seq: u64, payload: &[u8]) -> Bytes {
    encode_data_in(&mut BytesMut::new(), seq, payload)
}

/// Encodes `DATA` for `seq` and `payload` at the end of `buf` and splits it off: a batch
/// of small messages encoded into one buffer shares one allocation.
pub fn encode_data_in(buf: &mut BytesMut, seq: u64, payload: &[u8]) -> Bytes {
    buf.reserve(DATA_HEADER_LEN + payload.len());
    buf.put_u8(DATA);
    buf.put_u64(seq);
    buf.put_slice(payload);
    buf.split().freeze()
}

/// The header of `DATA` number `seq`: the message is this header followed by the payload
/// (for transports that send the two without joining them).
pub fn data_header(seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(DATA_HEADER_LEN);
    b.put_u8(DATA);
    b.put_u64(seq);
    b.freeze()
}

fn fixed(kind: u8, fields: &[u64]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + 8 * fields.len());
    b.put_u8(kind);
    for f in fields {
        b.put_u64(*f);
    }
    b.freeze()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn snapshots() {
        let data = SessionFrame::Data { seq: 0x0102, payload: Bytes::from_static(b"hi") }.encode();
        assert_eq!(&data[..], &[0, 0, 0, 0, 0, 0, 0, 1, 2, b'h', b'i']);
        let hello = SessionFrame::Hello { epoch: 7, seen: 8, delivered: 9, base: 1 }.encode();
        assert_eq!(hello.len(), 33);
        assert_eq!(&hello[..10], &[2, 0, 0, 0, 0, 0, 0, 0, 7, 0]);
        assert_eq!(&SessionFrame::Ack { delivered: 1 }.encode()[..], &[1, 0, 0, 0, 0, 0, 0, 0, 1]);
        let sig = SessionFrame::Signal { tag: 0x13, payload: Bytes::from_static(b"x") }.encode();
        assert_eq!(&sig[..], &[5, 0x13, b'x']);
    }

    #[test]
    fn a_header_and_a_batch_buffer_encode_what_encode_data_does() {
        let mut buf = BytesMut::new();
        let a = encode_data_in(&mut buf, 1, b"first");
        let b = encode_data_in(&mut buf, 2, b"second");
        assert_eq!(a, encode_data(1, b"first"));
        assert_eq!(b, encode_data(2, b"second"));
        let mut joined = data_header(3).to_vec();
        joined.extend_from_slice(b"third");
        assert_eq!(&joined[..], &encode_data(3, b"third")[..]);
        assert_eq!(
            SessionFrame::decode(&Bytes::from(joined)).unwrap(),
            SessionFrame::Data { seq: 3, payload: Bytes::from_static(b"third") }
        );
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let d = |b: &'static [u8]| SessionFrame::decode(&Bytes::from_static(b));
        assert_eq!(d(b""), Err(FrameError::Empty));
        assert_eq!(d(&[0, 1, 2]), Err(FrameError::Truncated { kind: 0, len: 3, need: 9 }));
        assert_eq!(d(&[0; 9]), Err(FrameError::ZeroSeq));
        assert_eq!(d(&[1; 10]), Err(FrameError::Trailing { kind: 1, extra: 1 }));
        assert_eq!(d(&[2; 32]), Err(FrameError::Truncated { kind: 2, len: 32, need: 33 }));
        assert_eq!(d(&[5]), Err(FrameError::Truncated { kind: 5, len: 1, need: 2 }));
        assert_eq!(d(&[0x42, 1]), Err(FrameError::UnknownKind(0x42)));
    }

    fn frame() -> impl Strategy<Value = SessionFrame> {
        let bytes = prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from);
        prop_oneof![
            (1u64.., bytes.clone()).prop_map(|(seq, payload)| SessionFrame::Data { seq, payload }),
            any::<u64>().prop_map(|delivered| SessionFrame::Ack { delivered }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(epoch, seen, delivered, base)| SessionFrame::Hello { epoch, seen, delivered, base }
            ),
            any::<u64>().prop_map(|nonce| SessionFrame::Probe { nonce }),
            any::<u64>().prop_map(|nonce| SessionFrame::ProbeReply { nonce }),
            (any::<u8>(), bytes).prop_map(|(tag, payload)| SessionFrame::Signal { tag, payload }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(f in frame()) {
            prop_assert_eq!(SessionFrame::decode(&f.encode()).unwrap(), f);
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = SessionFrame::decode(&Bytes::from(b));
        }
    }
}
