#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;

fn msg(i: u64) -> Bytes {
    Bytes::from(i.to_be_bytes().to_vec())
}

#[test]
fn window_bounds_messages_and_bytes() {
    let mut s = SessionSender::new(7, WindowLimits { max_messages: 3, max_bytes: 10 });
    assert!(s.has_room(100), "an empty window takes one large message");
    assert_eq!(s.push(Bytes::from(vec![0; 4])), 1);
    assert_eq!(s.push(Bytes::from(vec![0; 4])), 2);
    assert!(!s.has_room(3), "bytes");
    assert!(s.has_room(2));
    assert_eq!(s.push(Bytes::from(vec![0; 2])), 3);
    assert!(!s.has_room(0), "messages");
    assert_eq!(s.on_ack(2), Ok(2));
    assert_eq!(s.in_flight(), (1, 2));
    assert_eq!(s.on_ack(1), Ok(0), "an old ack frees nothing");
    assert_eq!(s.on_ack(9), Err(AckError::Beyond { acked: 9, sent: 3 }));
    assert_eq!(s.unacked().map(|(n, _)| n).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn a_hello_acknowledges_only_for_our_epoch() {
    let mut s = SessionSender::new(7, WindowLimits::default());
    for i in 0..5 {
        s.push(msg(i));
    }
    assert_eq!(s.on_hello(8, 4), Ok(0));
    assert_eq!(s.on_hello(7, 4), Ok(4));
    assert_eq!(s.in_flight().0, 1);
}

#[test]
fn receiver_delivers_in_order_drops_copies_and_flags_gaps() {
    let now = Instant::now();
    let mut r = SessionReceiver::new();
    assert!(r.on_hello(5, 1));
    assert!(!r.on_hello(5, 1));
    assert_eq!(r.on_data(5, 1, 1, now), Verdict::Deliver);
    assert_eq!(r.on_data(5, 1, 1, now), Verdict::Duplicate);
    assert_eq!(r.on_data(4, 2, 1, now), Verdict::Duplicate, "another epoch");
    assert_eq!(r.on_data(5, 3, 1, now), Verdict::Gap { expected: 2 });
    assert_eq!(r.on_data(5, 2, 1, now), Verdict::Deliver);
    assert_eq!(r.state(), (5, 2));
    // A new epoch (the peer restarted) starts over, at its base.
    assert!(r.on_hello(6, 1));
    assert_eq!(r.on_data(6, 1, 1, now), Verdict::Deliver);
    // A receiver that restarted meets a sender whose first 40 messages were acknowledged
    // to its previous instance: it starts at the sender's base.
    let mut fresh = SessionReceiver::new();
    assert!(fresh.on_hello(6, 41));
    assert_eq!(fresh.on_data(6, 40, 1, now), Verdict::Duplicate);
    assert_eq!(fresh.on_data(6, 41, 1, now), Verdict::Deliver);
}

#[test]
fn acks_come_after_a_count_or_a_delay() {
    let t0 = Instant::now();
    let mut r = SessionReceiver::new();
    r.on_hello(1, 1);
    r.on_data(1, 1, 1, t0);
    assert_eq!(r.poll_ack(t0), None);
    assert_eq!(r.poll_timeout(), Some(t0 + ACK_DELAY));
    assert_eq!(r.poll_ack(t0 + ACK_DELAY), Some(1));
    assert_eq!(r.poll_ack(t0 + ACK_DELAY * 2), None, "nothing new");
    for seq in 2..=ACK_EVERY + 1 {
        r.on_data(1, seq, 1, t0);
    }
    assert_eq!(r.poll_ack(t0), Some(ACK_EVERY + 1), "the count is reached before the delay");
    // Large messages: acknowledged by bytes long before the count (or a byte window) fills.
    let per = 64 * 1024;
    let first = ACK_EVERY + 2;
    let mut seq = first;
    while r.poll_ack(t0).is_none() {
        r.on_data(1, seq, per, t0);
        seq += 1;
    }
    assert_eq!(seq - first, (ACK_BYTES / per) as u64, "acknowledged at {ACK_BYTES} bytes");
    assert!((ACK_BYTES / per) as u64 * 4 <= (DEFAULT_WINDOW_BYTES / per) as u64, "several acks per window");
}

/// One path in the simulation: an ordered channel in each direction; it may die, losing
/// what is in flight.
#[derive(Default)]
struct Path {
    to_receiver: VecDeque<(u64, Bytes)>,
    acks: VecDeque<u64>,
    dead: bool,
}

#[derive(Clone, Debug)]
enum Step {
    /// The application sends (if the window has room).
    Send,
    /// Path `i` carries one message (or ack) each way.
    Carry(usize),
    /// Path `i` dies silently, losing what is in flight on it.
    Kill(usize),
    /// The sender switches to path `i` (retransmitting what is unacknowledged).
    Switch(usize),
    /// A new path `i` replaces a dead one (if it is the active one, the sender carries on it,
    /// resending).
    Revive(usize),
    /// Time passes (acks by delay).
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Send),
        6 => (0usize..3).prop_map(Step::Carry),
        1 => (0usize..3).prop_map(Step::Kill),
        2 => (0usize..3).prop_map(Step::Switch),
        1 => (0usize..3).prop_map(Step::Revive),
        1 => Just(Step::Tick),
    ]
}

proptest! {
    /// Any schedule of sends, carrying, silent path deaths and switches: the application
    /// receives every message it sent exactly once and in order, and the window stays
    /// within its bounds.
    #[test]
    fn exactly_once_in_order_across_any_path_changes(steps in prop::collection::vec(step(), 1..600)) {
        let limits = WindowLimits { max_messages: 16, max_bytes: 1 << 20 };
        let mut tx = SessionSender::new(42, limits);
        let mut rx = SessionReceiver::new();
        rx.on_hello(42, 1);
        let mut paths: Vec<Path> = (0..3).map(|_| Path::default()).collect();
        let mut active = 0usize;
        let mut now = Instant::now();
        let mut next_msg = 0u64;
        let mut got: Vec<u64> = Vec::new();
        let deliver = |rx: &mut SessionReceiver, seq: u64, payload: &Bytes, now: Instant, got: &mut Vec<u64>| {
            match rx.on_data(42, seq, 1, now) {
                Verdict::Deliver => got.push(u64::from_be_bytes(payload[..].try_into().unwrap())),
                Verdict::Duplicate => {}
                Verdict::Gap { expected } => panic!("gap: got {seq}, expected {expected}"),
            }
        };
        for s in steps {
            match s {
                Step::Send => {
                    if tx.has_room(8) && !paths[active].dead {
                        let m = msg(next_msg);
                        next_msg += 1;
                        let seq = tx.push(m.clone());
                        paths[active].to_receiver.push_back((seq, m));
                    }
                }
                Step::Carry(i) => {
                    if paths[i].dead {
                        continue;
                    }
                    if let Some((seq, m)) = paths[i].to_receiver.pop_front() {
                        deliver(&mut rx, seq, &m, now, &mut got);
                        if let Some(a) = rx.poll_ack(now) {
                            paths[i].acks.push_back(a);
                        }
                    }
                    if let Some(a) = paths[i].acks.pop_front() {
                        tx.on_ack(a).unwrap();
                    }
                }
                Step::Kill(i) => {
                    paths[i] = Path { dead: true, ..Path::default() };
                }
                Step::Revive(i) => {
                    // A new connection in place of a dead one: carrying on it resends.
                    if paths[i].dead {
                        paths[i] = Path::default();
                        if active == i {
                            let resend: Vec<(u64, Bytes)> = tx.unacked().map(|(n, m)| (n, m.clone())).collect();
                            paths[i].to_receiver.extend(resend);
                        }
                    }
                }
                Step::Switch(i) => {
                    if paths[i].dead {
                        continue;
                    }
                    active = i;
                    let resend: Vec<(u64, Bytes)> = tx.unacked().map(|(n, m)| (n, m.clone())).collect();
                    paths[i].to_receiver.extend(resend);
                }
                Step::Tick => {
                    now += ACK_DELAY;
                    if let Some(a) = rx.poll_ack(now) {
                        if !paths[active].dead {
                            paths[active].acks.push_back(a);
                        }
                    }
                }
            }
            let (n, b) = tx.in_flight();
            prop_assert!(n <= 16 && b <= 1 << 20);
        }
        // Recover: a live path, a switch (which resends what is unacknowledged), drain.
        paths[0] = Path::default();
        let resend: Vec<(u64, Bytes)> = tx.unacked().map(|(n, m)| (n, m.clone())).collect();
        paths[0].to_receiver.extend(resend);
        while let Some((seq, m)) = paths[0].to_receiver.pop_front() {
            deliver(&mut rx, seq, &m, now, &mut got);
        }
        prop_assert_eq!(got, (0..next_msg).collect::<Vec<_>>());
    }
}
