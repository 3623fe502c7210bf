//! Starting a client node and connecting it to a target, shared by `ping`, `perf`, `send`
//! and `demo`.

use std::time::{Duration, Instant};

use actix::Addr;
use kizuna::{ConnectionInfo, Keypair, PeerAddress, Protocol};
use kizuna_actors::{
    api::Connect, EventStream, NodeError, Shutdown, Subscribe, Supervisor, SupervisorConfig,
};

use crate::{args::NetConfig, CliError};

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

/// Starts a node with `protocols` only (`webrtc` configures WebRTC if among them).
pub(crate) fn start_node(
    key: Keypair,
    protocols: Vec<Protocol>,
    net: NetConfig,
) -> Result<Addr<Supervisor>, CliError> {
    let mut config = SupervisorConfig::new(key);
    config.protocols = protocols;
    config.relays = net.relays;
    config.stun = net.stun;
    config.webrtc = net.webrtc;
    config.node.max_pending_handshakes = net.handshakes.max_pending;
    config.node.max_pending_handshakes_per_address = net.handshakes.max_pending_per_address;
    config.node.first_byte_timeout = net.handshakes.first_byte_timeout;
    Supervisor::start(config).map_err(|e| CliError::Failed(format!("cannot start the node: {e}")))
}

/// Starts a node and connects it to `target`, timing the connect.
pub(crate) async fn connect(
    key: Keypair,
    target: PeerAddress,
    protocols: Vec<Protocol>,
    net: NetConfig,
) -> Result<Session, CliError> {
    let only_webrtc = protocols == [Protocol::WebRtc];
    let node = start_node(key, protocols, net)?;
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
    if only_webrtc && info.protocol != Protocol::WebRtc {
        // The configured relays are every connect's last resort; `--transport webrtc`
        // asked for WebRTC only.
        let _ = node.send(Shutdown).await;
        return Err(CliError::Failed(format!(
            "WebRTC to {peer} did not connect (fell back to {} {})",
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
