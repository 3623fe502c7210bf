//! The node runtime: the [`Supervisor`] and the actors it supervises, one room of the
//! crate beside the relay server ([`crate::relay`]), the application services
//! ([`crate::services`]) and the `kizuna` command-line program (`src/bin/kizuna`).
//!
//! ```text
//! Supervisor ─┬─ ListenerActor     (permanent: one per listen address)
//!             ├─ RelayClientActor  (permanent: with relays configured)
//!             └─ PeerActor         (transient: one per remote peer; owns its PeerLink)
//!                 ├─ ConnectionActor   (one per path)
//!                 ├─ NegotiatorActor   (one-shot: the pending dial)
//!                 └─ HolePunchActor    (one-shot: the punch attempt)
//! ```

pub(crate) mod child;
pub(crate) mod connection;
pub mod events;
pub(crate) mod hole_punch;
pub(crate) mod link;
pub(crate) mod listener;
pub(crate) mod negotiator;
mod network_watch;
pub(crate) mod peer;
mod punching;
pub(crate) mod relay_client;
pub(crate) mod side_reader;
pub mod supervision;
pub(crate) mod supervisor;
mod transports;
pub(crate) mod webrtc_signal;
