//! Builds a node's transports from its configuration.

use std::sync::Arc;

use kizuna::{
    relay::client::RelayEndpoint,
    transport::{
        quic::QuicTransport,
        relay::RelayTransport,
        tcp::TcpTransport,
        webrtc::{WebRtcConfig, WebRtcTransport},
        ws::WsTransport,
    },
    LocalNode, Protocol, Transport,
};

use crate::api::NodeError;

/// A node's transports, and its QUIC and WebRTC transports again if it has them.
pub(crate) struct Built {
    pub(crate) all: Vec<Arc<dyn Transport>>,
    /// Hole punching uses its socket.
    pub(crate) quic: Option<Arc<QuicTransport>>,
    /// Signaling is wired to it once the relay client runs.
    pub(crate) webrtc: Option<WebRtcTransport>,
}

/// The transports for `protocols`, sharing `node`, plus the relay transport when relays
/// are configured.
pub(crate) fn build_transports(
    node: &Arc<LocalNode>,
    protocols: &[Protocol],
    relays: &[RelayEndpoint],
    webrtc_config: &WebRtcConfig,
) -> Result<Built, NodeError> {
    let mut quic = None;
    let mut webrtc = None;
    let mut out: Vec<Arc<dyn Transport>> = protocols
        .iter()
        .map(|p| -> Result<Arc<dyn Transport>, NodeError> {
            match p {
                Protocol::Tcp => Ok(Arc::new(TcpTransport::new(node.clone()))),
                Protocol::Quic => {
                    let q = Arc::new(QuicTransport::new(node.clone()));
                    quic = Some(q.clone());
                    Ok(q)
                }
                Protocol::WebSocket => Ok(Arc::new(WsTransport::new(node.clone()))),
                Protocol::WebRtc => {
                    let t = WebRtcTransport::new(node.clone(), webrtc_config.clone())?;
                    webrtc = Some(t.clone());
                    Ok(Arc::new(t))
                }
                other => Err(NodeError::NoTransport(other.to_string())),
            }
        })
        .collect::<Result<_, _>>()?;
    if !relays.is_empty() {
        let tokens = relays.iter().filter_map(|r| Some((r.url.clone(), r.token.clone()?))).collect();
        out.push(Arc::new(RelayTransport::new(node.clone(), tokens)));
    }
    Ok(Built { all: out, quic, webrtc })
}
