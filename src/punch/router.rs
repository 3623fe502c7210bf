//! [`DatagramRouter`]: which punch attempt a datagram of the shared UDP socket's side
//! channel belongs to (sans-IO).
//!
//! One socket carries QUIC, STUN and hole punching ([`crate::transport::quic::demux`]
//! diverts everything that is not QUIC to a side channel), and several punch attempts —
//! one per peer — may run on it at once. Each attempt registers the keys its datagrams
//! carry ([`RouteKeys`], from [`PunchAttempt::route_keys`](super::PunchAttempt::route_keys)):
//!
//! * its **session token**, carried by every probe and ack ([`super::packet`]);
//! * the **transaction ids** of its STUN Binding requests still awaiting an answer
//!   (RFC 8489 §5: the 12 bytes after the magic cookie, echoed by the server).
//!
//! [`DatagramRouter::route`] reads just enough of a datagram to find its key and returns
//! the attempt registered for it. Everything else — an unknown token (a stray, late or
//! forged probe), an answer to no pending transaction, anything neither punch nor STUN
//! response — is dropped and counted in [`RouterStats`], never handed to an attempt.
//! Attempts still check what they get (the token in constant time, the STUN answer in
//! full): the router only saves every attempt from looking at every datagram.

use std::{
    collections::{hash_map::Entry, HashMap},
    hash::Hash,
};

use super::packet::{is_punch_datagram, Datagram};
use crate::nat::{gather::MAX_GATHER_SERVERS, probe::response_transaction_id};

/// Most attempts routed at once. 1024: the supervisor runs one attempt per relayed peer,
/// and a node with more than a thousand relayed peers punching at the same moment is far
/// beyond any deployment seen; the bound keeps the tables small whatever happens.
pub const MAX_ROUTED_SESSIONS: usize = 1024;

/// Most STUN transactions routed per attempt: what one gathering runs at most
/// ([`MAX_GATHER_SERVERS`]).
pub const MAX_TRANSACTIONS_PER_SESSION: usize = MAX_GATHER_SERVERS;

/// The keys an attempt's datagrams carry (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteKeys {
    /// The punch session's token, once known.
    pub token: Option<[u8; 16]>,
    /// Transaction ids of STUN requests awaiting an answer.
    pub transactions: Vec<[u8; 12]>,
}

/// What the router did with the datagrams it saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Handed to an attempt.
    pub routed: u64,
    /// Punch datagrams whose token no attempt holds (dropped).
    pub unknown_token: u64,
    /// STUN responses to no pending transaction (dropped).
    pub unknown_transaction: u64,
    /// Neither a well-formed punch datagram nor a STUN response (dropped).
    pub unrecognised: u64,
}

impl RouterStats {
    /// Datagrams dropped, for any reason.
    pub fn dropped(&self) -> u64 {
        self.unknown_token + self.unknown_transaction + self.unrecognised
    }
}

/// Why [`DatagramRouter::set_keys`] could not register every key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// [`MAX_ROUTED_SESSIONS`] attempts are routed already; this one was not added.
    #[error("{max} punch attempts routed already")]
    Full {
        /// The bound.
        max: usize,
    },
    /// Another attempt holds the same token; it keeps it (the first registration wins,
    /// so a peer cannot take over another session's datagrams by reusing its token).
    #[error("the punch token is routed to another attempt")]
    TokenInUse,
    /// Another attempt holds one of the transaction ids; it keeps it.
    #[error("a STUN transaction id is routed to another attempt")]
    TransactionInUse,
}

/// Routes side-channel datagrams to attempts identified by `K` (see the module docs).
#[derive(Debug)]
pub struct DatagramRouter<K> {
    tokens: HashMap<[u8; 16], K>,
    transactions: HashMap<[u8; 12], K>,
    /// Per attempt, the keys actually registered for it.
    sessions: HashMap<K, RouteKeys>,
    stats: RouterStats,
}

impl<K> Default for DatagramRouter<K> {
    fn default() -> Self {
        Self {
            tokens: HashMap::new(),
            transactions: HashMap::new(),
            sessions: HashMap::new(),
            stats: RouterStats::default(),
        }
    }
}

impl<K: Copy + Eq + Hash> DatagramRouter<K> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `keys` the keys of attempt `id`, replacing those it had. Keys another attempt
    /// holds stay with it (the error says so; the other keys are registered anyway);
    /// transactions beyond [`MAX_TRANSACTIONS_PER_SESSION`] are ignored.
    pub fn set_keys(&mut self, id: K, keys: RouteKeys) -> Result<(), RouteError> {
        if !self.sessions.contains_key(&id) && self.sessions.len() >= MAX_ROUTED_SESSIONS {
            return Err(RouteError::Full { max: MAX_ROUTED_SESSIONS });
        }
        self.unregister(id);
        let mut result = Ok(());
        let mut held = RouteKeys::default();
        if let Some(token) = keys.token {
            match self.tokens.entry(token) {
                Entry::Occupied(_) => result = Err(RouteError::TokenInUse),
                Entry::Vacant(e) => {
                    e.insert(id);
                    held.token = Some(token);
                }
            }
        }
        for tid in keys.transactions.into_iter().take(MAX_TRANSACTIONS_PER_SESSION) {
            match self.transactions.entry(tid) {
                Entry::Occupied(_) => result = result.and(Err(RouteError::TransactionInUse)),
                Entry::Vacant(e) => {
                    e.insert(id);
                    held.transactions.push(tid);
                }
            }
        }
        self.sessions.insert(id, held);
        result
    }

    /// Forgets attempt `id` and its keys (idempotent).
    pub fn remove(&mut self, id: K) {
        self.unregister(id);
        self.sessions.remove(&id);
    }

    fn unregister(&mut self, id: K) {
        let Some(old) = self.sessions.get_mut(&id) else { return };
        if let Some(token) = old.token.take() {
            self.tokens.remove(&token);
        }
        for tid in old.transactions.drain(..) {
            self.transactions.remove(&tid);
        }
    }

    /// The attempt datagram `bytes` belongs to, or `None` (dropped, counted).
    pub fn route(&mut self, bytes: &[u8]) -> Option<K> {
        let (found, miss) = if is_punch_datagram(bytes) {
            match Datagram::decode(bytes) {
                Some(d) => (self.tokens.get(d.token()).copied(), &mut self.stats.unknown_token),
                None => (None, &mut self.stats.unrecognised),
            }
        } else {
            match response_transaction_id(bytes) {
                Some(tid) => (self.transactions.get(&tid).copied(), &mut self.stats.unknown_transaction),
                None => (None, &mut self.stats.unrecognised),
            }
        };
        match found {
            Some(_) => self.stats.routed += 1,
            None => *miss += 1,
        }
        found
    }

    /// What was routed and dropped so far.
    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    /// Attempts registered.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no attempt is registered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
