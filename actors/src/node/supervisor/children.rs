//! What the supervisor's children report: listeners bound, inbound connections, exits
//! (restarts), and what the relay client routes (its addresses, signals).

use super::*;

impl Handler<ListenerReady> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ListenerReady, _: &mut Context<Self>) {
        if let Some(Child { kind: ChildKind::Listener { addr, .. }, name, .. }) =
            self.children.get_mut(&msg.id)
        {
            // Restarts re-bind the port actually bound, so tickets stay valid.
            *addr = msg.addr.clone();
            *name = format!("listener/{}", msg.addr);
        }
        self.node().add_listen_addr(msg.addr.clone());
        self.listeners.insert(msg.id, msg.addr.clone());
        self.bus.publish_later(Event::ListenerStarted { addr: msg.addr.clone() });
        if let Some(w) = self.listen_waiters.remove(&msg.id) {
            let _ = w.send(Ok(msg.addr));
        }
    }
}

impl Handler<Inbound> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        match msg.0 {
            Incoming::Connection(conn) => {
                tracing::debug!(peer = %conn.peer(), protocol = %conn.protocol(), "inbound connection");
                if self.shutting_down {
                    kizuna_close(conn);
                    return;
                }
                self.peer_actor(conn.peer(), ctx).do_send(AddPath(conn));
            }
            Incoming::Rejected { remote, error } => {
                tracing::debug!(%remote, %error, "inbound handshake rejected");
                if let kizuna::TransportError::LimitExceeded { limit, .. } = &error {
                    self.bus.publish_later(Event::LimitHit {
                        limit: limit.to_string(),
                        detail: error.to_string(),
                    });
                }
            }
        }
    }
}

fn kizuna_close(conn: kizuna::Connection) {
    crate::runtime::io_runtime()
        .spawn(async move { conn.close(kizuna::wire::CloseCode::Shutdown, "node shutting down").await });
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let Some(child) = self.children.remove(&msg.id) else { return };
        let reason = msg.reason;
        tracing::debug!(child = %child.name, %reason, "child exited");
        match child.kind {
            ChildKind::Listener { transport, addr, .. } => {
                if let Some(bound) = self.listeners.remove(&msg.id) {
                    self.node().remove_listen_addr(&bound);
                }
                if let Some(w) = self.listen_waiters.remove(&msg.id) {
                    // Failed before it ever bound: a configuration problem, reported to
                    // the caller rather than retried.
                    self.bus.publish_later(Event::ListenerFailed {
                        addr: addr.clone(),
                        error: reason.to_string(),
                    });
                    let _ = w.send(Err(NodeError::ListenFailed {
                        addr: addr.to_string(),
                        reason: reason.to_string(),
                    }));
                    return;
                }
                if self.shutting_down {
                    return;
                }
                self.bus
                    .publish_later(Event::ListenerFailed { addr: addr.clone(), error: reason.to_string() });
                if let Decision::Restart { after, .. } =
                    self.restart_decision(&child.name, RestartPolicy::Permanent, &reason, true)
                {
                    ctx.run_later(after, move |act, ctx| {
                        if !act.shutting_down {
                            act.spawn_listener(msg.id, transport, addr, ctx);
                        }
                    });
                }
            }
            ChildKind::RelayClient { .. } => {
                if self.shutting_down {
                    return;
                }
                if let Decision::Restart { after, .. } =
                    self.restart_decision(&child.name, RestartPolicy::Permanent, &reason, true)
                {
                    ctx.run_later(after, move |act, ctx| {
                        if !act.shutting_down {
                            act.spawn_relay_client(msg.id, ctx);
                        }
                    });
                }
            }
            ChildKind::Peer { peer } => {
                let Some(h) = self.peers.remove(&peer) else { return };
                if h.child != msg.id {
                    self.peers.insert(peer, h);
                    return;
                }
                let Some((_, link)) = self.links.remove(&peer) else { return };
                if reason.is_abnormal() && !self.shutting_down {
                    // The peer's actor failed (its paths closed with it): a new one takes
                    // over the same session, and re-dials.
                    self.bus.publish_later(Event::PeerDisconnected {
                        peer,
                        reason: DisconnectReason::ActorFailed(reason.to_string()),
                    });
                    if let Decision::Restart { after, .. } =
                        self.restart_decision(&child.name, RestartPolicy::Transient, &reason, true)
                    {
                        ctx.run_later(after, move |act, ctx| {
                            if !act.shutting_down && !act.peers.contains_key(&peer) {
                                act.start_peer(peer, link, true, ctx);
                            }
                        });
                    }
                }
            }
        }
    }
}

impl Handler<RelayAddrs> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: RelayAddrs, _: &mut Context<Self>) {
        if self.ctx.punch.set_relay_addrs(msg) {
            // The public IP changed under a live reservation: a network change.
            tracing::info!("public address changed: retrying hole punches");
            self.network_changed();
        }
    }
}

impl Handler<PunchSignal> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: PunchSignal, _: &mut Context<Self>) {
        // Punch messages normally travel on the relayed path itself; one through the relay
        // goes to the peer's actor if there is one.
        match self.peers.get(&msg.peer) {
            Some(h) => h.actor.do_send(msg),
            None => tracing::debug!(peer = %msg.peer, "punch signal for an unknown peer dropped"),
        }
    }
}

impl Handler<WebRtcSignal> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: WebRtcSignal, _: &mut Context<Self>) {
        let Some(w) = &self.webrtc else {
            tracing::debug!(peer = %msg.peer, "WebRTC signal ignored: WebRTC is not enabled");
            return;
        };
        // Refused signals are dropped (a refused offer is answered with a `close`); the
        // node keeps serving.
        if let Err(e) = w.handle_signal_message(msg.peer, msg.message) {
            tracing::debug!(peer = %msg.peer, error = %e, "WebRTC signal refused");
        }
    }
}
