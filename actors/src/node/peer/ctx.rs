//! What every peer actor of a node shares, and the node's counters.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use kizuna::{
    peer::{PathConfig, WindowLimits},
    relay::client::RelayEndpoint,
    transport::webrtc::WebRtcTransport,
    LocalNode, Protocol, Transport,
};

use crate::{
    api::Event,
    node::{
        child::ChildId,
        events::EventBus,
        negotiator::SharedDialHistory,
        punching::PunchCtx,
        supervision::{Decision, ExitReason, RestartLimits},
    },
};

/// What every peer actor of a node shares.
pub(crate) struct PeerCtx {
    pub(crate) node: Arc<LocalNode>,
    pub(crate) transports: Vec<Arc<dyn Transport>>,
    pub(crate) relays: Vec<RelayEndpoint>,
    pub(crate) bus: EventBus,
    pub(crate) limits: RestartLimits,
    pub(crate) counters: Arc<NodeCounters>,
    pub(crate) punch: PunchCtx,
    pub(crate) paths: PathConfig,
    pub(crate) window: WindowLimits,
    /// Transports whose paths may carry traffic (`None`: all); the others only signal.
    pub(crate) carry: Option<Vec<Protocol>>,
    /// The WebRTC transport, where WebRTC signals that arrive on a path go.
    pub(crate) webrtc: Option<WebRtcTransport>,
    /// What dials to each peer measured: how dial orders are ranked.
    pub(crate) dials: SharedDialHistory,
    pub(crate) next_id: AtomicU64,
}

impl PeerCtx {
    /// A node-wide unique child id.
    pub(crate) fn id(&self) -> ChildId {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether paths over `protocol` may carry traffic.
    pub(crate) fn carries(&self, protocol: Protocol) -> bool {
        self.carry.as_ref().is_none_or(|c| c.contains(&protocol))
    }

    /// Counts, logs and publishes a restart decision about child `name`, which exited
    /// for `reason`.
    pub(crate) fn report_restart(&self, name: &str, reason: &ExitReason, decision: &Decision) {
        match decision {
            Decision::Restart { after, attempt } => {
                self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(child = name, %reason, attempt, ?after, "restarting");
                let (attempt, after) = (*attempt, *after);
                self.bus.publish_later(Event::ActorRestarted { child: name.to_string(), attempt, after });
            }
            Decision::GiveUp => {
                self.counters.given_up.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(child = name, %reason, "restart intensity exceeded: giving up");
                let last_error = reason.to_string();
                self.bus.publish_later(Event::ChildGivenUp { child: name.to_string(), last_error });
            }
            Decision::Stop => {}
        }
    }
}

/// Counters of the whole node, kept by its actors.
#[derive(Debug, Default)]
pub(crate) struct NodeCounters {
    pub(crate) restarts: AtomicU64,
    pub(crate) given_up: AtomicU64,
    pub(crate) connections_established: AtomicU64,
    pub(crate) connects_failed: AtomicU64,
    pub(crate) path_changes: AtomicU64,
}
