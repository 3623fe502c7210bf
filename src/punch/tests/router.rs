//! The side-channel router: by token, by STUN transaction id, drops counted, keys
//! replaced and removed, the first holder of a key keeps it, bounds.

use proptest::prelude::*;
use stun_rs::{attributes::stun::XorMappedAddress, MessageClass};

use super::addr;
use crate::{
    nat::probe::{encode_request, tests::response},
    punch::{
        packet::Datagram,
        router::{DatagramRouter, RouteError, RouteKeys, RouterStats, MAX_ROUTED_SESSIONS},
    },
};

fn probe(token: [u8; 16]) -> Vec<u8> {
    Datagram::Probe { token, txid: 7 }.encode()
}

fn stun_answer(tid: [u8; 12]) -> Vec<u8> {
    response(
        tid,
        MessageClass::SuccessResponse,
        vec![XorMappedAddress::from(addr("198.51.100.7:4000")).into()],
    )
}

fn keys(token: Option<u8>, tids: &[u8]) -> RouteKeys {
    RouteKeys { token: token.map(|t| [t; 16]), transactions: tids.iter().map(|t| [*t; 12]).collect() }
}

#[test]
fn punch_datagrams_go_to_the_holder_of_their_token() {
    let mut r = DatagramRouter::new();
    r.set_keys(1u64, keys(Some(1), &[])).unwrap();
    r.set_keys(2u64, keys(Some(2), &[])).unwrap();
    assert_eq!(r.route(&probe([1; 16])), Some(1));
    assert_eq!(r.route(&probe([2; 16])), Some(2));
    let ack = Datagram::Ack { token: [2; 16], txid: 1, observed: addr("192.0.2.1:1") }.encode();
    assert_eq!(r.route(&ack), Some(2));
    // A token nobody holds: dropped and counted, not broadcast.
    assert_eq!(r.route(&probe([3; 16])), None);
    assert_eq!(r.stats(), RouterStats { routed: 3, unknown_token: 1, ..RouterStats::default() });
}

#[test]
fn stun_answers_go_to_the_holder_of_their_transaction() {
    let mut r = DatagramRouter::new();
    r.set_keys(1u64, keys(None, &[10, 11])).unwrap();
    r.set_keys(2u64, keys(Some(2), &[20])).unwrap();
    assert_eq!(r.route(&stun_answer([11; 12])), Some(1));
    assert_eq!(r.route(&stun_answer([20; 12])), Some(2));
    let error = response([10; 12], MessageClass::ErrorResponse, vec![]);
    assert_eq!(r.route(&error), Some(1));
    assert_eq!(r.route(&stun_answer([99; 12])), None);
    // A request (someone probing this node) is not an answer to anything.
    assert_eq!(r.route(&encode_request([10; 12], false, false)), None);
    let s = r.stats();
    assert_eq!((s.routed, s.unknown_transaction, s.unrecognised), (3, 1, 1));
}

#[test]
fn garbage_and_quic_looking_datagrams_are_dropped() {
    let mut r = DatagramRouter::new();
    r.set_keys(1u64, keys(Some(1), &[1])).unwrap();
    let mut bad_version = probe([1; 16]);
    bad_version[4] = 9;
    let mut short_stun = stun_answer([1; 12]);
    short_stun.truncate(19);
    for d in [
        vec![],
        vec![0x13],
        vec![0x13, b'k', b'z', b'p'],
        bad_version,
        short_stun,
        vec![0xc0; 40],
        vec![0; 20],
    ] {
        assert_eq!(r.route(&d), None, "{d:?}");
    }
    assert_eq!(r.stats().unrecognised, 7);
    assert_eq!(r.stats().dropped(), 7);
}

#[test]
fn keys_are_replaced_and_removed_with_their_attempt() {
    let mut r = DatagramRouter::new();
    r.set_keys(1u64, keys(None, &[1, 2])).unwrap();
    // Gathering over, punching: the transactions go, the token comes.
    r.set_keys(1, keys(Some(9), &[])).unwrap();
    assert_eq!(r.route(&stun_answer([1; 12])), None);
    assert_eq!(r.route(&probe([9; 16])), Some(1));
    r.remove(1);
    r.remove(1); // idempotent
    assert!(r.is_empty());
    assert_eq!(r.route(&probe([9; 16])), None);
}

#[test]
fn the_first_holder_of_a_key_keeps_it() {
    let mut r = DatagramRouter::new();
    r.set_keys(1u64, keys(Some(5), &[5])).unwrap();
    // A peer that offers another session's token does not get its datagrams.
    assert_eq!(r.set_keys(2, keys(Some(5), &[6])), Err(RouteError::TokenInUse));
    assert_eq!(r.route(&probe([5; 16])), Some(1));
    assert_eq!(r.route(&stun_answer([6; 12])), Some(2), "its other keys are registered");
    assert_eq!(r.set_keys(3, keys(None, &[5])), Err(RouteError::TransactionInUse));
    // Removing the loser leaves the holder's key alone.
    r.remove(2);
    assert_eq!(r.route(&probe([5; 16])), Some(1));
    assert_eq!(r.len(), 2);
}

#[test]
fn the_number_of_attempts_is_bounded() {
    let mut r = DatagramRouter::new();
    for id in 0..MAX_ROUTED_SESSIONS as u64 {
        r.set_keys(id, RouteKeys::default()).unwrap();
    }
    assert_eq!(r.set_keys(u64::MAX, keys(Some(1), &[])), Err(RouteError::Full { max: MAX_ROUTED_SESSIONS }));
    assert_eq!(r.route(&probe([1; 16])), None);
    // A registered attempt may still change its keys.
    r.set_keys(0, keys(Some(1), &[])).unwrap();
    assert_eq!(r.route(&probe([1; 16])), Some(0));
}

proptest! {
    #[test]
    fn any_datagram_routes_or_is_counted(d in proptest::collection::vec(any::<u8>(), 0..80)) {
        let mut r = DatagramRouter::new();
        r.set_keys(1u64, keys(Some(1), &[1])).unwrap();
        let _ = r.route(&d);
        let s = r.stats();
        prop_assert_eq!(s.routed + s.dropped(), 1);
    }
}
