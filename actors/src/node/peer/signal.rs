//! Signals that arrive on a peer's session paths (SIGNAL frames), decoded once here and
//! routed by kind: punch messages to the punch attempt, WebRTC signaling to the transport.

use super::*;

impl Handler<PathSignal> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: PathSignal, ctx: &mut Context<Self>) {
        use kizuna::punch::signal::{Signal, SignalError};
        match Signal::decode_tagged(msg.tag, &msg.payload) {
            Ok(Signal::Punch(m)) => self.on_punch_signal(Ok(m), ctx),
            Err(SignalError::Punch(e)) => self.on_punch_signal(Err(e), ctx),
            Ok(Signal::WebRtc(m)) => match &self.ctx.webrtc {
                // Refused signals are dropped (a refused offer is answered with a `close`).
                Some(w) => {
                    if let Err(e) = w.handle_signal_message(self.peer, m) {
                        tracing::debug!(peer = %self.peer, path = %msg.path, error = %e, "WebRTC signal refused");
                    }
                }
                None => tracing::debug!(peer = %self.peer, "WebRTC signal ignored: WebRTC is not enabled"),
            },
            other => {
                tracing::debug!(peer = %self.peer, path = %msg.path, tag = msg.tag, "signal dropped: {other:?}")
            }
        }
    }
}
