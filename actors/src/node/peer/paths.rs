//! A peer's paths: adding and losing them, performing the path manager's outputs, its
//! timers and the traffic samples it is fed.

use super::*;

/// How often a peer's traffic counters are sampled while traffic flows (to feed the path
/// manager what was sent and heard). 250 ms: the active path's probe pace, so silence is
/// noticed within one sample of the 2 s bound.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Bytes received on a path in one sample that only the peer's own traffic explains (a
/// probe, its answer and an acknowledgement are tens of bytes): 4 KiB. Seen on a path
/// other than the active one, it tells the path manager the peer moved there
/// (`PathManager::handle_remote_traffic`); session data says so at any size.
const REMOTE_TRAFFIC_BYTES: u64 = 4096;

/// How long a retired path may take to finish its streams before it is closed anyway.
/// 10 min: a stream started before the retirement (a file transfer) finishes on the path
/// it began on; a stream open far longer than that is not going to finish soon.
const DRAIN_MAX: Duration = Duration::from_secs(600);

/// How often a draining path's open streams are counted.
const DRAIN_POLL: Duration = Duration::from_millis(200);

impl PeerActor {
    pub(super) fn add_path(&mut self, conn: Connection, ctx: &mut Context<Self>) {
        if self.shutting_down {
            io_runtime().spawn(async move { conn.close(CloseCode::Shutdown, "node shutting down").await });
            return;
        }
        let info = conn.info();
        // A duplicate of a path we have (same transport, same kind): one survives, the
        // same one on both sides (a simultaneous dial).
        let dup =
            self.paths.iter().find(|(_, p)| p.desc.protocol == info.protocol && p.desc.kind == info.path);
        if let Some((&old_id, old)) = dup {
            let old_side = Candidate {
                dialed_locally: old.conn.is_dialer(),
                age: old.established.elapsed(),
                path: old.desc.kind,
            };
            let new_side =
                Candidate { dialed_locally: conn.is_dialer(), age: Duration::ZERO, path: info.path };
            match resolve_duplicate(self.ctx.node.peer_id(), self.peer, old_side, new_side) {
                Keep::Existing => {
                    tracing::debug!(peer = %self.peer, "duplicate connection: keeping the existing one");
                    io_runtime()
                        .spawn(async move { conn.close(CloseCode::Replaced, "duplicate connection").await });
                    self.answer_waiters();
                    return;
                }
                Keep::New => {
                    tracing::debug!(peer = %self.peer, "duplicate connection: replacing the existing one");
                    old.actor
                        .do_send(CloseConnection { code: CloseCode::Replaced, reason: "replaced".into() });
                    let _ = old_id;
                }
            }
        }
        self.learn(conn.remote_hello().listen_addrs.clone());
        // Both ends must speak the session layer on the path.
        let session = self.ctx.node.config().session_layer && conn.remote_hello().session.is_some();
        let link = self.link.clone();
        let hello_conn = conn.clone();
        // Our hello goes first on a session path, before the path can carry anything.
        let hello = async move {
            if session {
                let hello = link.hello().await;
                hello_conn.send_queued(hello.encode()).await.is_ok()
            } else {
                true
            }
        };
        ctx.wait(hello.into_actor(self).map(move |ok, act, ctx| {
            if ok {
                act.register_path(conn, session, ctx);
            } else {
                tracing::debug!(peer = %act.peer, "path closed before its hello");
            }
        }));
    }

    pub(super) fn register_path(&mut self, conn: Connection, session: bool, ctx: &mut Context<Self>) {
        let id = PathId(self.next_path);
        self.next_path += 1;
        let child = self.ctx.id();
        let info = conn.info();
        let desc = PathDesc {
            kind: info.path,
            protocol: info.protocol,
            dialed_locally: conn.is_dialer(),
            carries: self.ctx.carries(info.protocol),
        };
        let control = control_writer(conn.clone());
        let abort = StreamAbort::new();
        let me = ctx.address();
        let ports = PathPorts {
            exited: me.clone().recipient(),
            probes: me.clone().recipient(),
            signals: me.recipient(),
        };
        let actor = ConnectionActor::new(
            child,
            conn.clone(),
            id,
            session,
            self.link.clone(),
            self.ctx.bus.clone(),
            control.clone(),
            abort.clone(),
            ports,
        )
        .start();
        self.children.insert(
            child,
            Child {
                name: format!("connection/{}", self.peer),
                kind: ChildKind::Path(id),
                fault: actor.clone().recipient(),
            },
        );
        let seen = (
            conn.stats().bytes_sent.load(Ordering::Relaxed),
            conn.stats().bytes_received.load(Ordering::Relaxed),
        );
        self.paths.insert(
            id,
            PathEntry { conn, actor, desc, session, control, abort, established: Instant::now(), seen },
        );
        self.ctx.counters.connections_established.fetch_add(1, Ordering::Relaxed);
        self.link.set_state(LinkState::Open);
        tracing::debug!(peer = %self.peer, %id, protocol = %info.protocol, path = %info.path, "path added");
        if !self.announced && desc.carries {
            self.announced = true;
            self.ctx.bus.publish_later(Event::PeerConnected { info });
        }
        self.manager.handle_path_up(Self::now(), id, desc);
        self.drain(ctx);
        self.update_signal_route();
        self.answer_waiters();
        self.ensure_carrier(ctx);
    }

    pub(super) fn path_down(&mut self, id: PathId, reason: &ExitReason, ctx: &mut Context<Self>) {
        let Some(p) = self.paths.remove(&id) else { return };
        self.gone = Some((id, p.conn.info()));
        p.abort.trigger(format!("path {} to {} closed: {reason}", p.conn.info().protocol, self.peer));
        self.link.uncarry(id);
        let conn = p.conn;
        io_runtime().spawn(async move { conn.close(CloseCode::Normal, "path actor exited").await });
        if self.paths.is_empty() {
            self.last_exit = Some(match reason {
                ExitReason::Normal if self.shutting_down => DisconnectReason::Local,
                ExitReason::Normal => DisconnectReason::Remote("closed".into()),
                ExitReason::Failed(e) => DisconnectReason::Failed(e.clone()),
                other => DisconnectReason::ActorFailed(other.to_string()),
            });
        }
        self.manager.handle_path_down(Self::now(), id);
        self.drain(ctx);
        self.update_signal_route();
        self.ensure_carrier(ctx);
        if reason.is_abnormal() && self.paths.is_empty() && !self.shutting_down {
            let name = format!("connection/{}", self.peer);
            let decision = self.tracker.on_exit(Self::now(), RestartPolicy::Transient, reason, self.wanted);
            self.ctx.report_restart(&name, reason, &decision);
            if decision == Decision::GiveUp {
                self.set_wanted(false);
            }
        }
        self.maybe_stop(ctx);
    }

    pub(super) fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(out) = self.manager.poll_output() {
            match out {
                Output::Probe { path, nonce } => self.probe(path, nonce, ctx),
                Output::Carry { path } => self.carry(path, ctx),
                Output::Retire { path } => self.retire(path, ctx),
                Output::Dial => self.dial(self.known.clone(), ctx),
                Output::StartPunch => {
                    self.start_punch(Role::Initiator, ctx);
                }
                Output::Event(e) => self.event(e),
            }
        }
        self.publish_status();
        self.arm_timer(ctx);
    }

    pub(super) fn probe(&mut self, path: PathId, nonce: u64, ctx: &mut Context<Self>) {
        let Some(p) = self.paths.get(&path) else { return };
        if p.session {
            p.control.send(SessionFrame::Probe { nonce });
        } else if p.conn.is_connected() {
            // A path without the session layer cannot answer probes: it lives as long as its
            // connection does, at the RTT the transport measures.
            let rtt = p.conn.stats().rtt().unwrap_or(Duration::from_millis(50));
            ctx.run_later(rtt, move |act, ctx| {
                act.manager.handle_probe_reply(Self::now(), path, nonce);
                act.drain(ctx);
            });
        }
    }

    pub(super) fn carry(&mut self, path: PathId, ctx: &mut Context<Self>) {
        let Some(p) = self.paths.get(&path) else { return };
        let carrier = Carrier::new(path, p.conn.clone(), p.session, p.abort.clone());
        let link = self.link.clone();
        ctx.spawn(async move { link.carry(carrier).await }.into_actor(self));
    }

    pub(super) fn retire(&mut self, path: PathId, ctx: &mut Context<Self>) {
        let Some(p) = self.paths.get(&path) else { return };
        let (conn, actor) = (p.conn.clone(), p.actor.clone());
        tracing::debug!(peer = %self.peer, %path, "retiring path once its streams finish");
        let drain = async move {
            let until = Instant::now() + DRAIN_MAX;
            while conn.stats().open_streams() > 0 && Instant::now() < until && conn.is_connected() {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        };
        ctx.spawn(drain.into_actor(self).map(move |_, _, _| {
            actor.do_send(CloseConnection { code: CloseCode::Normal, reason: "path retired".into() });
        }));
    }

    pub(super) fn event(&mut self, e: PathEvent) {
        match e {
            PathEvent::Changed { from, to, reason } => {
                self.ctx.counters.path_changes.fetch_add(1, Ordering::Relaxed);
                let to_info = self.paths.get(&to).map(|p| p.conn.info());
                let from_info = from.and_then(|f| {
                    self.paths.get(&f).map(|p| p.conn.info()).or_else(|| {
                        // A path that went down just now.
                        self.gone.as_ref().filter(|(id, _)| *id == f).map(|(_, i)| i.clone())
                    })
                });
                if let (Some(from), Some(to)) = (from_info, to_info) {
                    tracing::info!(peer = %self.peer, reason = reason.name(), "path {} {} -> {} {}", from.protocol, from.path, to.protocol, to.path);
                    self.ctx.bus.publish_later(Event::PathChanged {
                        peer: self.peer,
                        from: Box::new(from),
                        to: Box::new(to),
                        reason,
                    });
                }
            }
            PathEvent::Degraded { path, rtt, loss } => {
                if let Some(p) = self.paths.get(&path) {
                    let path = Box::new(p.conn.info());
                    self.ctx.bus.publish_later(Event::PathDegraded { peer: self.peer, path, rtt, loss });
                }
            }
            PathEvent::Dead { path } => {
                self.link.uncarry(path);
                if let Some(p) = self.paths.get_mut(&path) {
                    let info = p.conn.info();
                    tracing::info!(peer = %self.peer, %path, protocol = %info.protocol, "path stopped answering");
                    // Streams on it fail now, naming it; streams opened later (should it
                    // recover) are not affected.
                    p.abort.trigger(format!(
                        "path {} {} to {} died (no answer)",
                        info.protocol, info.path, self.peer
                    ));
                }
            }
            PathEvent::Lost => {
                self.announced = false;
                let reason =
                    self.last_exit.take().unwrap_or(DisconnectReason::Failed("no path answers".into()));
                self.ctx.bus.publish_later(Event::PeerDisconnected { peer: self.peer, reason });
                if !self.wanted {
                    self.link.set_state(LinkState::Closed);
                }
            }
        }
    }

    /// Tells the link which path carries signaling to the peer (WebRTC offers, answers):
    /// the carrying path if it speaks the session layer, else any live one that does.
    pub(super) fn update_signal_route(&self) {
        let active = self.manager.active();
        let route = active
            .and_then(|a| self.paths.get(&a))
            .filter(|p| p.session)
            .or_else(|| self.paths.values().find(|p| p.session))
            .map(|p| p.control.clone());
        self.link.set_signal_route(route);
    }

    /// Reports the paths to the link, where `GetStats` reads them.
    pub(super) fn publish_status(&self) {
        let active = self.manager.active();
        let health: HashMap<PathId, (Option<Duration>, f64, f64, bool)> = self
            .manager
            .paths()
            .map(|(id, _, h, alive)| (id, (h.srtt(), h.loss(), h.throughput(), alive)))
            .collect();
        let paths = self
            .paths
            .iter()
            .map(|(id, p)| {
                let (rtt, loss, throughput, alive) =
                    health.get(id).copied().unwrap_or((None, 0.0, 0.0, true));
                PathStats { info: p.conn.info(), active: Some(*id) == active, alive, rtt, loss, throughput }
            })
            .collect();
        self.link.set_status(PeerStatus { active: self.active_info(), paths });
    }

    pub(super) fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let mut at = self.manager.poll_timeout();
        if self.sampling {
            let s = Instant::now() + SAMPLE_EVERY;
            at = Some(at.map_or(s, |t| t.min(s)));
        }
        let Some(at) = at else {
            if let Some((_, h)) = self.timer.take() {
                ctx.cancel_future(h);
            }
            return;
        };
        if self.timer.as_ref().is_some_and(|(t, _)| *t == at) {
            return;
        }
        if let Some((_, h)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let delay = at.saturating_duration_since(Instant::now());
        let h = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.tick(ctx);
        });
        self.timer = Some((at, h));
    }

    /// Samples the paths' traffic counters, then runs the manager's timers.
    pub(super) fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = Self::now();
        // What was sent since the last sample may have been sent right after it: silence
        // counts from then (heard counts from now, the latest it can have been).
        let since = self.last_sample.replace(now).filter(|t| *t <= now).unwrap_or(now);
        self.link.rearm_elsewhere();
        let mut moving = self.link.take_traffic();
        for (id, p) in self.paths.iter_mut() {
            let s = p.conn.stats();
            let cur = (s.bytes_sent.load(Ordering::Relaxed), s.bytes_received.load(Ordering::Relaxed));
            let (sent, recv) = (cur.0.saturating_sub(p.seen.0), cur.1.saturating_sub(p.seen.1));
            p.seen = cur;
            if sent > 0 {
                self.manager.handle_sent(since, *id);
            }
            if recv > 0 {
                self.manager.handle_heard(now, *id);
            }
            if recv >= REMOTE_TRAFFIC_BYTES {
                // More than probes and acknowledgements: the peer's streams run here.
                self.manager.handle_remote_traffic(now, *id);
            }
            // Open streams keep the sampling on: their traffic bypasses the link.
            moving |= s.open_streams() > 0;
            if sent + recv > 0 {
                moving = true;
                self.manager.handle_traffic(now, *id, sent + recv);
            }
        }
        if let Some(p) = self.link.take_data_path() {
            self.manager.handle_remote_traffic(now, p);
        }
        self.sampling = moving;
        if !moving {
            self.last_sample = None;
        }
        self.manager.handle_timeout(now);
        self.drain(ctx);
    }
}

impl Handler<ProbeAnswered> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: ProbeAnswered, ctx: &mut Context<Self>) {
        self.manager.handle_probe_reply(msg.at, msg.path, msg.nonce);
        self.drain(ctx);
    }
}

impl Handler<DataElsewhere> for PeerActor {
    type Result = ();
    fn handle(&mut self, msg: DataElsewhere, ctx: &mut Context<Self>) {
        // At once rather than at the next sample: the peer may have left the carrying
        // path because it died (the follow rule of the path manager).
        let now = Self::now();
        self.manager.handle_heard(now, msg.0);
        self.manager.handle_remote_traffic(now, msg.0);
        self.drain(ctx);
    }
}

impl Handler<TrafficStarted> for PeerActor {
    type Result = ();
    fn handle(&mut self, _: TrafficStarted, ctx: &mut Context<Self>) {
        if !self.sampling {
            self.sampling = true;
            if let Some(a) = self.manager.active() {
                self.manager.handle_sent(Self::now(), a);
            }
            self.arm_timer(ctx);
        }
    }
}
