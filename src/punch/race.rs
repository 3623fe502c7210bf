//! [`PathRace`]: how one punch attempt ends when the UDP punch and TCP simultaneous open
//! run side by side (docs/punch.md, "TCP simultaneous open, in parallel").
//!
//! UDP (then QUIC) is preferred. The initiator keeps a TCP stream it found until the UDP
//! punch has ended, and uses it only if that failed — or at once when either side's UDP
//! is blocked (then no UDP punch can work and the UDP session is ended early). A UDP
//! failure waits for a TCP attempt still running. The responder finishes with success as
//! soon as it handed a TCP connection over. Pure bookkeeping, private to
//! [`PunchAttempt`](super::PunchAttempt), which reports what happened and does what the
//! returned [`RaceStep`] says.

use super::{AttemptError, FailReason, MappingHint};

/// Where the TCP attempt is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TcpPhase {
    /// Not started (no TCP candidates yet, or no TCP at all).
    #[default]
    Idle,
    /// Connecting (and, on the responder, handshaking).
    Running,
    /// Initiator: a stream was found and is held.
    Found,
    /// Ended without a connection to use (or, on the responder, after handing one over).
    Done,
}

/// What the attempt must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RaceStep {
    /// Nothing yet: the other half is still running.
    Wait,
    /// Initiator: secure the held TCP stream and hand it over (the UDP punch failed for
    /// `udp_reason`, reported if TCP fails too).
    UseTcp {
        /// Why the UDP punch failed.
        udp_reason: FailReason,
    },
    /// End the UDP session now (it cannot succeed); its failure then leads to `UseTcp`.
    EndUdpSession,
    /// The attempt failed, for this reason.
    Fail(AttemptError),
    /// The attempt succeeded (the responder handed a TCP connection over).
    Succeed,
}

/// The race between the UDP punch and TCP simultaneous open. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct PathRace {
    tcp: TcpPhase,
    udp_failure: Option<FailReason>,
}

impl PathRace {
    /// Where the TCP attempt is.
    pub(crate) fn tcp_phase(&self) -> TcpPhase {
        self.tcp
    }

    /// The TCP attempt started.
    pub(crate) fn tcp_started(&mut self) {
        if self.tcp == TcpPhase::Idle {
            self.tcp = TcpPhase::Running;
        }
    }

    /// The UDP punch failed for `reason`.
    pub(crate) fn udp_failed(&mut self, reason: FailReason) -> RaceStep {
        match self.tcp {
            TcpPhase::Running => {
                self.udp_failure = Some(reason);
                RaceStep::Wait
            }
            TcpPhase::Found => RaceStep::UseTcp { udp_reason: reason },
            TcpPhase::Idle => RaceStep::Fail(AttemptError::Udp(reason)),
            TcpPhase::Done => RaceStep::Fail(AttemptError::UdpAndTcp(reason)),
        }
    }

    /// Initiator: the TCP attempt found a stream (now held). `udp_open` says whether the
    /// UDP session is still running; `local` and `remote` are both sides' mapping hints.
    pub(crate) fn tcp_found(&mut self, udp_open: bool, local: MappingHint, remote: MappingHint) -> RaceStep {
        self.tcp = TcpPhase::Found;
        if let Some(udp_reason) = self.udp_failure.take() {
            return RaceStep::UseTcp { udp_reason };
        }
        if udp_open && [local, remote].contains(&MappingHint::UdpBlocked) {
            return RaceStep::EndUdpSession;
        }
        RaceStep::Wait
    }

    /// The TCP attempt ended; `connected`: the responder handed a connection over.
    pub(crate) fn tcp_ended(&mut self, connected: bool) -> RaceStep {
        if self.tcp == TcpPhase::Found {
            return RaceStep::Wait;
        }
        self.tcp = TcpPhase::Done;
        if connected {
            return RaceStep::Succeed;
        }
        match self.udp_failure.take() {
            Some(reason) => RaceStep::Fail(AttemptError::UdpAndTcp(reason)),
            None => RaceStep::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MappingHint::{EndpointIndependent as Eim, UdpBlocked as Blocked};

    fn x() -> FailReason {
        FailReason::NoPath { rounds: 3 }
    }

    fn both_failed() -> RaceStep {
        RaceStep::Fail(AttemptError::UdpAndTcp(x()))
    }

    #[test]
    fn udp_failure_without_tcp_fails_at_once() {
        assert_eq!(PathRace::default().udp_failed(x()), RaceStep::Fail(AttemptError::Udp(x())));
    }

    #[test]
    fn udp_failure_waits_for_a_running_tcp_attempt() {
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.udp_failed(x()), RaceStep::Wait);
        assert_eq!(r.tcp_found(false, Eim, Eim), RaceStep::UseTcp { udp_reason: x() });
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.udp_failed(x()), RaceStep::Wait);
        assert_eq!(r.tcp_ended(false), both_failed());
    }

    #[test]
    fn a_found_stream_is_used_only_once_udp_failed() {
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.tcp_found(true, Eim, Eim), RaceStep::Wait);
        assert_eq!(r.tcp_ended(false), RaceStep::Wait, "the held stream still counts");
        assert_eq!(r.udp_failed(x()), RaceStep::UseTcp { udp_reason: x() });
    }

    #[test]
    fn blocked_udp_on_either_side_ends_the_udp_session_early() {
        for (local, remote) in [(Blocked, Eim), (Eim, Blocked)] {
            let mut r = PathRace::default();
            r.tcp_started();
            assert_eq!(r.tcp_found(true, local, remote), RaceStep::EndUdpSession);
        }
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.tcp_found(false, Blocked, Eim), RaceStep::Wait, "the UDP session already ended");
    }

    #[test]
    fn the_responder_succeeds_when_it_handed_a_connection_over() {
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.udp_failed(x()), RaceStep::Wait);
        assert_eq!(r.tcp_ended(true), RaceStep::Succeed);
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.tcp_ended(false), RaceStep::Wait);
        assert_eq!(r.udp_failed(x()), both_failed());
    }
}
