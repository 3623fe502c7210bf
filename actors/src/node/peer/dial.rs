//! Dialing a peer: the negotiator it starts, and who waits for its result.

use super::*;

impl PeerActor {
    /// With traffic restricted to some transports (`SupervisorConfig::carry`): a live path
    /// that may not carry calls for a dial of one that may, signaled over it.
    pub(super) fn ensure_carrier(&mut self, ctx: &mut Context<Self>) {
        if self.ctx.carry.is_none() || self.dialing.is_some() || self.shutting_down || self.paths.is_empty() {
            return;
        }
        if self.paths.values().any(|p| p.desc.carries) {
            return;
        }
        let carrying = self
            .known
            .addrs
            .iter()
            .any(|a| !matches!(a, TransportAddr::Relay(_)) && self.ctx.carries(a.protocol()));
        if !carrying {
            let allowed = self.ctx.carry.iter().flatten().map(|p| p.name()).collect::<Vec<_>>().join(", ");
            let why = format!("no address for a transport allowed to carry traffic ({allowed})");
            self.fail_waiters(NodeError::ConnectFailed {
                peer: self.peer,
                attempts: vec![("-".into(), why)],
            });
            return;
        }
        self.dial(self.known.clone(), ctx);
    }

    /// With traffic restricted to some transports: the addresses worth dialing now. The
    /// carrying ones, unless all of them are WebRTC and nothing can signal yet (no session
    /// path, no relay): then the others, for a path to signal over ([`Self::ensure_carrier`]
    /// dials WebRTC once it is up). Dialing both at once would race them for nothing.
    fn dial_now(&self, target: PeerAddress) -> PeerAddress {
        if self.ctx.carry.is_none() {
            return target;
        }
        let (carrying, signaling): (Vec<_>, Vec<_>) = target
            .addrs
            .into_iter()
            .partition(|a| !matches!(a, TransportAddr::Relay(_)) && self.ctx.carries(a.protocol()));
        let only_webrtc = carrying.iter().all(|a| *a == TransportAddr::WebRtc);
        let can_signal = !self.ctx.relays.is_empty() || self.paths.values().any(|p| p.session);
        let addrs = if carrying.is_empty() || (only_webrtc && !can_signal) { signaling } else { carrying };
        PeerAddress::new(target.peer_id, addrs)
    }

    pub(super) fn dial(&mut self, target: PeerAddress, ctx: &mut Context<Self>) {
        if self.dialing.is_some() || self.shutting_down {
            return;
        }
        let target = self.dial_now(target);
        if target.addrs.is_empty() {
            self.manager.handle_dial_failed(Self::now());
            self.fail_waiters(NodeError::ConnectFailed { peer: self.peer, attempts: vec![] });
            self.maybe_stop(ctx);
            return;
        }
        let id = self.ctx.id();
        let me = ctx.address();
        let timeout = self.ctx.node.config().connect_timeout;
        let actor = NegotiatorActor::new(
            id,
            target,
            self.ctx.transports.clone(),
            self.ctx.dials.clone(),
            timeout,
            me.clone().recipient(),
            me.recipient(),
        )
        .start();
        self.children.insert(
            id,
            Child {
                name: format!("negotiator/{}", self.peer),
                kind: ChildKind::Negotiator,
                fault: actor.recipient(),
            },
        );
        self.dialing = Some(id);
    }

    pub(super) fn answer_waiters(&mut self) {
        if let Some(info) = self.active_info() {
            for w in self.waiters.drain(..) {
                let _ = w.send(Ok(info.clone()));
            }
        }
    }

    pub(super) fn fail_waiters(&mut self, e: NodeError) {
        match self.active_info() {
            Some(info) => {
                for w in self.waiters.drain(..) {
                    let _ = w.send(Ok(info.clone()));
                }
            }
            None => {
                for w in self.waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Handler<Negotiated> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: Negotiated, ctx: &mut Context<Self>) {
        debug_assert_eq!(msg.peer, self.peer);
        self.dialing = None;
        match msg.result {
            Ok(conn) => {
                let info = conn.info();
                for w in self.path_waiters.drain(..) {
                    let _ = w.send(Ok(info.clone()));
                }
                self.add_path(conn, ctx)
            }
            Err(e) => {
                self.ctx.counters.connects_failed.fetch_add(1, Ordering::Relaxed);
                self.ctx.bus.publish_later(Event::ConnectFailed { peer: self.peer, error: e.to_string() });
                self.manager.handle_dial_failed(Self::now());
                for w in self.path_waiters.drain(..) {
                    let _ = w.send(Err(e.clone()));
                }
                self.fail_waiters(e);
                self.drain(ctx);
                self.maybe_stop(ctx);
            }
        }
    }
}

impl Handler<PeerDialPath> for PeerActor {
    type Result = ResponseActFuture<Self, Result<ConnectionInfo, NodeError>>;
    fn handle(&mut self, msg: PeerDialPath, ctx: &mut Context<Self>) -> Self::Result {
        self.learn(msg.0.addrs.clone());
        let (tx, rx) = oneshot::channel();
        if self.dialing.is_some() {
            let _ = tx.send(Err(NodeError::ActorGone("a dial to this peer is in progress".into())));
        } else {
            self.path_waiters.push(tx);
            self.dial(msg.0, ctx);
        }
        Box::pin(async move { rx.await.unwrap_or(Err(NodeError::ShuttingDown)) }.into_actor(self))
    }
}
