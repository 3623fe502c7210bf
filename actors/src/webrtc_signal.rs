//! WebRTC signaling over the relay: [`RelaySignaler`] (the transport's way out, through
//! the relay client) and [`WebRtcSignal`] (the way in: relay signals tagged
//! [`WEBRTC_SIGNAL_TAG`], routed by the relay client to the supervisor, which feeds them
//! to the WebRTC transport).
//!
//! No actor lives here: the relay client sends and receives, the supervisor routes, the
//! transport (sans-IO session table inside) decides.

use actix::{Message, Recipient};
use bytes::Bytes;
use kizuna::{
    transport::{webrtc::Signaler, BoxFuture},
    PeerId, TransportError,
};

pub(crate) use kizuna::transport::webrtc::WEBRTC_SIGNAL_TAG;

use crate::hole_punch::SendSignal;

/// A WebRTC signaling payload from `peer` (tag byte included), through the relay.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct WebRtcSignal {
    pub(crate) peer: PeerId,
    pub(crate) payload: Bytes,
}

/// Sends WebRTC signaling as relay `signal` messages through the relay client.
pub(crate) struct RelaySignaler(pub(crate) Recipient<SendSignal>);

impl Signaler for RelaySignaler {
    fn signal(&self, to: PeerId, payload: Vec<u8>) -> BoxFuture<'_, kizuna::error::Result<()>> {
        Box::pin(async move {
            match self.0.send(SendSignal { to, payload }).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(TransportError::connect_failed(format!("webrtc={to}"), format!("relay signaling: {e}"))),
                Err(e) => Err(TransportError::Closed(format!("relay client gone: {e}"))),
            }
        })
    }
}
