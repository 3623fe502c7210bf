//! Per-peer connection pool: reuse of live connections, several connections per peer for
//! parallel transfers, and idle cleanup.
//!
//! * [`ConnectionPool::get`] returns a live pooled connection to the peer (shared by every
//!   caller) or dials one; concurrent `get`s for a peer with none share one dial.
//! * [`ConnectionPool::acquire`] hands out a connection for exclusive use (a parallel
//!   transfer), dialing more — up to [`PoolConfig::max_per_peer`] — while all are busy,
//!   then waiting for one to be returned. The [`PooledConnection`] guard returns it on
//!   drop.
//! * Closed connections are dropped from the pool whenever the pool looks at them;
//!   [`ConnectionPool::sweep`] also closes connections idle for
//!   [`PoolConfig::idle_timeout`].

use std::{
    collections::HashMap,
    fmt, io,
    ops::Deref,
    sync::{atomic::Ordering, Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::{watch, Notify};

use crate::{
    address::PeerAddress,
    error::{Result, TransportError},
    identity::PeerId,
    transport::{BoxFuture, Connection, Transport},
    wire::CloseCode,
};

/// How a pool reaches a peer it has no connection to.
pub type DialFn = Arc<dyn Fn(PeerAddress) -> BoxFuture<'static, Result<Connection>> + Send + Sync>;

/// Default connections per peer. 4: parallel TCP connections stop adding throughput on
/// one path well before that, and each costs a handshake and a window of buffers.
pub const DEFAULT_MAX_PER_PEER: usize = 4;
/// Default idle time before a pooled connection is closed. 60 s: longer than the gaps
/// between requests of an active exchange, short enough not to hoard sockets.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Limits of a [`ConnectionPool`].
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most connections kept (or being dialed) per peer.
    pub max_per_peer: usize,
    /// A connection unused for this long is closed by [`ConnectionPool::sweep`].
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { max_per_peer: DEFAULT_MAX_PER_PEER, idle_timeout: DEFAULT_IDLE_TIMEOUT }
    }
}

type DialOutcome = Option<std::result::Result<Connection, Arc<TransportError>>>;

struct Entry {
    id: u64,
    conn: Connection,
    busy: bool,
    last_used: Instant,
    /// Bytes moved when last seen, to notice use through `get` clones.
    last_traffic: u64,
}

impl Entry {
    fn traffic(&self) -> u64 {
        let s = self.conn.stats();
        s.bytes_sent.load(Ordering::Relaxed) + s.bytes_received.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Slot {
    conns: Vec<Entry>,
    /// Dials in progress (shared or for `acquire`).
    dialing: usize,
    /// The dial `get` callers share, if one is running.
    shared_dial: Option<watch::Receiver<DialOutcome>>,
    /// Signalled when a connection is returned, added or removed.
    changed: Arc<Notify>,
}

impl Slot {
    fn prune(&mut self) -> bool {
        let before = self.conns.len();
        self.conns.retain(|e| e.conn.is_connected());
        before != self.conns.len()
    }

    fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.dialing == 0 && self.shared_dial.is_none()
    }
}

struct PoolInner {
    dial: DialFn,
    config: PoolConfig,
    peers: Mutex<HashMap<PeerId, Slot>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, Slot>> {
        // The map stays consistent across a panic elsewhere (every update is one step).
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, conn: Connection, busy: bool) -> Entry {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut e = Entry { id, conn, busy, last_used: Instant::now(), last_traffic: 0 };
        e.last_traffic = e.traffic();
        e
    }
}

/// A per-peer pool of connections. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct ConnectionPool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("config", &self.inner.config)
            .field("peers", &self.peers())
            .finish()
    }
}

/// A copy of a transport error for each caller sharing one dial (the type is not `Clone`).
fn clone_error(e: &TransportError) -> TransportError {
    use TransportError as E;
    match e {
        E::ConnectFailed { addr, reason } => E::ConnectFailed { addr: addr.clone(), reason: reason.clone() },
        E::Timeout { what, after } => E::Timeout { what: what.clone(), after: *after },
        E::UnsupportedProtocol(s) => E::UnsupportedProtocol(s.clone()),
        E::NegotiationTimeout { peer, after } => E::NegotiationTimeout { peer: *peer, after: *after },
        E::AuthenticationFailed { expected, presented } => {
            E::AuthenticationFailed { expected: *expected, presented: presented.clone() }
        }
        E::ProtocolViolation { remote, source } => {
            E::ProtocolViolation { remote: remote.clone(), source: crate::mux::clone_wire_error(source) }
        }
        E::LimitExceeded { limit, max, attempted } => {
            E::LimitExceeded { limit, max: *max, attempted: *attempted }
        }
        E::Closed(s) => E::Closed(s.clone()),
        E::Io(e) => E::Io(io::Error::new(e.kind(), e.to_string())),
        E::Quic(s) => E::Quic(s.clone()),
        E::Tls(s) => E::Tls(s.clone()),
        E::Config(s) => E::Config(s.clone()),
        other => E::ConnectFailed { addr: "peer".into(), reason: other.to_string() },
    }
}

/// Dials `addr` over `transports`: highest priority first, then the peer's address
/// order. Stops at an authentication failure (the address belongs to someone else).
async fn dial_any(transports: Arc<Vec<Arc<dyn Transport>>>, addr: PeerAddress) -> Result<Connection> {
    let mut last = None;
    for t in transports.iter() {
        for a in addr.addrs.iter().filter(|a| a.protocol() == t.protocol()) {
            match t.connect(a, addr.peer_id).await {
                Ok(c) => return Ok(c),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        TransportError::connect_failed(addr.peer_id, "no address of the peer matches an available transport")
    }))
}

impl ConnectionPool {
    /// A pool dialing over `transports` (tried by priority, then address order).
    pub fn new(transports: Vec<Arc<dyn Transport>>, config: PoolConfig) -> Self {
        let mut transports = transports;
        transports.retain(|t| t.is_available());
        transports.sort_by_key(|t| std::cmp::Reverse(t.priority()));
        let transports = Arc::new(transports);
        let dial: DialFn = Arc::new(move |addr| Box::pin(dial_any(transports.clone(), addr)));
        Self::with_dialer(dial, config)
    }

    /// A pool using `dial` to reach peers.
    pub fn with_dialer(dial: DialFn, config: PoolConfig) -> Self {
        let config = PoolConfig { max_per_peer: config.max_per_peer.max(1), ..config };
        Self {
            inner: Arc::new(PoolInner {
                dial,
                config,
                peers: Mutex::new(HashMap::new()),
                next_id: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The pool's limits.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// A live connection to `addr.peer_id`, shared with other callers: a pooled one
    /// (preferring one not acquired exclusively), or a new one. Concurrent calls for a
    /// peer with no connection share one dial. Cancel safe: the dial goes on and its
    /// connection is pooled.
    pub async fn get(&self, addr: &PeerAddress) -> Result<Connection> {
        let max = self.inner.config.max_per_peer;
        loop {
            enum Step {
                Wait(watch::Receiver<DialOutcome>),
                Changed(Arc<Notify>),
            }
            let step = {
                let mut peers = self.inner.lock();
                let slot = peers.entry(addr.peer_id).or_default();
                slot.prune();
                let pick = slot.conns.iter().position(|e| !e.busy).or((!slot.conns.is_empty()).then_some(0));
                if let Some(i) = pick {
                    let e = &mut slot.conns[i];
                    e.last_used = Instant::now();
                    return Ok(e.conn.clone());
                }
                if let Some(rx) = slot.shared_dial.clone() {
                    Step::Wait(rx)
                } else if slot.dialing < max {
                    Step::Wait(self.start_shared_dial(slot, addr.clone()))
                } else {
                    // Only `acquire` dials fill the peer's quota: wait for one to land.
                    Step::Changed(slot.changed.clone())
                }
            };
            let changed = match step {
                Step::Wait(rx) => return self.await_shared_dial(rx, addr.peer_id).await,
                Step::Changed(n) => n,
            };
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let unchanged = self.inner.lock().get_mut(&addr.peer_id).is_some_and(|s| {
                s.prune();
                s.conns.is_empty() && s.shared_dial.is_none() && s.dialing >= max
            });
            if unchanged {
                notified.await;
            }
        }
    }

    async fn await_shared_dial(
        &self,
        mut rx: watch::Receiver<DialOutcome>,
        peer: PeerId,
    ) -> Result<Connection> {
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(Ok(conn)) => Ok(conn),
            Some(Err(e)) => Err(clone_error(&e)),
            None => Err(TransportError::connect_failed(peer, "dial task ended without a result")),
        }
    }

    fn start_shared_dial(&self, slot: &mut Slot, addr: PeerAddress) -> watch::Receiver<DialOutcome> {
        let (tx, rx) = watch::channel(None);
        slot.shared_dial = Some(rx.clone());
        slot.dialing += 1;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let peer = addr.peer_id;
            let result = (inner.dial)(addr).await;
            {
                let mut peers = inner.lock();
                let slot = peers.entry(peer).or_default();
                slot.dialing -= 1;
                slot.shared_dial = None;
                if let Ok(conn) = &result {
                    let e = inner.entry(conn.clone(), false);
                    slot.conns.push(e);
                }
                slot.changed.notify_waiters();
            }
            tx.send_replace(Some(result.map_err(Arc::new)));
        });
        rx
    }

    /// A connection to `addr.peer_id` for exclusive use until the guard is dropped. Uses
    /// an idle pooled connection, else dials a new one while the peer has fewer than
    /// `max_per_peer`, else waits for one to be returned. Cancel safe.
    pub async fn acquire(&self, addr: &PeerAddress) -> Result<PooledConnection> {
        loop {
            let changed = {
                let mut peers = self.inner.lock();
                let slot = peers.entry(addr.peer_id).or_default();
                slot.prune();
                if let Some(e) = slot.conns.iter_mut().find(|e| !e.busy) {
                    e.busy = true;
                    e.last_used = Instant::now();
                    return Ok(self.guard(addr.peer_id, e.id, e.conn.clone()));
                }
                if slot.conns.len() + slot.dialing < self.inner.config.max_per_peer {
                    slot.dialing += 1;
                    None
                } else {
                    Some(slot.changed.clone())
                }
            };
            match changed {
                None => return self.dial_exclusive(addr).await,
                Some(changed) => {
                    let notified = changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Re-check under the lock now that we are registered: a return that
                    // happened in between would otherwise be missed.
                    let free = {
                        let mut peers = self.inner.lock();
                        peers.get_mut(&addr.peer_id).is_some_and(|s| {
                            s.prune();
                            s.conns.iter().any(|e| !e.busy)
                                || s.conns.len() + s.dialing < self.inner.config.max_per_peer
                        })
                    };
                    if !free {
                        notified.await;
                    }
                }
            }
        }
    }

    /// Dials for `acquire`; the dial slot was reserved by the caller.
    async fn dial_exclusive(&self, addr: &PeerAddress) -> Result<PooledConnection> {
        /// Gives the reserved dial slot back if the dial is cancelled or fails.
        struct Reservation<'a> {
            inner: &'a PoolInner,
            peer: PeerId,
            armed: bool,
        }
        impl Drop for Reservation<'_> {
            fn drop(&mut self) {
                if self.armed {
                    let mut peers = self.inner.lock();
                    if let Some(slot) = peers.get_mut(&self.peer) {
                        slot.dialing -= 1;
                        slot.changed.notify_waiters();
                    }
                }
            }
        }
        let mut reservation = Reservation { inner: &self.inner, peer: addr.peer_id, armed: true };
        let conn = (self.inner.dial)(addr.clone()).await?;
        reservation.armed = false;
        let mut peers = self.inner.lock();
        let slot = peers.entry(addr.peer_id).or_default();
        slot.dialing -= 1;
        let e = self.inner.entry(conn.clone(), true);
        let id = e.id;
        slot.conns.push(e);
        slot.changed.notify_waiters();
        drop(peers);
        Ok(self.guard(addr.peer_id, id, conn))
    }

    fn guard(&self, peer: PeerId, id: u64, conn: Connection) -> PooledConnection {
        PooledConnection { conn, peer, id, pool: self.inner.clone() }
    }

    /// Adds a connection made elsewhere (e.g. an inbound one) so it can be reused.
    /// Returns `false` (and leaves it out) if the peer already has `max_per_peer`.
    pub fn insert(&self, conn: Connection) -> bool {
        let mut peers = self.inner.lock();
        let slot = peers.entry(conn.peer()).or_default();
        slot.prune();
        if !conn.is_connected() || slot.conns.len() + slot.dialing >= self.inner.config.max_per_peer {
            return false;
        }
        let e = self.inner.entry(conn, false);
        slot.conns.push(e);
        slot.changed.notify_waiters();
        true
    }

    /// Live pooled connections to `peer` (busy or not).
    pub fn connections(&self, peer: &PeerId) -> usize {
        let mut peers = self.inner.lock();
        peers.get_mut(peer).map_or(0, |s| {
            s.prune();
            s.conns.len()
        })
    }

    /// Peers with at least one pooled connection.
    pub fn peers(&self) -> Vec<PeerId> {
        let mut peers = self.inner.lock();
        peers
            .iter_mut()
            .filter_map(|(p, s)| {
                s.prune();
                (!s.conns.is_empty()).then_some(*p)
            })
            .collect()
    }

    /// Removes closed connections and closes those not used for `idle_timeout` as of
    /// `now` (connections acquired exclusively are never idle). Returns how many it
    /// closed. Call it periodically.
    pub async fn sweep(&self, now: Instant) -> usize {
        let idle = self.inner.config.idle_timeout;
        let mut to_close = Vec::new();
        {
            let mut peers = self.inner.lock();
            for slot in peers.values_mut() {
                if slot.prune() {
                    slot.changed.notify_waiters();
                }
                slot.conns.retain_mut(|e| {
                    let traffic = e.traffic();
                    if traffic != e.last_traffic {
                        e.last_traffic = traffic;
                        e.last_used = now;
                    }
                    let expired = !e.busy && now.saturating_duration_since(e.last_used) >= idle;
                    if expired {
                        to_close.push(e.conn.clone());
                    }
                    !expired
                });
            }
            peers.retain(|_, s| !s.is_empty());
        }
        let n = to_close.len();
        for c in to_close {
            c.close(CloseCode::Idle, "idle in the connection pool").await;
        }
        n
    }

    /// Closes every pooled connection and empties the pool.
    pub async fn close_all(&self) {
        let conns: Vec<Connection> = {
            let mut peers = self.inner.lock();
            peers.drain().flat_map(|(_, s)| s.conns.into_iter().map(|e| e.conn)).collect()
        };
        for c in conns {
            c.close(CloseCode::Shutdown, "connection pool closed").await;
        }
    }
}

/// A connection handed out by [`ConnectionPool::acquire`], returned to the pool on drop.
pub struct PooledConnection {
    conn: Connection,
    peer: PeerId,
    id: u64,
    pool: Arc<PoolInner>,
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PooledConnection").field(&self.conn).finish()
    }
}

impl PooledConnection {
    /// The connection (also reachable through `Deref`).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Deref for PooledConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let mut peers = self.pool.lock();
        if let Some(slot) = peers.get_mut(&self.peer) {
            if let Some(e) = slot.conns.iter_mut().find(|e| e.id == self.id) {
                e.busy = false;
                e.last_used = Instant::now();
            }
            slot.prune();
            slot.changed.notify_waiters();
        }
    }
}
