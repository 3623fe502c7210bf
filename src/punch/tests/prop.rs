//! Property tests: arbitrary inputs never panic a session, every session ends by its
//! deadline, and random scenarios through the simulator always end with both sides
//! agreeing.

use std::{net::SocketAddr, time::Duration};

use proptest::prelude::*;

use super::{proto::message, run, t0};
use crate::punch::{
    candidates::{Candidate, CandidateKind, MappingHint},
    packet::Datagram,
    sim::{LinkConfig, Profile, SimConfig},
    Event, Output, PunchConfig, PunchSession, Role, MAX_TARGETS,
};

#[derive(Clone, Debug)]
enum Input {
    Message(crate::punch::PunchMessage),
    Bytes(Vec<u8>),
    /// A probe or ack from one of a few addresses, with the session's token or not, for
    /// a recently sent transaction or not.
    Datagram {
        from: u8,
        ack: bool,
        right_token: bool,
        known_txid: bool,
    },
    RawDatagram(Vec<u8>),
    Advance(u16),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => message().prop_map(Input::Message),
        1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Input::Bytes),
        4 => (0..4u8, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(from, ack, right_token, known_txid)| Input::Datagram { from, ack, right_token, known_txid }),
        1 => proptest::collection::vec(any::<u8>(), 0..60).prop_map(Input::RawDatagram),
        4 => (0..3000u16).prop_map(Input::Advance),
    ]
}

fn peer_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 100 + i], 5000 + u16::from(i)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_never_panic_and_the_session_ends_by_its_deadline(
        initiator in any::<bool>(),
        inputs in proptest::collection::vec(input(), 0..60),
    ) {
        let start = t0();
        let role = if initiator { Role::Initiator } else { Role::Responder };
        let local = vec![Candidate::new(CandidateKind::Host, peer_addr(9), 0)];
        let mut s = PunchSession::new(role, start, PunchConfig::default(), local, MappingHint::Unknown, [5; 32]);
        let deadline = s.deadline();
        let mut now = start;
        let mut token = [0u8; 16];
        let mut last_txid = 0u64;
        let mut events = 0;
        let mut check = |s: &mut PunchSession, token: &mut [u8; 16], last_txid: &mut u64| -> Result<(), TestCaseError> {
            let mut n = 0;
            while let Some(o) = s.poll_output() {
                n += 1;
                match o {
                    Output::SendMessage(crate::punch::PunchMessage::Offer { token: t, .. }) => *token = t,
                    Output::SendDatagram { bytes, .. } => {
                        if let Some(Datagram::Probe { txid, .. }) = Datagram::decode(&bytes) {
                            *last_txid = txid;
                        }
                    }
                    Output::Event(_) => events += 1,
                    Output::SendMessage(_) => {}
                }
            }
            // The queue holds the effects of one input only: bounded by the targets.
            prop_assert!(n <= MAX_TARGETS + 8, "{n} outputs from one input");
            prop_assert!(events <= 1, "at most one event");
            if !s.is_finished() {
                prop_assert!(s.poll_timeout().is_some_and(|t| t <= deadline));
            }
            Ok(())
        };
        check(&mut s, &mut token, &mut last_txid)?;
        for inp in inputs {
            match inp {
                Input::Message(m) => {
                    if let crate::punch::PunchMessage::Offer { token: t, .. } = &m {
                        if !initiator { token = *t; }
                    }
                    s.handle_message(now, m);
                }
                Input::Bytes(b) => { let _ = s.handle_message_bytes(now, &b); }
                Input::Datagram { from, ack, right_token, known_txid } => {
                    let tok = if right_token { token } else { [0xee; 16] };
                    let txid = if known_txid { last_txid } else { 77 };
                    let d = if ack {
                        Datagram::Ack { token: tok, txid, observed: peer_addr(9) }
                    } else {
                        Datagram::Probe { token: tok, txid }
                    };
                    s.handle_datagram(now, peer_addr(from), &d.encode());
                }
                Input::RawDatagram(b) => s.handle_datagram(now, peer_addr(0), &b),
                Input::Advance(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                }
            }
            check(&mut s, &mut token, &mut last_txid)?;
        }
        // With no more input, its own timers end it by the deadline.
        let mut guard = 0;
        while let Some(t) = s.poll_timeout() {
            prop_assert!(t <= deadline);
            now = now.max(t);
            s.handle_timeout(now);
            check(&mut s, &mut token, &mut last_txid)?;
            guard += 1;
            prop_assert!(guard < 10_000, "timer loop does not converge");
        }
        prop_assert!(s.is_finished());
        prop_assert!(s.ended_at().is_some_and(|t| t <= deadline.max(now)));
        prop_assert_eq!(events, 1);
    }
}

fn profile() -> impl Strategy<Value = Profile> {
    proptest::sample::select(Profile::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_scenarios_end_in_agreement(
        a in profile(),
        b in profile(),
        seed in any::<u64>(),
        delay_ms in (0..300u64, 0..300u64),
        loss in (0..30u32, 0..30u32),
    ) {
        let mut cfg = SimConfig::profiles(a, b, seed);
        cfg.links = [
            LinkConfig { delay: Duration::from_millis(delay_ms.0), loss: f64::from(loss.0) / 100.0 },
            LinkConfig { delay: Duration::from_millis(delay_ms.1), loss: f64::from(loss.1) / 100.0 },
        ];
        let punch = PunchConfig::default();
        let (mut sim, ra, rb) = run(cfg, &punch, u8::try_from(seed % 251).unwrap());
        prop_assert!(ra.event.is_some() && rb.event.is_some(), "{ra:?} {rb:?}");
        prop_assert!(ra.after.unwrap() <= punch.deadline);
        prop_assert!(rb.after.unwrap() <= punch.deadline + punch.message_timeout);
        match (&ra.event, &rb.event) {
            (Some(Event::Succeeded { remote: to_b }), Some(Event::Succeeded { remote: to_a })) => {
                prop_assert_eq!(sim.path_check(0, *to_b), Some(*to_a));
            }
            (Some(Event::Failed { .. }), Some(Event::Failed { .. })) => {}
            other => prop_assert!(false, "sides disagree: {other:?}"),
        }
    }
}
