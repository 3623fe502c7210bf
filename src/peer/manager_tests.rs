#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::peer::sim::{Link, Sim};

fn direct(p: Protocol) -> PathDesc {
    PathDesc { kind: PathKind::Direct, protocol: p, dialed_locally: true, carries: true }
}

fn relayed(dialed_locally: bool) -> PathDesc {
    PathDesc { kind: PathKind::Relayed, protocol: Protocol::WebSocket, dialed_locally, carries: true }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn sim(wanted: bool) -> Sim {
    Sim::new(PathManager::new(PathConfig::default(), wanted), 7)
}

fn changed(e: &PathEvent) -> Option<(Option<PathId>, PathId, ChangeReason)> {
    match e {
        PathEvent::Changed { from, to, reason } => Some((*from, *to, *reason)),
        _ => None,
    }
}

#[test]
fn the_first_path_carries_at_once_without_a_change_event() {
    let mut s = sim(true);
    let a = s.add(1, direct(Protocol::Quic), Link::new(20));
    assert_eq!(s.m.active(), Some(a));
    assert!(s.changes().is_empty());
    assert_eq!(s.count(|o| matches!(o, Output::Probe { .. })), 1, "probed at once");
}

#[test]
fn two_similar_paths_under_jitter_never_flap_in_ten_minutes() {
    for seed in 0..8 {
        let mut s = Sim::new(PathManager::new(PathConfig::default(), true), seed);
        let jittery = |rtt| Link { jitter: 0.10, ..Link::new(rtt) };
        s.add(1, direct(Protocol::Quic), jittery(20));
        s.add(2, direct(Protocol::Tcp), jittery(21));
        // Traffic comes and goes: a minute on, a minute off.
        for minute in 0..10u64 {
            s.sending = minute % 2 == 0;
            s.run_for(secs(60));
        }
        assert_eq!(s.changes(), vec![], "seed {seed}: switched between similar paths");
        assert_eq!(s.m.switches(), 0);
    }
}

#[test]
fn a_new_direct_path_takes_the_relayed_traffic_at_once() {
    let mut s = sim(true);
    let r = s.add(1, relayed(true), Link::new(60));
    s.run_for(secs(2));
    let d = s.add(2, direct(Protocol::Quic), Link::new(5));
    assert_eq!(s.m.active(), Some(d));
    assert_eq!(changed(&s.changes()[0].1), Some((Some(r), d, ChangeReason::Upgrade)));
    assert_eq!(s.changes()[0].0, secs(2), "in the same instant the path came up");
}

#[test]
fn a_clearly_better_path_of_the_same_tier_takes_over_and_a_worse_one_does_not() {
    let mut s = sim(true);
    let slow = s.add(1, direct(Protocol::Tcp), Link::new(80));
    let fast = s.add(2, direct(Protocol::Quic), Link::new(20));
    // Both need MIN_SAMPLES answers: the first at once, then one per probe interval.
    s.run_for(PROBE_INTERVAL * (MIN_SAMPLES as u32 - 1) + ms(200));
    assert_eq!(s.m.active(), Some(fast));
    assert_eq!(changed(&s.changes()[0].1), Some((Some(slow), fast, ChangeReason::Better)));
    s.run_for(secs(120));
    assert_eq!(s.m.switches(), 1);
}

#[test]
fn a_silent_death_under_traffic_fails_over_within_two_seconds() {
    let mut s = sim(true);
    let r = s.add(1, relayed(true), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    s.sending = true;
    s.run_for(secs(20));
    assert_eq!(s.m.active(), Some(d));
    let t = s.elapsed();
    s.links.get_mut(&d).unwrap().blackholed = true;
    s.run_for(secs(5));
    let (at, e) = s.changes().last().cloned().unwrap();
    assert_eq!(changed(&e), Some((Some(d), r, ChangeReason::Failover)));
    let detection = at - t;
    assert!(detection <= ACTIVE_SILENCE + ms(100), "failover after {detection:?}");
    assert!(s.events.iter().any(|(_, e)| *e == PathEvent::Dead { path: d }));
}

#[test]
fn the_answering_side_follows_the_peer_off_a_silent_path_within_the_grace() {
    // This side only answers (it sends nothing of its own), so its own silence bound does
    // not run; the peer notices first and moves its traffic to the relay.
    let mut s = sim(true);
    let r = s.add(1, relayed(false), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    s.run_for(secs(3));
    s.links.get_mut(&d).unwrap().blackholed = true;
    s.run_for(ACTIVE_SILENCE + ms(300));
    assert_eq!(s.m.active(), Some(d), "nothing told this side yet");
    let moved = s.elapsed();
    s.remote_traffic(r);
    s.run_for(secs(2));
    let (at, e) = s.changes().last().cloned().unwrap();
    assert_eq!(changed(&e), Some((Some(d), r, ChangeReason::Failover)));
    assert!(at - moved <= FOLLOW_GRACE + ms(10), "followed after {:?}", at - moved);
}

#[test]
fn a_healthy_active_path_survives_the_peers_traffic_elsewhere() {
    let mut s = sim(true);
    let r = s.add(1, relayed(false), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    // Idle for a while: the direct path was last heard at its last probe answer.
    s.run_for(secs(9));
    let before = s.changes().len();
    for _ in 0..20 {
        s.remote_traffic(r);
        s.run_for(ms(100));
    }
    s.run_for(secs(3));
    assert_eq!(s.m.active(), Some(d));
    assert_eq!(s.changes().len(), before, "{:?}", s.changes());
    // Traffic on the active path itself, or none heard there for less than ACTIVE_PROBE,
    // asks for nothing.
    let probes = s.count(|o| matches!(o, Output::Probe { path, .. } if *path == d));
    s.remote_traffic(d);
    assert_eq!(s.count(|o| matches!(o, Output::Probe { path, .. } if *path == d)), probes);
}

#[test]
fn an_idle_path_that_stops_answering_is_dead_within_one_interval_plus_the_probe_timeout() {
    let mut s = sim(true);
    let r = s.add(1, relayed(true), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    s.run_for(secs(12));
    let t = s.elapsed();
    s.links.get_mut(&d).unwrap().blackholed = true;
    s.run_for(secs(15));
    let (at, _) = s.events.iter().find(|(_, e)| *e == PathEvent::Dead { path: d }).cloned().unwrap();
    assert!(at - t <= PROBE_INTERVAL + PROBE_TIMEOUT + ms(50), "dead after {:?}", at - t);
    assert_eq!(s.m.active(), Some(r));
}

#[test]
fn a_recovered_direct_path_takes_the_traffic_back_within_one_dead_probe_interval() {
    let mut s = sim(true);
    let r = s.add(1, relayed(true), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    s.sending = true;
    s.run_for(secs(10));
    s.links.get_mut(&d).unwrap().blackholed = true;
    s.run_for(secs(10));
    assert_eq!(s.m.active(), Some(r));
    // Dead, it is probed every DEAD_PROBE (a new probe replacing the unanswered one).
    let probes = |s: &Sim| s.count(|o| matches!(o, Output::Probe { path, .. } if *path == d));
    let before = probes(&s);
    s.run_for(secs(10));
    let sent = probes(&s) - before;
    assert!((9..=11).contains(&sent), "{sent} probes in 10 s");
    let lifted = s.elapsed();
    s.links.get_mut(&d).unwrap().blackholed = false;
    s.run_for(secs(10));
    let (at, e) = s.changes().last().cloned().unwrap();
    assert_eq!(changed(&e), Some((Some(r), d, ChangeReason::Recovered)));
    assert!(at - lifted <= DEAD_PROBE + ms(10) * 2 + ms(20), "back after {:?}", at - lifted);
}

#[test]
fn a_recovered_path_is_not_killed_by_a_probe_it_lost_while_dead() {
    let mut s = sim(true);
    let _r = s.add(1, relayed(true), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    s.sending = true;
    s.run_for(secs(3));
    s.links.get_mut(&d).unwrap().blackholed = true;
    s.run_for(ACTIVE_SILENCE + ms(100));
    assert!(s.events.iter().any(|(_, e)| *e == PathEvent::Dead { path: d }));
    // Probed while dead: that probe is lost.
    let probes = |s: &Sim| s.count(|o| matches!(o, Output::Probe { path, .. } if *path == d));
    let before = probes(&s);
    while probes(&s) == before {
        s.run_for(ms(10));
    }
    // The way is open again and the peer's traffic is heard on it before that probe
    // times out: recovered, and it stays so.
    s.links.get_mut(&d).unwrap().blackholed = false;
    let now = s.now;
    s.m.handle_heard(now, d);
    s.drain();
    s.run_for(PROBE_TIMEOUT + secs(2));
    let dead = s.events.iter().filter(|(_, e)| *e == PathEvent::Dead { path: d }).count();
    assert_eq!(dead, 1, "died once, recovered, stayed: {:?}", s.events);
    assert_eq!(s.m.active(), Some(d));
}

#[test]
fn with_no_path_left_a_wanted_peer_is_redialed_with_backoff() {
    let mut s = sim(true);
    let a = s.add(1, direct(Protocol::Tcp), Link::new(10));
    s.down(a);
    assert!(s.events.iter().any(|(_, e)| *e == PathEvent::Lost));
    assert_eq!(s.count(|o| *o == Output::Dial), 1);
    // Failures back off: 250 ms, 500 ms, 1 s, 2 s, …
    let mut dial_times = vec![s.elapsed()];
    for _ in 0..4 {
        s.m.handle_dial_failed(s.now);
        let before = s.count(|o| *o == Output::Dial);
        while s.count(|o| *o == Output::Dial) == before {
            s.run_for(ms(10));
        }
        dial_times.push(s.elapsed());
    }
    let gaps: Vec<Duration> = dial_times.windows(2).map(|w| w[1] - w[0]).collect();
    for (g, want) in gaps.iter().zip([250u64, 500, 1000, 2000]) {
        assert!(*g >= ms(want) && *g <= ms(want + 20), "{gaps:?}");
    }
    // A path coming up resets the backoff.
    s.add(2, direct(Protocol::Tcp), Link::new(10));
    assert!(s.m.is_connected());
}

#[test]
fn an_unwanted_peer_is_not_redialed() {
    let mut s = sim(false);
    let a = s.add(1, direct(Protocol::Tcp), Link::new(10));
    s.down(a);
    assert_eq!(s.count(|o| *o == Output::Dial), 0);
    s.m.set_wanted(s.now, true);
    s.drain();
    assert_eq!(s.count(|o| *o == Output::Dial), 1);
}

#[test]
fn the_relayed_initiator_punches_retries_and_punches_on_network_change() {
    let mut s = sim(true);
    s.add(1, relayed(true), Link::new(40));
    assert_eq!(s.count(|o| *o == Output::StartPunch), 1);
    s.m.handle_punch_finished(s.now, false);
    s.run_for(PUNCH_RETRY - secs(1));
    assert_eq!(s.count(|o| *o == Output::StartPunch), 1);
    s.run_for(secs(2));
    assert_eq!(s.count(|o| *o == Output::StartPunch), 2);
    s.m.handle_punch_finished(s.now, false);
    s.m.handle_network_change(s.now);
    s.drain();
    assert_eq!(s.count(|o| *o == Output::StartPunch), 3, "at once on a network change");
    // With a direct path there is nothing to punch; the responder side never asks.
    s.add(2, direct(Protocol::Quic), Link::new(5));
    s.m.handle_punch_finished(s.now, true);
    s.run_for(PUNCH_RETRY * 2);
    assert_eq!(s.count(|o| *o == Output::StartPunch), 3);
    let mut responder = sim(true);
    responder.add(1, relayed(false), Link::new(40));
    assert_eq!(responder.count(|o| *o == Output::StartPunch), 0);
}

#[test]
fn a_dead_direct_path_while_relayed_asks_for_a_new_punch() {
    let mut s = sim(true);
    s.add(1, relayed(true), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    s.m.handle_punch_finished(s.now, true);
    s.drain();
    assert_eq!(s.count(|o| *o == Output::StartPunch), 1);
    s.links.get_mut(&d).unwrap().blackholed = true;
    s.run_for(secs(10));
    assert_eq!(s.count(|o| *o == Output::StartPunch), 2);
}

#[test]
fn loss_marks_a_path_degraded_once() {
    let mut s = sim(true);
    let p = s.add(1, direct(Protocol::Tcp), Link { loss: 0.5, ..Link::new(20) });
    s.run_for(secs(300));
    let degraded: Vec<_> = s
        .events
        .iter()
        .filter(|(_, e)| matches!(e, PathEvent::Degraded { path, .. } if *path == p))
        .collect();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
}

#[test]
fn the_other_tier_stays_as_standby_and_extra_paths_are_retired() {
    let mut s = sim(true);
    let r = s.add(1, relayed(true), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    let extra = s.add(3, direct(Protocol::Tcp), Link::new(30));
    s.run_for(STANDBY_LINGER + secs(5));
    assert_eq!(s.m.active(), Some(d));
    let retired: Vec<PathId> = s
        .outputs
        .iter()
        .filter_map(|(_, o)| if let Output::Retire { path } = o { Some(*path) } else { None })
        .collect();
    assert_eq!(retired, vec![extra], "the relayed standby stays");
    // A dead path is retired after DEAD_LINGER.
    s.links.get_mut(&r).unwrap().blackholed = true;
    s.run_for(DEAD_LINGER + PROBE_INTERVAL + PROBE_TIMEOUT);
    assert!(s.outputs.iter().any(|(_, o)| *o == Output::Retire { path: r }));
}

#[test]
fn a_path_down_fails_over_with_the_old_path_named() {
    let mut s = sim(true);
    let r = s.add(1, relayed(true), Link::new(40));
    let d = s.add(2, direct(Protocol::Quic), Link::new(10));
    s.down(d);
    assert_eq!(changed(&s.changes().last().unwrap().1), Some((Some(d), r, ChangeReason::Failover)));
}

#[test]
fn a_path_that_may_not_carry_never_does_and_is_not_a_standby() {
    let mut s = sim(true);
    let signaling = s.add(1, PathDesc { carries: false, ..direct(Protocol::Quic) }, Link::new(5));
    assert_eq!(s.m.active(), None, "kept for signaling only");
    assert!(s.m.is_connected());
    let w = s.add(2, direct(Protocol::WebRtc), Link::new(50));
    assert_eq!(s.m.active(), Some(w));
    s.run_for(secs(60));
    assert_eq!(s.m.active(), Some(w), "the faster signaling path never takes over");
    s.down(w);
    assert_eq!(s.m.active(), None);
    assert!(s.outputs.iter().all(|(_, o)| *o != Output::Carry { path: signaling }));
}

#[derive(Clone, Debug)]
enum Op {
    Up(u8, bool, bool),
    Down(u8),
    Blackhole(u8, bool),
    Run(u16),
    Sending(bool),
    DialFailed,
    Punched(bool),
    Wanted(bool),
    Remote(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..4, any::<bool>(), any::<bool>()).prop_map(|(i, d, l)| Op::Up(i, d, l)),
        1 => (0u8..4).prop_map(Op::Down),
        1 => (0u8..4, any::<bool>()).prop_map(|(i, b)| Op::Blackhole(i, b)),
        4 => (1u16..20_000).prop_map(Op::Run),
        1 => any::<bool>().prop_map(Op::Sending),
        1 => Just(Op::DialFailed),
        1 => any::<bool>().prop_map(Op::Punched),
        1 => any::<bool>().prop_map(Op::Wanted),
        1 => (0u8..4).prop_map(Op::Remote),
    ]
}

proptest! {
    /// Any sequence of inputs: no panic, the active path is always a live known path (or
    /// none), outputs name known paths, and timers are never in the past after a drain.
    #[test]
    fn invariants_hold_under_any_inputs(ops in prop::collection::vec(op(), 1..60), seed in any::<u64>()) {
        let mut s = Sim::new(PathManager::new(PathConfig::default(), true), seed);
        let mut next_id = 100u64;
        for o in ops {
            match o {
                Op::Up(i, d, local) => {
                    let id = PathId(u64::from(i));
                    if s.links.contains_key(&id) { s.down(id); }
                    let desc = PathDesc {
                        kind: if d { PathKind::Direct } else { PathKind::Relayed },
                        protocol: Protocol::Tcp,
                        dialed_locally: local,
                        carries: !next_id.is_multiple_of(5),
                    };
                    next_id += 1;
                    s.add(u64::from(i), desc, Link { jitter: 0.2, ..Link::new(5 + next_id % 50) });
                }
                Op::Down(i) => s.down(PathId(u64::from(i))),
                Op::Blackhole(i, b) => {
                    if let Some(l) = s.links.get_mut(&PathId(u64::from(i))) { l.blackholed = b; }
                }
                Op::Run(ms) => s.run_for(Duration::from_millis(u64::from(ms))),
                Op::Sending(b) => s.sending = b,
                Op::DialFailed => { s.m.handle_dial_failed(s.now); s.drain(); }
                Op::Punched(ok) => { s.m.handle_punch_finished(s.now, ok); s.drain(); }
                Op::Wanted(w) => { s.m.set_wanted(s.now, w); s.drain(); }
                Op::Remote(i) => s.remote_traffic(PathId(u64::from(i))),
            }
            if let Some(a) = s.m.active() {
                let alive = s.m.paths().any(|(id, _, _, alive)| id == a && alive);
                prop_assert!(alive, "active {a} is not a live path");
            }
            for (_, out) in &s.outputs {
                if let Output::Probe { path, .. } | Output::Carry { path } | Output::Retire { path } = out {
                    prop_assert!(path.0 < 4, "unknown path {path}");
                }
            }
        }
    }
}
