//! [`NodeConfig`] and [`LocalNode`]: what every transport of one node shares.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use crate::{
    address::{Protocol, TransportAddr},
    error::Result,
    identity::{Keypair, PeerId},
    secure::SecureConfig,
    transport::admission::{self, AdmissionLimits, HandshakeCounters, HandshakeStats},
    wire::{Hello, HelloPurpose},
};

/// The version of the session layer (`docs/protocol.md` §11) a node announces in its hello.
pub const SESSION_VERSION: u32 = 1;

/// QUIC congestion controller choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC (RFC 8312), quinn's default.
    #[default]
    Cubic,
    /// NewReno (RFC 6582).
    NewReno,
    /// BBR (experimental in quinn).
    Bbr,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Self::Cubic),
            "newreno" | "new-reno" => Ok(Self::NewReno),
            "bbr" => Ok(Self::Bbr),
            other => Err(format!("unknown congestion controller {other:?} (use cubic, newreno or bbr)")),
        }
    }
}

/// Tunables of one node. `NodeConfig::new(keypair)` gives the defaults below.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's identity.
    pub keypair: Keypair,
    /// Software name sent in the hello.
    pub agent: String,
    /// Bound on establishing one connection: socket connect, secure channel and hello.
    /// 10 s, the mission's bound for a connection to establish.
    pub connect_timeout: Duration,
    /// Bound on an inbound handshake (secure channel plus hello); protects listeners
    /// from clients that connect and stall. 10 s, as for connect.
    pub handshake_timeout: Duration,
    /// Interval of keep-alive pings on an otherwise idle connection. 15 s: well under
    /// common NAT UDP binding timeouts (30 s and up) while costing almost nothing.
    pub keep_alive_interval: Duration,
    /// A connection that hears nothing for this long is dead. 45 s = three missed
    /// keep-alives.
    pub idle_timeout: Duration,
    /// Listen backlog for TCP. 1024: the Linux default `somaxconn` since 5.4 is 4096,
    /// and 1024 absorbs bursts of hundreds of simultaneous dials.
    pub tcp_backlog: u32,
    /// QUIC congestion controller.
    pub congestion: Congestion,
    /// UDP socket send/receive buffer size for QUIC. 4 MiB: quinn bulk throughput needs
    /// more than the kernel default 208 KiB (measured, see docs/benchmarks.md).
    pub udp_buffer: usize,
    /// Per-stream receive window of the stream multiplexer (TCP, WebSocket, relayed).
    /// 1 MiB covers a 10 ms RTT at ~800 Mbit/s per stream.
    pub stream_window: u32,
    /// Queue of received messages not yet taken by the application, per connection. 256
    /// messages: enough to absorb bursts; when full, reading stops and the peer's sends
    /// wait (backpressure).
    pub message_queue: usize,
    /// Whether the hello announces the per-peer session layer (`docs/protocol.md` §11).
    /// On by default. Off, a peer's messages on this node's connections are sent as they
    /// are: not numbered, not kept for resending, so a path change may lose or reorder what
    /// is in flight (as with a browser page that does not speak the layer). For measuring
    /// the layer's cost, and for peers that must not depend on it.
    pub session_layer: bool,
    /// Maximum concurrent inbound handshakes per listener (see
    /// [`admission`](crate::transport::admission)). 256.
    pub max_pending_handshakes: usize,
    /// Maximum concurrent inbound handshakes per listener from one remote address (an IPv4
    /// address or an IPv6 /64). 16, see
    /// [`DEFAULT_MAX_PENDING_PER_ADDRESS`](crate::transport::admission::DEFAULT_MAX_PENDING_PER_ADDRESS).
    pub max_pending_handshakes_per_address: usize,
    /// How long an inbound connection may stay silent before its first byte. 3 s, see
    /// [`DEFAULT_FIRST_BYTE_TIMEOUT`](crate::transport::admission::DEFAULT_FIRST_BYTE_TIMEOUT).
    pub first_byte_timeout: Duration,
}

impl NodeConfig {
    /// Defaults for `keypair`.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            agent: format!("kizuna/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            tcp_backlog: 1024,
            congestion: Congestion::Cubic,
            udp_buffer: 4 * 1024 * 1024,
            stream_window: 1024 * 1024,
            message_queue: 256,
            session_layer: true,
            max_pending_handshakes: admission::DEFAULT_MAX_PENDING,
            max_pending_handshakes_per_address: admission::DEFAULT_MAX_PENDING_PER_ADDRESS,
            first_byte_timeout: admission::DEFAULT_FIRST_BYTE_TIMEOUT,
        }
    }

    /// The admission limits of this node's stream listeners.
    pub fn admission_limits(&self) -> AdmissionLimits {
        AdmissionLimits {
            max_pending: self.max_pending_handshakes,
            max_pending_per_address: self.max_pending_handshakes_per_address,
            first_byte_timeout: self.first_byte_timeout,
        }
    }
}

/// The state every transport of one node shares: config, TLS material, listen addresses.
#[derive(Debug)]
pub struct LocalNode {
    config: NodeConfig,
    secure: SecureConfig,
    listen_addrs: RwLock<Vec<TransportAddr>>,
    handshakes: Arc<HandshakeCounters>,
}

impl LocalNode {
    /// Builds the node's shared state (generates its TLS certificate).
    pub fn new(config: NodeConfig) -> Result<Arc<Self>> {
        config.admission_limits().validate().map_err(crate::error::TransportError::Config)?;
        let secure = SecureConfig::new(&config.keypair)?;
        Ok(Arc::new(Self {
            config,
            secure,
            listen_addrs: RwLock::new(Vec::new()),
            handshakes: Arc::default(),
        }))
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.config.keypair.peer_id()
    }

    /// What happened to inbound connections before they authenticated, on all of this
    /// node's TCP and WebSocket listeners (shared by them).
    pub fn handshake_counters(&self) -> &Arc<HandshakeCounters> {
        &self.handshakes
    }

    /// A snapshot of [`handshake_counters`](Self::handshake_counters).
    pub fn handshake_stats(&self) -> HandshakeStats {
        self.handshakes.snapshot()
    }

    /// The node's TLS material.
    pub fn secure(&self) -> &SecureConfig {
        &self.secure
    }

    /// Records a listen address (advertised in hellos and tickets).
    pub fn add_listen_addr(&self, addr: TransportAddr) {
        let mut v = self.listen_addrs.write().unwrap_or_else(|e| e.into_inner());
        if !v.contains(&addr) {
            v.push(addr);
        }
    }

    /// Forgets a listen address.
    pub fn remove_listen_addr(&self, addr: &TransportAddr) {
        self.listen_addrs.write().unwrap_or_else(|e| e.into_inner()).retain(|a| a != addr);
    }

    /// The addresses this node listens on.
    pub fn listen_addrs(&self) -> Vec<TransportAddr> {
        self.listen_addrs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The hello this node sends, telling the peer where it was `observed`.
    pub fn hello(&self, observed: Option<TransportAddr>) -> Hello {
        Hello {
            peer_id: self.peer_id(),
            agent: self.config.agent.clone(),
            purpose: HelloPurpose::Session,
            capabilities: Protocol::ALL.iter().map(|p| (*p, p.capabilities())).collect::<BTreeMap<_, _>>(),
            listen_addrs: self.listen_addrs(),
            observed_addr: observed,
            session: self.config.session_layer.then_some(SESSION_VERSION),
        }
    }
}
