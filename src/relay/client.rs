//! The client side of the relay (sans-IO): one control connection to one relay at a
//! time, a reservation kept alive, failover along a list of relays, reconnect backoff.
//!
//! [`RelayClientState`] is driven like the server core: the shell (the
//! `RelayClientActor`) performs each [`ClientOutput`] — open a WebSocket to a relay, send
//! a message on it, close it — and feeds back `handle_connected`, `handle_message`,
//! `handle_disconnected` and `handle_timeout`, draining
//! [`poll_output`](RelayClientState::poll_output) after every input and re-arming its one
//! timer from [`poll_timeout`](RelayClientState::poll_timeout).
//!
//! Policy:
//! * The reservation is renewed at half the TTL the relay granted, so one lost renewal
//!   still leaves half the TTL to notice and recover.
//! * Any failure (connect error, handshake error, an error before the reservation stands,
//!   the connection ending, the reservation expiring unrenewed) moves to the **next**
//!   relay in the list after a backoff of `initial × 2^(failures−1)`, capped, minus up to
//!   25 % jitter (from an injected seed) so clients of a restarted relay do not return in
//!   lockstep. A granted reservation resets the failure count.
//!
//! Circuits use their own connections (`dial` / `accept` purposes), opened by the shell;
//! this machine only reports `incoming` requests and signals.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    auth::{client_handshake, HANDSHAKE_TIMEOUT},
    error::RelayConfigError,
    proto::{CircuitId, ErrorCode, Purpose, RelayMessage},
    MAX_SIGNAL_LEN,
};
use crate::identity::{Keypair, PeerId};

/// One relay a client may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayEndpoint {
    /// Its URL (`ws://…` or `wss://…`); also the name its challenge must carry.
    pub url: String,
    /// An admission token for it (`--relay-token`), if needed.
    pub token: Option<String>,
}

/// Client configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayClientConfig {
    /// Relays in failover order (the first is preferred).
    pub relays: Vec<RelayEndpoint>,
    /// Reservation lifetime asked for. Default 10 min: renewals every 5 min cost nothing,
    /// and a relay restart is noticed by the closed connection, not by the TTL.
    pub reservation_ttl: Duration,
    /// First reconnect delay. Default 500 ms: quick enough that a restarted relay is
    /// back "within seconds", slow enough not to spin on a dead one.
    pub backoff_initial: Duration,
    /// Largest reconnect delay. Default 30 s: bounds the time to notice a relay that came
    /// back, at one connection attempt per client per 30 s.
    pub backoff_max: Duration,
    /// Time from starting a connection to holding a reservation. Default 15 s: a TCP/TLS
    /// connect (up to 10 s in Kizuna) and one handshake round trip.
    pub connect_timeout: Duration,
}

impl RelayClientConfig {
    /// Defaults for `relays`.
    pub fn new(relays: Vec<RelayEndpoint>) -> Self {
        Self {
            relays,
            reservation_ttl: Duration::from_secs(600),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        }
    }
}

/// What the client shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientOutput {
    /// Open a WebSocket (subprotocol `kizuna`) to `url`, closing any previous one; then
    /// call `handle_connected` or `handle_disconnected`.
    Connect {
        /// Index in the configured relay list.
        relay: usize,
        /// The relay's URL.
        url: String,
    },
    /// Send `0` as one binary message on the current control connection.
    Send(RelayMessage),
    /// Close the current control connection (no `handle_disconnected` is expected).
    Disconnect,
    /// Something for the application or the log.
    Event(ClientEvent),
}

/// Events of the client machine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The reservation at `url` stands for `ttl` (first grant or renewal).
    Reserved {
        /// The relay.
        url: String,
        /// Granted lifetime.
        ttl: Duration,
        /// Where the relay sees this client's control connection come from.
        observed: Option<SocketAddr>,
        /// STUN servers the relay advertises (for the UDP mapping used in hole punching).
        stun: Vec<SocketAddr>,
    },
    /// Using `url` failed; the client retries `next_url` after `retry_in`.
    RelayFailed {
        /// The relay that failed.
        url: String,
        /// Why.
        reason: String,
        /// Whether a reservation was held there until now.
        was_reserved: bool,
        /// The relay tried next.
        next_url: String,
        /// Backoff before that attempt.
        retry_in: Duration,
    },
    /// The relay reported an error that does not end the connection.
    RelayError {
        /// The code.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// Peer `from` asks for a circuit: open an `accept` connection to `url` for
    /// `circuit`, or call [`RelayClientState::refuse`].
    Incoming {
        /// The relay carrying the circuit.
        url: String,
        /// The circuit.
        circuit: CircuitId,
        /// The dialer.
        from: PeerId,
    },
    /// A signal from peer `from`.
    Signaled {
        /// The sender.
        from: PeerId,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// Why a client command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientCommandError {
    /// No reservation stands at the moment.
    #[error("not reserved at any relay right now")]
    NotReserved,
    /// The signal payload is too large.
    #[error("signal payload of {len} bytes exceeds {max}")]
    SignalTooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Connecting, authenticating, reserving.
    Connecting {
        deadline: Instant,
        challenged: bool,
    },
    Reserved {
        renew_at: Instant,
        expires: Instant,
        renewing: bool,
    },
    Backoff {
        until: Instant,
    },
    Stopped,
}

/// The client's relay machine. See the module docs.
#[derive(Debug)]
pub struct RelayClientState {
    key: Keypair,
    cfg: RelayClientConfig,
    current: usize,
    phase: Phase,
    failures: u32,
    rng: u64,
    out: VecDeque<ClientOutput>,
}

impl RelayClientState {
    /// A client for `key` using the relays of `cfg`; `seed` drives the backoff jitter.
    pub fn new(key: Keypair, cfg: RelayClientConfig, seed: u64) -> Result<Self, RelayConfigError> {
        if cfg.relays.is_empty() {
            return Err(RelayConfigError::NoRelays);
        }
        Ok(Self { key, cfg, current: 0, phase: Phase::Idle, failures: 0, rng: seed, out: VecDeque::new() })
    }

    /// The relay in use (or being tried next).
    pub fn current_relay(&self) -> &RelayEndpoint {
        // `new` rejects an empty list and `current` is always taken modulo its length.
        &self.cfg.relays[self.current % self.cfg.relays.len()]
    }

    /// Whether a reservation stands at `now`.
    pub fn is_reserved(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Reserved { expires, .. } if expires > now)
    }

    /// Failures since the last granted reservation.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Starts with the first relay.
    pub fn start(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Idle | Phase::Stopped) {
            self.connect(now);
        }
    }

    /// Releases the reservation and closes the connection; the machine stays idle until
    /// [`start`](Self::start).
    pub fn stop(&mut self) {
        if matches!(self.phase, Phase::Reserved { .. }) {
            self.out.push_back(ClientOutput::Send(RelayMessage::Reserve { ttl_secs: 0 }));
        }
        if matches!(self.phase, Phase::Reserved { .. } | Phase::Connecting { .. }) {
            self.out.push_back(ClientOutput::Disconnect);
        }
        self.phase = Phase::Stopped;
    }

    /// The WebSocket to the current relay is open (the challenge comes next).
    pub fn handle_connected(&mut self, _now: Instant) {}

    /// The current control connection failed to open or ended.
    pub fn handle_disconnected(&mut self, now: Instant, reason: &str) {
        if matches!(self.phase, Phase::Connecting { .. } | Phase::Reserved { .. }) {
            self.fail(now, reason.to_owned(), false);
        }
    }

    /// A message arrived on the control connection.
    pub fn handle_message(&mut self, msg: RelayMessage, now: Instant) {
        let url = self.current_relay().url.clone();
        match (self.phase, msg) {
            (Phase::Connecting { deadline, challenged: false }, msg @ RelayMessage::Challenge { .. }) => {
                let token = self.current_relay().token.clone();
                match client_handshake(&self.key, &msg, &url, token.as_deref(), Purpose::Control) {
                    Ok([auth, purpose]) => {
                        self.out.push_back(ClientOutput::Send(auth));
                        self.out.push_back(ClientOutput::Send(purpose));
                        self.send_reserve();
                        self.phase = Phase::Connecting { deadline, challenged: true };
                    }
                    Err(e) => self.fail(now, e.to_string(), true),
                }
            }
            (
                Phase::Connecting { challenged: true, .. } | Phase::Reserved { .. },
                RelayMessage::Reserved { expires_in_secs, observed, stun },
            ) => {
                if expires_in_secs == 0 {
                    self.fail(now, "relay granted a reservation of 0 seconds".into(), true);
                    return;
                }
                let ttl = Duration::from_secs(expires_in_secs);
                self.phase = Phase::Reserved { renew_at: now + ttl / 2, expires: now + ttl, renewing: false };
                self.failures = 0;
                self.out.push_back(ClientOutput::Event(ClientEvent::Reserved { url, ttl, observed, stun }));
            }
            (Phase::Connecting { .. }, RelayMessage::Error { code, message }) => {
                self.fail(now, format!("relay error {code:?}: {message}"), true);
            }
            (Phase::Reserved { .. }, RelayMessage::Error { code, message }) => {
                self.out.push_back(ClientOutput::Event(ClientEvent::RelayError { code, message }));
            }
            (Phase::Reserved { .. }, RelayMessage::Incoming { circuit, from }) => {
                self.out.push_back(ClientOutput::Event(ClientEvent::Incoming { url, circuit, from }));
            }
            (Phase::Reserved { .. }, RelayMessage::Signaled { from, payload }) => {
                self.out.push_back(ClientOutput::Event(ClientEvent::Signaled { from, payload }));
            }
            (Phase::Connecting { .. } | Phase::Reserved { .. }, RelayMessage::Unknown) => {}
            (Phase::Connecting { .. } | Phase::Reserved { .. }, other) => {
                self.fail(now, format!("unexpected {} from the relay", other.type_name()), true);
            }
            // Idle, stopped or backing off: a late message from a connection already left.
            _ => {}
        }
    }

    /// The timer fired.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Connecting { deadline, .. } if now >= deadline => {
                let reason = format!("no reservation within {:?}", self.cfg.connect_timeout);
                self.fail(now, reason, true);
            }
            Phase::Reserved { expires, .. } if now >= expires => {
                self.fail(now, "reservation expired without a renewal answer".into(), true);
            }
            Phase::Reserved { renew_at, expires, renewing: false } if now >= renew_at => {
                self.send_reserve();
                self.phase = Phase::Reserved { renew_at, expires, renewing: true };
            }
            Phase::Backoff { until } if now >= until => self.connect(now),
            _ => {}
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Connecting { deadline, .. } => Some(deadline),
            Phase::Reserved { expires, renewing: true, .. } => Some(expires),
            Phase::Reserved { renew_at, .. } => Some(renew_at),
            Phase::Backoff { until } => Some(until),
            Phase::Idle | Phase::Stopped => None,
        }
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    /// Sends a signal to reserved peer `to` through the current relay.
    pub fn signal(&mut self, to: PeerId, payload: Vec<u8>, now: Instant) -> Result<(), ClientCommandError> {
        if payload.len() > MAX_SIGNAL_LEN {
            return Err(ClientCommandError::SignalTooLarge { len: payload.len(), max: MAX_SIGNAL_LEN });
        }
        if !self.is_reserved(now) {
            return Err(ClientCommandError::NotReserved);
        }
        self.out.push_back(ClientOutput::Send(RelayMessage::Signal { to, payload }));
        Ok(())
    }

    /// Refuses an incoming circuit.
    pub fn refuse(
        &mut self,
        circuit: CircuitId,
        reason: &str,
        now: Instant,
    ) -> Result<(), ClientCommandError> {
        if !self.is_reserved(now) {
            return Err(ClientCommandError::NotReserved);
        }
        self.out.push_back(ClientOutput::Send(RelayMessage::Refuse { circuit, reason: reason.to_owned() }));
        Ok(())
    }

    fn send_reserve(&mut self) {
        let ttl_secs = self.cfg.reservation_ttl.as_secs().max(1);
        self.out.push_back(ClientOutput::Send(RelayMessage::Reserve { ttl_secs }));
    }

    fn connect(&mut self, now: Instant) {
        let url = self.current_relay().url.clone();
        let relay = self.current % self.cfg.relays.len();
        self.out.push_back(ClientOutput::Connect { relay, url });
        self.phase = Phase::Connecting { deadline: now + self.cfg.connect_timeout, challenged: false };
    }

    /// Leaves the current relay and schedules the next one.
    fn fail(&mut self, now: Instant, reason: String, close: bool) {
        let was_reserved = matches!(self.phase, Phase::Reserved { .. });
        let url = self.current_relay().url.clone();
        if close {
            self.out.push_back(ClientOutput::Disconnect);
        }
        self.failures = self.failures.saturating_add(1);
        self.current = (self.current + 1) % self.cfg.relays.len();
        let retry_in = self.backoff();
        self.phase = Phase::Backoff { until: now + retry_in };
        let next_url = self.current_relay().url.clone();
        self.out.push_back(ClientOutput::Event(ClientEvent::RelayFailed {
            url,
            reason,
            was_reserved,
            next_url,
            retry_in,
        }));
    }

    /// `initial × 2^(failures−1)`, capped at `backoff_max`, minus up to 25 % jitter.
    fn backoff(&mut self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(30);
        let base = self.cfg.backoff_initial.saturating_mul(1u32 << exp).min(self.cfg.backoff_max);
        // splitmix64: a tiny deterministic generator; jitter needs no cryptographic quality.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let cut = u32::try_from(z % 256).unwrap_or(0); // 0..=255 of 1024ths: < 25 %
        base.saturating_sub(base.saturating_mul(cut) / 1024)
    }
}
