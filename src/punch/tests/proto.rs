//! Hex snapshots of the punch messages and datagrams, round trips, and totality of the
//! decoders.

use proptest::prelude::*;

use super::addr;
use crate::punch::{
    candidates::{Candidate, CandidateKind, MappingHint},
    packet::{is_punch_datagram, Datagram, MAX_DATAGRAM_LEN, PROBE_LEN},
    PunchDecodeError, PunchMessage, MAX_CANDIDATES, MAX_PUNCH_MESSAGE_LEN, MAX_REASON_LEN,
};

fn snapshot(msg: PunchMessage, hex: &str) {
    let enc = msg.encode();
    assert_eq!(hex::encode(&enc), hex, "encoding of {msg:?} changed");
    assert_eq!(PunchMessage::decode(&hex::decode(hex).unwrap()).unwrap(), msg);
}

fn cand(kind: CandidateKind, a: &str, priority: u32) -> Candidate {
    Candidate { kind, addr: addr(a), priority }
}

fn offer() -> PunchMessage {
    PunchMessage::Offer {
        token: [0x42; 16],
        mapping: MappingHint::EndpointIndependent,
        candidates: vec![
            cand(CandidateKind::Host, "10.0.1.2:5000", 7),
            cand(CandidateKind::ServerReflexive, "[2001:db8::1]:443", 6),
        ],
    }
}

#[test]
fn snapshot_offer_and_answer() {
    snapshot(offer(), "84a474797065a56f66666572a5746f6b656ec41042424242424242424242424242424242a76d617070696e67a365696daa63616e646964617465739283a46b696e64a4686f7374a461646472c4060a0001021388a87072696f726974790783a46b696e64a57372666c78a461646472c41220010db800000000000000000000000101bba87072696f7269747906");
    snapshot(
        PunchMessage::Answer {
            mapping: MappingHint::AddressAndPortDependent,
            candidates: vec![cand(CandidateKind::RelayObserved, "198.51.100.20:40001", 1)],
        },
        "83a474797065a6616e73776572a76d617070696e67a46170646daa63616e646964617465739183a46b696e64a572656c6179a461646472c406c63364149c41a87072696f7269747901",
    );
}

#[test]
fn snapshot_rtt_sync_and_results() {
    snapshot(PunchMessage::Ping { seq: 1, sent_us: 0 }, "83a474797065a470696e67a373657101a773656e745f757300");
    snapshot(
        PunchMessage::Pong { seq: 2, sent_us: 80_000 },
        "83a474797065a4706f6e67a373657102a773656e745f7573ce00013880",
    );
    snapshot(
        PunchMessage::Sync { round: 1, rtt_us: 80_000 },
        "83a474797065a473796e63a5726f756e6401a67274745f7573ce00013880",
    );
    snapshot(
        PunchMessage::Success { remote: addr("203.0.113.10:20001") },
        "82a474797065a773756363657373a672656d6f7465c406cb00710a4e21",
    );
    snapshot(
        PunchMessage::Failure { reason: "no direct path".into() },
        "82a474797065a76661696c757265a6726561736f6eae6e6f206469726563742070617468",
    );
    snapshot(PunchMessage::Unknown, "81a474797065a7756e6b6e6f776e");
}

#[test]
fn snapshot_datagrams() {
    let probe = Datagram::Probe { token: [0x42; 16], txid: 0x0102_0304_0506_0708 };
    let hex = "136b7a700101424242424242424242424242424242420102030405060708";
    assert_eq!(hex::encode(probe.encode()), hex);
    assert_eq!(probe.encode().len(), PROBE_LEN);
    assert_eq!(Datagram::decode(&hex::decode(hex).unwrap()), Some(probe));
    let ack = Datagram::Ack {
        token: [0x42; 16],
        txid: 0x0102_0304_0506_0708,
        observed: addr("203.0.113.10:20001"),
    };
    let hex = "136b7a70010242424242424242424242424242424242010203040506070804cb00710a4e21";
    assert_eq!(hex::encode(ack.encode()), hex);
    assert_eq!(Datagram::decode(&hex::decode(hex).unwrap()), Some(ack));
    let ack6 = Datagram::Ack { token: [0x42; 16], txid: 1, observed: addr("[2001:db8::1]:443") };
    let hex =
        "136b7a7001024242424242424242424242424242424200000000000000010620010db800000000000000000000000101bb";
    assert_eq!(hex::encode(ack6.encode()), hex);
    assert_eq!(ack6.encode().len(), MAX_DATAGRAM_LEN);
    assert_eq!(Datagram::decode(&hex::decode(hex).unwrap()), Some(ack6));
}

#[test]
fn datagram_demux_by_first_byte() {
    let probe = Datagram::Probe { token: [1; 16], txid: 9 }.encode();
    assert!(is_punch_datagram(&probe));
    // STUN (first byte 0x00/0x01) and QUIC (fixed bit 0x40 set) never match the magic.
    assert!(!is_punch_datagram(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]));
    assert!(!is_punch_datagram(&[0xc3, 0, 0, 0, 1]));
    assert!(!is_punch_datagram(&[0x43, 0x6b, 0x7a, 0x70]));
    // Version, kind, length and address family are all checked.
    let mut bad = probe.clone();
    bad[4] = 2;
    assert_eq!(Datagram::decode(&bad), None);
    let mut bad = probe.clone();
    bad[5] = 3;
    assert_eq!(Datagram::decode(&bad), None);
    assert_eq!(Datagram::decode(&probe[..PROBE_LEN - 1]), None);
    assert_eq!(Datagram::decode(&[probe.as_slice(), &[0]].concat()), None);
    let mut ack = Datagram::Ack { token: [1; 16], txid: 9, observed: addr("192.0.2.1:1") }.encode();
    ack[PROBE_LEN] = 6; // claims IPv6 with an IPv4 body
    assert_eq!(Datagram::decode(&ack), None);
}

#[test]
fn decode_errors_are_typed() {
    let big = vec![0u8; MAX_PUNCH_MESSAGE_LEN + 1];
    assert!(matches!(PunchMessage::decode(&big), Err(PunchDecodeError::TooLarge { .. })));
    assert!(matches!(PunchMessage::decode(&[]), Err(PunchDecodeError::Malformed(_))));
    assert!(matches!(PunchMessage::decode(&[0x93, 1, 2, 3]), Err(PunchDecodeError::Malformed(_))));
    // A ping without its fields.
    let e = PunchMessage::decode(&hex::decode("81a474797065a470696e67").unwrap()).unwrap_err();
    assert!(matches!(e, PunchDecodeError::Malformed(_)), "{e}");
    // An address of 5 bytes.
    let e = PunchMessage::decode(
        &hex::decode("82a474797065a773756363657373a672656d6f7465c405cb00710a4e").unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("5 bytes"), "{e}");
    // Port 0 and the unspecified address are refused.
    let zero = PunchMessage::Success { remote: addr("0.0.0.0:5000") }.encode();
    assert_eq!(PunchMessage::decode(&zero), Err(PunchDecodeError::UnusableAddress(addr("0.0.0.0:5000"))));
    let mcast = PunchMessage::Answer {
        mapping: MappingHint::Unknown,
        candidates: vec![cand(CandidateKind::Host, "224.0.0.1:5000", 1)],
    }
    .encode();
    assert!(matches!(PunchMessage::decode(&mcast), Err(PunchDecodeError::UnusableAddress(_))));
}

#[test]
fn too_many_candidates_are_refused_and_never_sent() {
    let many: Vec<Candidate> =
        (0..40u16).map(|i| cand(CandidateKind::Host, &format!("192.0.2.1:{}", 1000 + i), 1)).collect();
    // The encoder keeps the first MAX_CANDIDATES.
    let enc = PunchMessage::Answer { mapping: MappingHint::Unknown, candidates: many.clone() }.encode();
    match PunchMessage::decode(&enc).unwrap() {
        PunchMessage::Answer { candidates, .. } => assert_eq!(candidates, many[..MAX_CANDIDATES]),
        other => panic!("{other:?}"),
    }
    // A hand-built message with more is a typed error.
    let mut raw =
        hex::decode("83a474797065a6616e73776572a76d617070696e67a365696daa63616e64696461746573dc0011")
            .unwrap();
    let one = hex::decode("83a46b696e64a4686f7374a461646472c406c0000201138aa87072696f7269747901").unwrap();
    for _ in 0..17 {
        raw.extend_from_slice(&one);
    }
    assert_eq!(PunchMessage::decode(&raw), Err(PunchDecodeError::TooManyCandidates { count: 17, max: 16 }));
}

#[test]
fn forward_compatibility() {
    // Unknown type, unknown field, unknown candidate kind, unknown mapping name.
    assert_eq!(
        PunchMessage::decode(&hex::decode("81a474797065a3666f6f").unwrap()).unwrap(),
        PunchMessage::Unknown
    );
    let raw = hex::decode(concat!(
        "84a474797065a6616e73776572a76d617070696e67a3787878aa63616e646964617465739283a46b696e64",
        "a47475726ea461646472c406c0000201138aa87072696f726974790183a46b696e64a4686f7374a461646472",
        "c406c0000201138aa87072696f7269747901a56578747261c3",
    ))
    .unwrap();
    assert_eq!(
        PunchMessage::decode(&raw).unwrap(),
        PunchMessage::Answer {
            mapping: MappingHint::Unknown,
            candidates: vec![cand(CandidateKind::Host, "192.0.2.1:5002", 1)],
        }
    );
}

#[test]
fn long_reasons_are_cut_at_a_char_boundary() {
    let reason = "é".repeat(MAX_REASON_LEN); // 2 bytes each
    let enc = PunchMessage::Failure { reason }.encode();
    match PunchMessage::decode(&enc).unwrap() {
        PunchMessage::Failure { reason } => {
            assert!(reason.len() <= MAX_REASON_LEN && reason.chars().all(|c| c == 'é'));
        }
        other => panic!("{other:?}"),
    }
}

fn sock() -> impl Strategy<Value = std::net::SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1..=u16::MAX).prop_map(|(ip, p)| std::net::SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), 1..=u16::MAX).prop_map(|(ip, p)| std::net::SocketAddr::from((ip, p))),
    ]
    .prop_filter("usable", |a| crate::punch::candidates::is_usable(*a))
}

fn candidate() -> impl Strategy<Value = Candidate> {
    let kind = prop_oneof![
        Just(CandidateKind::Host),
        Just(CandidateKind::ServerReflexive),
        Just(CandidateKind::RelayObserved)
    ];
    (kind, sock(), any::<u32>()).prop_map(|(kind, addr, priority)| Candidate { kind, addr, priority })
}

fn mapping() -> impl Strategy<Value = MappingHint> {
    prop_oneof![
        Just(MappingHint::Unknown),
        Just(MappingHint::EndpointIndependent),
        Just(MappingHint::AddressDependent),
        Just(MappingHint::AddressAndPortDependent),
        Just(MappingHint::UdpBlocked)
    ]
}

/// Any valid message.
pub(super) fn message() -> impl Strategy<Value = PunchMessage> {
    let cands = || proptest::collection::vec(candidate(), 0..=MAX_CANDIDATES);
    prop_oneof![
        (any::<[u8; 16]>(), mapping(), cands())
            .prop_map(|(token, mapping, candidates)| PunchMessage::Offer { token, mapping, candidates }),
        (mapping(), cands()).prop_map(|(mapping, candidates)| PunchMessage::Answer { mapping, candidates }),
        (any::<u32>(), any::<u64>()).prop_map(|(seq, sent_us)| PunchMessage::Ping { seq, sent_us }),
        (any::<u32>(), any::<u64>()).prop_map(|(seq, sent_us)| PunchMessage::Pong { seq, sent_us }),
        (any::<u8>(), any::<u64>()).prop_map(|(round, rtt_us)| PunchMessage::Sync { round, rtt_us }),
        sock().prop_map(|remote| PunchMessage::Success { remote }),
        ".{0,60}".prop_map(|reason| PunchMessage::Failure { reason }),
        Just(PunchMessage::Unknown),
    ]
}

proptest! {
    #[test]
    fn round_trip(m in message()) {
        let enc = m.encode();
        prop_assert!(enc.len() <= MAX_PUNCH_MESSAGE_LEN);
        prop_assert_eq!(PunchMessage::decode(&enc).unwrap(), m);
    }

    #[test]
    fn truncations_never_decode(m in message(), cut in any::<prop::sample::Index>()) {
        let enc = m.encode();
        let n = cut.index(enc.len());
        prop_assert!(PunchMessage::decode(&enc[..n]).is_err());
    }

    #[test]
    fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = PunchMessage::decode(&b);
        let _ = Datagram::decode(&b);
    }

    #[test]
    fn datagram_round_trip(token in any::<[u8; 16]>(), txid in any::<u64>(), observed in sock(), ack in any::<bool>()) {
        let d = if ack { Datagram::Ack { token, txid, observed } } else { Datagram::Probe { token, txid } };
        prop_assert_eq!(Datagram::decode(&d.encode()), Some(d));
    }
}
