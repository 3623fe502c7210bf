//! Restart policy, the OTP way, as a pure state machine (no actors, no clock).
//!
//! Each supervised child has a [`RestartPolicy`] and a [`RestartTracker`]. When the child
//! exits, [`RestartTracker::on_exit`] decides: restart after a backoff, give up (the
//! child failed more than `max_restarts` times within `window`), or leave it stopped.

use std::{
    collections::VecDeque,
    fmt,
    time::{Duration, Instant},
};

/// When a child is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restarted, whatever the exit (listeners).
    Permanent,
    /// Restarted only after an abnormal exit and while still wanted (connections to a
    /// peer the application asked for).
    Transient,
    /// Never restarted (one-shot sessions such as negotiators).
    Never,
}

/// Why a child stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// It finished its job or was asked to stop.
    Normal,
    /// It failed with an error.
    Failed(String),
    /// It was killed (fault injection or forced stop).
    Killed,
    /// It vanished without stopping: its handler panicked.
    Panicked,
}

impl ExitReason {
    /// Whether the exit counts as a failure.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Normal)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal exit"),
            ExitReason::Failed(e) => write!(f, "failed: {e}"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Panicked => f.write_str("panicked"),
        }
    }
}

/// Restart intensity and backoff settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartLimits {
    /// Restarts allowed within `window` before giving up. 5, as in OTP, kameo and ractor.
    pub max_restarts: u32,
    /// The sliding window for `max_restarts`. 5 s, as in OTP's default.
    pub window: Duration,
    /// Backoff before the first restart; doubles with each restart in the window.
    /// 100 ms: long enough to let a port or peer recover, short enough to be unnoticed.
    pub backoff_base: Duration,
    /// Backoff cap. 5 s: the restart window.
    pub backoff_max: Duration,
}

impl Default for RestartLimits {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(5),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What to do about an exited child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Restart after `after`; this is restart number `attempt` within the window.
    Restart {
        /// Backoff to wait.
        after: Duration,
        /// Restart count within the window (1-based).
        attempt: u32,
    },
    /// Too many restarts within the window: stop restarting and report.
    GiveUp,
    /// Leave the child stopped (normal exit, or policy says no).
    Stop,
}

/// Restart history of one child.
#[derive(Clone, Debug)]
pub struct RestartTracker {
    limits: RestartLimits,
    restarts: VecDeque<Instant>,
}

impl RestartTracker {
    /// A tracker with no history.
    pub fn new(limits: RestartLimits) -> Self {
        Self { limits, restarts: VecDeque::new() }
    }

    /// Decides what happens after the child exited with `reason` at `now`. `wanted` says
    /// whether anyone still needs the child (for transient children).
    pub fn on_exit(
        &mut self,
        now: Instant,
        policy: RestartPolicy,
        reason: &ExitReason,
        wanted: bool,
    ) -> Decision {
        let restart = match policy {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => reason.is_abnormal() && wanted,
            RestartPolicy::Never => false,
        };
        if !restart {
            return Decision::Stop;
        }
        while let Some(t) = self.restarts.front() {
            if now.saturating_duration_since(*t) > self.limits.window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        if self.restarts.len() as u32 >= self.limits.max_restarts {
            return Decision::GiveUp;
        }
        self.restarts.push_back(now);
        let attempt = self.restarts.len() as u32;
        let factor = 1u32 << (attempt - 1).min(16);
        let after = self.limits.backoff_base.saturating_mul(factor).min(self.limits.backoff_max);
        Decision::Restart { after, attempt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> RestartTracker {
        RestartTracker::new(RestartLimits::default())
    }

    #[test]
    fn permanent_restarts_with_exponential_backoff_then_gives_up() {
        let mut t = tracker();
        let now = Instant::now();
        let fail = ExitReason::Failed("x".into());
        let mut afters = vec![];
        for i in 0..5 {
            match t.on_exit(now + Duration::from_millis(i * 10), RestartPolicy::Permanent, &fail, false) {
                Decision::Restart { after, attempt } => {
                    assert_eq!(attempt, i as u32 + 1);
                    afters.push(after.as_millis());
                }
                d => panic!("unexpected {d:?}"),
            }
        }
        assert_eq!(afters, vec![100, 200, 400, 800, 1600]);
        assert_eq!(
            t.on_exit(now + Duration::from_millis(60), RestartPolicy::Permanent, &fail, false),
            Decision::GiveUp
        );
    }

    #[test]
    fn window_slides() {
        let mut t = tracker();
        let now = Instant::now();
        let fail = ExitReason::Panicked;
        for i in 0..5 {
            assert!(matches!(
                t.on_exit(now + Duration::from_secs(i), RestartPolicy::Permanent, &fail, true),
                Decision::Restart { .. }
            ));
        }
        // The first restart is now more than 5 s old: room for one more.
        let d = t.on_exit(now + Duration::from_millis(5_500), RestartPolicy::Permanent, &fail, true);
        assert!(matches!(d, Decision::Restart { attempt: 5, .. }), "{d:?}");
    }

    #[test]
    fn transient_and_never() {
        let mut t = tracker();
        let now = Instant::now();
        assert_eq!(t.on_exit(now, RestartPolicy::Transient, &ExitReason::Normal, true), Decision::Stop);
        assert_eq!(t.on_exit(now, RestartPolicy::Transient, &ExitReason::Killed, false), Decision::Stop);
        assert!(matches!(
            t.on_exit(now, RestartPolicy::Transient, &ExitReason::Killed, true),
            Decision::Restart { .. }
        ));
        assert_eq!(t.on_exit(now, RestartPolicy::Never, &ExitReason::Panicked, true), Decision::Stop);
        // Permanent restarts even after a normal exit.
        assert!(matches!(
            t.on_exit(now, RestartPolicy::Permanent, &ExitReason::Normal, false),
            Decision::Restart { .. }
        ));
    }
}
