//! # kizuna-actors
//!
//! Kizuna's actor runtime on actix. An application starts one [`Supervisor`], sends it the
//! typed messages of [`api`] and subscribes to [`Event`]s.
//!
//! The crate has four rooms: the node runtime (`node/`: the supervisor and its actors),
//! the relay server ([`relay`]), the application services `kizuna node` serves
//! ([`services`]), and the `kizuna` command-line program (`src/bin/kizuna/`); beside them
//! the public interface ([`api`]), the test harness ([`testing`]) and the I/O runtime
//! ([`runtime`]).

pub mod api;
mod node;
pub mod relay;
pub mod runtime;
pub mod services;
pub mod testing;

pub use node::{events, supervision};

pub use api::{
    Connect, DialPath, Disconnect, Event, GetStats, Listen, NodeError, OpenStream, Send, SendDatagram,
    Shutdown, Subscribe,
};
pub use events::EventStream;
pub use node::{
    child::Fault,
    connection::ConnectionActor,
    listener::ListenerActor,
    negotiator::NegotiatorActor,
    relay_client::RelayClientActor,
    supervisor::{GetChildren, InjectFault, Supervisor, SupervisorConfig, PUNCH_RETRY},
};
