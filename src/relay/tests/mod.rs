//! Tests of the relay: message snapshots and properties, authentication, the server and
//! client machines with a synthetic clock.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod auth;
mod client;
mod proto;
mod server;

use crate::identity::{Keypair, PeerId};

/// The key of fixed seed `[n; 32]`.
pub(super) fn key(n: u8) -> Keypair {
    Keypair::from_seed([n; 32])
}

/// The peer id of fixed seed `[n; 32]`.
pub(super) fn peer(n: u8) -> PeerId {
    key(n).peer_id()
}

/// A `reserved` message without addresses (what a relay that knows none sends).
pub(super) fn reserved(expires_in_secs: u64) -> crate::relay::proto::RelayMessage {
    crate::relay::proto::RelayMessage::Reserved { expires_in_secs, observed: None, stun: Vec::new() }
}
