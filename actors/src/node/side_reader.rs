//! The reader of a QUIC socket's side channel (its non-QUIC datagrams: STUN answers and
//! punch datagrams) and the table it routes by.
//!
//! No actor lives here. The table ([`PunchRoutes`], shared as [`PunchInboxes`]) pairs
//! the core's sans-IO [`DatagramRouter`] — punch token or STUN transaction id → attempt —
//! with each live `HolePunchActor`'s inbox. Each actor registers itself when it starts,
//! updates its keys after every input (before performing its outputs, so that even a
//! quick answer finds its way), and is removed when it is dropped (also after a panic).
//! The reader task hands each datagram to the one actor whose key it carries; everything
//! else is dropped and counted in [`PunchRoutes::stats`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use actix::Recipient;
use kizuna::{
    punch::{DatagramRouter, RouteError, RouteKeys, RouterStats},
    transport::quic::demux::SideChannel,
};

use crate::{
    node::{child::ChildId, hole_punch::PunchDatagram},
    runtime::io_runtime,
};

/// The routing table, shared by the punch actors (which register) and the side reader
/// (which routes).
pub(crate) type PunchInboxes = Arc<Mutex<PunchRoutes>>;

/// Which punch actor gets which side-channel datagram. See the module documentation.
#[derive(Default)]
pub(crate) struct PunchRoutes {
    router: DatagramRouter<ChildId>,
    inboxes: HashMap<ChildId, Recipient<PunchDatagram>>,
}

impl PunchRoutes {
    /// Makes `keys` the keys of punch actor `id`, whose inbox is `inbox`.
    pub(crate) fn set(
        &mut self,
        id: ChildId,
        inbox: &Recipient<PunchDatagram>,
        keys: RouteKeys,
    ) -> Result<(), RouteError> {
        let r = self.router.set_keys(id, keys);
        if !matches!(r, Err(RouteError::Full { .. })) {
            self.inboxes.entry(id).or_insert_with(|| inbox.clone());
        }
        r
    }

    /// Forgets punch actor `id` (idempotent).
    pub(crate) fn remove(&mut self, id: ChildId) {
        self.router.remove(id);
        self.inboxes.remove(&id);
    }

    /// The inbox datagram `bytes` belongs in, if any.
    fn route(&mut self, bytes: &[u8]) -> Option<Recipient<PunchDatagram>> {
        let id = self.router.route(bytes)?;
        self.inboxes.get(&id).cloned()
    }

    /// What was routed and dropped so far.
    pub(crate) fn stats(&self) -> RouterStats {
        self.router.stats()
    }
}

/// Locks the table; a panic while it was held cannot leave it inconsistent (every
/// operation is one router call and one map update), so a poisoned lock is used as is.
pub(crate) fn lock(routes: &Mutex<PunchRoutes>) -> std::sync::MutexGuard<'_, PunchRoutes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the side channel of one QUIC socket and hands every datagram to the punch actor
/// its key names. Ends when the socket goes away or the supervisor that owns `inboxes`
/// has stopped. Datagrams an actor has no room for are dropped (UDP is lossy; the
/// session retries).
pub(crate) fn spawn_side_reader(side: Arc<SideChannel>, inboxes: Weak<Mutex<PunchRoutes>>) {
    io_runtime().spawn(async move {
        while let Some((from, bytes)) = side.recv_from().await {
            let Some(inboxes) = inboxes.upgrade() else { return };
            let (inbox, dropped) = {
                let mut routes = lock(&inboxes);
                let inbox = routes.route(&bytes);
                (inbox, routes.stats().dropped())
            };
            match inbox {
                Some(inbox) => {
                    let _ = inbox.try_send(PunchDatagram { from, bytes });
                }
                None => tracing::trace!(%from, dropped, "side-channel datagram for no punch attempt dropped"),
            }
        }
    });
}
