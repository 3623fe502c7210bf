//! The machine on its own and in small simulated scenarios: message flow, RTT/2
//! synchronisation, authentication of datagrams, malformed and out-of-order messages,
//! peer-reflexive adoption, stale mappings, port prediction.

use std::time::Duration;

use super::{addr, run, seeds, t0};
use crate::punch::{
    candidates::{Candidate, CandidateKind, MappingHint},
    packet::Datagram,
    sim::{
        FilteringBehavior, LinkConfig, MappingBehavior, NatConfig, PortAllocation, Profile, Sim, SimConfig,
        SiteKind,
    },
    Event, FailReason, Output, Phase, PunchConfig, PunchMessage, PunchProtocolError, PunchSession, Role,
};

fn drain(s: &mut PunchSession) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn host(a: &str) -> Candidate {
    Candidate::new(CandidateKind::Host, addr(a), 0)
}

#[test]
fn initiator_opens_with_offer_and_ping_then_syncs_after_rtt() {
    let now = t0();
    let mut i = PunchSession::new(
        Role::Initiator,
        now,
        PunchConfig::default(),
        vec![host("192.0.2.10:5000")],
        MappingHint::EndpointIndependent,
        [7; 32],
    );
    let out = drain(&mut i);
    let token = match &out[..] {
        [Output::SendMessage(PunchMessage::Offer { token, candidates, .. }), Output::SendMessage(PunchMessage::Ping { seq: 1, sent_us: 0 })] =>
        {
            assert_eq!(candidates.len(), 1);
            *token
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(i.phase(), Phase::Gathering);
    // The pong arrives 80 ms later, then the answer: sync now, punch 40 ms later.
    let t = now + Duration::from_millis(80);
    i.handle_message(t, PunchMessage::Pong { seq: 1, sent_us: 0 });
    assert_eq!(i.rtt(), Some(Duration::from_millis(80)));
    i.handle_message(
        t,
        PunchMessage::Answer { mapping: MappingHint::Unknown, candidates: vec![host("192.0.2.20:5000")] },
    );
    assert_eq!(drain(&mut i), vec![Output::SendMessage(PunchMessage::Sync { round: 1, rtt_us: 80_000 })]);
    assert_eq!(i.phase(), Phase::Scheduled);
    assert_eq!(i.poll_timeout(), Some(t + Duration::from_millis(40)));
    i.handle_timeout(t + Duration::from_millis(40));
    let out = drain(&mut i);
    assert!(matches!(&out[..], [Output::SendDatagram { to, bytes }]
        if *to == addr("192.0.2.20:5000") && Datagram::decode(bytes).is_some_and(|d| *d.token() == token)));
    assert_eq!(i.phase(), Phase::Punching);
    assert_eq!(i.round(), 1);
}

#[test]
fn both_sides_start_punching_together() {
    // Asymmetric links: the relay path is 10 + 70 + 20 ms each way.
    for delays in [(10, 70), (50, 50), (150, 5)] {
        let mut cfg = SimConfig::profiles(Profile::PortRestrictedCone, Profile::PortRestrictedCone, 3);
        cfg.links[0].delay = Duration::from_millis(delays.0);
        cfg.links[1].delay = Duration::from_millis(delays.1);
        let (_, a, b) = run(cfg, &PunchConfig::default(), 1);
        let (fa, fb) = (a.first_datagram.unwrap(), b.first_datagram.unwrap());
        // The responder's session starts when the sim starts too, so both clocks agree.
        let skew = fa.abs_diff(fb);
        assert!(skew <= Duration::from_millis(1), "{delays:?}: {fa:?} vs {fb:?}");
        assert!(a.succeeded().is_some() && b.succeeded().is_some(), "{delays:?}");
    }
}

#[test]
fn forged_and_stray_datagrams_are_ignored() {
    let mut sim = Sim::new(t0(), SimConfig::profiles(Profile::FullCone, Profile::PortRestrictedCone, 5));
    sim.start(&PunchConfig::default(), seeds(5));
    // Let the offer reach the responder (it learns the token) but not the first round.
    sim.run_for(Duration::from_millis(45));
    assert_eq!(sim.session(1).unwrap().phase(), Phase::Listening);
    let attacker = addr("192.0.2.66:4444");
    let before = sim.session(1).unwrap().stats();
    for forged in [
        Datagram::Probe { token: [0; 16], txid: 1 }.encode(),
        Datagram::Ack { token: [0xff; 16], txid: 2, observed: attacker }.encode(),
        b"\x13kzp garbage".to_vec(),
        vec![0xc3, 0, 0, 0, 1, 8], // a QUIC long header
        vec![],
    ] {
        sim.inject_datagram(1, attacker, &forged);
        sim.inject_datagram(0, attacker, &forged);
    }
    let after = sim.session(1).unwrap().stats();
    assert_eq!(after.acks_sent, before.acks_sent, "no ack to a forged probe");
    assert_eq!(after.peer_reflexive, 0, "no adoption of a forged source");
    assert_eq!(after.datagrams_ignored, before.datagrams_ignored + 5);
    assert!(!sim.session(1).unwrap().accepts(&Datagram::Probe { token: [0; 16], txid: 1 }.encode()));
    sim.run_for(Duration::from_secs(20));
    let (a, b) = (sim.report(0), sim.report(1));
    assert!(a.succeeded().is_some_and(|r| r != attacker), "{a:?}");
    assert!(b.succeeded().is_some_and(|r| r != attacker), "{b:?}");
}

#[test]
fn a_probe_with_the_right_token_but_an_unknown_ack_is_ignored() {
    let now = t0();
    let mut i = PunchSession::new(
        Role::Initiator,
        now,
        PunchConfig::default(),
        vec![],
        MappingHint::Unknown,
        [1; 32],
    );
    let token = match drain(&mut i).first() {
        Some(Output::SendMessage(PunchMessage::Offer { token, .. })) => *token,
        other => panic!("{other:?}"),
    };
    let ack = Datagram::Ack { token, txid: 12345, observed: addr("192.0.2.1:1") }.encode();
    assert!(i.accepts(&ack));
    i.handle_datagram(now, addr("192.0.2.9:9"), &ack);
    assert!(drain(&mut i).is_empty());
    assert_eq!(i.stats().datagrams_ignored, 1);
    assert!(!i.is_finished());
}

#[test]
fn garbage_message_fails_both_sides_cleanly() {
    let mut sim = Sim::new(t0(), SimConfig::profiles(Profile::FullCone, Profile::FullCone, 2));
    sim.start(&PunchConfig::default(), seeds(2));
    sim.run_for(Duration::from_millis(10));
    sim.inject_message(1, &[0xdd, 0xff, 0xff, 0xff, 0xff]);
    sim.run_for(Duration::from_secs(20));
    let (a, b) = (sim.report(0), sim.report(1));
    assert!(
        matches!(
            &b.event,
            Some(Event::Failed { reason: FailReason::Protocol(PunchProtocolError::Decode(_)) })
        ),
        "{b:?}"
    );
    assert!(
        matches!(&a.event, Some(Event::Failed { reason: FailReason::PeerFailed(r) }) if r.contains("malformed")),
        "{a:?}"
    );
    assert!(a.after.unwrap() < Duration::from_millis(200), "the initiator learns it one relay trip later");
}

#[test]
fn decode_error_is_returned_and_ends_the_session() {
    let now = t0();
    let mut r = PunchSession::new(
        Role::Responder,
        now,
        PunchConfig::default(),
        vec![],
        MappingHint::Unknown,
        [1; 32],
    );
    assert!(r.handle_message_bytes(now, b"\xa3abc").is_err());
    let out = drain(&mut r);
    assert!(
        matches!(
            &out[..],
            [Output::SendMessage(PunchMessage::Failure { .. }), Output::Event(Event::Failed { .. })]
        ),
        "{out:?}"
    );
    assert!(r.is_finished() && r.poll_timeout().is_none());
    // Nothing more comes out of a finished session.
    r.handle_message(now, PunchMessage::Ping { seq: 1, sent_us: 1 });
    r.handle_timeout(now + Duration::from_secs(100));
    assert!(drain(&mut r).is_empty());
}

#[test]
fn out_of_order_messages_are_protocol_errors() {
    let now = t0();
    let cases: [(Role, PunchMessage); 4] = [
        (Role::Responder, PunchMessage::Sync { round: 1, rtt_us: 0 }),
        (Role::Responder, PunchMessage::Success { remote: addr("192.0.2.1:1") }),
        (
            Role::Initiator,
            PunchMessage::Offer { token: [0; 16], mapping: MappingHint::Unknown, candidates: vec![] },
        ),
        (Role::Initiator, PunchMessage::Sync { round: 1, rtt_us: 0 }),
    ];
    for (role, msg) in cases {
        let mut s =
            PunchSession::new(role, now, PunchConfig::default(), vec![], MappingHint::Unknown, [1; 32]);
        drain(&mut s);
        s.handle_message(now, msg.clone());
        let out = drain(&mut s);
        assert!(
            matches!(
                out.last(),
                Some(Output::Event(Event::Failed {
                    reason: FailReason::Protocol(PunchProtocolError::Unexpected { .. })
                }))
            ),
            "{role:?} {msg:?}: {out:?}"
        );
    }
}

#[test]
fn nomination_of_an_address_never_seen_is_refused() {
    let now = t0();
    let mut r = PunchSession::new(
        Role::Responder,
        now,
        PunchConfig::default(),
        vec![],
        MappingHint::Unknown,
        [1; 32],
    );
    r.handle_message(
        now,
        PunchMessage::Offer { token: [3; 16], mapping: MappingHint::Unknown, candidates: vec![] },
    );
    drain(&mut r);
    r.handle_message(now, PunchMessage::Success { remote: addr("192.0.2.1:1") });
    assert!(matches!(
        drain(&mut r).last(),
        Some(Output::Event(Event::Failed {
            reason: FailReason::Protocol(PunchProtocolError::BadNomination(_))
        }))
    ));
}

#[test]
fn silent_peer_times_out() {
    let now = t0();
    let cfg = PunchConfig::default();
    let mut i = PunchSession::new(
        Role::Initiator,
        now,
        cfg.clone(),
        vec![host("192.0.2.1:5")],
        MappingHint::Unknown,
        [1; 32],
    );
    drain(&mut i);
    assert_eq!(i.poll_timeout(), Some(now + cfg.message_timeout));
    i.handle_timeout(now + cfg.message_timeout);
    assert!(matches!(
        drain(&mut i).last(),
        Some(Output::Event(Event::Failed { reason: FailReason::PeerUnresponsive { .. } }))
    ));
    // A responder that never hears an offer ends at its deadline.
    let mut r = PunchSession::new(Role::Responder, now, cfg.clone(), vec![], MappingHint::Unknown, [1; 32]);
    assert_eq!(r.poll_timeout(), Some(now + cfg.deadline + cfg.message_timeout));
    r.handle_timeout(now + cfg.deadline + cfg.message_timeout);
    assert!(matches!(
        drain(&mut r).last(),
        Some(Output::Event(Event::Failed { reason: FailReason::DeadlineExceeded(_) }))
    ));
}

#[test]
fn close_tells_the_peer() {
    let now = t0();
    let mut i = PunchSession::new(
        Role::Initiator,
        now,
        PunchConfig::default(),
        vec![],
        MappingHint::Unknown,
        [1; 32],
    );
    drain(&mut i);
    i.close(now);
    let out = drain(&mut i);
    assert!(
        matches!(&out[..], [Output::SendMessage(PunchMessage::Failure { reason }), Output::Event(Event::Failed { reason: FailReason::Cancelled })] if reason == "cancelled")
    );
}

#[test]
fn symmetric_responder_is_reached_through_its_peer_reflexive_address() {
    // The responder's NAT gives each destination a new port: the initiator only ever
    // reaches it at an address it never offered.
    let (mut sim, a, b) =
        run(SimConfig::profiles(Profile::FullCone, Profile::Symmetric, 4), &PunchConfig::default(), 4);
    let remote = a.succeeded().expect("full cone × symmetric must punch");
    let offered = sim.gather(1).0;
    assert!(offered.iter().all(|c| c.addr != remote), "{remote} was offered");
    assert!(sim.session(0).unwrap().stats().peer_reflexive >= 1);
    assert_eq!(sim.path_check(0, remote), b.succeeded());
    assert_eq!(sim.path_check(1, b.succeeded().unwrap()), Some(remote));
}

#[test]
fn stale_server_reflexive_mapping_is_recovered_by_adoption() {
    // A's STUN mapping expires before the session starts: its NAT picks a new port, and
    // B (full cone) learns it from A's packets.
    let nat = NatConfig {
        mapping_timeout: Duration::from_secs(30),
        ..NatConfig::new(MappingBehavior::EndpointIndependent, FilteringBehavior::AddressAndPortDependent)
    };
    let cfg = SimConfig {
        sites: [SiteKind::Nat(nat), Profile::FullCone.site()],
        ..SimConfig::profiles(Profile::Open, Profile::Open, 8)
    };
    let mut sim = Sim::new(t0(), cfg);
    let gathered = [sim.gather(0), sim.gather(1)];
    let stale = gathered[0].0.iter().find(|c| c.kind == CandidateKind::ServerReflexive).unwrap().addr;
    sim.advance(Duration::from_secs(60));
    assert_eq!(sim.nat_mappings(0), 0, "the mapping expired");
    let punch = PunchConfig::default();
    sim.start_with(&punch, seeds(8), gathered);
    sim.run_for(punch.deadline);
    let (a, b) = (sim.report(0), sim.report(1));
    let b_remote = b.succeeded().expect("responder succeeds");
    assert!(a.succeeded().is_some());
    assert_ne!(b_remote, stale);
    assert_eq!(sim.path_check(1, b_remote), a.succeeded());
}

fn sequential_symmetric() -> SiteKind {
    SiteKind::Nat(NatConfig {
        ports: PortAllocation::Sequential,
        ..NatConfig::new(MappingBehavior::AddressAndPortDependent, FilteringBehavior::AddressAndPortDependent)
    })
}

#[test]
fn port_prediction_rescues_sequential_symmetric_with_port_restricted() {
    for (a, b) in [
        (sequential_symmetric(), Profile::PortRestrictedCone.site()),
        (Profile::PortRestrictedCone.site(), sequential_symmetric()),
    ] {
        let cfg = SimConfig { sites: [a, b], ..SimConfig::profiles(Profile::Open, Profile::Open, 11) };
        let with = PunchConfig::default();
        let (mut sim, ra, rb) = run(cfg.clone(), &with, 11);
        let remote = ra.succeeded().unwrap_or_else(|| panic!("prediction should work: {ra:?}"));
        assert_eq!(sim.path_check(0, remote), rb.succeeded());
        let without = PunchConfig { port_prediction: 0, ..PunchConfig::default() };
        let (_, ra, _) = run(cfg, &without, 11);
        assert!(
            matches!(ra.event, Some(Event::Failed { reason: FailReason::NoPath { rounds: 3 } })),
            "{ra:?}"
        );
    }
}

#[test]
fn address_dependent_mapping_behaves_between_cone_and_symmetric() {
    let adm = SiteKind::Nat(NatConfig::new(
        MappingBehavior::AddressDependent,
        FilteringBehavior::AddressAndPortDependent,
    ));
    for (peer, direct) in [
        (Profile::FullCone, true),
        (Profile::RestrictedCone, true),
        (Profile::PortRestrictedCone, false),
        (Profile::Symmetric, false),
    ] {
        let cfg =
            SimConfig { sites: [adm, peer.site()], ..SimConfig::profiles(Profile::Open, Profile::Open, 12) };
        let (_, a, b) = run(cfg, &PunchConfig { port_prediction: 0, ..PunchConfig::default() }, 12);
        assert_eq!(a.succeeded().is_some(), direct, "ADM+APDF × {peer:?}: {a:?}");
        assert_eq!(b.succeeded().is_some(), direct, "ADM+APDF × {peer:?}: {b:?}");
    }
}

#[test]
fn retries_survive_a_lossy_first_round() {
    // 30 % loss per link: round 1 often fails, later rounds (after backoff) catch up.
    let mut successes = 0;
    let mut later_rounds = 0;
    for seed in 0..10u8 {
        let mut cfg =
            SimConfig::profiles(Profile::PortRestrictedCone, Profile::RestrictedCone, u64::from(seed));
        cfg.links = [LinkConfig { delay: Duration::from_millis(30), loss: 0.3 }; 2];
        let (_, a, b) = run(cfg, &PunchConfig::default(), seed);
        assert!(a.event.is_some() && b.event.is_some(), "always ends");
        if a.succeeded().is_some() {
            successes += 1;
            later_rounds += usize::from(a.round > 1);
        }
    }
    assert!(successes >= 8, "{successes}/10");
    assert!(later_rounds >= 1, "some success needed a retry");
}
