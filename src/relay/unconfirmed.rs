//! Circuits whose ends have not yet proved they talk to each other (sans-IO).
//!
//! A circuit is *unconfirmed* from the dial until its two ends have exchanged the three
//! flights of an end-to-end handshake ([`HandshakeFlights`]: TLS 1.3 is client → server,
//! server → client, client → server). Anyone holding a key can dial a reserved peer, so
//! unconfirmed circuits are what throwaway keys can create for free; `UnconfirmedCircuits`
//! bounds them so that they can never take a target's capacity:
//!
//! * per initiating key ([`RelayLimits::max_unconfirmed_per_initiator`]) and per initiating
//!   address, an IPv4 address or IPv6 /64 ([`RelayLimits::max_unconfirmed_per_address`]):
//!   beyond, the dial is refused;
//! * per target ([`RelayLimits::max_unconfirmed_per_target`]), with the fairness rules of
//!   [`HandshakeAdmission`] between initiating addresses: one address holds at most half
//!   of a target's unconfirmed slots (its oldest still-pending circuit makes room for its
//!   newest), and when the target's slots are full the address holding the most gives up
//!   its oldest for a newcomer from another address.
//!
//! Confirmed circuits leave the bookkeeping; the relay closes an open circuit that is still
//! unconfirmed [`RelayLimits::circuit_handshake_timeout`] after it opened.
//!
//! [`RelayLimits::max_unconfirmed_per_initiator`]: super::limits::RelayLimits::max_unconfirmed_per_initiator
//! [`RelayLimits::max_unconfirmed_per_address`]: super::limits::RelayLimits::max_unconfirmed_per_address
//! [`RelayLimits::max_unconfirmed_per_target`]: super::limits::RelayLimits::max_unconfirmed_per_target
//! [`RelayLimits::circuit_handshake_timeout`]: super::limits::RelayLimits::circuit_handshake_timeout

use std::{collections::HashMap, net::IpAddr, time::Duration};

use super::{limits::RelayLimits, proto::CircuitId, server::Direction};
use crate::{
    identity::PeerId,
    transport::admission::{AddressKey, Admission, AdmissionLimits, HandshakeAdmission, Ticket},
};

/// Counts the flights of a circuit's first messages: a flight is a run of messages in one
/// direction. Three flights are the shortest end-to-end handshake that proves both ends
/// answer each other (TLS 1.3 full or resumed).
#[derive(Debug, Default, Clone, Copy)]
pub struct HandshakeFlights {
    last: Option<Direction>,
    flights: u8,
}

/// Flights that confirm a circuit.
const CONFIRMING_FLIGHTS: u8 = 3;

impl HandshakeFlights {
    /// Observes one forwarded message; `true` exactly once, at the message that starts the
    /// third flight.
    pub fn observe(&mut self, direction: Direction) -> bool {
        if self.flights >= CONFIRMING_FLIGHTS || self.last == Some(direction) {
            return false;
        }
        self.last = Some(direction);
        self.flights += 1;
        self.flights == CONFIRMING_FLIGHTS
    }

    /// Whether three flights were seen.
    pub fn confirmed(&self) -> bool {
        self.flights >= CONFIRMING_FLIGHTS
    }
}

/// Why a dial was refused by `UnconfirmedCircuits::admit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnconfirmedRefusal {
    /// The dialer's key already has this many unconfirmed circuits.
    #[error("you already have {max} circuits whose end-to-end handshake has not completed")]
    Initiator {
        /// The limit.
        max: usize,
    },
    /// The dialer's address already has this many unconfirmed circuits.
    #[error("your address already has {max} circuits whose end-to-end handshake has not completed")]
    Address {
        /// The limit.
        max: usize,
    },
    /// The target's unconfirmed slots are full and fairly shared.
    #[error("the target already has {max} circuits whose end-to-end handshake has not completed")]
    Target {
        /// The limit.
        max: usize,
    },
}

#[derive(Debug)]
struct Entry {
    initiator: PeerId,
    address: AddressKey,
    target: PeerId,
    ticket: Ticket,
}

/// The unconfirmed circuits of one relay (see the module docs).
#[derive(Debug)]
pub(crate) struct UnconfirmedCircuits {
    per_initiator: usize,
    per_address: usize,
    per_target: AdmissionLimits,
    entries: HashMap<CircuitId, Entry>,
    targets: HashMap<PeerId, Target>,
}

#[derive(Debug)]
struct Target {
    admission: HandshakeAdmission,
    circuits: HashMap<Ticket, CircuitId>,
}

impl UnconfirmedCircuits {
    pub(crate) fn new(limits: &RelayLimits) -> Self {
        let per_target = limits.max_unconfirmed_per_target.max(1);
        Self {
            per_initiator: limits.max_unconfirmed_per_initiator.max(1),
            per_address: limits.max_unconfirmed_per_address.max(1),
            per_target: AdmissionLimits {
                max_pending: per_target,
                max_pending_per_address: per_target.div_ceil(2),
                // Not used here: the relay's timer closes unconfirmed circuits.
                first_byte_timeout: Duration::from_secs(1),
            },
            entries: HashMap::new(),
            targets: HashMap::new(),
        }
    }

    /// Decides on dial `id` from `initiator` at `ip` to `target`. On success the circuit
    /// is counted, and `Ok(Some(old))` names a circuit that must be closed to make room.
    pub(crate) fn admit(
        &mut self,
        id: CircuitId,
        initiator: PeerId,
        ip: IpAddr,
        target: PeerId,
    ) -> Result<Option<CircuitId>, UnconfirmedRefusal> {
        let address = AddressKey::from(ip);
        if self.entries.values().filter(|e| e.initiator == initiator).count() >= self.per_initiator {
            return Err(UnconfirmedRefusal::Initiator { max: self.per_initiator });
        }
        let from_address = self.entries.values().filter(|e| e.address == address).count();
        if from_address >= self.per_address {
            return Err(UnconfirmedRefusal::Address { max: self.per_address });
        }
        let limits = self.per_target;
        let t = self.targets.entry(target).or_insert_with(|| Target {
            admission: HandshakeAdmission::new(limits),
            circuits: HashMap::new(),
        });
        let (ticket, evicted) = match t.admission.admit(ip) {
            Admission::Admit { ticket, evict } => (ticket, evict.and_then(|old| t.circuits.remove(&old))),
            Admission::Refuse(_) => return Err(UnconfirmedRefusal::Target { max: limits.max_pending }),
        };
        t.circuits.insert(ticket, id);
        if let Some(old) = evicted {
            self.entries.remove(&old);
        }
        self.entries.insert(id, Entry { initiator, address, target, ticket });
        Ok(evicted)
    }

    /// Circuit `id` was accepted by its target: it is no longer the first of its address
    /// to make room.
    pub(crate) fn opened(&mut self, id: CircuitId) {
        if let Some(e) = self.entries.get(&id) {
            if let Some(t) = self.targets.get_mut(&e.target) {
                t.admission.heard(e.ticket);
            }
        }
    }

    /// Circuit `id` is confirmed or gone: it no longer counts.
    pub(crate) fn remove(&mut self, id: CircuitId) {
        let Some(e) = self.entries.remove(&id) else { return };
        if let Some(t) = self.targets.get_mut(&e.target) {
            t.admission.release(e.ticket);
            t.circuits.remove(&e.ticket);
            if t.circuits.is_empty() {
                self.targets.remove(&e.target);
            }
        }
    }

    /// Whether circuit `id` is counted here.
    pub(crate) fn contains(&self, id: CircuitId) -> bool {
        self.entries.contains_key(&id)
    }

    /// Unconfirmed circuits now.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_flights_confirm_once() {
        use Direction::{AToB, BToA};
        let mut f = HandshakeFlights::default();
        // Runs of one direction are one flight.
        assert!(!f.observe(AToB));
        assert!(!f.observe(AToB));
        assert!(!f.observe(BToA));
        assert!(!f.observe(BToA));
        assert!(!f.confirmed());
        assert!(f.observe(AToB));
        assert!(f.confirmed());
        // Reported once.
        assert!(!f.observe(BToA));
        assert!(!f.observe(AToB));
        // One side talking alone never confirms.
        let mut g = HandshakeFlights::default();
        assert!((0..100).all(|_| !g.observe(AToB)));
    }
}
