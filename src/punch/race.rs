//! [`PathRace`]: how one punch attempt ends when the UDP punch and TCP simultaneous open
//! run side by side (docs/punch.md, "TCP simultaneous open, in parallel").
//!
//! UDP (then QUIC) is preferred. The initiator keeps a TCP stream it found until the UDP
//! punch has ended, and uses it only if that failed — or at once when either side's UDP
//! is blocked (then no UDP punch can work and the UDP session is ended early). A UDP
//! failure waits for a TCP attempt still running. The responder finishes with success as
//! soon as it handed a TCP connection over. Pure bookkeeping: the actor reports what
//! happened and does what the returned [`RaceStep`] says.

use super::MappingHint;

/// Where the TCP attempt is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum TcpPhase {
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

/// What the actor must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaceStep {
    /// Nothing yet: the other half is still running.
    Wait,
    /// Initiator: secure the held TCP stream and hand it over (the UDP punch failed for
    /// `udp_reason`, reported if TCP fails too).
    UseTcp {
        /// Why the UDP punch failed.
        udp_reason: String,
    },
    /// End the UDP session now (it cannot succeed); its failure then leads to `UseTcp`.
    EndUdpSession,
    /// The attempt failed, for this reason.
    Fail(String),
    /// The attempt succeeded (the responder handed a TCP connection over).
    Succeed,
}

/// The race between the UDP punch and TCP simultaneous open. See the module docs.
#[derive(Debug, Default)]
pub struct PathRace {
    tcp: TcpPhase,
    udp_failure: Option<String>,
}

impl PathRace {
    /// Where the TCP attempt is.
    pub fn tcp_phase(&self) -> TcpPhase {
        self.tcp
    }

    /// The TCP attempt started.
    pub fn tcp_started(&mut self) {
        if self.tcp == TcpPhase::Idle {
            self.tcp = TcpPhase::Running;
        }
    }

    /// The UDP punch failed for `reason`.
    pub fn udp_failed(&mut self, reason: String) -> RaceStep {
        match self.tcp {
            TcpPhase::Running => {
                self.udp_failure = Some(reason);
                RaceStep::Wait
            }
            TcpPhase::Found => RaceStep::UseTcp { udp_reason: reason },
            TcpPhase::Idle => RaceStep::Fail(reason),
            TcpPhase::Done => RaceStep::Fail(both_failed(&reason)),
        }
    }

    /// Initiator: the TCP attempt found a stream (now held). `udp_open` says whether the
    /// UDP session is still running; `local` and `remote` are both sides' mapping hints.
    pub fn tcp_found(&mut self, udp_open: bool, local: MappingHint, remote: MappingHint) -> RaceStep {
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
    pub fn tcp_ended(&mut self, connected: bool) -> RaceStep {
        if self.tcp == TcpPhase::Found {
            return RaceStep::Wait;
        }
        self.tcp = TcpPhase::Done;
        if connected {
            return RaceStep::Succeed;
        }
        match self.udp_failure.take() {
            Some(reason) => RaceStep::Fail(both_failed(&reason)),
            None => RaceStep::Wait,
        }
    }
}

fn both_failed(udp_reason: &str) -> String {
    format!("{udp_reason}; TCP simultaneous open found no path either")
}

#[cfg(test)]
mod tests {
    use super::*;
    use MappingHint::{EndpointIndependent as Eim, UdpBlocked as Blocked};

    #[test]
    fn udp_failure_without_tcp_fails_at_once() {
        assert_eq!(PathRace::default().udp_failed("x".into()), RaceStep::Fail("x".into()));
    }

    #[test]
    fn udp_failure_waits_for_a_running_tcp_attempt() {
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.udp_failed("x".into()), RaceStep::Wait);
        assert_eq!(r.tcp_found(false, Eim, Eim), RaceStep::UseTcp { udp_reason: "x".into() });
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.udp_failed("x".into()), RaceStep::Wait);
        assert_eq!(r.tcp_ended(false), RaceStep::Fail(both_failed("x")));
    }

    #[test]
    fn a_found_stream_is_used_only_once_udp_failed() {
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.tcp_found(true, Eim, Eim), RaceStep::Wait);
        assert_eq!(r.tcp_ended(false), RaceStep::Wait, "the held stream still counts");
        assert_eq!(r.udp_failed("x".into()), RaceStep::UseTcp { udp_reason: "x".into() });
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
        assert_eq!(r.udp_failed("x".into()), RaceStep::Wait);
        assert_eq!(r.tcp_ended(true), RaceStep::Succeed);
        let mut r = PathRace::default();
        r.tcp_started();
        assert_eq!(r.tcp_ended(false), RaceStep::Wait);
        assert_eq!(r.udp_failed("x".into()), RaceStep::Fail(both_failed("x")));
    }
}
