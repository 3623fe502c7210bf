//! Builds a node's transports from its configuration.

use std::sync::Arc;

use kizuna::{
    relay::client::RelayEndpoint,
    transport::{quic::QuicTransport, relay::RelayTransport, tcp::TcpTransport, ws::WsTransport},
    LocalNode, Protocol, Transport,
};

use crate::api::NodeError;

/// A node's transports, and its QUIC transport again if it has one.
pub(crate) type Built = (Vec<Arc<dyn Transport>>, Option<Arc<QuicTransport>>);

/// The transports for `protocols`, sharing `node`, plus the relay transport when relays
/// are configured; and the QUIC transport among them, if any (hole punching uses its
/// socket).
pub(crate) fn build_transports(
    node: &Arc<LocalNode>,
    protocols: &[Protocol],
    relays: &[RelayEndpoint],
) -> Result<Built, NodeError> {
    let mut quic = None;
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
                other => Err(NodeError::NoTransport(other.to_string())),
            }
        })
        .collect::<Result<_, _>>()?;
    if !relays.is_empty() {
        let tokens = relays.iter().filter_map(|r| Some((r.url.clone(), r.token.clone()?))).collect();
        out.push(Arc::new(RelayTransport::new(node.clone(), tokens)));
    }
    Ok((out, quic))
}
