//! The per-peer session layer (sans-IO): messages to a peer arrive exactly once and in
//! order across every path change (`docs/protocol.md` §11).
//!
//! * [`SessionSender`] numbers each application message (from 1 within the sender's
//!   *epoch*, a random id of its session state) and keeps it until the peer acknowledges
//!   it, in a window bounded by messages and bytes ([`WindowLimits`]): when the window is
//!   full the application waits (backpressure). A message goes out on the current path
//!   only; when the path changes, every unacknowledged message is sent again on the new
//!   path, oldest first, before anything new.
//! * [`SessionReceiver`] delivers `DATA` whose number is the next expected one and drops
//!   what it delivered already (a path that was replaced may still deliver a copy). It
//!   acknowledges cumulatively: after [`ACK_EVERY`] messages or [`ACK_DELAY`], whichever
//!   comes first.
//!
//! Why no reorder buffer is needed: each path is reliable and ordered, and a sender sends
//! on a new path everything from its oldest unacknowledged message on, so on every path
//! the numbers arrive contiguously from at most the receiver's next expected one; a
//! number beyond it ([`Verdict::Gap`]) is a protocol violation.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use bytes::Bytes;

/// A receiver acknowledges after this many messages delivered since its last ack. 256: a
/// quarter of the default window of [`DEFAULT_WINDOW_MESSAGES`], so a sender streaming
/// small messages never waits for an ack, while acks cost under 0.5 % of the messages.
pub const ACK_EVERY: u64 = 256;

/// …or this long after the first message it has not acknowledged. 10 ms: well below any
/// path's round trip that matters for the window, so a trickle of messages is freed
/// promptly; it bounds how long a message stays in the sender's window when little flows.
pub const ACK_DELAY: Duration = Duration::from_millis(10);

/// …or once this many payload bytes arrived unacknowledged. 1 MiB, an eighth of
/// [`DEFAULT_WINDOW_BYTES`]: large messages are acknowledged long before the window fills
/// (with [`ACK_EVERY`] alone, 64 KiB messages filled an 8 MiB window at 128 and then
/// waited for [`ACK_DELAY`], capping a path at about 6 Gbit/s).
pub const ACK_BYTES: usize = 1 << 20;

/// Default bound on unacknowledged messages. 1024: four ack intervals in flight, enough to
/// keep a path busy with small messages at a round trip of a few milliseconds.
pub const DEFAULT_WINDOW_MESSAGES: usize = 1024;

/// Default bound on unacknowledged bytes. 8 MiB: a 64 KiB-message stream keeps ~100 ms of
/// a 640 Mbit/s path in flight; the window holds references to the application's buffers,
/// not copies, and only while a peer is sending.
pub const DEFAULT_WINDOW_BYTES: usize = 8 << 20;

/// Bounds of a sender's window of unacknowledged messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLimits {
    /// Messages.
    pub max_messages: usize,
    /// Bytes (a single larger message is still accepted into an empty window).
    pub max_bytes: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        Self { max_messages: DEFAULT_WINDOW_MESSAGES, max_bytes: DEFAULT_WINDOW_BYTES }
    }
}

/// Why an acknowledgement is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The peer acknowledged a message that was never sent.
    #[error("acknowledgement of message {acked} beyond the last one sent ({sent})")]
    Beyond {
        /// What it acknowledged.
        acked: u64,
        /// The last number sent.
        sent: u64,
    },
}

/// The sending half of one peer's session.
#[derive(Debug)]
pub struct SessionSender {
    epoch: u64,
    limits: WindowLimits,
    /// Highest number acknowledged (0: none).
    acked: u64,
    /// Messages `acked + 1 ..`, oldest first.
    unacked: VecDeque<Bytes>,
    unacked_bytes: usize,
}

impl SessionSender {
    /// A sender with `epoch` (a random id, never 0) and window `limits`.
    pub fn new(epoch: u64, limits: WindowLimits) -> Self {
        Self { epoch, limits, acked: 0, unacked: VecDeque::new(), unacked_bytes: 0 }
    }

    /// This sender's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a message of `len` bytes fits in the window now.
    pub fn has_room(&self, len: usize) -> bool {
        self.unacked.len() < self.limits.max_messages.max(1)
            && (self.unacked.is_empty() || self.unacked_bytes + len <= self.limits.max_bytes)
    }

    /// Takes `payload` into the window (check [`has_room`](Self::has_room) first) and
    /// returns its number.
    pub fn push(&mut self, payload: Bytes) -> u64 {
        self.unacked_bytes += payload.len();
        self.unacked.push_back(payload);
        self.acked + self.unacked.len() as u64
    }

    /// The oldest unacknowledged number (what a receiver new to this epoch starts at).
    pub fn base(&self) -> u64 {
        self.acked + 1
    }

    /// The last number handed out (0: none).
    pub fn last_sent(&self) -> u64 {
        self.acked + self.unacked.len() as u64
    }

    /// The peer delivered everything up to `delivered`: frees it. Returns how many
    /// messages were freed; an old acknowledgement frees nothing.
    pub fn on_ack(&mut self, delivered: u64) -> Result<usize, AckError> {
        if delivered > self.last_sent() {
            return Err(AckError::Beyond { acked: delivered, sent: self.last_sent() });
        }
        let mut freed = 0;
        while self.acked < delivered {
            if let Some(m) = self.unacked.pop_front() {
                self.unacked_bytes -= m.len();
            }
            self.acked += 1;
            freed += 1;
        }
        Ok(freed)
    }

    /// A path's hello from the peer: if it knows this epoch, what it delivered is
    /// acknowledged (so a new path does not resend it).
    pub fn on_hello(&mut self, seen: u64, delivered: u64) -> Result<usize, AckError> {
        if seen == self.epoch {
            self.on_ack(delivered)
        } else {
            Ok(0)
        }
    }

    /// The unacknowledged messages with their numbers, oldest first: what a new path must
    /// carry before anything new.
    pub fn unacked(&self) -> impl Iterator<Item = (u64, &Bytes)> {
        self.unacked.iter().enumerate().map(|(i, m)| (self.acked + 1 + i as u64, m))
    }

    /// Unacknowledged messages and bytes.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.unacked.len(), self.unacked_bytes)
    }
}

/// What [`SessionReceiver::on_data`] decided about one `DATA` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The next message: deliver it to the application.
    Deliver,
    /// Delivered already (or from another epoch): drop it.
    Duplicate,
    /// Beyond the next expected number: the peer broke the protocol.
    Gap {
        /// The number expected.
        expected: u64,
    },
}

/// The receiving half of one peer's session.
#[derive(Debug, Default)]
pub struct SessionReceiver {
    /// The peer's epoch being received (0: none yet).
    epoch: u64,
    delivered: u64,
    acked: u64,
    /// Payload bytes delivered since the last acknowledgement.
    unacked_bytes: usize,
    ack_due: Option<Instant>,
}

impl SessionReceiver {
    /// A receiver that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer's epoch received now (0: none) and the highest number delivered of it.
    pub fn state(&self) -> (u64, u64) {
        (self.epoch, self.delivered)
    }

    /// A path announced the peer's `epoch` and `base`, its oldest unacknowledged number.
    /// A new epoch means new session state on one side (the peer's, or ours after a
    /// restart): delivery continues from `base` (what came before it was acknowledged to a
    /// previous instance, or never existed). Returns whether the epoch was new.
    pub fn on_hello(&mut self, epoch: u64, base: u64) -> bool {
        if epoch == self.epoch {
            return false;
        }
        let delivered = base.saturating_sub(1);
        *self = Self { epoch, delivered, acked: delivered, unacked_bytes: 0, ack_due: None };
        true
    }

    /// `DATA` number `seq` with `len` payload bytes arrived at `now` on a path that
    /// announced `epoch`.
    pub fn on_data(&mut self, epoch: u64, seq: u64, len: usize, now: Instant) -> Verdict {
        if epoch != self.epoch || seq <= self.delivered {
            return Verdict::Duplicate;
        }
        if seq != self.delivered + 1 {
            return Verdict::Gap { expected: self.delivered + 1 };
        }
        self.delivered = seq;
        self.unacked_bytes = self.unacked_bytes.saturating_add(len);
        self.ack_due.get_or_insert(now + ACK_DELAY);
        Verdict::Deliver
    }

    /// The acknowledgement to send now, if one is due at `now`.
    pub fn poll_ack(&mut self, now: Instant) -> Option<u64> {
        let due = self.delivered - self.acked >= ACK_EVERY
            || self.unacked_bytes >= ACK_BYTES
            || self.ack_due.is_some_and(|t| t <= now);
        if !due || self.delivered == self.acked {
            return None;
        }
        self.acked = self.delivered;
        self.unacked_bytes = 0;
        self.ack_due = None;
        Some(self.delivered)
    }

    /// When [`poll_ack`](Self::poll_ack) next has something to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ack_due
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
