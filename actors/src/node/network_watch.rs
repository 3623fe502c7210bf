//! Network changes for the supervisor: [`network_changes`], a stream of
//! [`NetworkChanged`] driven by the core's
//! [`InterfaceWatcher`](kizuna::nat::interfaces::InterfaceWatcher) — kernel interface
//! notifications on Linux (debounced by 100 ms), polling every 5 s elsewhere.
//!
//! No actor lives here: the supervisor adds the stream to its context (so it ends with
//! the supervisor) and, on each item, compares the interface addresses with the last ones
//! it saw (`Supervisor::check_network`).

use futures_util::Stream;
use kizuna::nat::interfaces::InterfaceWatcher;

/// The host's interface addresses may have changed: look again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NetworkChanged;

/// An endless stream of [`NetworkChanged`]. Call within the actor's runtime (the watcher
/// registers its socket with it).
pub(crate) fn network_changes() -> impl Stream<Item = NetworkChanged> {
    futures_util::stream::unfold(InterfaceWatcher::new(), |mut w| async move {
        w.changed().await;
        Some((NetworkChanged, w))
    })
}
