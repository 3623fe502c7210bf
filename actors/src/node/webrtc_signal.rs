//! WebRTC signaling: [`NodeSignaler`] (the transport's way out: a session path to the
//! peer, else the relay) and [`WebRtcSignal`] (the way in: relay signals tagged
//! `WEBRTC_SIGNAL_TAG`, decoded by the relay client and routed by the supervisor; the
//! same payloads on a path's SIGNAL frame are decoded by the peer's actor).
//!
//! No actor lives here: the paths and the relay client send and receive, the supervisor
//! and the peer actors route, the transport (sans-IO session table inside) decides.

use std::{sync::Arc, time::Duration};

use actix::{Message, Recipient};
use dashmap::DashMap;
use kizuna::{
    relay::client::ClientCommandError,
    transport::{
        webrtc::{SignalMessage, Signaler},
        BoxFuture,
    },
    PeerId, TransportError,
};
use tokio::sync::watch;

use super::{hole_punch::SendSignal, link::PeerLink};

/// A WebRTC signaling message from `peer`, through the relay, decoded where it arrived
/// ([`kizuna::punch::Signal::decode`]); its signature is checked by the transport.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub(crate) struct WebRtcSignal {
    pub(crate) peer: PeerId,
    pub(crate) message: SignalMessage,
}

/// Every peer's link, by peer (kept by the supervisor, read by the signaler).
pub(crate) type Links = Arc<DashMap<PeerId, Arc<PeerLink>>>;

/// The relay client as a signaling path: where to send, and whether it is reserved.
#[derive(Clone)]
pub(crate) struct RelayRoute {
    pub(crate) send: Recipient<SendSignal>,
    pub(crate) reserved: watch::Receiver<bool>,
}

/// Sends WebRTC signaling on a session path to the peer (any Kizuna connection to it:
/// direct or relayed) or, with none, as a relay `signal` message.
pub(crate) struct NodeSignaler {
    pub(crate) links: Links,
    pub(crate) relay: Option<RelayRoute>,
}

/// How long a signal waits for a way to the peer: a path coming up, or the relay
/// reservation (re)appearing (a node just started, or failing over, has neither for a few
/// round trips). 10 s: the connect bound, which also applies around the whole set-up.
const ROUTE_WAIT: Duration = Duration::from_secs(10);

impl Signaler for NodeSignaler {
    fn signal(&self, to: PeerId, payload: Vec<u8>) -> BoxFuture<'_, kizuna::error::Result<()>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + ROUTE_WAIT;
            let mut paths = self.links.get(&to).map(|l| l.signal_routes());
            let mut reserved = self.relay.as_ref().map(|r| r.reserved.clone());
            loop {
                if paths.is_none() && reserved.is_none() {
                    return Err(no_route(to, "no connection to the peer and no relay to signal through"));
                }
                if let Some(link) = self.links.get(&to).map(|l| l.clone()) {
                    if link.signal(&payload) {
                        return Ok(());
                    }
                }
                if let (Some(r), Some(w)) = (&self.relay, &reserved) {
                    if *w.borrow() {
                        match r.send.send(SendSignal { to, payload: payload.clone() }).await {
                            Ok(Ok(())) => return Ok(()),
                            // Lost between the watch and the send: wait for it again.
                            Ok(Err(ClientCommandError::NotReserved)) => {}
                            Ok(Err(e)) => return Err(no_route(to, &format!("relay signaling: {e}"))),
                            Err(e) => return Err(TransportError::Closed(format!("relay client gone: {e}"))),
                        }
                    }
                }
                let changed = async {
                    tokio::select! {
                        () = changed(&mut paths) => {}
                        () = changed(&mut reserved) => {}
                    }
                };
                match tokio::time::timeout_at(deadline, changed).await {
                    Ok(()) => {}
                    Err(_) => {
                        return Err(no_route(
                            to,
                            &format!("no path to the peer and no relay reservation within {ROUTE_WAIT:?}"),
                        ))
                    }
                }
            }
        })
    }
}

/// Waits for a change, or for the sender to go (then `rx` becomes `None`); never returns
/// for `None`.
async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                *rx = None;
            }
        }
        None => std::future::pending().await,
    }
}

fn no_route(to: PeerId, why: &str) -> TransportError {
    TransportError::connect_failed(format!("webrtc={to}"), format!("WebRTC signaling: {why}"))
}
