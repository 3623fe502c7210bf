//! WebRTC signaling over the relay: [`RelaySignaler`] (the transport's way out, through
//! the relay client) and [`WebRtcSignal`] (the way in: relay signals tagged
//! `WEBRTC_SIGNAL_TAG`, decoded and routed by the relay client to the supervisor, which
//! feeds them to the WebRTC transport).
//!
//! No actor lives here: the relay client sends and receives, the supervisor routes, the
//! transport (sans-IO session table inside) decides.

use std::time::{Duration, Instant};

use actix::{Message, Recipient};
use kizuna::{
    relay::client::ClientCommandError,
    transport::{
        webrtc::{SignalMessage, Signaler},
        BoxFuture,
    },
    PeerId, TransportError,
};

use super::hole_punch::SendSignal;

/// A WebRTC signaling message from `peer`, through the relay, decoded where it arrived
/// ([`kizuna::punch::Signal::decode`]); its signature is checked by the transport.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct WebRtcSignal {
    pub(crate) peer: PeerId,
    pub(crate) message: SignalMessage,
}

/// Sends WebRTC signaling as relay `signal` messages through the relay client.
pub(crate) struct RelaySignaler(pub(crate) Recipient<SendSignal>);

/// How often a signal waits for the relay reservation to (re)appear, and for how long at
/// most. A node just started (or failing over) has no reservation for a few round trips;
/// the WebRTC set-up's own 10 s bound still applies around this.
const RESERVATION_POLL: Duration = Duration::from_millis(20);
const RESERVATION_WAIT: Duration = Duration::from_secs(10);

impl Signaler for RelaySignaler {
    fn signal(&self, to: PeerId, payload: Vec<u8>) -> BoxFuture<'_, kizuna::error::Result<()>> {
        Box::pin(async move {
            let start = Instant::now();
            loop {
                match self.0.send(SendSignal { to, payload: payload.clone() }).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(ClientCommandError::NotReserved)) if start.elapsed() < RESERVATION_WAIT => {
                        tokio::time::sleep(RESERVATION_POLL).await;
                    }
                    Ok(Err(e)) => {
                        return Err(TransportError::connect_failed(
                            format!("webrtc={to}"),
                            format!("relay signaling: {e}"),
                        ))
                    }
                    Err(e) => return Err(TransportError::Closed(format!("relay client gone: {e}"))),
                }
            }
        })
    }
}
