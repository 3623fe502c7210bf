//! Tests of the punch layer: codec snapshots and round trips (`proto`), the signal
//! demultiplexer (`signal`), the side-channel router (`router`), the UDP punch machine on
//! its own (`session`), the whole attempt — gathering, punch, TCP race, routing — on a
//! virtual network (`attempt`), the 6×6 NAT matrix and link degradation through the
//! simulator (`matrix`), and property tests (`prop`).

mod attempt;
mod candidates;
mod matrix;
mod prop;
mod proto;
mod router;
mod session;
mod signal;

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::{
    sim::{SideReport, Sim, SimConfig},
    PunchConfig,
};

/// An arbitrary origin for virtual time. This is the only clock read in the punch
/// layer, and only tests make it: every later instant is this plus simulated durations.
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn seeds(n: u8) -> [[u8; 32]; 2] {
    [[n; 32], [n.wrapping_add(100); 32]]
}

/// Runs a scenario to its end (bounded by the session deadline plus slack).
fn run(cfg: SimConfig, punch: &PunchConfig, seed: u8) -> (Sim, SideReport, SideReport) {
    let mut sim = Sim::new(t0(), cfg);
    sim.start(punch, seeds(seed));
    sim.run_for(punch.deadline + Duration::from_secs(5));
    let (a, b) = (sim.report(0), sim.report(1));
    (sim, a, b)
}
