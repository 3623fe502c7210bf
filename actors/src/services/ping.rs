//! Pings: echo requests to a peer's echo service. [`ping`] sends one and waits for its
//! echo; [`PingWindow`] keeps many in flight (`kizuna ping --in-flight N`) and sorts what
//! comes back — answered (in order or not), duplicated, or not a ping of this run.
//!
//! A ping is `PING_MAGIC`, its sequence number and the run's nonce (both big-endian u64);
//! the echo service returns it unchanged.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use actix::Addr;
use bytes::Bytes;
use kizuna::PeerId;

use super::ServiceError;
use crate::{
    api::{self, Event},
    events::EventStream,
    Supervisor,
};

/// Prefix of ping messages.
const PING_MAGIC: &[u8] = b"kizuna-ping/1\0";

/// The outcome of one [`ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingReport {
    /// The sequence number sent.
    pub seq: u64,
    /// From handing the message to the node to reading its echo.
    pub rtt: Duration,
}

/// A fresh nonce for a run (nanoseconds since the epoch), so that echoes of an earlier
/// run with the same sequence numbers are not mistaken for this run's.
fn run_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// The message of ping `seq` of the run `nonce`.
fn payload(seq: u64, nonce: u64) -> Bytes {
    let mut p = Vec::with_capacity(PING_MAGIC.len() + 16);
    p.extend_from_slice(PING_MAGIC);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&nonce.to_be_bytes());
    Bytes::from(p)
}

/// The sequence number of an echo of run `nonce`, if `data` is one.
fn parse(data: &[u8], nonce: u64) -> Option<u64> {
    let rest = data.strip_prefix(PING_MAGIC)?;
    let (seq, n) = (rest.get(..8)?, rest.get(8..16)?);
    (rest.len() == 16 && n == nonce.to_be_bytes())
        .then(|| u64::from_be_bytes(seq.try_into().unwrap_or([0; 8])))
}

/// Sends one ping message to `peer` (already connected) and waits for its echo, at most
/// `timeout`. `events` must be a subscription of the same node; other events read from it
/// while waiting are discarded, and so are stale echoes of earlier pings.
pub async fn ping(
    addr: &Addr<Supervisor>,
    events: &mut EventStream,
    peer: PeerId,
    seq: u64,
    timeout: Duration,
) -> Result<PingReport, ServiceError> {
    let nonce = run_nonce();
    let data = payload(seq, nonce);
    let start = Instant::now();
    let wait = async {
        addr.send(api::Send { peer, data }).await??;
        loop {
            match events.recv().await {
                Some(Event::MessageReceived { peer: p, data })
                    if p == peer && parse(&data, nonce) == Some(seq) =>
                {
                    return Ok(PingReport { seq, rtt: start.elapsed() });
                }
                Some(Event::PeerDisconnected { peer: p, .. }) if p == peer => {
                    return Err(ServiceError::Disconnected(peer));
                }
                Some(_) => {}
                None => return Err(ServiceError::Node(api::NodeError::ShuttingDown)),
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| ServiceError::Timeout(timeout))?
}

/// What a message read while pings are in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// The echo of ping `seq`, `rtt` after it was sent; `reordered` if an earlier ping is
    /// still unanswered.
    Answered {
        /// Its sequence number.
        seq: u64,
        /// Its round-trip time.
        rtt: Duration,
        /// Whether it overtook an earlier ping.
        reordered: bool,
    },
    /// An echo of ping `seq` of this run that is not in flight: answered before, or
    /// already given up ([`PingWindow::expire`]).
    Unexpected {
        /// Its sequence number.
        seq: u64,
    },
    /// Not a ping of this run.
    Other,
}

/// Pings in flight: numbers them, and sorts the echoes. Memory is bounded by the pings in
/// flight (its owner caps them), whatever the peer sends.
#[derive(Debug)]
pub struct PingWindow {
    nonce: u64,
    next: u64,
    in_flight: BTreeMap<u64, Instant>,
}

impl Default for PingWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl PingWindow {
    /// An empty window for a new run (its own nonce); the first ping is number 1.
    pub fn new() -> Self {
        Self::with_nonce(run_nonce())
    }

    /// An empty window with a chosen nonce (tests).
    pub fn with_nonce(nonce: u64) -> Self {
        Self { nonce, next: 1, in_flight: BTreeMap::new() }
    }

    /// The next ping, sent at `now`: its number and the message to send.
    pub fn next(&mut self, now: Instant) -> (u64, Bytes) {
        let seq = self.next;
        self.next += 1;
        self.in_flight.insert(seq, now);
        (seq, payload(seq, self.nonce))
    }

    /// Pings sent and neither answered nor expired.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Pings sent so far.
    pub fn sent(&self) -> u64 {
        self.next - 1
    }

    /// Sorts a message read at `now`.
    pub fn on_message(&mut self, now: Instant, data: &[u8]) -> Echo {
        let Some(seq) = parse(data, self.nonce) else { return Echo::Other };
        match self.in_flight.remove(&seq) {
            Some(sent) => {
                let reordered = self.in_flight.keys().next().is_some_and(|&first| first < seq);
                Echo::Answered { seq, rtt: now.saturating_duration_since(sent), reordered }
            }
            None if seq < self.next => Echo::Unexpected { seq },
            None => Echo::Other,
        }
    }

    /// Gives up on the pings sent `timeout` or longer before `now`; returns their numbers.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<u64> {
        let old: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, &sent)| now.saturating_duration_since(sent) >= timeout)
            .map(|(&seq, _)| seq)
            .collect();
        for s in &old {
            self.in_flight.remove(s);
        }
        old
    }

    /// When the oldest ping in flight expires.
    pub fn next_expiry(&self, timeout: Duration) -> Option<Instant> {
        self.in_flight.values().min().map(|&sent| sent + timeout)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_sorted_answered_reordered_unexpected_or_other() {
        let t0 = Instant::now();
        let mut w = PingWindow::with_nonce(7);
        let (s1, p1) = w.next(t0);
        let (s2, p2) = w.next(t0);
        let (s3, p3) = w.next(t0);
        assert_eq!((s1, s2, s3, w.in_flight(), w.sent()), (1, 2, 3, 3, 3));
        let later = t0 + Duration::from_millis(5);
        assert_eq!(
            w.on_message(later, &p1),
            Echo::Answered { seq: 1, rtt: Duration::from_millis(5), reordered: false }
        );
        assert_eq!(
            w.on_message(later, &p3),
            Echo::Answered { seq: 3, rtt: Duration::from_millis(5), reordered: true }
        );
        assert_eq!(w.on_message(later, &p1), Echo::Unexpected { seq: 1 });
        assert_eq!(
            w.on_message(later, &p2),
            Echo::Answered { seq: 2, rtt: Duration::from_millis(5), reordered: false }
        );
        assert_eq!(w.in_flight(), 0);
        // Another run's echo, a ping never sent, garbage, a truncated or padded echo.
        assert_eq!(w.on_message(later, &payload(1, 8)), Echo::Other);
        assert_eq!(w.on_message(later, &payload(9, 7)), Echo::Other);
        assert_eq!(w.on_message(later, b"hello"), Echo::Other);
        assert_eq!(w.on_message(later, &p1[..p1.len() - 1]), Echo::Other);
        let mut padded = p1.to_vec();
        padded.push(0);
        assert_eq!(w.on_message(later, &padded), Echo::Other);
    }

    #[test]
    fn pings_expire_oldest_first_and_late_echoes_are_unexpected() {
        let t0 = Instant::now();
        let mut w = PingWindow::with_nonce(1);
        let (_, p1) = w.next(t0);
        let (_, _p2) = w.next(t0 + Duration::from_secs(1));
        let timeout = Duration::from_secs(5);
        assert_eq!(w.next_expiry(timeout), Some(t0 + timeout));
        assert!(w.expire(t0 + Duration::from_millis(4999), timeout).is_empty());
        assert_eq!(w.expire(t0 + timeout, timeout), vec![1]);
        assert_eq!(w.next_expiry(timeout), Some(t0 + Duration::from_secs(6)));
        assert_eq!(w.on_message(t0 + timeout, &p1), Echo::Unexpected { seq: 1 });
        assert_eq!(w.in_flight(), 1);
    }
}
