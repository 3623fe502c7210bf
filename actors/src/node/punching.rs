//! What every peer's hole punching shares on one node: the QUIC transport whose socket is
//! punched, the reader of that socket's side channel and the punch actors' inboxes, and
//! the sources of local candidates (STUN servers, what the relay reports, interfaces).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
};

use kizuna::{
    transport::quic::{demux::SideChannel, QuicTransport},
    LocalNode,
};

use super::{
    hole_punch::PunchEnv,
    relay_client::RelayAddrs,
    side_reader::{spawn_side_reader, PunchInboxes},
};

/// The node's hole-punching context (see the module docs). Shared by the supervisor, which
/// updates the candidate sources, and every peer actor, which starts attempts.
pub(crate) struct PunchCtx {
    /// The QUIC transport, if the node has one (no QUIC, no punching).
    pub(crate) quic: Option<Arc<QuicTransport>>,
    inboxes: PunchInboxes,
    reader: Mutex<Option<Arc<SideChannel>>>,
    sources: RwLock<Sources>,
    /// The node, when it runs TCP: then TCP simultaneous open is tried too.
    tcp: Option<Arc<LocalNode>>,
}

struct Sources {
    stun: Vec<SocketAddr>,
    relay: RelayAddrs,
    interfaces: Vec<IpAddr>,
}

impl PunchCtx {
    pub(crate) fn new(
        quic: Option<Arc<QuicTransport>>,
        stun: Vec<SocketAddr>,
        interfaces: Vec<IpAddr>,
        tcp: Option<Arc<LocalNode>>,
    ) -> Self {
        Self {
            quic,
            inboxes: PunchInboxes::default(),
            reader: Mutex::new(None),
            sources: RwLock::new(Sources {
                stun,
                relay: RelayAddrs { observed: None, stun: Vec::new() },
                interfaces,
            }),
            tcp,
        }
    }

    fn sources(&self) -> std::sync::RwLockReadGuard<'_, Sources> {
        self.sources.read().unwrap_or_else(|e| e.into_inner())
    }

    /// What a punch attempt starting now may use for its local candidates.
    pub(crate) fn env(&self) -> PunchEnv {
        let s = self.sources();
        let mut stun = s.stun.clone();
        for a in &s.relay.stun {
            if !stun.contains(a) {
                stun.push(*a);
            }
        }
        PunchEnv {
            stun,
            interfaces: s.interfaces.clone(),
            relay_observed: s.relay.observed.map(|a| a.ip()),
            tcp: self.tcp.clone(),
        }
    }

    /// The relay reported `addrs`; returns whether the public IP changed (a network change).
    pub(crate) fn set_relay_addrs(&self, addrs: RelayAddrs) -> bool {
        let mut s = self.sources.write().unwrap_or_else(|e| e.into_inner());
        let moved =
            s.relay.observed.is_some_and(|old| addrs.observed.is_some_and(|new| new.ip() != old.ip()));
        s.relay = addrs;
        moved
    }

    /// The interfaces now have `ips`; returns whether they changed.
    pub(crate) fn set_interfaces(&self, ips: Vec<IpAddr>) -> bool {
        let mut s = self.sources.write().unwrap_or_else(|e| e.into_inner());
        if s.interfaces == ips {
            return false;
        }
        tracing::info!(before = ?s.interfaces, after = ?ips, "network changed");
        s.interfaces = ips;
        true
    }

    /// The side channel of the QUIC socket (binding one if the node has none yet), with its
    /// reader running.
    pub(crate) fn side_channel(&self) -> Result<(Arc<QuicTransport>, Arc<SideChannel>), String> {
        let quic = self.quic.clone().ok_or("no QUIC transport")?;
        let side = quic.side_channel_or_bind().map_err(|e| format!("cannot open a QUIC socket: {e}"))?;
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if !reader.as_ref().is_some_and(|r| Arc::ptr_eq(r, &side)) {
            spawn_side_reader(side.clone(), Arc::downgrade(&self.inboxes));
            *reader = Some(side.clone());
        }
        Ok((quic, side))
    }

    /// The side reader's routing table, where each punch actor registers its keys.
    pub(crate) fn inboxes(&self) -> PunchInboxes {
        self.inboxes.clone()
    }
}
