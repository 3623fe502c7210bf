//! [`SessionTable`]: the sans-IO bookkeeping of WebRTC signaling sessions — which
//! `(peer, session)` pairs exist, in which role, and whether an incoming message fits one.
//!
//! It decides, the transport acts: [`SessionTable::route`] says whether a message starts
//! a new answering session, goes to an existing one, or is refused (with a
//! [`SignalError`]); limits bound sessions per peer, sessions in total, and candidates per
//! session, so a peer flooding signals costs a bounded amount of memory. No clock is read:
//! callers pass `now`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    error::SignalError,
    signal::{SignalKind, SignalMessage},
};
use crate::identity::PeerId;

/// Signaling sessions (being set up) per peer. 4: a peer normally has one; a few more
/// cover retries overlapping a session that has not timed out yet.
pub const MAX_SESSIONS_PER_PEER: usize = 4;
/// Signaling sessions in total. 256: each costs one peer connection being set up
/// (sockets, DTLS), so this bounds what a burst of offers can make the node allocate.
pub const MAX_SESSIONS: usize = 256;
/// Remote candidates per session. 32: a host has a handful of interfaces × (host, srflx,
/// relay); browsers send fewer than ten.
pub const MAX_CANDIDATES_PER_SESSION: usize = 32;
/// A session not finished within this is forgotten. 15 s: above the 10 s connect bound,
/// so only leaked sessions expire here.
pub const SESSION_TTL: Duration = Duration::from_secs(15);

/// Which side of the offer/answer exchange this node is in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This node sent the offer.
    Offerer,
    /// This node received the offer.
    Answerer,
}

/// Where an incoming message goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<H> {
    /// An offer for a new session: start answering it, then [`SessionTable::insert`] it.
    NewOffer,
    /// A message for the session whose handle this is.
    Deliver(H),
    /// A close: the session was removed; tell its handle.
    Closed(H),
}

struct Entry<H> {
    role: Role,
    handle: H,
    candidates: usize,
    answered: bool,
    created: Instant,
}

/// The live signaling sessions of one node; `H` is the caller's handle to a session.
pub struct SessionTable<H> {
    sessions: HashMap<(PeerId, u64), Entry<H>>,
}

impl<H> Default for SessionTable<H> {
    fn default() -> Self {
        Self { sessions: HashMap::new() }
    }
}

impl<H: Clone> SessionTable<H> {
    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        self.sessions.retain(|_, e| now.saturating_duration_since(e.created) < SESSION_TTL);
    }

    fn check_room(&self, peer: &PeerId) -> Result<(), SignalError> {
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(SignalError::Limit("sessions in total"));
        }
        if self.sessions.keys().filter(|(p, _)| p == peer).count() >= MAX_SESSIONS_PER_PEER {
            return Err(SignalError::Limit("sessions per peer"));
        }
        Ok(())
    }

    /// Registers a session this node offers or answers. Fails if a limit is reached or the
    /// session exists.
    pub fn insert(
        &mut self,
        peer: PeerId,
        session: u64,
        role: Role,
        handle: H,
        now: Instant,
    ) -> Result<(), SignalError> {
        self.expire(now);
        if self.sessions.contains_key(&(peer, session)) {
            return Err(SignalError::Unexpected { kind: "offer", session });
        }
        self.check_room(&peer)?;
        let entry = Entry { role, handle, candidates: 0, answered: false, created: now };
        self.sessions.insert((peer, session), entry);
        Ok(())
    }

    /// Forgets a session (set up, failed, or abandoned).
    pub fn remove(&mut self, peer: &PeerId, session: u64) {
        self.sessions.remove(&(*peer, session));
    }

    /// Decides what to do with `msg` from `from` (already decoded; signatures are checked
    /// by the session itself, which knows the recipient key).
    pub fn route(
        &mut self,
        from: PeerId,
        msg: &SignalMessage,
        now: Instant,
    ) -> Result<Route<H>, SignalError> {
        self.expire(now);
        let key = (from, msg.session);
        let unknown = || SignalError::UnknownSession { peer: from, session: msg.session };
        match msg.kind {
            SignalKind::Offer => {
                if self.sessions.contains_key(&key) {
                    return Err(SignalError::Unexpected { kind: "offer", session: msg.session });
                }
                self.check_room(&from)?;
                Ok(Route::NewOffer)
            }
            SignalKind::Answer => {
                let e = self.sessions.get_mut(&key).ok_or_else(unknown)?;
                if e.role != Role::Offerer || e.answered {
                    return Err(SignalError::Unexpected { kind: "answer", session: msg.session });
                }
                e.answered = true;
                Ok(Route::Deliver(e.handle.clone()))
            }
            SignalKind::Candidate => {
                let e = self.sessions.get_mut(&key).ok_or_else(unknown)?;
                if e.candidates >= MAX_CANDIDATES_PER_SESSION {
                    return Err(SignalError::Limit("candidates per session"));
                }
                e.candidates += 1;
                Ok(Route::Deliver(e.handle.clone()))
            }
            SignalKind::Close => {
                let e = self.sessions.remove(&key).ok_or_else(unknown)?;
                Ok(Route::Closed(e.handle))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn msg(session: u64, kind: SignalKind) -> SignalMessage {
        SignalMessage::unsigned(session, kind, "x".into(), None)
    }

    #[test]
    fn offer_answer_candidates_close() {
        let p = Keypair::from_seed([1; 32]).peer_id();
        let t0 = Instant::now();
        let mut t = SessionTable::<u32>::default();
        // A new offer is admitted, then registered by the caller.
        assert_eq!(t.route(p, &msg(7, SignalKind::Offer), t0).unwrap(), Route::NewOffer);
        t.insert(p, 7, Role::Answerer, 70, t0).unwrap();
        // A duplicate offer, and an answer to an offer we received, are refused.
        assert!(matches!(t.route(p, &msg(7, SignalKind::Offer), t0), Err(SignalError::Unexpected { .. })));
        assert!(matches!(t.route(p, &msg(7, SignalKind::Answer), t0), Err(SignalError::Unexpected { .. })));
        assert_eq!(t.route(p, &msg(7, SignalKind::Candidate), t0).unwrap(), Route::Deliver(70));
        // Our own offer gets exactly one answer.
        t.insert(p, 8, Role::Offerer, 80, t0).unwrap();
        assert_eq!(t.route(p, &msg(8, SignalKind::Answer), t0).unwrap(), Route::Deliver(80));
        assert!(t.route(p, &msg(8, SignalKind::Answer), t0).is_err());
        assert_eq!(t.route(p, &msg(8, SignalKind::Close), t0).unwrap(), Route::Closed(80));
        assert!(matches!(
            t.route(p, &msg(8, SignalKind::Candidate), t0),
            Err(SignalError::UnknownSession { .. })
        ));
        // Other peers cannot touch this peer's sessions.
        let q = Keypair::from_seed([2; 32]).peer_id();
        assert!(matches!(
            t.route(q, &msg(7, SignalKind::Candidate), t0),
            Err(SignalError::UnknownSession { .. })
        ));
    }

    #[test]
    fn limits_bound_sessions_and_candidates() {
        let p = Keypair::from_seed([1; 32]).peer_id();
        let t0 = Instant::now();
        let mut t = SessionTable::<u32>::default();
        for s in 1..=MAX_SESSIONS_PER_PEER as u64 {
            t.insert(p, s, Role::Answerer, 0, t0).unwrap();
        }
        assert_eq!(t.route(p, &msg(99, SignalKind::Offer), t0), Err(SignalError::Limit("sessions per peer")));
        for _ in 0..MAX_CANDIDATES_PER_SESSION {
            t.route(p, &msg(1, SignalKind::Candidate), t0).unwrap();
        }
        assert_eq!(
            t.route(p, &msg(1, SignalKind::Candidate), t0),
            Err(SignalError::Limit("candidates per session"))
        );
        // Sessions expire, freeing room.
        let later = t0 + SESSION_TTL;
        assert_eq!(t.route(p, &msg(99, SignalKind::Offer), later).unwrap(), Route::NewOffer);
        assert!(t.is_empty());
        for i in 0..MAX_SESSIONS as u64 {
            let peer = Keypair::from_seed([(i % 200) as u8 + 3; 32]).peer_id();
            if t.insert(peer, i + 1, Role::Answerer, 0, later).is_err() {
                break;
            }
        }
        assert_eq!(t.len(), MAX_SESSIONS.min(200 * MAX_SESSIONS_PER_PEER));
        assert_eq!(
            t.route(p, &msg(1000, SignalKind::Offer), later),
            Err(SignalError::Limit("sessions in total"))
        );
    }
}
