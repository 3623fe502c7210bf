#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::{
    address::Protocol,
    identity::{Keypair, PeerId},
    negotiate::plan,
    transport::{relay::RELAY_PRIORITY, tcp::TCP_PRIORITY, webrtc::WEBRTC_PRIORITY, ws::WS_PRIORITY},
};

fn id(n: u8) -> PeerId {
    Keypair::from_seed([n; 32]).peer_id()
}

fn addr(s: &str) -> TransportAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The transports' own priorities (QUIC's constant is private to its module: 200).
fn real_priority(a: &TransportAddr) -> Option<u8> {
    Some(match a {
        TransportAddr::Quic(_) => 200,
        TransportAddr::Tcp(_) => TCP_PRIORITY,
        TransportAddr::Ws(_) => WS_PRIORITY,
        TransportAddr::WebRtc => WEBRTC_PRIORITY,
        TransportAddr::Relay(_) => RELAY_PRIORITY,
    })
}

/// `plan` as it was before the dial history (a fixed order by priority), kept verbatim as
/// the reference the static order must equal.
fn plan_before_history(
    peer: &PeerAddress,
    priority: impl Fn(&TransportAddr) -> Option<u8>,
) -> Vec<TransportAddr> {
    let browser = prefers_webrtc(peer);
    let mut out: Vec<(u8, usize, TransportAddr)> = Vec::new();
    for (i, a) in peer.addrs.iter().enumerate() {
        if let Some(p) = priority(a) {
            let p = if browser && *a == TransportAddr::WebRtc { u8::MAX } else { p };
            if !out.iter().any(|(_, _, b)| b == a) {
                out.push((p, i, a.clone()));
            }
        }
    }
    out.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    out.into_iter().map(|(_, _, a)| a).collect()
}

/// One recorded measurement, `ago` before the ranking.
#[derive(Clone, Debug)]
enum Ev {
    Ok(&'static str, u64),
    Fail(&'static str),
    Rtt(&'static str, u64),
}

fn record(h: &mut DialHistory, at: Instant, peer: PeerId, ev: &Ev) {
    match ev {
        Ev::Ok(a, t) => h.record_success(at, peer, &addr(a), ms(*t)),
        Ev::Fail(a) => h.record_failure(at, peer, &addr(a)),
        Ev::Rtt(a, t) => h.record_rtt(peer, &addr(a), ms(*t)),
    }
}

const QUIC: &str = "quic=127.0.0.1:1";
const TCP: &str = "tcp=127.0.0.1:2";
const WS: &str = "ws=ws://h:3";
const RELAY: &str = "relay=ws://r:4";

fn peer() -> PeerAddress {
    PeerAddress::new(id(1), [QUIC, TCP, WS, RELAY].map(addr).to_vec())
}

/// Ranks [`peer`] after `events` (each `ago` before now); the order as ticket entries.
fn ranked_after(events: &[(Duration, Ev)]) -> Vec<String> {
    let now = Instant::now() + secs(3600);
    let mut h = DialHistory::new();
    for (ago, ev) in events {
        record(&mut h, now - *ago, id(1), ev);
    }
    h.rank(now, &peer(), real_priority).iter().map(|a| a.to_string()).collect()
}

/// One row of the ranking table: its name, the measurements, the expected order.
type Row = (&'static str, Vec<(Duration, Ev)>, [&'static str; 4]);

#[test]
fn the_ranking_table() {
    let decay = FAILURE_DECAY;
    let s = secs(10);
    let table: Vec<Row> = vec![
        ("no history: the static order", vec![], [QUIC, TCP, WS, RELAY]),
        (
            "a failed transport goes after the others, before relays",
            vec![(s, Ev::Fail(QUIC))],
            [TCP, WS, QUIC, RELAY],
        ),
        (
            "failed ones keep their static order",
            vec![(s, Ev::Fail(TCP)), (s, Ev::Fail(QUIC))],
            [WS, QUIC, TCP, RELAY],
        ),
        (
            "a success after the failure restores it",
            vec![(secs(20), Ev::Fail(QUIC)), (s, Ev::Ok(QUIC, 50))],
            [QUIC, TCP, WS, RELAY],
        ),
        (
            "a failure just inside the decay counts",
            vec![(decay - ms(1), Ev::Fail(QUIC))],
            [TCP, WS, QUIC, RELAY],
        ),
        (
            "a failure as old as the decay no longer counts",
            vec![(decay, Ev::Fail(QUIC))],
            [QUIC, TCP, WS, RELAY],
        ),
        (
            "a clearly faster connect wins",
            vec![(s, Ev::Ok(QUIC, 200)), (s, Ev::Ok(TCP, 20))],
            [TCP, QUIC, WS, RELAY],
        ),
        (
            "10 % faster is within the margin",
            vec![(s, Ev::Ok(QUIC, 110)), (s, Ev::Ok(TCP, 100))],
            [QUIC, TCP, WS, RELAY],
        ),
        (
            "4x faster but by under 10 ms is noise",
            vec![(s, Ev::Ok(QUIC, 8)), (s, Ev::Ok(TCP, 2))],
            [QUIC, TCP, WS, RELAY],
        ),
        (
            "comparable connects: the clearly lower RTT wins",
            vec![
                (s, Ev::Ok(QUIC, 100)),
                (s, Ev::Ok(TCP, 105)),
                (s, Ev::Rtt(QUIC, 80)),
                (s, Ev::Rtt(TCP, 20)),
            ],
            [TCP, QUIC, WS, RELAY],
        ),
        (
            "a clearly faster connect outweighs a worse RTT",
            vec![
                (s, Ev::Ok(QUIC, 300)),
                (s, Ev::Ok(TCP, 100)),
                (s, Ev::Rtt(QUIC, 10)),
                (s, Ev::Rtt(TCP, 90)),
            ],
            [TCP, QUIC, WS, RELAY],
        ),
        (
            "an RTT alone is not a measured dial",
            vec![(s, Ev::Rtt(QUIC, 200)), (s, Ev::Rtt(TCP, 1))],
            [QUIC, TCP, WS, RELAY],
        ),
        (
            "unmeasured transports keep their positions",
            vec![(s, Ev::Ok(TCP, 200)), (s, Ev::Ok(WS, 20))],
            [QUIC, WS, TCP, RELAY],
        ),
        ("one measured transport alone moves nowhere", vec![(s, Ev::Ok(WS, 1))], [QUIC, TCP, WS, RELAY]),
        (
            "failed ones are ordered by their measurements too",
            vec![
                (secs(60), Ev::Ok(QUIC, 300)),
                (secs(60), Ev::Ok(TCP, 20)),
                (s, Ev::Fail(QUIC)),
                (s, Ev::Fail(TCP)),
            ],
            [WS, TCP, QUIC, RELAY],
        ),
        (
            "a failed fast transport goes after an unmeasured one",
            vec![(secs(60), Ev::Ok(QUIC, 1)), (s, Ev::Fail(QUIC)), (s, Ev::Ok(TCP, 900))],
            [TCP, WS, QUIC, RELAY],
        ),
        (
            "relays stay last when every direct transport failed",
            vec![(s, Ev::Fail(QUIC)), (s, Ev::Fail(TCP)), (s, Ev::Fail(WS)), (s, Ev::Ok(RELAY, 1))],
            [QUIC, TCP, WS, RELAY],
        ),
    ];
    for (name, events, expected) in table {
        assert_eq!(ranked_after(&events), expected.map(String::from).to_vec(), "{name}");
    }
}

#[test]
fn a_failed_transport_comes_back_after_the_decay() {
    let t0 = Instant::now();
    let mut h = DialHistory::new();
    h.record_failure(t0, id(1), &addr(QUIC));
    let first = |at: Instant| h.rank(at, &peer(), real_priority)[0].to_string();
    assert_eq!(first(t0), TCP);
    assert_eq!(first(t0 + FAILURE_DECAY - ms(1)), TCP);
    assert_eq!(first(t0 + FAILURE_DECAY), QUIC);
    // A clock that went backwards (an earlier `now`) still counts the failure.
    assert_eq!(first(t0.checked_sub(secs(1)).unwrap_or(t0)), TCP);
}

#[test]
fn webrtc_stays_first_for_a_browser_whatever_its_history() {
    let now = Instant::now();
    let browser = PeerAddress::new(id(1), [addr("webrtc=1"), addr(QUIC), addr(RELAY)].to_vec());
    let mut h = DialHistory::new();
    h.record_failure(now, id(1), &TransportAddr::WebRtc);
    h.record_success(now, id(1), &addr(QUIC), ms(1));
    let order = h.rank(now, &browser, real_priority);
    assert_eq!(order, [addr("webrtc=1"), addr(QUIC), addr(RELAY)].to_vec());
}

#[test]
fn jitter_never_reorders_equal_transports() {
    // Two transports with the same 1 s mean connect time (far above `FASTER_MIN`, so the
    // margin alone decides) and ±10 % jitter on every sample: first a fixed pseudo-random
    // sequence, then the worst case — QUIC always 10 % slow, TCP always 10 % fast. The
    // static order holds throughout.
    let now = Instant::now();
    let mut h = DialHistory::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut jitter = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        900 + x % 201
    };
    for round in 0..500 {
        let (quic, tcp) = if round < 250 { (jitter(), jitter()) } else { (1_100, 900) };
        h.record_success(now, id(1), &addr(QUIC), ms(quic));
        h.record_success(now, id(1), &addr(TCP), ms(tcp));
        h.record_rtt(id(1), &addr(QUIC), ms(quic / 4));
        h.record_rtt(id(1), &addr(TCP), ms(tcp / 4));
        assert_eq!(h.rank(now, &peer(), real_priority)[0], addr(QUIC), "round {round}");
    }
}

/// A pool of addresses a random peer draws from (with repeats): two per kind of route.
const POOL: [&str; 9] = [
    "quic=127.0.0.1:1",
    "quic=[::1]:1",
    "tcp=127.0.0.1:2",
    "tcp=10.0.0.1:2",
    "ws=ws://h:3",
    "ws=wss://h2:3",
    "webrtc=1",
    "relay=ws://r:4",
    "relay=ws://r2:5",
];

fn kind(a: &TransportAddr) -> usize {
    match a {
        TransportAddr::Quic(_) => 0,
        TransportAddr::Tcp(_) => 1,
        TransportAddr::Ws(_) => 2,
        TransportAddr::WebRtc => 3,
        TransportAddr::Relay(_) => 4,
    }
}

fn random_peer(n: u8) -> impl Strategy<Value = PeerAddress> {
    proptest::collection::vec(0..POOL.len(), 0..10)
        .prop_map(move |ix| PeerAddress::new(id(n), ix.into_iter().map(|i| addr(POOL[i])).collect()))
}

fn priorities() -> impl Strategy<Value = [Option<u8>; 5]> {
    proptest::array::uniform5(proptest::option::of(any::<u8>()))
}

/// Random measurements: (seconds ago, which pool address, what).
fn random_events() -> impl Strategy<Value = Vec<(u64, usize, u8, u64)>> {
    proptest::collection::vec((0u64..600, 0..POOL.len(), 0u8..3, 0u64..2_000), 0..40)
}

fn apply(h: &mut DialHistory, now: Instant, peer: PeerId, events: &[(u64, usize, u8, u64)]) {
    for &(ago, i, what, t) in events {
        let a = addr(POOL[i]);
        match what {
            0 => h.record_success(now - secs(ago), peer, &a, ms(t)),
            1 => h.record_failure(now - secs(ago), peer, &a),
            _ => h.record_rtt(peer, &a, ms(t)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Without a history the order is today's `plan`: exactly so with the transports' own
    /// priorities (where relays already have the lowest); with any priorities, the same
    /// but with relay routes moved last.
    #[test]
    fn the_static_order_is_the_old_plan(peer in random_peer(1), prio in priorities()) {
        let now = Instant::now();
        let empty = DialHistory::new();
        prop_assert_eq!(plan(&peer, real_priority), plan_before_history(&peer, real_priority));
        prop_assert_eq!(empty.rank(now, &peer, real_priority), plan(&peer, real_priority));

        let any = |a: &TransportAddr| prio[kind(a)];
        let (relays, direct): (Vec<_>, Vec<_>) =
            plan_before_history(&peer, any).into_iter().partition(|a| matches!(a, TransportAddr::Relay(_)));
        prop_assert_eq!(plan(&peer, any), [direct, relays].concat());
        prop_assert_eq!(empty.rank(now, &peer, any), plan(&peer, any));
    }

    /// Whatever was measured, the ranking only reorders what `plan` gives, keeps relays
    /// last and a browser's WebRTC first, puts recently failed transports after the others
    /// and leaves no measured transport clearly faster than the measured one just ahead.
    #[test]
    fn the_ranking_invariants(peer in random_peer(1), prio in priorities(), events in random_events()) {
        let now = Instant::now() + secs(3600);
        let mut h = DialHistory::new();
        apply(&mut h, now, id(1), &events);
        let any = |a: &TransportAddr| prio[kind(a)];
        let order = h.rank(now, &peer, any);

        let mut sorted = order.clone();
        sorted.sort();
        let mut planned = plan(&peer, any);
        planned.sort();
        prop_assert_eq!(sorted, planned);

        let is_relay = |a: &TransportAddr| matches!(a, TransportAddr::Relay(_));
        prop_assert!(order.windows(2).all(|w| !is_relay(&w[0]) || is_relay(&w[1])), "relays last");
        if prefers_webrtc(&peer) && any(&TransportAddr::WebRtc).is_some() {
            prop_assert_eq!(order.first(), Some(&TransportAddr::WebRtc));
        }
        let stats = |a: &TransportAddr| h.stats(&id(1), recorded_protocol(a)?);
        let preferred = |a: &TransportAddr| prefers_webrtc(&peer) && *a == TransportAddr::WebRtc;
        let class = |a: &TransportAddr| match a {
            _ if preferred(a) => Class::Preferred,
            TransportAddr::Relay(_) => Class::Relay,
            _ if stats(a).is_some_and(|s| failed_recently(s, now)) => Class::Failed,
            _ => Class::Direct,
        };
        prop_assert!(order.windows(2).all(|w| class(&w[0]) <= class(&w[1])), "classes in order");
        let measured: Vec<&TransportAddr> =
            order.iter().filter(|a| stats(a).is_some_and(|s| s.connect_time.is_some())).collect();
        for w in measured.windows(2) {
            if class(w[0]) == class(w[1]) {
                let (ahead, behind) = (stats(w[0]).unwrap(), stats(w[1]).unwrap());
                prop_assert!(!beats(behind, ahead), "{} should not be behind {}", w[1], w[0]);
            }
        }
    }

    /// One peer's measurements never change another peer's order.
    #[test]
    fn peers_are_isolated(
        peer in random_peer(1),
        mine in random_events(),
        theirs in random_events(),
        split in 0usize..40,
    ) {
        let now = Instant::now() + secs(3600);
        let mut alone = DialHistory::new();
        apply(&mut alone, now, id(1), &mine);
        let mut shared = DialHistory::new();
        let (a, b) = mine.split_at(split.min(mine.len()));
        apply(&mut shared, now, id(1), a);
        apply(&mut shared, now, id(2), &theirs);
        apply(&mut shared, now, id(1), b);
        prop_assert_eq!(shared.rank(now, &peer, real_priority), alone.rank(now, &peer, real_priority));
    }

    /// A faster measured connect overtakes the static order exactly when it is faster by
    /// the margin: by more than `FASTER_MARGIN_PERCENT` and at least `FASTER_MIN`.
    #[test]
    fn the_margin_decides(quic_ms in 1u64..3_000, tcp_ms in 1u64..3_000) {
        let now = Instant::now();
        let mut h = DialHistory::new();
        h.record_success(now, id(1), &addr(QUIC), ms(quic_ms));
        h.record_success(now, id(1), &addr(TCP), ms(tcp_ms));
        let tcp_first = h.rank(now, &peer(), real_priority)[0] == addr(TCP);
        let clearly = quic_ms.saturating_sub(tcp_ms) >= FASTER_MIN.as_millis() as u64
            && tcp_ms * u64::from(100 + FASTER_MARGIN_PERCENT) < quic_ms * 100;
        prop_assert_eq!(tcp_first, clearly);
        prop_assert!(!(beats(
            h.stats(&id(1), Protocol::Quic).unwrap(),
            h.stats(&id(1), Protocol::Tcp).unwrap(),
        ) && beats(
            h.stats(&id(1), Protocol::Tcp).unwrap(),
            h.stats(&id(1), Protocol::Quic).unwrap(),
        )));
    }
}
