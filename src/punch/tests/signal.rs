//! The signal demultiplexer: every tag, an unknown tag, empty and garbage payloads, the
//! split form, round trips, totality.

use proptest::prelude::*;

use super::proto::message;
use crate::{
    identity::Keypair,
    punch::{
        signal::{encode_punch, Signal, SignalError, PUNCH_SIGNAL_TAG, WEBRTC_SIGNAL_TAG},
        PunchDecodeError, PunchMessage,
    },
    transport::webrtc::{SignalError as WebRtcSignalError, SignalKind, SignalMessage},
};

fn webrtc_offer() -> SignalMessage {
    let to = Keypair::from_seed([2; 32]).peer_id();
    SignalMessage::signed(&Keypair::from_seed([1; 32]), &to, 7, SignalKind::Offer, "v=0".into())
}

#[test]
fn the_tags_are_the_deployed_values() {
    assert_eq!((PUNCH_SIGNAL_TAG, WEBRTC_SIGNAL_TAG), (0x13, 0x14));
    assert_eq!(crate::transport::webrtc::WEBRTC_SIGNAL_TAG, WEBRTC_SIGNAL_TAG, "one definition");
}

#[test]
fn a_punch_signal_decodes_to_its_message() {
    let m = PunchMessage::Ping { seq: 3, sent_us: 9 };
    let payload = encode_punch(&m);
    assert_eq!(payload[0], PUNCH_SIGNAL_TAG);
    assert_eq!(&payload[1..], &m.encode()[..]);
    let s = Signal::decode(&payload).unwrap();
    assert_eq!(s, Signal::Punch(m.clone()));
    assert_eq!(s.tag(), PUNCH_SIGNAL_TAG);
    assert_eq!(s.encode().unwrap(), payload);
    assert_eq!(Signal::decode_tagged(PUNCH_SIGNAL_TAG, &m.encode()).unwrap(), Signal::Punch(m));
}

#[test]
fn a_webrtc_signal_decodes_to_its_message() {
    let m = webrtc_offer();
    let payload = m.encode().unwrap();
    let s = Signal::decode(&payload).unwrap();
    assert_eq!(s, Signal::WebRtc(m.clone()));
    assert_eq!(s.tag(), WEBRTC_SIGNAL_TAG);
    assert_eq!(s.encode().unwrap(), payload);
    assert_eq!(Signal::decode_tagged(WEBRTC_SIGNAL_TAG, &payload[1..]).unwrap(), Signal::WebRtc(m));
}

#[test]
fn unknown_tags_and_empty_payloads_are_not_kizuna_signals() {
    assert_eq!(Signal::decode(&[]), Err(SignalError::Empty));
    for tag in (0..=u8::MAX).filter(|t| ![PUNCH_SIGNAL_TAG, WEBRTC_SIGNAL_TAG].contains(t)) {
        assert_eq!(Signal::decode(&[tag, 0x80]), Err(SignalError::UnknownTag(tag)));
        assert_eq!(Signal::decode(&[tag]), Err(SignalError::UnknownTag(tag)));
    }
    // An application's signal that happens to look like a punch body is still not one.
    assert_eq!(Signal::decode(&[0x42]), Err(SignalError::UnknownTag(0x42)));
}

#[test]
fn garbage_after_a_known_tag_is_that_kind_s_decode_error() {
    for body in [&[][..], &[0xc1], &[0x81, 0xa4, b't', b'y', b'p', b'e', 0x01], &[0x92, 0x01, 0x02]] {
        let mut p = vec![PUNCH_SIGNAL_TAG];
        p.extend_from_slice(body);
        assert!(
            matches!(Signal::decode(&p), Err(SignalError::Punch(PunchDecodeError::Malformed(_)))),
            "{p:?}"
        );
        p[0] = WEBRTC_SIGNAL_TAG;
        assert!(
            matches!(Signal::decode(&p), Err(SignalError::WebRtc(WebRtcSignalError::Malformed(_)))),
            "{p:?}"
        );
    }
    // Oversized bodies are refused by size, before any parsing.
    let big = vec![PUNCH_SIGNAL_TAG; 20_000];
    assert!(matches!(Signal::decode(&big), Err(SignalError::Punch(PunchDecodeError::TooLarge { .. }))));
    let mut big = big;
    big[0] = WEBRTC_SIGNAL_TAG;
    assert!(matches!(Signal::decode(&big), Err(SignalError::WebRtc(WebRtcSignalError::TooLarge { .. }))));
}

proptest! {
    #[test]
    fn punch_round_trip(m in message()) {
        prop_assert_eq!(Signal::decode(&encode_punch(&m)).unwrap(), Signal::Punch(m));
    }

    #[test]
    fn any_payload_decodes_or_errs(p in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Signal::decode(&p);
        if let Some((&tag, body)) = p.split_first() {
            prop_assert_eq!(Signal::decode(&p), Signal::decode_tagged(tag, body));
        }
    }
}
