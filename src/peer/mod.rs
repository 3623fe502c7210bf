//! The peer as a first-class object (sans-IO): the paths to one remote peer, their health
//! and which one carries the traffic ([`manager`]), and the session layer that makes
//! messages arrive exactly once and in order across every path change ([`session`],
//! [`frame`]).
//!
//! The runtime (`kizuna_actors`' `PeerActor`) owns the connections and the timers, feeds
//! these machines and performs what they return; see `docs/architecture.md`.

pub mod frame;
pub mod health;
pub mod manager;
pub mod session;

#[cfg(test)]
mod sim;

pub use frame::{FrameError, SessionFrame};
pub use health::PathHealth;
pub use manager::{ChangeReason, Output, PathConfig, PathDesc, PathEvent, PathId, PathManager};
pub use session::{SessionReceiver, SessionSender, Verdict, WindowLimits};
