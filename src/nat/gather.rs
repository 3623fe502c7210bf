//! Server-reflexive address gathering: the sans-IO [`Gatherer`] learns the public
//! mapping of a socket the caller owns (in practice the node's one UDP socket that QUIC
//! and hole punching share) by running STUN Binding transactions against a few servers,
//! and infers a [`MappingHint`] for port prediction on the way.
//!
//! The caller sends what [`Gatherer::poll_transmit`] yields from that socket, offers
//! every non-QUIC datagram to [`Gatherer::handle_datagram`] (which keeps only answers to
//! its own transactions), and calls [`Gatherer::handle_timeout`] at
//! [`Gatherer::poll_timeout`]. Retransmission follows [`ProbeConfig`] (RFC 8489 §6.2.1).
//!
//! The mapping hint comes from comparing the mapped addresses seen by two server
//! addresses with different IPs: the configured servers, or a server and the
//! OTHER-ADDRESS it names (RFC 5780 §7.4). The same mapping from both means the NAT maps
//! endpoint-independently; different mappings mean it maps per destination; no answer at
//! all means UDP is blocked.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    probe::{encode_request, parse_response},
    Outcome, ProbeConfig,
};
use crate::punch::MappingHint;

/// The most server addresses one gathering asks (the configured servers plus one
/// OTHER-ADDRESS), bounding the packets it sends.
pub const MAX_GATHER_SERVERS: usize = 4;

/// What a gathering learned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gathered {
    /// Distinct mapped addresses, in the order the servers answered.
    pub reflexive: Vec<SocketAddr>,
    /// The NAT's mapping behaviour as far as the answers tell.
    pub mapping: MappingHint,
}

#[derive(Debug)]
struct Transaction {
    server: SocketAddr,
    tid: [u8; 12],
    started: Instant,
    /// Requests sent so far.
    sent: usize,
    /// `Some` once finished: the mapped address, or `None` (error or no answer).
    result: Option<Option<SocketAddr>>,
}

/// Runs Binding transactions against up to [`MAX_GATHER_SERVERS`] server addresses in
/// parallel. See the module documentation.
#[derive(Debug)]
pub struct Gatherer {
    config: ProbeConfig,
    schedule: Vec<Duration>,
    seed: [u8; 32],
    txs: Vec<Transaction>,
    /// Requests due to be sent.
    out: Vec<(SocketAddr, Vec<u8>)>,
}

impl Gatherer {
    /// Starts transactions against `servers` (at most [`MAX_GATHER_SERVERS`] are used,
    /// duplicates skipped) at `now`. `seed` must be fresh randomness: the transaction ids
    /// are derived from it, and an attacker who could guess them could forge answers.
    pub fn new(servers: &[SocketAddr], now: Instant, config: ProbeConfig, seed: [u8; 32]) -> Self {
        let mut g =
            Self { config, schedule: config.transmit_times(), seed, txs: Vec::new(), out: Vec::new() };
        for s in servers {
            g.start(*s, now);
        }
        g.handle_timeout(now);
        g
    }

    fn start(&mut self, server: SocketAddr, now: Instant) {
        if self.txs.len() >= MAX_GATHER_SERVERS || self.txs.iter().any(|t| t.server == server) {
            return;
        }
        let index = self.txs.len() as u8;
        let digest = ring::digest::digest(&ring::digest::SHA256, &[&self.seed[..], &[index]].concat());
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&digest.as_ref()[..12]);
        self.txs.push(Transaction { server, tid, started: now, sent: 0, result: None });
    }

    /// The next request to send: `(server, datagram)`.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }

    /// Offers a datagram that arrived on the socket from `from`. Returns whether it was
    /// the answer to one of this gatherer's transactions (then the caller should not pass
    /// it on). Answers to finished transactions are consumed and ignored.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        let Some((i, outcome)) = self
            .txs
            .iter()
            .enumerate()
            .find_map(|(i, t)| parse_response(bytes, from, &t.tid).map(|o| (i, o)))
        else {
            return false;
        };
        if self.txs[i].result.is_some() {
            return true;
        }
        let mapped = match outcome {
            Outcome::Success(r) => {
                // Ask the server's other address too, when it names one and only one
                // server IP is known: that tells whether the mapping depends on the
                // destination.
                if let Some(other) = r.other_address {
                    let ips = self.txs.iter().filter(|t| t.server.ip() != self.txs[i].server.ip()).count();
                    if ips == 0 && other.ip() != self.txs[i].server.ip() && other.is_ipv4() == from.is_ipv4()
                    {
                        self.start(other, now);
                        self.handle_timeout(now);
                    }
                }
                Some(r.mapped)
            }
            _ => None,
        };
        self.txs[i].result = Some(mapped);
        true
    }

    /// Sends due retransmissions and gives up on transactions past their deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let deadline = self.config.deadline();
        for t in &mut self.txs {
            if t.result.is_some() {
                continue;
            }
            while t.sent < self.schedule.len() && t.started + self.schedule[t.sent] <= now {
                self.out.push((t.server, encode_request(t.tid, false, false)));
                t.sent += 1;
            }
            if now >= t.started + deadline {
                t.result = Some(None);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due; `None` when done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.config.deadline();
        self.txs
            .iter()
            .filter(|t| t.result.is_none())
            .map(|t| t.started + self.schedule.get(t.sent).copied().unwrap_or(deadline).min(deadline))
            .min()
    }

    /// The transaction ids of the transactions still waiting for an answer, which a shell
    /// sharing its socket among several gatherers routes answers by
    /// ([`DatagramRouter`](crate::punch::router::DatagramRouter)). The set grows when an
    /// answer names an OTHER-ADDRESS to ask too, and shrinks as transactions finish.
    pub fn pending_transactions(&self) -> impl Iterator<Item = [u8; 12]> + '_ {
        self.txs.iter().filter(|t| t.result.is_none()).map(|t| t.tid)
    }

    /// Whether every transaction has finished.
    pub fn is_done(&self) -> bool {
        self.txs.iter().all(|t| t.result.is_some())
    }

    /// What was learned so far (complete once [`is_done`](Self::is_done)). When servers
    /// were asked and none answered, the hint is [`MappingHint::UdpBlocked`].
    pub fn result(&self) -> Gathered {
        let answered: Vec<(SocketAddr, SocketAddr)> =
            self.txs.iter().filter_map(|t| t.result.flatten().map(|m| (t.server, m))).collect();
        let mut reflexive: Vec<SocketAddr> = Vec::new();
        for (_, m) in &answered {
            if !reflexive.contains(m) {
                reflexive.push(*m);
            }
        }
        if answered.is_empty() && !self.txs.is_empty() && self.is_done() {
            // Asked, and nothing came back over UDP.
            return Gathered { reflexive, mapping: MappingHint::UdpBlocked };
        }
        let mut mapping = MappingHint::Unknown;
        for (i, (sa, ma)) in answered.iter().enumerate() {
            for (sb, mb) in &answered[i + 1..] {
                if sa.ip() == sb.ip() {
                    continue;
                }
                if ma != mb {
                    return Gathered { reflexive, mapping: MappingHint::AddressAndPortDependent };
                }
                mapping = MappingHint::EndpointIndependent;
            }
        }
        Gathered { reflexive, mapping }
    }
}

#[cfg(test)]
#[path = "gather_tests.rs"]
mod tests;
