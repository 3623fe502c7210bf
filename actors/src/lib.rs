//! # kizuna-actors
//!
//! Kizuna's actor runtime on actix. An application starts one [`Supervisor`], sends it the
//! typed messages of [`api`] and subscribes to [`Event`]s.

pub mod api;
mod child;
mod connection;
mod early_signals;
pub mod events;
mod hole_punch;
mod listener;
mod negotiator;
pub mod relay;
mod relay_client;
pub mod runtime;
pub mod services;
pub mod supervision;
mod supervisor;
pub mod testing;
mod transports;
mod webrtc_signal;

pub use api::{
    Connect, Disconnect, Event, GetStats, Listen, NodeError, OpenStream, Send, SendDatagram, Shutdown,
    Subscribe,
};
pub use child::Fault;
pub use connection::ConnectionActor;
pub use events::EventStream;
pub use listener::ListenerActor;
pub use negotiator::NegotiatorActor;
pub use relay_client::RelayClientActor;
pub use supervisor::{GetChildren, InjectFault, Supervisor, SupervisorConfig, PUNCH_RETRY};
