//! Admission of unauthenticated inbound connections (sans-IO): how many handshakes a
//! server runs at once, per remote address and in all, and which one makes room when they
//! are all busy.
//!
//! Every TCP-based server of Kizuna (the node's TCP and WebSocket listeners, the relay and
//! its stats endpoint) accepts each connection at once and asks [`HandshakeAdmission`]
//! whether it may start its handshake. The rules, in order:
//!
//! 1. **Per address.** At most [`AdmissionLimits::max_pending_per_address`] handshakes
//!    from one [`AddressKey`] (an IPv4 address, or an IPv6 /64: one subscriber's prefix).
//!    When an address is at its cap, its oldest *silent* connection (one that has sent
//!    nothing yet) makes room for the newcomer; if none of its connections is silent, the
//!    newcomer is refused ([`Refusal::PerAddress`]). A crowd from one address therefore
//!    only ever competes with itself.
//! 2. **In all.** At most [`AdmissionLimits::max_pending`] handshakes at once. When full,
//!    the address holding the most handshakes gives up its oldest evictable one (silent
//!    first), provided it holds more than one more than the newcomer's address would: the
//!    slots drift toward an even split between addresses instead of going to whoever
//!    connected first. Otherwise the newcomer is refused ([`Refusal::Full`]).
//! 3. A handshake that completed ([`HandshakeAdmission::established`]) still holds its slot
//!    until [`released`](HandshakeAdmission::release) (its connection is handed over), but
//!    is never evicted.
//!
//! The machine has no clock and no sockets: the shell (`accept::AdmittingAccept`) enforces
//! the first-byte deadline ([`AdmissionLimits::first_byte_timeout`]) and aborts evicted
//! handshakes. [`HandshakeCounters`] count what happened, for metrics.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::Serialize;

/// Default bound on handshakes in progress at once on one server. 256: a handshake costs
/// a socket and a few KiB, so this keeps a flood from exhausting descriptors or memory,
/// while a burst of legitimate clients reconnecting after a restart gets in quickly.
pub const DEFAULT_MAX_PENDING: usize = 256;

/// Default bound on handshakes in progress at once from one address. 16: a client opens
/// one connection per peer and a handshake lasts a few round trips, so even a NAT gateway
/// in front of many users rarely has more than a handful in flight at the same instant;
/// 16 of 256 slots means at least 16 addresses are needed to fill a server.
pub const DEFAULT_MAX_PENDING_PER_ADDRESS: usize = 16;

/// Default time a new connection may stay silent before its first byte. 3 s: a client
/// sends its first bytes (TLS ClientHello, HTTP upgrade) right after the TCP handshake,
/// so this leaves room for two retransmissions of that segment on a lossy path (initial
/// RTO 1 s) while a socket that connects and says nothing frees its slot in seconds
/// instead of holding it for the whole handshake bound.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);

/// Bounds of [`HandshakeAdmission`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Handshakes in progress at once, from all addresses.
    pub max_pending: usize,
    /// Handshakes in progress at once from one [`AddressKey`].
    pub max_pending_per_address: usize,
    /// How long a connection may stay silent before its first byte (enforced by the shell).
    pub first_byte_timeout: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_pending: DEFAULT_MAX_PENDING,
            max_pending_per_address: DEFAULT_MAX_PENDING_PER_ADDRESS,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
        }
    }
}

impl AdmissionLimits {
    /// Checks that every bound is usable; the error names the setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_pending == 0 {
            return Err("max_pending_handshakes must be at least 1".into());
        }
        if self.max_pending_per_address == 0 {
            return Err("max_pending_handshakes_per_address must be at least 1".into());
        }
        if self.first_byte_timeout.is_zero() {
            return Err("first_byte_timeout must be longer than zero".into());
        }
        Ok(())
    }
}

/// The unit of the per-address limit: an IPv4 address, or the /64 prefix of an IPv6
/// address (IPv4-mapped IPv6 addresses count as their IPv4 address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// One IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
}

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    AddressKey::V6Prefix([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// One admitted handshake, as the shell refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What [`HandshakeAdmission::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Start the handshake; if `evict` is set, abort that one first (it no longer counts).
    Admit {
        /// The newcomer's ticket.
        ticket: Ticket,
        /// A handshake that made room and must be aborted.
        evict: Option<Ticket>,
    },
    /// Close the connection without a handshake.
    Refuse(Refusal),
}

/// Why a connection was refused before its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its address already has the most handshakes in progress it may have, none silent.
    #[error("too many handshakes in progress from this address (limit {max})")]
    PerAddress {
        /// The per-address limit.
        max: usize,
    },
    /// Every slot is busy and no address holds more than its share.
    #[error("too many handshakes in progress (limit {max})")]
    Full {
        /// The total limit.
        max: usize,
    },
}

/// How far one admitted handshake has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Nothing received yet.
    Silent,
    /// Bytes received, handshake not finished.
    Talking,
    /// Handshake finished; never evicted.
    Established,
}

#[derive(Debug)]
struct Entry {
    ticket: Ticket,
    stage: Stage,
}

/// The admission machine (see the module docs for the rules).
#[derive(Debug)]
pub struct HandshakeAdmission {
    limits: AdmissionLimits,
    /// Entries per address, oldest first.
    by_addr: HashMap<AddressKey, VecDeque<Entry>>,
    /// Which address each live ticket belongs to.
    owner: HashMap<Ticket, AddressKey>,
    next: u64,
}

impl HandshakeAdmission {
    /// An empty machine with `limits` (zero bounds act as 1).
    pub fn new(limits: AdmissionLimits) -> Self {
        Self { limits, by_addr: HashMap::new(), owner: HashMap::new(), next: 0 }
    }

    /// The limits in force.
    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Handshakes holding a slot now.
    pub fn pending(&self) -> usize {
        self.owner.len()
    }

    /// Handshakes holding a slot now from `ip`'s address.
    pub fn pending_from(&self, ip: IpAddr) -> usize {
        self.by_addr.get(&AddressKey::from(ip)).map_or(0, VecDeque::len)
    }

    /// Whether `ticket` still holds a slot (not released, not evicted).
    pub fn is_live(&self, ticket: Ticket) -> bool {
        self.owner.contains_key(&ticket)
    }

    /// Decides on a new connection from `ip`.
    pub fn admit(&mut self, ip: IpAddr) -> Admission {
        let key = AddressKey::from(ip);
        let per_address = self.limits.max_pending_per_address.max(1);
        let total = self.limits.max_pending.max(1);
        let mine = self.by_addr.get(&key).map_or(0, VecDeque::len);
        let evict = if mine >= per_address {
            // The address competes only with itself: its oldest silent handshake goes.
            match self.take_oldest(key, |s| s == Stage::Silent) {
                Some(t) => Some(t),
                None => return Admission::Refuse(Refusal::PerAddress { max: per_address }),
            }
        } else if self.owner.len() >= total {
            match self.largest_holder(key, mine) {
                Some(victim) => {
                    let t = self
                        .take_oldest(victim, |s| s == Stage::Silent)
                        .or_else(|| self.take_oldest(victim, |s| s == Stage::Talking));
                    match t {
                        Some(t) => Some(t),
                        None => return Admission::Refuse(Refusal::Full { max: total }),
                    }
                }
                None => return Admission::Refuse(Refusal::Full { max: total }),
            }
        } else {
            None
        };
        let ticket = Ticket(self.next);
        self.next += 1;
        self.by_addr.entry(key).or_default().push_back(Entry { ticket, stage: Stage::Silent });
        self.owner.insert(ticket, key);
        Admission::Admit { ticket, evict }
    }

    /// The handshake `ticket` received its first bytes: it is no longer the first to make
    /// room for a newcomer from its address.
    pub fn heard(&mut self, ticket: Ticket) {
        self.set_stage(ticket, Stage::Talking);
    }

    /// The handshake `ticket` completed: it keeps its slot until released, but is never
    /// evicted.
    pub fn established(&mut self, ticket: Ticket) {
        self.set_stage(ticket, Stage::Established);
    }

    /// The handshake `ticket` is over (whatever the outcome): its slot is free. Unknown
    /// tickets (evicted, or released before) are ignored.
    pub fn release(&mut self, ticket: Ticket) {
        let Some(key) = self.owner.remove(&ticket) else { return };
        if let Some(q) = self.by_addr.get_mut(&key) {
            q.retain(|e| e.ticket != ticket);
            if q.is_empty() {
                self.by_addr.remove(&key);
            }
        }
    }

    fn set_stage(&mut self, ticket: Ticket, stage: Stage) {
        let Some(key) = self.owner.get(&ticket) else { return };
        if let Some(e) = self.by_addr.get_mut(key).and_then(|q| q.iter_mut().find(|e| e.ticket == ticket)) {
            // Stages only move forward.
            if stage as u8 > e.stage as u8 {
                e.stage = stage;
            }
        }
    }

    /// The address that should make room for a newcomer from `key` (holding `mine`): the
    /// one with the most evictable handshakes, if it holds more than `mine + 1` in all.
    fn largest_holder(&self, key: AddressKey, mine: usize) -> Option<AddressKey> {
        self.by_addr
            .iter()
            .filter(|(k, q)| **k != key && q.iter().any(|e| e.stage != Stage::Established))
            .max_by_key(|(_, q)| q.len())
            .filter(|(_, q)| q.len() > mine + 1)
            .map(|(k, _)| *k)
    }

    /// Removes and returns the oldest handshake of `key` whose stage passes `which`.
    fn take_oldest(&mut self, key: AddressKey, which: impl Fn(Stage) -> bool) -> Option<Ticket> {
        let q = self.by_addr.get_mut(&key)?;
        let i = q.iter().position(|e| which(e.stage))?;
        let ticket = q.remove(i)?.ticket;
        if q.is_empty() {
            self.by_addr.remove(&key);
        }
        self.owner.remove(&ticket);
        Some(ticket)
    }
}

/// What happened to unauthenticated connections, counted by the shell (shared, lock-free).
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    admitted: AtomicU64,
    refused_per_address: AtomicU64,
    refused_full: AtomicU64,
    evicted: AtomicU64,
    silent: AtomicU64,
    timed_out: AtomicU64,
    violations: AtomicU64,
    refused_auth: AtomicU64,
    completed: AtomicU64,
}

/// Something that happened to one unauthenticated connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Admitted to its handshake.
    Admitted,
    /// Refused at accept time.
    Refused(Refusal),
    /// Aborted to make room for another.
    Evicted,
    /// Sent nothing within the first-byte deadline.
    Silent,
    /// Did not finish the handshake within its bound.
    TimedOut,
    /// Broke the protocol (malformed TLS, upgrade or relay messages).
    Violation,
    /// Failed authentication or authorization.
    AuthRefused,
    /// Completed the handshake.
    Completed,
}

impl HandshakeCounters {
    /// Counts one `outcome`.
    pub fn record(&self, outcome: HandshakeOutcome) {
        let c = match outcome {
            HandshakeOutcome::Admitted => &self.admitted,
            HandshakeOutcome::Refused(Refusal::PerAddress { .. }) => &self.refused_per_address,
            HandshakeOutcome::Refused(Refusal::Full { .. }) => &self.refused_full,
            HandshakeOutcome::Evicted => &self.evicted,
            HandshakeOutcome::Silent => &self.silent,
            HandshakeOutcome::TimedOut => &self.timed_out,
            HandshakeOutcome::Violation => &self.violations,
            HandshakeOutcome::AuthRefused => &self.refused_auth,
            HandshakeOutcome::Completed => &self.completed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HandshakeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HandshakeStats {
            admitted: get(&self.admitted),
            refused_per_address: get(&self.refused_per_address),
            refused_full: get(&self.refused_full),
            evicted: get(&self.evicted),
            silent: get(&self.silent),
            timed_out: get(&self.timed_out),
            violations: get(&self.violations),
            refused_auth: get(&self.refused_auth),
            completed: get(&self.completed),
        }
    }
}

/// A snapshot of [`HandshakeCounters`] (JSON field names as below).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeStats {
    /// Connections admitted to a handshake.
    pub admitted: u64,
    /// Refused at accept: their address had too many handshakes in progress.
    pub refused_per_address: u64,
    /// Refused at accept: every slot busy.
    pub refused_full: u64,
    /// Aborted to make room for a newcomer.
    pub evicted: u64,
    /// Closed for sending nothing within the first-byte deadline.
    pub silent: u64,
    /// Closed for not finishing the handshake in time.
    pub timed_out: u64,
    /// Closed for breaking the protocol during the handshake.
    pub violations: u64,
    /// Refused by authentication or authorization.
    pub refused_auth: u64,
    /// Completed.
    pub completed: u64,
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
