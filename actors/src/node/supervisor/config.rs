//! [`SupervisorConfig`]: what a node is started with.

use super::*;

/// Configuration of a node's supervisor.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The core node configuration (identity, timeouts, windows).
    pub node: NodeConfig,
    /// Transports to enable. Default: QUIC and TCP.
    pub protocols: Vec<Protocol>,
    /// Restart intensity and backoff.
    pub restart: RestartLimits,
    /// Relays to hold a reservation at (failover order) and to dial through. Empty: none.
    pub relays: Vec<RelayEndpoint>,
    /// STUN servers for hole punching: the node learns its UDP socket's public mapping
    /// from them before each attempt. Those the relay advertises are used too.
    pub stun: Vec<SocketAddr>,
    /// WebRTC (used when `protocols` has [`Protocol::WebRtc`]): ICE servers, relay-only
    /// policy, bind addresses. Signaling goes through the relays, so WebRTC needs one.
    pub webrtc: WebRtcConfig,
    /// Path health and switching (probe interval, dead bounds, switch margin; see
    /// `kizuna::peer::manager`).
    pub paths: PathConfig,
    /// Each peer's window of unacknowledged messages (`kizuna::peer::session`).
    pub window: WindowLimits,
    /// Transports whose paths may carry a peer's traffic (`None`: every one). Paths over
    /// the others are kept for signaling only: e.g. `Some(vec![Protocol::WebRtc])` has a
    /// node use WebRTC and nothing else for data, with any other connection (or the relay)
    /// only setting it up.
    pub carry: Option<Vec<Protocol>>,
}

impl SupervisorConfig {
    /// Defaults for a node with identity `keypair`.
    pub fn new(keypair: kizuna::Keypair) -> Self {
        Self {
            node: NodeConfig::new(keypair),
            protocols: vec![Protocol::Quic, Protocol::Tcp],
            restart: RestartLimits::default(),
            relays: Vec::new(),
            stun: Vec::new(),
            webrtc: WebRtcConfig::default(),
            paths: PathConfig::default(),
            window: WindowLimits::default(),
            carry: None,
        }
    }
}
