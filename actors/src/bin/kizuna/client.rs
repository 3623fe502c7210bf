//! Starting a client node and connecting it to a target, shared by `ping`, `perf`, `send`
//! and `demo`.

use std::time::{Duration, Instant};

use actix::Addr;
use kizuna::{ConnectionInfo, Keypair, Protocol};
use kizuna_actors::{
    api::Connect, EventStream, NodeError, Shutdown, Subscribe, Supervisor, SupervisorConfig,
};

use crate::{
    args::{DialPlan, NetConfig},
    CliError,
};

/// A started client node connected to one peer.
pub(crate) struct Session {
    /// The node.
    pub(crate) node: Addr<Supervisor>,
    /// Its events (subscribed before connecting).
    pub(crate) events: EventStream,
    /// The connection.
    pub(crate) info: ConnectionInfo,
    /// Time `Connect` took (dial, handshake, hello).
    pub(crate) connect_time: Duration,
}

/// Starts a node with `protocols` only (`webrtc` configures WebRTC if among them), whose
/// traffic only `carry` may carry (`None`: any of them).
pub(crate) fn start_node(
    key: Keypair,
    protocols: Vec<Protocol>,
    carry: Option<Vec<Protocol>>,
    net: NetConfig,
) -> Result<Addr<Supervisor>, CliError> {
    let mut config = SupervisorConfig::new(key);
    config.protocols = protocols;
    config.carry = carry;
    config.relays = net.relays;
    config.stun = net.stun;
    config.webrtc = net.webrtc;
    config.node.max_pending_handshakes = net.handshakes.max_pending;
    config.node.max_pending_handshakes_per_address = net.handshakes.max_pending_per_address;
    config.node.first_byte_timeout = net.handshakes.first_byte_timeout;
    Supervisor::start(config).map_err(|e| CliError::Failed(format!("cannot start the node: {e}")))
}

/// Starts a node and connects it as `plan` says, timing the connect.
pub(crate) async fn connect(key: Keypair, plan: DialPlan, net: NetConfig) -> Result<Session, CliError> {
    let DialPlan { target, protocols, carry } = plan;
    let allowed = carry.clone();
    let node = start_node(key, protocols, carry, net)?;
    let events = node.send(Subscribe::default()).await?;
    let peer = target.peer_id;
    let t = Instant::now();
    let info = match node.send(Connect { addr: target }).await? {
        Ok(info) => info,
        Err(e) => {
            let _ = node.send(Shutdown).await;
            return Err(CliError::Failed(match e {
                NodeError::ConnectFailed { .. } => e.to_string(),
                other => format!("could not connect to {peer}: {other}"),
            }));
        }
    };
    if allowed.is_some_and(|c| !c.contains(&info.protocol)) {
        // The node never carries traffic on another transport; this is a safety net.
        let _ = node.send(Shutdown).await;
        return Err(CliError::Failed(format!(
            "connected to {peer} over {} {}, which was not asked for",
            info.protocol, info.path
        )));
    }
    Ok(Session { node, events, info, connect_time: t.elapsed() })
}

impl Session {
    /// Closes the connection and stops the node gracefully.
    pub(crate) async fn close(self) {
        let _ = self.node.send(Shutdown).await;
    }
}
