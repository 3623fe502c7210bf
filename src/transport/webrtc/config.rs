//! [`WebRtcConfig`]: ICE servers (STUN, TURN with credentials), the relay-only policy,
//! local bind addresses, and the webrtc-rs settings Kizuna tunes (see docs/webrtc.md).

use std::{net::SocketAddr, time::Duration};

use webrtc::peer_connection::{
    RTCConfiguration, RTCConfigurationBuilder, RTCIceServer, RTCIceTransportPolicy, SettingEngine,
    SettingEngineBuilder,
};

use crate::error::TransportError;

/// Interval between ICE connectivity checks of a candidate pair. webrtc-rs defaults to
/// 200 ms, and the DTLS handshake only starts once a check after the nominating one has
/// succeeded, so the default interval alone adds up to 200 ms to every connection set-up.
/// 10 ms: a handful of checks per pair during the first 100 ms costs nothing on any link,
/// and RFC 8445 §14.2's pacing (Ta ≥ 5 ms) is respected.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(10);
/// Binding requests per pair before it fails. With 10 ms checks, 140 requests keep the
/// webrtc-rs default's budget (7 × 200 ms = 1.4 s) for a pair to answer.
const ICE_MAX_BINDING_REQUESTS: u16 = 140;
/// Largest data channel message, advertised as SDP `max-message-size`: 256 KiB, the most
/// webrtc-rs supports and what Chromium advertises. Kizuna messages over WebRTC are
/// bounded by this (the connection's capabilities say so), not by `MAX_MESSAGE_LEN`.
pub const MAX_DATA_CHANNEL_MESSAGE: usize = 256 * 1024;
/// SCTP receive window (`a_rwnd`). It must hold whole messages of
/// [`MAX_DATA_CHANNEL_MESSAGE`] for reassembly, and it is the bandwidth-delay product
/// ceiling: 4 MiB covers 1 Gbit/s at 30 ms RTT.
const SCTP_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// One STUN or TURN server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:HOST:PORT`, `turn:HOST:PORT[?transport=udp|tcp]` or `turns:...`.
    pub url: String,
    /// TURN user name (required for TURN).
    pub username: Option<String>,
    /// TURN password (required for TURN).
    pub credential: Option<String>,
}

impl IceServer {
    /// A STUN server at `HOST:PORT` (a `stun:` prefix is accepted too).
    pub fn stun(addr: &str) -> Self {
        let url = if addr.starts_with("stun:") { addr.to_string() } else { format!("stun:{addr}") };
        Self { url, username: None, credential: None }
    }

    /// A TURN server with long-term credentials.
    pub fn turn(url: &str, username: &str, credential: &str) -> Self {
        Self { url: url.to_string(), username: Some(username.into()), credential: Some(credential.into()) }
    }

    fn is_turn(&self) -> bool {
        self.url.starts_with("turn:") || self.url.starts_with("turns:")
    }
}

/// How WebRTC connections are set up.
#[derive(Clone, Debug)]
pub struct WebRtcConfig {
    /// STUN and TURN servers, in preference order.
    pub ice_servers: Vec<IceServer>,
    /// Use only relay (TURN) candidates: no host or server-reflexive candidates are used,
    /// so the peer never learns this node's addresses. Needs a TURN server.
    pub relay_only: bool,
    /// Local UDP addresses to gather host candidates on. `0.0.0.0:0` means every
    /// non-loopback interface (webrtc-rs expands it); give `127.0.0.1:0` for loopback.
    pub bind: Vec<SocketAddr>,
    /// Per data channel bound on bytes handed to SCTP but not yet acknowledged; senders
    /// wait beyond it. 4 MiB: the SCTP window, so a sender never waits while the window
    /// is open, and never more than that per channel is buffered for a slow receiver.
    pub send_buffer: usize,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            relay_only: false,
            bind: vec![SocketAddr::from(([0, 0, 0, 0], 0))],
            send_buffer: 4 * 1024 * 1024,
        }
    }
}

impl WebRtcConfig {
    /// A configuration gathering host candidates on loopback only (tests, demos).
    pub fn loopback() -> Self {
        Self { bind: vec![SocketAddr::from(([127, 0, 0, 1], 0))], ..Self::default() }
    }

    /// Checks the configuration; the error says what to fix.
    pub fn validate(&self) -> Result<(), TransportError> {
        for s in &self.ice_servers {
            let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"].iter().any(|p| s.url.starts_with(p));
            if !scheme_ok || s.url.contains(char::is_whitespace) {
                return Err(TransportError::Config(format!(
                    "ICE server {:?}: expected stun:HOST:PORT or turn:HOST:PORT",
                    s.url
                )));
            }
            if s.is_turn() && (s.username.is_none() || s.credential.is_none()) {
                return Err(TransportError::Config(format!(
                    "TURN server {} needs credentials: give --turn-user and --turn-pass",
                    s.url
                )));
            }
        }
        if self.relay_only && !self.ice_servers.iter().any(IceServer::is_turn) {
            return Err(TransportError::Config(
                "--ice-relay-only needs a TURN server: add --turn turn:HOST:PORT --turn-user U --turn-pass P"
                    .into(),
            ));
        }
        if self.bind.is_empty() {
            return Err(TransportError::Config("WebRTC needs at least one local bind address".into()));
        }
        Ok(())
    }

    /// The W3C-style configuration of a peer connection.
    pub(crate) fn rtc_configuration(&self) -> RTCConfiguration {
        let servers = self
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: vec![s.url.clone()],
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let policy = if self.relay_only { RTCIceTransportPolicy::Relay } else { RTCIceTransportPolicy::All };
        RTCConfigurationBuilder::new().with_ice_servers(servers).with_ice_transport_policy(policy).build()
    }

    /// The webrtc-rs settings: fast ICE checks, loopback candidates when bound to
    /// loopback, Kizuna's message size and SCTP window.
    pub(crate) fn setting_engine(&self) -> SettingEngine {
        use rtc::{
            ice::mdns::MulticastDnsMode,
            peer_connection::{configuration::setting_engine::SctpMaxMessageSize, transport::RTCDtlsRole},
        };
        let loopback = self.bind.iter().all(|a| a.ip().is_loopback());
        // Bound to loopback only, nothing may leave the host: no mDNS socket or queries
        // (a browser's `.local` candidates are not needed there: its checks arrive from
        // loopback and become peer-reflexive candidates).
        let mdns = if loopback { MulticastDnsMode::Disabled } else { MulticastDnsMode::QueryOnly };
        SettingEngineBuilder::new()
            .with_multicast_dns_mode(mdns)
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            // Nominate a working direct pair at once. Peer-reflexive pairs matter here:
            // with trickle ICE the peer's checks often arrive before its candidate does,
            // so the first working pair is peer-reflexive, and webrtc-rs waits 1 s by
            // default before nominating one (the rest of gotcha 5).
            .with_host_acceptance_min_wait(Some(Duration::ZERO))
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            // The answerer is the DTLS server, so the offerer is the DTLS and SCTP client
            // and sends the SCTP INIT: see `PeerSetup::exchange` for why that matters.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_include_loopback_candidate(loopback)
            .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(MAX_DATA_CHANNEL_MESSAGE as u32))
            .with_sctp_max_receive_buffer_size(SCTP_RECEIVE_WINDOW)
            .build()
    }
}
