//! The node runtime: the [`Supervisor`] and the actors it supervises, one room of the
//! crate beside the relay server ([`crate::relay`]), the application services
//! ([`crate::services`]) and the `kizuna` command-line program (`src/bin/kizuna`).
//!
//! ```text
//! Supervisor ─┬─ ListenerActor     (permanent: one per listen address)
//!             ├─ RelayClientActor  (permanent: with relays configured)
//!             ├─ NegotiatorActor   (never restarted: one per outbound connect)
//!             ├─ ConnectionActor   (transient: one per live connection)
//!             └─ HolePunchActor    (never restarted: one per punch attempt and peer)
//! ```

pub(crate) mod child;
pub(crate) mod connection;
mod early_signals;
pub mod events;
pub(crate) mod hole_punch;
pub(crate) mod listener;
pub(crate) mod negotiator;
mod network_watch;
pub(crate) mod relay_client;
pub(crate) mod side_reader;
pub mod supervision;
pub(crate) mod supervisor;
mod transports;
pub(crate) mod webrtc_signal;
