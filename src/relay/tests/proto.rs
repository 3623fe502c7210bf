//! Hex snapshots (the test vectors of `docs/protocol.md`, "Relay protocol"), property
//! round trips and totality of the decoder.

use proptest::prelude::*;

use super::{peer, reserved};
use crate::{
    error::WireError,
    relay::{CircuitId, ErrorCode, Purpose, RelayMessage, MAX_RELAY_MESSAGE_LEN},
};

/// Encodes `msg`, compares with `hex`, decodes `hex` and compares with `msg`.
fn snapshot(msg: RelayMessage, hex: &str) {
    let enc = msg.encode().unwrap();
    assert_eq!(hex::encode(&enc), hex, "encoding of {msg:?} changed");
    assert_eq!(RelayMessage::decode(&hex::decode(hex).unwrap()).unwrap(), msg);
}

#[test]
fn snapshot_challenge() {
    snapshot(
        RelayMessage::Challenge { nonce: [0xab; 32], relay: "ws://relay.example:7000".into() },
        "83a474797065a96368616c6c656e6765a56e6f6e6365c420ababababababababababababababababababababababababababababababababa572656c6179b777733a2f2f72656c61792e6578616d706c653a37303030",
    );
}

#[test]
fn snapshot_auth() {
    snapshot(
        RelayMessage::Auth { peer_id: peer(1), signature: [0x5a; 64], token: Some("1700000000.abc".into()) },
        "84a474797065a461757468a7706565725f6964c4208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ca97369676e6174757265c4405a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5aa5746f6b656eae313730303030303030302e616263",
    );
    snapshot(RelayMessage::Auth { peer_id: peer(1), signature: [0; 64], token: None }, "84a474797065a461757468a7706565725f6964c4208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ca97369676e6174757265c44000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000a5746f6b656ec0");
}

#[test]
fn snapshot_purposes() {
    snapshot(RelayMessage::Control, "81a474797065a7636f6e74726f6c");
    snapshot(RelayMessage::Dial { target: peer(2) }, "82a474797065a46469616ca6746172676574c4208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394");
    snapshot(RelayMessage::Accept { circuit: CircuitId(7) }, "82a474797065a6616363657074a76369726375697407");
}

#[test]
fn snapshot_reservation() {
    snapshot(RelayMessage::Reserve { ttl_secs: 600 }, "82a474797065a772657365727665a874746c5f73656373cd0258");
    snapshot(reserved(3600), "82a474797065a87265736572766564af657870697265735f696e5f73656373cd0e10");
    snapshot(
        RelayMessage::Reserved {
            expires_in_secs: 60,
            observed: Some("198.51.100.7:40000".parse().unwrap()),
            stun: vec!["203.0.113.1:3478".parse().unwrap()],
        },
        "84a474797065a87265736572766564af657870697265735f696e5f736563733ca86f62736572766564b23139382e35312e3130302e373a3430303030a47374756e91b03230332e302e3131332e313a33343738",
    );
}

#[test]
fn reserved_addresses_are_checked() {
    let enc = |observed: Option<&str>, stun: Vec<&str>| {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            ty: &'a str,
            expires_in_secs: u64,
            observed: Option<&'a str>,
            stun: Vec<&'a str>,
        }
        rmp_serde::to_vec_named(&Body { ty: "reserved", expires_in_secs: 5, observed, stun }).unwrap()
    };
    assert!(RelayMessage::decode(&enc(Some("198.51.100.7:1"), vec!["203.0.113.1:3478"])).is_ok());
    for bad in [
        enc(Some("not an address"), vec![]),
        enc(None, vec!["203.0.113.1"]),
        enc(None, vec!["203.0.113.1:3478"; crate::relay::proto::MAX_ADVERTISED_STUN + 1]),
    ] {
        assert!(
            matches!(RelayMessage::decode(&bad), Err(crate::error::WireError::Malformed { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn snapshot_signaling() {
    snapshot(RelayMessage::Signal { to: peer(2), payload: b"sdp".to_vec() }, "83a474797065a67369676e616ca2746fc4208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394a77061796c6f6164c403736470");
    snapshot(RelayMessage::Signaled { from: peer(1), payload: vec![] }, "83a474797065a87369676e616c6564a466726f6dc4208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ca77061796c6f6164c400");
}

#[test]
fn snapshot_circuits() {
    snapshot(RelayMessage::Incoming { circuit: CircuitId(1), from: peer(1) }, "83a474797065a8696e636f6d696e67a76369726375697401a466726f6dc4208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c");
    snapshot(
        RelayMessage::Refuse { circuit: CircuitId(1), reason: "busy".into() },
        "83a474797065a6726566757365a76369726375697401a6726561736f6ea462757379",
    );
    snapshot(
        RelayMessage::CircuitReady {
            circuit: CircuitId(1),
            peer: peer(2),
            max_duration_secs: 3600,
            max_bytes: 1 << 30,
        },
        "85a474797065ad636972637569745f7265616479a76369726375697401a470656572c4208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394b16d61785f6475726174696f6e5f73656373cd0e10a96d61785f6279746573ce40000000",
    );
    snapshot(
        RelayMessage::CircuitRefused { reason: "busy".into() },
        "82a474797065af636972637569745f72656675736564a6726561736f6ea462757379",
    );
}

#[test]
fn snapshot_error_and_unknown() {
    snapshot(
        RelayMessage::error(ErrorCode::TargetNotReserved, "no"),
        "83a474797065a56572726f72a4636f646505a76d657373616765a26e6f",
    );
    snapshot(RelayMessage::Unknown, "81a474797065a7756e6b6e6f776e");
}

#[test]
fn unknown_types_and_fields() {
    // {"type": "future", "x": [1, 2]}
    assert_eq!(
        RelayMessage::decode(&hex::decode("82a474797065a6667574757265a178920102").unwrap()).unwrap(),
        RelayMessage::Unknown
    );
    // {"type": "reserve", "ttl_secs": 5, "new": true}: unknown field ignored
    let m = hex::decode("83a474797065a772657365727665a874746c5f7365637305a36e6577c3").unwrap();
    assert_eq!(RelayMessage::decode(&m).unwrap(), RelayMessage::Reserve { ttl_secs: 5 });
    // An error code from a newer version stays an error with `Other`.
    let m = RelayMessage::Error { code: ErrorCode::Other(999), message: String::new() };
    assert_eq!(RelayMessage::decode(&m.encode().unwrap()).unwrap(), m);
}

#[test]
fn malformed_inputs_are_typed_errors() {
    let bad = |h: &str| {
        let e = RelayMessage::decode(&hex::decode(h).unwrap()).unwrap_err();
        assert!(matches!(e, WireError::Malformed { what: "relay message", .. }), "{h}: {e:?}");
    };
    bad(""); // empty
    bad("c0"); // nil, not a map
    bad("9101"); // array
    bad("81a1780a"); // map without type
    bad("81a47479706501"); // non-string type
    bad("81a474797065a772657365727665"); // reserve without ttl_secs
    bad("82a474797065a772657365727665a874746c5f73656373a178"); // ttl_secs is a string
    bad("83a474797065a772657365727665a874746c5f7365637305a874746c5f7365637306"); // duplicate field
    bad("82a474797065a772657365727665a874746c5f73656373ff"); // negative ttl
                                                             // dial with the all-zero key (rejected as a peer id)
    bad(&format!("82a474797065a46469616ca6746172676574c420{}", "00".repeat(32)));
    // dial with a 31-byte key
    bad(&format!("82a474797065a46469616ca6746172676574c41f{}", "01".repeat(31)));
    bad("82a474797065a772657365727665a874746c5f7365637305c0"); // trailing byte
    bad("dfffffffff"); // map32 declaring 4 billion entries
}

#[test]
fn size_bounds() {
    let e = RelayMessage::decode(&vec![0x80; MAX_RELAY_MESSAGE_LEN + 1]).unwrap_err();
    assert!(matches!(e, WireError::FrameTooLarge { .. }), "{e:?}");
    let big = RelayMessage::Signal { to: peer(2), payload: vec![0; MAX_RELAY_MESSAGE_LEN] };
    assert!(matches!(big.encode().unwrap_err(), WireError::FrameTooLarge { .. }));
    // The largest legitimate message fits.
    let sig = RelayMessage::Signal { to: peer(2), payload: vec![0; crate::relay::MAX_SIGNAL_LEN] };
    assert!(sig.encode().unwrap().len() < MAX_RELAY_MESSAGE_LEN);
}

#[test]
fn codes_and_purposes_convert() {
    for v in 0..=20u16 {
        assert_eq!(ErrorCode::from_u16(v).as_u16(), v);
    }
    assert_eq!(ErrorCode::DataCap.ws_close_code(), 4011);
    assert_eq!(ErrorCode::Other(u16::MAX).ws_close_code(), 4999);
    for p in [Purpose::Control, Purpose::Dial { target: peer(3) }, Purpose::Accept { circuit: CircuitId(9) }]
    {
        assert_eq!(RelayMessage::from(p).purpose(), Some(p));
    }
    assert_eq!(RelayMessage::Reserve { ttl_secs: 1 }.purpose(), None);
}

fn peer_id() -> impl Strategy<Value = crate::identity::PeerId> {
    any::<[u8; 32]>().prop_filter_map("zero key", |k| crate::identity::PeerId::from_public_key(k).ok())
}

fn message() -> impl Strategy<Value = RelayMessage> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (any::<[u8; 32]>(), ".{0,40}").prop_map(|(nonce, relay)| RelayMessage::Challenge { nonce, relay }),
        (peer_id(), proptest::collection::vec(any::<u8>(), 64), proptest::option::of(".{0,80}")).prop_map(
            |(peer_id, s, token)| RelayMessage::Auth { peer_id, signature: s.try_into().unwrap(), token }
        ),
        Just(RelayMessage::Control),
        peer_id().prop_map(|target| RelayMessage::Dial { target }),
        any::<u64>().prop_map(|c| RelayMessage::Accept { circuit: CircuitId(c) }),
        any::<u64>().prop_map(|ttl_secs| RelayMessage::Reserve { ttl_secs }),
        (any::<u64>(), proptest::option::of(sock()), proptest::collection::vec(sock(), 0..=4)).prop_map(
            |(expires_in_secs, observed, stun)| RelayMessage::Reserved { expires_in_secs, observed, stun }
        ),
        (peer_id(), bytes.clone()).prop_map(|(to, payload)| RelayMessage::Signal { to, payload }),
        (peer_id(), bytes).prop_map(|(from, payload)| RelayMessage::Signaled { from, payload }),
        (any::<u64>(), peer_id())
            .prop_map(|(c, from)| RelayMessage::Incoming { circuit: CircuitId(c), from }),
        (any::<u64>(), ".{0,40}")
            .prop_map(|(c, reason)| RelayMessage::Refuse { circuit: CircuitId(c), reason }),
        (any::<u64>(), peer_id(), any::<u64>(), any::<u64>()).prop_map(|(c, peer, d, b)| {
            RelayMessage::CircuitReady { circuit: CircuitId(c), peer, max_duration_secs: d, max_bytes: b }
        }),
        ".{0,40}".prop_map(|reason| RelayMessage::CircuitRefused { reason }),
        (any::<u16>(), ".{0,40}")
            .prop_map(|(c, message)| RelayMessage::Error { code: ErrorCode::from_u16(c), message }),
        Just(RelayMessage::Unknown),
    ]
}

proptest! {
    #[test]
    fn round_trip(m in message()) {
        let enc = m.encode().unwrap();
        prop_assert_eq!(RelayMessage::decode(&enc).unwrap(), m);
    }

    #[test]
    fn truncations_never_decode_or_panic(m in message(), cut in any::<prop::sample::Index>()) {
        let enc = m.encode().unwrap();
        let n = cut.index(enc.len());
        prop_assert!(RelayMessage::decode(&enc[..n]).is_err());
    }

    #[test]
    fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = RelayMessage::decode(&b);
    }

    #[test]
    fn mutations_never_panic(m in message(), at in any::<prop::sample::Index>(), v in any::<u8>()) {
        let mut enc = m.encode().unwrap();
        let i = at.index(enc.len());
        enc[i] = v;
        if let Ok(d) = RelayMessage::decode(&enc) {
            // Whatever decodes re-encodes and decodes to itself.
            prop_assert_eq!(RelayMessage::decode(&d.encode().unwrap()).unwrap(), d);
        }
    }
}

/// Socket addresses as the wire carries them (text: no IPv6 flow info or scope).
fn sock() -> impl Strategy<Value = std::net::SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| std::net::SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| std::net::SocketAddr::from((ip, port))),
    ]
}
