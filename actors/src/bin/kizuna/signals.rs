//! Graceful-stop signals for the long-running commands (`node`, `relay`).

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::CliError;

/// SIGINT (Ctrl-C) and SIGTERM, watched from the moment of [`StopSignals::install`] — so
/// install before announcing readiness: a signal that arrives between the announcement
/// and the watch would otherwise kill the process without a graceful stop.
pub(crate) struct StopSignals {
    int: Signal,
    term: Signal,
}

impl StopSignals {
    /// Starts watching both signals.
    pub(crate) fn install() -> Result<Self, CliError> {
        let watch =
            |kind, name| signal(kind).map_err(|e| CliError::Failed(format!("cannot watch {name}: {e}")));
        Ok(Self {
            int: watch(SignalKind::interrupt(), "SIGINT")?,
            term: watch(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    /// Waits for either signal. Cancel safe.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
