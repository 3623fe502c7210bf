//! Authentication transcript, tokens, admission rules and the server handshake.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::{key, peer};
use crate::relay::{
    auth::{
        auth_transcript, client_handshake, mint_token, verify_auth, verify_token, Admission, HandshakeStep,
        ServerHandshake, AUTH_DOMAIN, HANDSHAKE_TIMEOUT,
    },
    AuthError, ErrorCode, Purpose, RelayConfigError, RelayMessage, TokenError,
};

const RELAY: &str = "ws://relay.example:7000";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_700_000_000;

fn answer(n: u8, nonce: [u8; 32], relay: &str) -> [u8; 64] {
    key(n).sign(&auth_transcript(&nonce, relay))
}

#[test]
fn transcript_layout() {
    let t = auth_transcript(&[7; 32], "r");
    assert_eq!(&t[..AUTH_DOMAIN.len()], b"kizuna-relay-auth-v1");
    assert_eq!(&t[20..52], &[7; 32]);
    assert_eq!(&t[52..], b"r");
}

#[test]
fn good_and_bad_signatures() {
    let sig = answer(1, [9; 32], RELAY);
    assert_eq!(verify_auth(&peer(1), &[9; 32], RELAY, &sig), Ok(()));
    // Someone else's key, a flipped bit, another relay's name.
    assert!(matches!(verify_auth(&peer(2), &[9; 32], RELAY, &sig), Err(AuthError::BadSignature { .. })));
    let mut flipped = sig;
    flipped[10] ^= 1;
    assert!(verify_auth(&peer(1), &[9; 32], RELAY, &flipped).is_err());
    assert!(verify_auth(&peer(1), &[9; 32], "ws://other:7000", &sig).is_err());
}

#[test]
fn replayed_signature_with_a_new_nonce_fails() {
    let recorded = answer(1, [1; 32], RELAY);
    assert!(verify_auth(&peer(1), &[1; 32], RELAY, &recorded).is_ok());
    assert!(matches!(verify_auth(&peer(1), &[2; 32], RELAY, &recorded), Err(AuthError::BadSignature { .. })));
}

#[test]
fn token_round_trip_and_format() {
    let t = mint_token(SECRET, &peer(1), Duration::from_secs(3600), NOW);
    let (exp, mac) = t.split_once('.').unwrap();
    assert_eq!(exp, "1700003600");
    assert_eq!(mac.len(), 52);
    assert!(mac.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')));
    assert_eq!(verify_token(SECRET, &peer(1), &t, NOW), Ok(1_700_003_600));
    assert_eq!(verify_token(SECRET, &peer(1), &t, NOW + 3599), Ok(1_700_003_600));
}

#[test]
fn token_test_vector() {
    // docs/protocol.md, "Relay protocol": key of seed [1; 32], this secret, expiry 1700003600.
    let t = mint_token(SECRET, &peer(1), Duration::from_secs(3600), NOW);
    assert_eq!(t, "1700003600.cvurl6xyexr2ytguyztwbk4u2i7wpfjclcgt4qz2vtca7tapflmq");
    assert_eq!(
        hex::encode(auth_transcript(&[0xab; 32], RELAY)),
        "6b697a756e612d72656c61792d617574682d7631abababababababababababababababababababababababababababababababab77733a2f2f72656c61792e6578616d706c653a37303030"
    );
}

#[test]
fn token_expiry_is_exact() {
    let t = mint_token(SECRET, &peer(1), Duration::from_secs(60), NOW);
    assert!(verify_token(SECRET, &peer(1), &t, NOW + 59).is_ok());
    assert_eq!(
        verify_token(SECRET, &peer(1), &t, NOW + 60),
        Err(TokenError::Expired { expiry: NOW + 60, now: NOW + 60 })
    );
}

#[test]
fn token_wrong_secret_peer_or_altered_expiry() {
    let t = mint_token(SECRET, &peer(1), Duration::from_secs(60), NOW);
    assert_eq!(verify_token(b"another secret, also long enough", &peer(1), &t, NOW), Err(TokenError::BadMac));
    assert_eq!(verify_token(SECRET, &peer(2), &t, NOW), Err(TokenError::BadMac));
    let (_, mac) = t.split_once('.').unwrap();
    assert_eq!(verify_token(SECRET, &peer(1), &format!("9999999999.{mac}"), NOW), Err(TokenError::BadMac));
    // An expired forgery is a bad MAC, not "expired".
    assert_eq!(verify_token(SECRET, &peer(1), &format!("1.{mac}"), NOW), Err(TokenError::BadMac));
}

#[test]
fn garbage_tokens_are_malformed() {
    let t = mint_token(SECRET, &peer(1), Duration::from_secs(60), NOW);
    let (exp, mac) = t.split_once('.').unwrap();
    let garbage = [
        String::new(),
        ".".into(),
        "abc".into(),
        exp.to_string(),
        format!(".{mac}"),
        format!("{exp}."),
        format!("-1.{mac}"),
        format!("+{exp}.{mac}"),
        format!("99999999999999999999.{mac}"),
        format!("{exp}.{}", mac.to_ascii_uppercase()),
        format!("{exp}.{}", &mac[1..]),
        format!("{exp}.{mac}a"),
        format!("{exp}.{}1", &mac[1..]),
        format!("{exp}.{mac}.{mac}"),
        "x".repeat(10_000),
        "é.é".into(),
    ];
    for g in garbage {
        assert!(matches!(verify_token(SECRET, &peer(1), &g, NOW), Err(TokenError::Malformed(_))), "{g:?}");
    }
}

#[test]
fn admission_rules() {
    let tok = mint_token(SECRET, &peer(3), Duration::from_secs(60), NOW);
    let allow = Admission { allow: HashSet::from([peer(1)]), ..Default::default() };
    assert!(allow.admit(&peer(1), None, NOW).is_ok());
    assert!(matches!(allow.admit(&peer(2), None, NOW), Err(AuthError::NotAllowed { .. })));
    // A token at a relay without a secret admits nobody.
    assert!(matches!(allow.admit(&peer(3), Some(&tok), NOW), Err(AuthError::NotAllowed { .. })));

    let tokens = Admission { token_secret: Some(SECRET.to_vec()), ..Default::default() };
    assert!(tokens.admit(&peer(3), Some(&tok), NOW).is_ok());
    let e = tokens.admit(&peer(3), Some(&tok), NOW + 60).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ExpiredToken);
    let e = tokens.admit(&peer(4), Some(&tok), NOW).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadToken);
    assert_eq!(tokens.admit(&peer(4), None, NOW).unwrap_err().code(), ErrorCode::NotAllowed);

    assert!(Admission::open().admit(&peer(9), Some("garbage"), NOW).is_ok());
    // The secret never shows in logs.
    assert!(!format!("{tokens:?}").contains("0123"));
}

#[test]
fn config_without_a_rule_refuses_to_start() {
    let e = Admission::default().validate().unwrap_err();
    assert_eq!(e, RelayConfigError::NoAdmissionRule);
    let text = e.to_string();
    for flag in ["--allow", "--allow-file", "--token-secret", "--open"] {
        assert!(text.contains(flag), "{text}");
    }
    let short = Admission { token_secret: Some(b"short".to_vec()), ..Default::default() };
    assert!(matches!(short.validate(), Err(RelayConfigError::TokenSecretTooShort { len: 5, .. })));
    assert!(Admission::open().validate().is_ok());
    assert!(Admission { allow: HashSet::from([peer(1)]), ..Default::default() }.validate().is_ok());
}

#[test]
fn handshake_happy_path_with_client_helper() {
    let t0 = Instant::now();
    let mut hs = ServerHandshake::new([4; 32], RELAY, t0);
    let msgs =
        client_handshake(&key(1), &hs.challenge(), RELAY, None, Purpose::Dial { target: peer(2) }).unwrap();
    let [auth, purpose] = msgs;
    let adm = Admission::open();
    // Through the codec, as on the wire.
    let auth = RelayMessage::decode(&auth.encode().unwrap()).unwrap();
    assert_eq!(hs.handle_message(auth, &adm, NOW), Ok(HandshakeStep::Authenticated { peer: peer(1) }));
    assert_eq!(hs.handle_message(RelayMessage::Unknown, &adm, NOW), Ok(HandshakeStep::Ignored));
    assert_eq!(
        hs.handle_message(purpose, &adm, NOW),
        Ok(HandshakeStep::Done { peer: peer(1), purpose: Purpose::Dial { target: peer(2) } })
    );
    // Anything after the end is a violation; the deadline no longer applies.
    let e = hs.handle_message(RelayMessage::Control, &adm, NOW).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProtocolViolation);
    assert_eq!(hs.handle_timeout(t0 + HANDSHAKE_TIMEOUT), Ok(()));
}

#[test]
fn client_refuses_a_challenge_for_another_relay() {
    let hs = ServerHandshake::new([4; 32], "ws://evil:1", Instant::now());
    let e = client_handshake(&key(1), &hs.challenge(), RELAY, None, Purpose::Control).unwrap_err();
    assert!(matches!(e, AuthError::Protocol(_)));
    assert!(client_handshake(&key(1), &RelayMessage::Control, RELAY, None, Purpose::Control).is_err());
}

#[test]
fn handshake_failures() {
    let t0 = Instant::now();
    let allow = Admission { allow: HashSet::from([peer(1)]), ..Default::default() };
    let auth = |n: u8, nonce: [u8; 32]| RelayMessage::Auth {
        peer_id: peer(n),
        signature: answer(n, nonce, RELAY),
        token: None,
    };
    // Purpose before auth.
    let mut hs = ServerHandshake::new([1; 32], RELAY, t0);
    assert_eq!(
        hs.handle_message(RelayMessage::Control, &allow, NOW).unwrap_err().code(),
        ErrorCode::ProtocolViolation
    );
    // Signature for another nonce (replay).
    let mut hs = ServerHandshake::new([1; 32], RELAY, t0);
    assert_eq!(
        hs.handle_message(auth(1, [2; 32]), &allow, NOW).unwrap_err().code(),
        ErrorCode::Unauthenticated
    );
    // Valid signature, not admitted.
    let mut hs = ServerHandshake::new([1; 32], RELAY, t0);
    assert_eq!(hs.handle_message(auth(2, [1; 32]), &allow, NOW).unwrap_err().code(), ErrorCode::NotAllowed);
    // A second auth instead of a purpose.
    let mut hs = ServerHandshake::new([1; 32], RELAY, t0);
    assert!(hs.handle_message(auth(1, [1; 32]), &allow, NOW).is_ok());
    assert_eq!(
        hs.handle_message(auth(1, [1; 32]), &allow, NOW).unwrap_err().code(),
        ErrorCode::ProtocolViolation
    );
    // Timeout.
    let mut hs = ServerHandshake::new([1; 32], RELAY, t0);
    assert_eq!(hs.deadline(), t0 + HANDSHAKE_TIMEOUT);
    assert_eq!(hs.handle_timeout(t0 + HANDSHAKE_TIMEOUT - Duration::from_millis(1)), Ok(()));
    let e = hs.handle_timeout(t0 + HANDSHAKE_TIMEOUT).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthenticated);
}
