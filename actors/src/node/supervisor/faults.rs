//! The supervision tree's test surface: list its actors, inject faults into them.

use super::*;

/// Inject a fault into the named child (see [`crate::testing`]). Replies `false` if no
/// child has that name.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct InjectFault {
    /// The child's name, as listed by [`GetChildren`].
    pub child: String,
    /// What to do to it.
    pub fault: Fault,
}

/// List the node's live actors by name (e.g. `listener/tcp=127.0.0.1:4000`,
/// `peer/<id>`, `connection/<peer id>`).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<String>")]
pub struct GetChildren;

impl Handler<InjectFault> for Supervisor {
    type Result = ResponseFuture<bool>;
    fn handle(&mut self, msg: InjectFault, _: &mut Context<Self>) -> Self::Result {
        if let Some(c) = self.children.values().find(|c| c.name == msg.child) {
            c.fault.do_send(msg.fault);
            return Box::pin(async { true });
        }
        // A peer's child (`connection/<peer>`, `negotiator/<peer>`, `hole-punch/<peer>`).
        let peer = msg.child.split_once('/').and_then(|(_, id)| id.parse::<PeerId>().ok());
        match peer.and_then(|p| self.peers.get(&p)) {
            Some(h) => {
                let actor = h.actor.clone();
                Box::pin(async move {
                    actor.send(InjectPeerFault { child: msg.child, fault: msg.fault }).await.unwrap_or(false)
                })
            }
            None => Box::pin(async { false }),
        }
    }
}

impl Handler<GetChildren> for Supervisor {
    type Result = ResponseFuture<Vec<String>>;
    fn handle(&mut self, _: GetChildren, _: &mut Context<Self>) -> Self::Result {
        let mut names: Vec<String> = self.children.values().map(|c| c.name.clone()).collect();
        let asks: Vec<_> = self.peers.values().map(|h| h.actor.send(GetPeerChildren)).collect();
        Box::pin(async move {
            for a in asks {
                names.extend(a.await.unwrap_or_default());
            }
            names
        })
    }
}
