//! Tests of the wire format: hex snapshots, property tests, and the hello exchange.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod exchange;
mod props;
mod snapshots;

use std::collections::BTreeMap;

use crate::{
    address::{Protocol, TransportAddr},
    identity::Keypair,
    wire::{Hello, HelloPurpose},
};

/// The fixed hello of the snapshot tests and of the annotated dump in `docs/protocol.md`.
pub(super) fn sample_hello() -> Hello {
    Hello {
        peer_id: Keypair::from_seed([1; 32]).peer_id(),
        agent: "kizuna/0.1.0".into(),
        purpose: HelloPurpose::Session,
        capabilities: [Protocol::Tcp, Protocol::Quic]
            .into_iter()
            .map(|p| (p, p.capabilities()))
            .collect::<BTreeMap<_, _>>(),
        listen_addrs: vec![
            TransportAddr::Tcp("192.0.2.1:4000".parse().unwrap()),
            TransportAddr::Quic("[2001:db8::1]:4001".parse().unwrap()),
            TransportAddr::Relay("ws://relay.example:7000".into()),
        ],
        observed_addr: Some(TransportAddr::Tcp("198.51.100.7:51000".parse().unwrap())),
        session: None,
    }
}
