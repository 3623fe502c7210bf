#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::identity::Keypair;

fn id(n: u8) -> PeerId {
    Keypair::from_seed([n; 32]).peer_id()
}

fn addr(s: &str) -> TransportAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn outcomes_are_counted_per_peer_and_protocol() {
    let (now, mut h) = (Instant::now(), DialHistory::new());
    let quic = addr("quic=127.0.0.1:1");
    h.record_failure(now, id(1), &quic);
    h.record_failure(now, id(1), &quic);
    let s = *h.stats(&id(1), Protocol::Quic).unwrap();
    assert_eq!((s.attempts, s.successes, s.consecutive_failures), (2, 0, 2));
    assert_eq!((s.last_failure, s.last_success, s.connect_time), (Some(now), None, None));

    let later = now + ms(5);
    h.record_success(later, id(1), &quic, ms(40));
    let s = *h.stats(&id(1), Protocol::Quic).unwrap();
    assert_eq!((s.attempts, s.successes, s.consecutive_failures), (3, 1, 0));
    assert_eq!((s.last_failure, s.last_success, s.connect_time), (Some(now), Some(later), Some(ms(40))));

    // Another address of the same protocol shares the record; other protocols and peers
    // have their own.
    h.record_success(later, id(1), &addr("quic=[::1]:9"), ms(40));
    assert_eq!(h.stats(&id(1), Protocol::Quic).unwrap().successes, 2);
    assert!(h.stats(&id(1), Protocol::Tcp).is_none());
    assert!(h.stats(&id(2), Protocol::Quic).is_none());
    assert_eq!(h.peer(&id(1)).count(), 1);
    assert_eq!(h.entries().count(), 1);
}

#[test]
fn connect_time_and_rtt_are_smoothed() {
    let (now, mut h) = (Instant::now(), DialHistory::new());
    let tcp = addr("tcp=127.0.0.1:1");
    h.record_success(now, id(1), &tcp, ms(100));
    h.record_success(now, id(1), &tcp, ms(200));
    // 1/4 of the new sample: 100 + (200 − 100) / 4.
    assert_eq!(h.stats(&id(1), Protocol::Tcp).unwrap().connect_time, Some(ms(125)));
    h.record_rtt(id(1), &tcp, ms(80));
    h.record_rtt(id(1), &tcp, ms(160));
    // RFC 6298: 80 + (160 − 80) / 8.
    assert_eq!(h.stats(&id(1), Protocol::Tcp).unwrap().rtt, Some(ms(90)));
    // Extreme samples neither overflow nor panic.
    h.record_success(now, id(1), &tcp, Duration::MAX);
    h.record_rtt(id(1), &tcp, Duration::MAX);
    assert!(h.stats(&id(1), Protocol::Tcp).unwrap().connect_time.unwrap() > ms(125));
}

#[test]
fn an_rtt_alone_creates_a_record_without_a_connect_time() {
    let mut h = DialHistory::new();
    h.record_rtt(id(1), &addr("ws=ws://h:1"), ms(30));
    let s = *h.stats(&id(1), Protocol::WebSocket).unwrap();
    assert_eq!((s.attempts, s.rtt, s.connect_time), (0, Some(ms(30)), None));
}

#[test]
fn relay_routes_are_not_recorded() {
    let (now, mut h) = (Instant::now(), DialHistory::new());
    let relay = addr("relay=ws://r:1");
    h.record_failure(now, id(1), &relay);
    h.record_success(now, id(1), &relay, ms(5));
    h.record_rtt(id(1), &relay, ms(5));
    assert!(h.is_empty());
    assert!(h.stats(&id(1), Protocol::WebSocket).is_none());
}

#[test]
fn the_least_recently_recorded_peer_is_evicted() {
    let (now, mut h) = (Instant::now(), DialHistory::with_capacity(3));
    let tcp = addr("tcp=127.0.0.1:1");
    for n in 1..=3 {
        h.record_failure(now, id(n), &tcp);
    }
    // Peer 1 is recorded again, so peer 2 is now the least recent.
    h.record_rtt(id(1), &tcp, ms(1));
    h.record_failure(now, id(4), &tcp);
    assert_eq!(h.len(), 3);
    let held: Vec<bool> = (1..=4).map(|n| h.stats(&id(n), Protocol::Tcp).is_some()).collect();
    assert_eq!(held, vec![true, false, true, true]);
    // Recording for a held peer never evicts.
    h.record_failure(now, id(3), &addr("quic=127.0.0.1:1"));
    assert_eq!(h.len(), 3);
    assert_eq!(DialHistory::with_capacity(0).capacity(), 1);
    assert_eq!(DialHistory::new().capacity(), MAX_PEERS);
}

#[test]
fn memory_bound_is_documented() {
    // Per peer, with a record for every protocol: the map entry plus the records.
    let entry = std::mem::size_of::<(PeerId, PeerRecord)>();
    let records = Protocol::ALL.len() * std::mem::size_of::<(Protocol, DialStats)>();
    let per_peer = entry + records;
    println!("one peer: {per_peer} bytes, a full history: {} KiB", per_peer * MAX_PEERS / 1024);
    // MAX_PEERS' comment: about 450 bytes a peer, 448 KiB for a full history (the hash
    // map's spare slots aside).
    assert!(per_peer <= 500, "{per_peer}");
    assert!(per_peer * MAX_PEERS < 512 * 1024);
}

#[derive(Clone, Debug)]
enum Op {
    Success(u8, usize, u64),
    Failure(u8, usize),
    Rtt(u8, usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let (peer, proto) = (0u8..12, 0usize..5);
    prop_oneof![
        (peer.clone(), proto.clone(), 0u64..5_000).prop_map(|(p, a, t)| Op::Success(p, a, t)),
        (peer.clone(), proto.clone()).prop_map(|(p, a)| Op::Failure(p, a)),
        (peer, proto, 0u64..5_000).prop_map(|(p, a, t)| Op::Rtt(p, a, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever is recorded, the history holds at most its capacity of peers, one record
    /// per protocol each, and the peer recorded last is always held.
    #[test]
    fn the_bound_holds(capacity in 1usize..6, ops in proptest::collection::vec(op(), 0..200)) {
        let addrs = ["tcp=127.0.0.1:1", "quic=127.0.0.1:1", "ws=ws://h:1", "webrtc=1", "relay=ws://r:1"]
            .map(addr);
        let (now, mut h) = (Instant::now(), DialHistory::with_capacity(capacity));
        for op in ops {
            let (peer, a) = match op {
                Op::Success(p, a, t) => { h.record_success(now, id(p), &addrs[a], ms(t)); (p, a) }
                Op::Failure(p, a) => { h.record_failure(now, id(p), &addrs[a]); (p, a) }
                Op::Rtt(p, a, t) => { h.record_rtt(id(p), &addrs[a], ms(t)); (p, a) }
            };
            prop_assert!(h.len() <= capacity);
            if recorded_protocol(&addrs[a]).is_some() {
                prop_assert!(h.peer(&id(peer)).count() >= 1);
            }
            for r in h.peers.values() {
                prop_assert!(r.protocols.len() <= Protocol::ALL.len());
            }
        }
    }
}
