//! `PeerLink`: one peer's data plane, shared by the supervisor (`Send`, `GetSender`,
//! `OpenStream`), the peer's [`PeerActor`](super::peer::PeerActor) (which path carries the
//! traffic) and its [`ConnectionActor`](super::connection::ConnectionActor)s (what arrives).
//!
//! Not an actor: a `Send` goes from the supervisor's mailbox straight to the carrying
//! connection's bounded writer queue (one mailbox between the application and the
//! socket), and encryption happens in the transport's tasks on the I/O runtime
//! ([`Connection::send_queued`]).
//!
//! With a peer that speaks the session layer (`docs/protocol.md` §11) every message is
//! numbered by the sans-IO [`SessionSender`] and kept in its bounded window until
//! acknowledged; a full window makes senders wait. Sends are handed to the carrying path
//! in number order (the *gate*); switching paths ([`PeerLink::carry`]) first releases a
//! sender stuck on the old path, then sends everything unacknowledged on the new one,
//! oldest first, before anything new. Received `DATA` goes through the
//! [`SessionReceiver`], under a lock held until the event is published, so the
//! application sees each message once and in order whichever path delivered it.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use kizuna::{
    peer::{
        frame::{data_header, encode_data_in, DATA_HEADER_LEN, MAX_PAYLOAD},
        PathId, SessionFrame, SessionReceiver, SessionSender, Verdict, WindowLimits,
    },
    ByteStream, Connection, PeerId, StreamAbort,
};
use tokio::sync::{watch, Notify};

use super::events::EventBus;
use crate::api::{Event, NodeError};

/// The path carrying the traffic.
#[derive(Clone)]
pub(crate) struct Carrier {
    pub(crate) id: PathId,
    pub(crate) conn: Connection,
    /// The peer speaks the session layer on it.
    pub(crate) session: bool,
    /// Set when the traffic moves away from it (a sender stuck on it gives up).
    released: watch::Receiver<bool>,
    release: Arc<watch::Sender<bool>>,
    /// Fails the streams opened on it when the path dies.
    pub(crate) abort: Arc<StreamAbort>,
}

impl Carrier {
    pub(crate) fn new(id: PathId, conn: Connection, session: bool, abort: Arc<StreamAbort>) -> Self {
        let (release, released) = watch::channel(false);
        Self { id, conn, session, released, release: Arc::new(release), abort }
    }

    async fn released(&self) {
        let mut rx = self.released.clone();
        let _ = rx.wait_for(|r| *r).await;
    }
}

/// Whether the peer can be sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// A path carries the traffic (or will: messages wait in the window).
    Open,
    /// No path, and none expected: sends fail.
    Closed,
}

struct TxState {
    session: SessionSender,
    active: Option<Carrier>,
    state: LinkState,
}

/// One peer's data plane (see the module docs).
pub(crate) struct PeerLink {
    peer: PeerId,
    tx: Mutex<TxState>,
    /// Frames reach the carrier in number order: taken around each hand-over.
    gate: tokio::sync::Mutex<()>,
    /// Window room or a new carrier.
    room: Notify,
    rx: tokio::sync::Mutex<SessionReceiver>,
    bus: EventBus,
    /// Set by a send while the peer's actor samples traffic lazily (see `take_traffic`).
    traffic: std::sync::atomic::AtomicBool,
    /// The path the peer's last session data arrived on, plus one (0: none since the last
    /// sample).
    data_path: std::sync::atomic::AtomicU64,
    /// Told when traffic starts on an idle link (so silence is watched from the start).
    waker: std::sync::OnceLock<actix::Recipient<TrafficStarted>>,
    /// The carrying path, plus one (0: none): compared with each `DATA`'s path.
    carrier_path: std::sync::atomic::AtomicU64,
    /// Told when the peer's data arrives on a path that does not carry ours (at most once
    /// per sample of the peer's actor, which re-arms it).
    elsewhere: std::sync::OnceLock<actix::Recipient<DataElsewhere>>,
    elsewhere_told: std::sync::atomic::AtomicBool,
    /// What the peer's actor last reported (read by `GetStats`).
    status: Mutex<PeerStatus>,
    /// Where the peer can be dialed, as its actor learned (kept for an actor restarted
    /// after a failure).
    known: Mutex<Vec<kizuna::TransportAddr>>,
    /// The control queue of a path that carries signaling to the peer (set by its actor;
    /// a signaler waiting for one watches it).
    signal_route: watch::Sender<Option<super::connection::Control>>,
}

/// Traffic started on an idle link (to the peer's actor).
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub(crate) struct TrafficStarted;

/// The peer's data arrived on a path that does not carry ours (to the peer's actor: the
/// peer may have given up on the carrying path).
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub(crate) struct DataElsewhere(pub(crate) PathId);

/// A peer's paths as its actor last reported them.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerStatus {
    /// The carrying path's connection.
    pub(crate) active: Option<kizuna::ConnectionInfo>,
    /// Every path.
    pub(crate) paths: Vec<crate::api::PathStats>,
}

impl PeerLink {
    pub(crate) fn new(peer: PeerId, epoch: u64, window: WindowLimits, bus: EventBus) -> Arc<Self> {
        Arc::new(Self {
            peer,
            tx: Mutex::new(TxState {
                session: SessionSender::new(epoch, window),
                active: None,
                state: LinkState::Open,
            }),
            gate: tokio::sync::Mutex::new(()),
            room: Notify::new(),
            rx: tokio::sync::Mutex::new(SessionReceiver::new()),
            bus,
            traffic: std::sync::atomic::AtomicBool::new(false),
            data_path: std::sync::atomic::AtomicU64::new(0),
            waker: std::sync::OnceLock::new(),
            carrier_path: std::sync::atomic::AtomicU64::new(0),
            elsewhere: std::sync::OnceLock::new(),
            elsewhere_told: std::sync::atomic::AtomicBool::new(false),
            status: Mutex::new(PeerStatus::default()),
            known: Mutex::new(Vec::new()),
            signal_route: watch::Sender::new(None),
        })
    }

    /// Where to report traffic starting on an idle link and the peer's data arriving
    /// elsewhere (set once, by the peer's actor).
    pub(crate) fn set_wakers(&self, w: actix::Recipient<TrafficStarted>, e: actix::Recipient<DataElsewhere>) {
        let _ = self.waker.set(w);
        let _ = self.elsewhere.set(e);
    }

    /// Re-arms the report of data arriving elsewhere (by the peer's actor, per sample).
    pub(crate) fn rearm_elsewhere(&self) {
        self.elsewhere_told.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// The peer's paths as last reported.
    pub(crate) fn status(&self) -> PeerStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the path signaling to the peer goes on (`None`: none).
    pub(crate) fn set_signal_route(&self, route: Option<super::connection::Control>) {
        self.signal_route.send_replace(route);
    }

    /// Sends a signaling message (its tag byte first, as a relay signal) to the peer on one
    /// of its paths; `false` if none can carry it now.
    pub(crate) fn signal(&self, payload: &[u8]) -> bool {
        let Some((&tag, body)) = payload.split_first() else { return false };
        let route = self.signal_route.borrow().clone();
        route.is_some_and(|c| c.send(SessionFrame::Signal { tag, payload: Bytes::copy_from_slice(body) }))
    }

    /// Changes of the signal route, to wait for one.
    pub(crate) fn signal_routes(&self) -> watch::Receiver<Option<super::connection::Control>> {
        self.signal_route.subscribe()
    }

    /// Where the peer can be dialed.
    pub(crate) fn known(&self) -> Vec<kizuna::TransportAddr> {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records where the peer can be dialed (by its actor).
    pub(crate) fn set_known(&self, addrs: Vec<kizuna::TransportAddr>) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = addrs;
    }

    /// Records the peer's paths (by its actor).
    pub(crate) fn set_status(&self, s: PeerStatus) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    fn tx(&self) -> std::sync::MutexGuard<'_, TxState> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer.
    pub(crate) fn peer(&self) -> PeerId {
        self.peer
    }

    /// The carrying path, if any.
    pub(crate) fn carrier(&self) -> Option<Carrier> {
        self.tx().active.clone()
    }

    /// Opens or closes the link for sending (closed: sends fail with `NotConnected`).
    pub(crate) fn set_state(&self, state: LinkState) {
        self.tx().state = state;
        self.room.notify_waiters();
    }

    /// Traffic (a message, a stream) started: wakes the peer's actor's sampling if idle.
    pub(crate) fn note_traffic(&self) {
        if !self.traffic.swap(true, std::sync::atomic::Ordering::Relaxed) {
            if let Some(w) = self.waker.get() {
                let _ = w.try_send(TrafficStarted);
            }
        }
    }

    /// Whether a send happened since the last call (the peer's actor samples this).
    pub(crate) fn take_traffic(&self) -> bool {
        self.traffic.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The peer's session data arrived on `path` (one relaxed store per message).
    pub(crate) fn data_on(&self, path: PathId) {
        use std::sync::atomic::Ordering::Relaxed;
        let id = path.0.saturating_add(1);
        self.data_path.store(id, Relaxed);
        if self.carrier_path.load(Relaxed) != id && !self.elsewhere_told.swap(true, Relaxed) {
            if let Some(e) = self.elsewhere.get() {
                let _ = e.try_send(DataElsewhere(path));
            }
        }
    }

    /// The path the peer's data last arrived on since the last call, if any (the peer's
    /// actor samples this: data on a path it does not use says the peer moved).
    pub(crate) fn take_data_path(&self) -> Option<PathId> {
        match self.data_path.swap(0, std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(PathId(n - 1)),
        }
    }

    /// Our hello for a new path: epoch, what we know of the peer's, our base.
    pub(crate) async fn hello(&self) -> SessionFrame {
        let (seen, delivered) = self.rx.lock().await.state();
        let tx = self.tx();
        SessionFrame::Hello { epoch: tx.session.epoch(), seen, delivered, base: tx.session.base() }
    }

    /// Whether a message of `len` bytes can be taken now (an error if it never can).
    fn ready(&self, len: usize) -> Result<bool, NodeError> {
        let tx = self.tx();
        if tx.state == LinkState::Closed {
            return Err(NodeError::NotConnected(self.peer));
        }
        match &tx.active {
            Some(c) if !c.session => Ok(true),
            _ => {
                if len > MAX_PAYLOAD {
                    return Err(too_large(len));
                }
                Ok(tx.session.has_room(len))
            }
        }
    }

    /// Waits until a message of `len` bytes can be taken (window room, or a carrier that
    /// does not number).
    async fn room_for(&self, len: usize) -> Result<(), NodeError> {
        if self.ready(len)? {
            return Ok(());
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.ready(len)? {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Sends one message now if nothing has to wait: the window has room, nobody else is
    /// handing frames over, and the carrier's queue takes it. `None`: use
    /// [`send`](Self::send) (nothing was sent). Never writes on the caller's thread.
    pub(crate) fn try_send(&self, data: &Bytes) -> Option<Result<(), NodeError>> {
        let _gate = self.gate.try_lock().ok()?;
        let mut tx = self.tx();
        if tx.state == LinkState::Closed {
            return Some(Err(NodeError::NotConnected(self.peer)));
        }
        let c = tx.active.as_ref()?;
        let sent = if c.session {
            if data.len() > MAX_PAYLOAD || !tx.session.has_room(data.len()) {
                return None;
            }
            let seq = tx.session.last_sent() + 1;
            // Taken into the window only once the carrier took it (under the tx lock,
            // so the number is still the next one).
            c.conn.try_send_parts(&data_header(seq), data)?.is_ok().then(|| tx.session.push(data.clone()))
        } else {
            match c.conn.try_send_parts(&Bytes::new(), data)? {
                Ok(()) => Some(0),
                Err(e) => return Some(Err(NodeError::from(e))),
            }
        };
        drop(tx);
        sent?;
        self.note_traffic();
        Some(Ok(()))
    }

    /// Sends one application message: numbered and kept until acknowledged (waiting while
    /// the window is full), or sent as is to a peer without the session layer. `queued`:
    /// never write on the caller's task (callers on actor threads).
    pub(crate) async fn send(&self, data: Bytes, queued: bool) -> Result<(), NodeError> {
        loop {
            self.room_for(data.len()).await?;
            let _gate = self.gate.lock().await;
            let (carrier, seq) = {
                let mut tx = self.tx();
                match tx.active.clone() {
                    Some(c) if !c.session => (Some(c), None),
                    active => {
                        if !tx.session.has_room(data.len()) {
                            continue;
                        }
                        (active, Some(tx.session.push(data.clone())))
                    }
                }
            };
            self.note_traffic();
            let Some(c) = carrier else { return Ok(()) };
            let send = async {
                match seq {
                    Some(seq) => c.conn.send_parts(data_header(seq), data, queued).await,
                    None if queued => c.conn.send_queued(data).await,
                    None => c.conn.send(data).await,
                }
            };
            tokio::select! {
                r = send => match (r, seq) {
                    // Numbered: in the window, carried again by the next path.
                    (Err(e), Some(_)) => tracing::debug!(peer = %self.peer, path = %c.id, "send failed: {e}"),
                    (Err(e), None) => return Err(NodeError::from(e)),
                    (Ok(()), _) => {}
                },
                _ = c.released() => {}
            }
            return Ok(());
        }
    }

    /// Sends `msgs` in order, exactly once each as [`send`](Self::send) does, handing
    /// whatever fits in the window to the carrier as one batch (one allocation for the
    /// encoded frames, one lock of the carrier's queue).
    pub(crate) async fn send_many(&self, msgs: Vec<Bytes>) -> Result<(), NodeError> {
        if let Some(m) = msgs.iter().find(|m| m.len() > MAX_PAYLOAD) {
            return Err(too_large(m.len()));
        }
        let mut rest = msgs.into_iter().peekable();
        while let Some(len) = rest.peek().map(Bytes::len) {
            self.room_for(len).await?;
            let _gate = self.gate.lock().await;
            let (carrier, frames, numbered) = {
                let mut tx = self.tx();
                match tx.active.clone() {
                    Some(c) if !c.session => (Some(c), rest.by_ref().collect::<Vec<_>>(), false),
                    active => {
                        let mut taken = Vec::new();
                        while let Some(m) = rest.next_if(|m| tx.session.has_room(m.len())) {
                            taken.push((tx.session.push(m.clone()), m));
                        }
                        let total = taken.iter().map(|(_, m)| m.len() + DATA_HEADER_LEN).sum();
                        let mut buf = BytesMut::with_capacity(total);
                        let frames = taken.iter().map(|(seq, m)| encode_data_in(&mut buf, *seq, m)).collect();
                        (active, frames, true)
                    }
                }
            };
            if frames.is_empty() {
                continue;
            }
            self.note_traffic();
            let Some(c) = carrier else { continue };
            tokio::select! {
                r = c.conn.send_many(frames) => match r {
                    Err(e) if numbered => tracing::debug!(peer = %self.peer, path = %c.id, "send failed: {e}"),
                    Err(e) => return Err(NodeError::from(e)),
                    Ok(()) => {}
                },
                _ = c.released() => {}
            }
        }
        Ok(())
    }

    /// Makes `c` the carrying path: releases a sender stuck on the previous one, then
    /// sends every unacknowledged message on `c`, oldest first, before anything new.
    pub(crate) async fn carry(&self, c: Carrier) {
        let old = self.tx().active.take();
        if let Some(old) = &old {
            old.release.send_replace(true);
        }
        let _gate = self.gate.lock().await;
        let resend: Vec<(u64, Bytes)> = {
            let mut tx = self.tx();
            tx.active = Some(c.clone());
            self.carrier_path.store(c.id.0.saturating_add(1), std::sync::atomic::Ordering::Relaxed);
            if c.session {
                tx.session.unacked().map(|(n, m)| (n, m.clone())).collect()
            } else {
                Vec::new()
            }
        };
        self.room.notify_waiters();
        for (seq, m) in resend {
            let sent = tokio::select! {
                r = c.conn.send_parts(data_header(seq), m, true) => r.is_ok(),
                _ = c.released() => false,
            };
            if !sent {
                break;
            }
        }
    }

    /// No path carries the traffic for now (messages wait in the window).
    pub(crate) fn uncarry(&self, path: PathId) {
        let mut tx = self.tx();
        if tx.active.as_ref().is_some_and(|c| c.id == path) {
            if let Some(old) = tx.active.take() {
                old.release.send_replace(true);
            }
            self.carrier_path.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The peer acknowledged everything up to `delivered`.
    pub(crate) fn on_ack(&self, delivered: u64) -> Result<(), kizuna::peer::session::AckError> {
        let freed = self.tx().session.on_ack(delivered)?;
        if freed > 0 {
            self.room.notify_waiters();
        }
        Ok(())
    }

    /// A path's hello from the peer: registers its epoch (a new one restarts numbering at
    /// its base) and frees what it says it delivered of ours.
    pub(crate) async fn on_hello(&self, epoch: u64, seen: u64, delivered: u64, base: u64) {
        self.rx.lock().await.on_hello(epoch, base);
        let freed = self.tx().session.on_hello(seen, delivered).unwrap_or(0);
        if freed > 0 {
            self.room.notify_waiters();
        }
    }

    /// `DATA` number `seq` of the peer's `epoch` arrived at `now`: published once and in order.
    /// Returns an acknowledgement to send now, if one is due, and when the next one is due;
    /// an error for a gap (the peer broke the protocol).
    pub(crate) async fn on_data(
        &self,
        epoch: u64,
        seq: u64,
        payload: Bytes,
        now: Instant,
    ) -> Result<(Option<u64>, Option<Instant>), String> {
        let mut rx = self.rx.lock().await;
        match rx.on_data(epoch, seq, payload.len(), now) {
            Verdict::Deliver => {
                self.bus.publish(Event::MessageReceived { peer: self.peer, data: payload }).await;
                Ok((rx.poll_ack(now), rx.poll_timeout()))
            }
            Verdict::Duplicate => Ok((None, rx.poll_timeout())),
            Verdict::Gap { expected } => Err(format!("message {seq} arrived before {expected}")),
        }
    }

    /// An acknowledgement due at `now` (delayed ones), and when the next one is due.
    pub(crate) async fn poll_ack(&self, now: Instant) -> (Option<u64>, Option<Instant>) {
        let mut rx = self.rx.lock().await;
        (rx.poll_ack(now), rx.poll_timeout())
    }

    /// Opens a stream on the carrying path; it fails when that path dies.
    pub(crate) async fn open_stream(&self) -> Result<ByteStream, NodeError> {
        let c = self.carrier().ok_or(NodeError::NotConnected(self.peer))?;
        let s = c.conn.open_stream().await.map_err(NodeError::from)?;
        self.note_traffic();
        Ok(s.abortable(c.abort.clone()))
    }

    /// Sends an unreliable datagram on the carrying path.
    pub(crate) fn send_datagram(&self, data: Bytes) -> Result<(), NodeError> {
        let c = self.carrier().ok_or(NodeError::NotConnected(self.peer))?;
        c.conn.send_datagram(data).map_err(NodeError::from)
    }
}

/// A message of `len` bytes does not fit in one `DATA` frame.
fn too_large(len: usize) -> NodeError {
    NodeError::from(kizuna::TransportError::LimitExceeded {
        limit: "message size",
        max: MAX_PAYLOAD as u64,
        attempted: len as u64,
    })
}

/// A random, nonzero session epoch (`kizuna::peer::session`).
pub(crate) fn random_epoch() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b).max(1)
}
