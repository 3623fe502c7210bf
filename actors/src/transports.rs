//! Builds a node's transports from its configuration.

use std::sync::Arc;

use kizuna::{
    transport::{quic::QuicTransport, tcp::TcpTransport, ws::WsTransport},
    LocalNode, Protocol, Transport,
};

use crate::api::NodeError;

/// The transports for `protocols`, sharing `node`.
pub(crate) fn build_transports(
    node: &Arc<LocalNode>,
    protocols: &[Protocol],
) -> Result<Vec<Arc<dyn Transport>>, NodeError> {
    protocols
        .iter()
        .map(|p| -> Result<Arc<dyn Transport>, NodeError> {
            match p {
                Protocol::Tcp => Ok(Arc::new(TcpTransport::new(node.clone()))),
                Protocol::Quic => Ok(Arc::new(QuicTransport::new(node.clone()))),
                Protocol::WebSocket => Ok(Arc::new(WsTransport::new(node.clone()))),
                other => Err(NodeError::NoTransport(other.to_string())),
            }
        })
        .collect()
}
