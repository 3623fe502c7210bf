//! The command surface of [`crate::api`]: listen, connect, send, streams, disconnect,
//! events, statistics, the ticket, shutdown.

use super::*;

impl Handler<Listen> for Supervisor {
    type Result = ResponseFuture<Result<TransportAddr, NodeError>>;
    fn handle(&mut self, msg: Listen, ctx: &mut Context<Self>) -> Self::Result {
        let Some(t) = self.transport_for(&msg.addr) else {
            let p = msg.addr.protocol().to_string();
            return Box::pin(async move { Err(NodeError::NoTransport(p)) });
        };
        if self.shutting_down {
            return Box::pin(async { Err(NodeError::ShuttingDown) });
        }
        let id = self.ctx.id();
        let (tx, rx) = oneshot::channel();
        self.listen_waiters.insert(id, tx);
        self.spawn_listener(id, t, msg.addr, ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(NodeError::ShuttingDown)) })
    }
}

impl Handler<Connect> for Supervisor {
    type Result = ResponseFuture<Result<kizuna::ConnectionInfo, NodeError>>;
    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Box::pin(async { Err(NodeError::ShuttingDown) });
        }
        let actor = self.peer_actor(msg.addr.peer_id, ctx);
        Box::pin(async move { actor.send(PeerConnect(msg.addr)).await? })
    }
}

impl Handler<DialPath> for Supervisor {
    type Result = ResponseFuture<Result<kizuna::ConnectionInfo, NodeError>>;
    fn handle(&mut self, msg: DialPath, ctx: &mut Context<Self>) -> Self::Result {
        if self.shutting_down {
            return Box::pin(async { Err(NodeError::ShuttingDown) });
        }
        let actor = self.peer_actor(msg.addr.peer_id, ctx);
        Box::pin(async move { actor.send(PeerDialPath(msg.addr)).await? })
    }
}

impl Handler<SendDatagram> for Supervisor {
    type Result = Result<(), NodeError>;
    fn handle(&mut self, msg: SendDatagram, _: &mut Context<Self>) -> Self::Result {
        self.link(&msg.peer)?.send_datagram(msg.data)
    }
}

impl Handler<Send> for Supervisor {
    type Result = actix::Response<Result<(), NodeError>>;
    fn handle(&mut self, msg: Send, _: &mut Context<Self>) -> Self::Result {
        let link = match self.link(&msg.peer) {
            Ok(l) => l,
            Err(e) => return actix::Response::reply(Err(e)),
        };
        // Never encrypts on this arbiter: the frame is handed to the connection's writer
        // task, at once when nothing has to wait (no task, no reply future), else by a
        // future that waits for room (`send_queued`).
        match link.try_send(&msg.data) {
            Some(r) => actix::Response::reply(r),
            None => actix::Response::fut(async move { link.send(msg.data, true).await }),
        }
    }
}

impl Handler<OpenStream> for Supervisor {
    type Result = ResponseFuture<Result<kizuna::ByteStream, NodeError>>;
    fn handle(&mut self, msg: OpenStream, _: &mut Context<Self>) -> Self::Result {
        let link = self.link(&msg.peer);
        Box::pin(async move { link?.open_stream().await })
    }
}

impl Handler<GetSender> for Supervisor {
    type Result = Result<PeerSender, NodeError>;
    fn handle(&mut self, msg: GetSender, _: &mut Context<Self>) -> Self::Result {
        let link = self.link(&msg.peer)?;
        match link.carrier() {
            Some(_) => Ok(PeerSender { link }),
            None => Err(NodeError::NotConnected(msg.peer)),
        }
    }
}

impl Handler<Disconnect> for Supervisor {
    type Result = ResponseFuture<Result<(), NodeError>>;
    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) -> Self::Result {
        let Some(h) = self.peers.get(&msg.peer) else {
            return Box::pin(async move { Err(NodeError::NotConnected(msg.peer)) });
        };
        let connected = self.link(&msg.peer).is_ok_and(|l| l.carrier().is_some());
        let actor = h.actor.clone();
        Box::pin(async move {
            let sent = actor.send(PeerDisconnect).await;
            if !connected {
                return Err(NodeError::NotConnected(msg.peer));
            }
            Ok(sent?)
        })
    }
}

impl Handler<Subscribe> for Supervisor {
    type Result = MessageResult<Subscribe>;
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.bus.subscribe(msg.capacity))
    }
}

impl Handler<GetStats> for Supervisor {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.ctx.counters;
        let mut s = NodeStats {
            restarts: c.restarts.load(Relaxed),
            given_up: c.given_up.load(Relaxed),
            connections_established: c.connections_established.load(Relaxed),
            connects_failed: c.connects_failed.load(Relaxed),
            path_changes: c.path_changes.load(Relaxed),
            listeners: self.listeners.values().cloned().collect(),
            handshakes: self.node().handshake_stats(),
            dials: dial_stats(&self.ctx.dials),
            ..NodeStats::default()
        };
        for l in self.links.iter() {
            let st = l.status();
            s.connections.extend(st.active);
            s.paths.extend(st.paths);
        }
        MessageResult(s)
    }
}

impl Handler<GetAddress> for Supervisor {
    type Result = MessageResult<GetAddress>;
    fn handle(&mut self, _: GetAddress, _: &mut Context<Self>) -> Self::Result {
        let mut addrs: Vec<TransportAddr> = self.listeners.values().map(TransportAddr::dialable).collect();
        addrs.extend(self.ctx.relays.iter().map(|r| TransportAddr::Relay(r.url.clone())));
        addrs.sort_by_key(|a| std::cmp::Reverse(self.transport_for(a).map(|t| t.priority()).unwrap_or(0)));
        MessageResult(PeerAddress::new(self.node().peer_id(), addrs))
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        for child in self.children.values() {
            match &child.kind {
                ChildKind::Listener { stop, .. } => stop.do_send(StopListener),
                ChildKind::RelayClient { stop } => stop.do_send(StopRelayClient),
                ChildKind::Peer { .. } => {}
            }
        }
        let closes: Vec<_> = self.peers.values().map(|h| h.actor.send(PeerShutdown)).collect();
        Box::pin(
            async move {
                for c in closes {
                    let _ = c.await;
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| {
                tracing::info!("supervisor shut down");
                ctx.stop();
            }),
        )
    }
}
