//! A peer's hole punching: the attempt it starts (or answers) and the signals that travel
//! on its relayed path.

use super::*;

impl PeerActor {
    pub(super) fn start_punch(&mut self, role: Role, ctx: &mut Context<Self>) -> bool {
        let relayed = self.active_info().is_some_and(|i| i.path == PathKind::Relayed);
        if self.shutting_down || !relayed || self.punch.is_some() {
            return false;
        }
        let (quic, side) = match self.ctx.punch.side_channel() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %self.peer, "no hole punching: {e}");
                self.manager.handle_punch_finished(Self::now(), false);
                return false;
            }
        };
        let id = self.ctx.id();
        let me = ctx.address();
        let ports = PunchPorts {
            signal: me.clone().recipient(),
            finished: me.clone().recipient(),
            exited: me.clone().recipient(),
            inbound: me.recipient(),
            datagrams: self.ctx.punch.inboxes(),
        };
        let actor = HolePunchActor::new(id, self.peer, role, self.ctx.punch.env(), quic, side, ports).start();
        self.punch = Some((id, actor.clone()));
        self.children.insert(
            id,
            Child {
                name: format!("hole-punch/{}", self.peer),
                kind: ChildKind::Punch,
                fault: actor.recipient(),
            },
        );
        tracing::debug!(peer = %self.peer, ?role, "hole punch started");
        true
    }

    pub(super) fn punch_ended(&mut self, succeeded: bool, reason: Option<String>, ctx: &mut Context<Self>) {
        if let Some(reason) = reason {
            tracing::info!(peer = %self.peer, %reason, "hole punch failed; the traffic stays relayed");
            self.ctx.bus.publish_later(Event::HolePunchFailed { peer: self.peer, reason });
        }
        self.manager.handle_punch_finished(Self::now(), succeeded);
        self.drain(ctx);
    }

    /// A punch message from the peer (decoded once, where it arrived): to the attempt, or
    /// an offer that starts the responder's.
    pub(super) fn on_punch_signal(
        &mut self,
        message: Result<kizuna::punch::PunchMessage, kizuna::punch::PunchDecodeError>,
        ctx: &mut Context<Self>,
    ) {
        if self.punch.is_none() {
            let offer = matches!(message, Ok(kizuna::punch::PunchMessage::Offer { .. }));
            if !offer || !self.start_punch(Role::Responder, ctx) {
                return;
            }
        }
        if let Some((_, actor)) = &self.punch {
            if actor.try_send(PunchSignal { peer: self.peer, message }).is_err() {
                tracing::debug!(peer = %self.peer, "punch signal dropped: session busy or ended");
            }
        }
    }
}

impl Handler<PunchSignal> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: PunchSignal, ctx: &mut Context<Self>) {
        self.on_punch_signal(msg.message, ctx);
    }
}

impl Handler<SendSignal> for PeerActor {
    type Result = Result<(), kizuna::relay::client::ClientCommandError>;
    fn handle(&mut self, msg: SendSignal, _: &mut Context<Self>) -> Self::Result {
        // Punch messages travel on the carrying (relayed) path itself; the payload starts
        // with its tag, as for a relay signal.
        let path = self.manager.active().and_then(|a| self.paths.get(&a)).filter(|p| p.session);
        let payload = Bytes::from(msg.payload);
        let (tag, payload) = match payload.first() {
            Some(&t) => (t, payload.slice(1..)),
            None => (kizuna::punch::signal::PUNCH_SIGNAL_TAG, payload),
        };
        match path {
            Some(p) => {
                let frame = SessionFrame::Signal { tag, payload };
                if !p.control.send(frame) {
                    tracing::debug!(peer = %self.peer, "punch signal dropped: the path is not draining");
                }
                Ok(())
            }
            None => Err(kizuna::relay::client::ClientCommandError::NotReserved),
        }
    }
}

impl Handler<PunchFinished> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: PunchFinished, ctx: &mut Context<Self>) {
        debug_assert_eq!(msg.peer, self.peer);
        // The result may arrive after the actor's exit was reported: it counts either way.
        if self.punch.as_ref().is_some_and(|(id, _)| *id == msg.id) {
            self.punch = None;
        }
        match msg.result {
            Ok(Some(conn)) => {
                // The direct path first, so that the manager sees it before the result.
                self.add_path(conn, ctx);
                self.punch_ended(true, None, ctx);
            }
            Ok(None) => self.punch_ended(true, None, ctx),
            Err(reason) if !self.shutting_down => self.punch_ended(false, Some(reason), ctx),
            Err(_) => self.punch_ended(false, None, ctx),
        }
    }
}

impl Handler<NetworkChanged> for PeerActor {
    type Result = ();
    fn handle(&mut self, _: NetworkChanged, ctx: &mut Context<Self>) {
        self.manager.handle_network_change(Self::now());
        self.drain(ctx);
    }
}
