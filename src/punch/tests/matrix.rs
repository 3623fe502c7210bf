//! The 6×6 NAT matrix through the simulator, on clean and on degraded links.
//!
//! Expectations (RFC 4787): a direct path exists for every pair except symmetric with
//! symmetric, symmetric with port-restricted cone (either way) — the symmetric side's
//! fresh mapping is filtered by the other, whose own mapping is filtered back — and any
//! pair with UDP blocked. `docs/punch.md` carries the same table.

use std::time::Duration;

use super::run;
use crate::punch::{
    sim::{LinkConfig, Profile, SimConfig},
    Event, FailReason, PunchConfig,
};

#[test]
fn matrix_6x6_on_clean_links() {
    let punch = PunchConfig::default();
    let mut table = String::new();
    for a in Profile::ALL {
        for b in Profile::ALL {
            let (mut sim, ra, rb) = run(SimConfig::profiles(a, b, 1), &punch, 1);
            let cell = format!("{a:?} × {b:?}");
            if Profile::direct_possible(a, b) {
                let (Some(to_b), Some(to_a)) = (ra.succeeded(), rb.succeeded()) else {
                    panic!("{cell}: expected direct, got {ra:?} / {rb:?}");
                };
                // Success comes in the first round on a clean network, within 1 s.
                assert_eq!(ra.round, 1, "{cell}");
                assert!(ra.after.unwrap() < Duration::from_secs(1), "{cell}: {ra:?}");
                // The punched path really carries traffic both ways, between exactly
                // the addresses each side was given (what QUIC will use).
                assert_eq!(sim.path_check(0, to_b), Some(to_a), "{cell}");
                assert_eq!(sim.path_check(1, to_a), Some(to_b), "{cell}");
                table.push_str(&format!("{cell}: direct after {:?}\n", ra.after.unwrap()));
            } else {
                assert!(
                    matches!(ra.event, Some(Event::Failed { reason: FailReason::NoPath { rounds: 3 } })),
                    "{cell}: expected NoPath, got {ra:?}"
                );
                assert!(
                    matches!(&rb.event, Some(Event::Failed { reason: FailReason::PeerFailed(r) }) if r.contains("no direct path")),
                    "{cell}: {rb:?}"
                );
                // Clean failure well before the deadline: 3 rounds + backoffs + RTTs.
                assert!(ra.after.unwrap() < Duration::from_secs(8), "{cell}: {ra:?}");
                assert!(rb.after.unwrap() < punch.deadline, "{cell}: {rb:?}");
                table.push_str(&format!("{cell}: relayed (failed after {:?})\n", ra.after.unwrap()));
            }
        }
    }
    println!("{table}");
}

#[test]
fn cone_pairs_survive_loss_and_delay() {
    // 2 % loss and 50 ms one-way delay on each access link, several seeds.
    let cones = [Profile::Open, Profile::FullCone, Profile::RestrictedCone, Profile::PortRestrictedCone];
    for seed in 0..6u8 {
        for a in cones {
            for b in cones {
                let mut cfg = SimConfig::profiles(a, b, u64::from(seed) * 7919);
                cfg.links = [LinkConfig { delay: Duration::from_millis(50), loss: 0.02 }; 2];
                let (mut sim, ra, rb) = run(cfg, &PunchConfig::default(), seed);
                let (Some(to_b), Some(to_a)) = (ra.succeeded(), rb.succeeded()) else {
                    panic!("{a:?} × {b:?} seed {seed}: {ra:?} / {rb:?}");
                };
                assert_eq!(sim.path_check(0, to_b), Some(to_a));
                assert!(ra.after.unwrap() < Duration::from_secs(5), "{a:?} × {b:?} seed {seed}: {ra:?}");
            }
        }
    }
}

#[test]
fn symmetric_with_cone_survives_loss_and_delay() {
    for seed in 0..4u8 {
        for b in [Profile::Open, Profile::FullCone, Profile::RestrictedCone] {
            for (x, y) in [(Profile::Symmetric, b), (b, Profile::Symmetric)] {
                let mut cfg = SimConfig::profiles(x, y, u64::from(seed) + 100);
                cfg.links = [LinkConfig { delay: Duration::from_millis(50), loss: 0.02 }; 2];
                let (_, ra, rb) = run(cfg, &PunchConfig::default(), seed);
                assert!(ra.succeeded().is_some() && rb.succeeded().is_some(), "{x:?} × {y:?} seed {seed}");
            }
        }
    }
}

#[test]
fn impossible_pairs_fail_within_the_deadline_on_bad_links() {
    for (a, b) in [(Profile::Symmetric, Profile::Symmetric), (Profile::UdpBlocked, Profile::FullCone)] {
        let mut cfg = SimConfig::profiles(a, b, 9);
        cfg.links = [LinkConfig { delay: Duration::from_millis(200), loss: 0.1 }; 2];
        let punch = PunchConfig::default();
        let (_, ra, rb) = run(cfg, &punch, 9);
        assert!(matches!(ra.event, Some(Event::Failed { .. })), "{ra:?}");
        assert!(matches!(rb.event, Some(Event::Failed { .. })), "{rb:?}");
        assert!(ra.after.unwrap() <= punch.deadline);
        assert!(rb.after.unwrap() <= punch.deadline + punch.message_timeout);
    }
}
