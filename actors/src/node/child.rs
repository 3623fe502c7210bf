//! What every supervised actor carries: its identity, an exit report that fires even when
//! the actor dies by panic, and the fault-injection message.

use actix::{Message, Recipient};

use super::supervision::ExitReason;

/// Identifies a supervised child within its supervisor.
pub(crate) type ChildId = u64;

/// A child reports its exit (sent from [`ExitGuard`]'s `Drop`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct ChildExited {
    pub(crate) id: ChildId,
    pub(crate) reason: ExitReason,
}

/// Faults a test can inject into a child (see [`crate::testing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum Fault {
    /// Stop the actor abruptly, as a failure.
    Kill,
    /// Panic inside the actor's message handler.
    Panic,
    /// Drop the actor's network connection underneath it (connections only).
    DropConnection,
}

/// Reports a child's exit to its supervisor when dropped.
///
/// An actor that stops normally records its reason first ([`ExitGuard::set`]). An actor
/// whose handler panics never does: actix 0.13 runs each actor as a task on its arbiter's
/// tokio `LocalSet`, tokio catches the panic and drops the task — and with it the actor
/// and this guard, which then reports [`ExitReason::Panicked`].
#[derive(Debug)]
pub(crate) struct ExitGuard {
    id: ChildId,
    supervisor: Recipient<ChildExited>,
    reason: Option<ExitReason>,
}

impl ExitGuard {
    pub(crate) fn new(id: ChildId, supervisor: Recipient<ChildExited>) -> Self {
        Self { id, supervisor, reason: None }
    }

    pub(crate) fn id(&self) -> ChildId {
        self.id
    }

    /// Records why the actor is stopping; the first reason set wins.
    pub(crate) fn set(&mut self, reason: ExitReason) {
        if self.reason.is_none() {
            self.reason = Some(reason);
        }
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let reason = self.reason.take().unwrap_or(ExitReason::Panicked);
        // Exit reports are rare control messages, not data: `do_send` (which ignores
        // mailbox capacity) is right here, since a report must never be lost.
        self.supervisor.do_send(ChildExited { id: self.id, reason });
    }
}
