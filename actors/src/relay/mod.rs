//! The relay server runtime: `kizuna relay` as a library.
//!
//! Thin actors around the sans-IO core [`kizuna::relay`] (which makes every decision;
//! protocol: `docs/protocol.md` §10, operations: `docs/relay.md`):
//!
//! ```text
//! RelayServerActor (owns RelayState, its timer, the registry of connections)
//!  ├── accept loop task ── one connection task per WebSocket (handshake, reader, writer)
//!  ├── RelayForwarderActor, one per open circuit ── its forwarding task
//!  ├── STUN responder task per STUN socket (four with RFC 5780, see `stun`)
//!  └── stats HTTP task (--stats-addr)
//! ```
//!
//! Sockets live on the shared I/O runtime ([`crate::runtime::io_runtime`]); the actors
//! only steer. Every channel is bounded; relay messages and byte reports reach the server
//! actor with awaited `send`s, so a busy relay slows its readers instead of queueing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kizuna::relay::auth::Admission;
//! use kizuna_actors::relay::{GetRelayMetrics, RelayServer, RelayServerConfig, StopRelay};
//!
//! let config = RelayServerConfig::new("127.0.0.1:0".parse()?, Admission::open());
//! let relay = RelayServer::start(config).await?;
//! println!("relay at {}", relay.url);
//! let metrics = relay.addr.send(GetRelayMetrics).await?;
//! println!("{} connections", metrics.connections);
//! relay.addr.send(StopRelay).await?;
//! # Ok(()) }
//! ```

mod connection;
mod forwarder;
mod server;
mod stats;
pub mod stun;

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use actix::{Actor, Addr};
use bytes::Bytes;
use kizuna::{
    relay::{
        auth::Admission,
        limits::RelayLimits,
        server::{Direction, RelayState},
        CircuitId, RelayConfigError,
    },
    transport::{
        admission::AdmissionLimits,
        ws::{WsConfig, WsOptions},
    },
};
use tokio::sync::mpsc;

pub use forwarder::RelayForwarderActor;
pub use server::{GetRelayMetrics, RelayServerActor, StopRelay};

use crate::runtime::on_io;

/// TCP listen backlog of the relay socket. 1024: a relay accepts bursts of reconnecting
/// clients after a restart; the kernel queue absorbs them while handshake slots are busy.
const LISTEN_BACKLOG: u32 = 1024;

/// Default interval of the metrics log line. One minute: often enough to follow usage in
/// a log, rare enough not to drown it.
pub const DEFAULT_METRICS_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One message a circuit forwarded, as seen by a [`RelayServerConfig::tap`].
#[derive(Clone, Debug)]
pub struct TappedMessage {
    /// The circuit.
    pub circuit: CircuitId,
    /// Which way it went.
    pub direction: Direction,
    /// The bytes, exactly as forwarded.
    pub data: Bytes,
}

/// Configuration of a relay server.
#[derive(Clone)]
pub struct RelayServerConfig {
    /// TCP address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The relay's name in challenges: the URL clients dial. Default `ws://<bound addr>`
    /// (`wss://` when [`ws`](Self::ws) has a server certificate). Set it when the relay
    /// listens on a wildcard address or sits behind a proxy.
    pub public_url: Option<String>,
    /// Who may use the relay; at least one rule is required.
    pub admission: Admission,
    /// Limits enforced by the relay.
    pub limits: RelayLimits,
    /// UDP addresses to answer STUN Binding requests on (none: no STUN). Two addresses
    /// on different IPs with one port turn on RFC 5780 (see [`stun`]).
    pub stun: Vec<SocketAddr>,
    /// Address of the JSON metrics endpoint (`GET /` or `/stats`); `None`: none.
    pub stats_addr: Option<SocketAddr>,
    /// `wss://` certificate (via [`WsConfig::with_server_cert_pem`]) and keep-alive
    /// overrides.
    pub ws: WsConfig,
    /// Admission of unauthenticated connections (WebSocket upgrade plus relay handshake):
    /// in all, per remote address, and the first-byte deadline. Defaults: 256, 16, 3 s
    /// ([`kizuna::transport::admission`]).
    pub handshake_limits: AdmissionLimits,
    /// Interval of the metrics log line (`Duration::ZERO` disables it).
    pub metrics_log_interval: Duration,
    /// Diagnostics hook: every message a circuit forwards is also sent here. The send is
    /// awaited, so a slow tap slows the circuits — for tests and debugging only.
    pub tap: Option<mpsc::Sender<TappedMessage>>,
}

impl fmt::Debug for RelayServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayServerConfig")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("admission", &self.admission)
            .field("limits", &self.limits)
            .field("stun", &self.stun)
            .field("stats_addr", &self.stats_addr)
            .field("ws", &self.ws)
            .field("tap", &self.tap.is_some())
            .finish_non_exhaustive()
    }
}

impl RelayServerConfig {
    /// A relay on `listen` admitting by `admission`, with default limits, no STUN and no
    /// stats endpoint.
    pub fn new(listen: SocketAddr, admission: Admission) -> Self {
        Self {
            listen,
            public_url: None,
            admission,
            limits: RelayLimits::default(),
            stun: Vec::new(),
            stats_addr: None,
            ws: WsConfig::default(),
            handshake_limits: AdmissionLimits::default(),
            metrics_log_interval: DEFAULT_METRICS_LOG_INTERVAL,
            tap: None,
        }
    }

    /// The options of the relay's WebSockets: the binding's defaults (15 s pings, 45 s
    /// idle timeout, 10 s upgrade) with [`ws`](Self::ws)'s overrides.
    fn ws_options(&self) -> WsOptions {
        let d = WsOptions::default();
        WsOptions {
            keep_alive_interval: self.ws.keep_alive_interval.unwrap_or(d.keep_alive_interval),
            idle_timeout: self.ws.idle_timeout.unwrap_or(d.idle_timeout),
            max_message_size: self.ws.max_message_size.unwrap_or(d.max_message_size),
            ..d
        }
    }
}

/// Why a relay did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayServerError {
    /// The configuration cannot work (no admission rule, a zero limit, ...).
    #[error(transparent)]
    Config(#[from] RelayConfigError),
    /// A socket could not be bound.
    #[error("cannot bind the relay's {what} on {addr}: {source}")]
    Bind {
        /// Which socket (WebSocket listener, STUN, stats).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The I/O runtime failed.
    #[error("relay I/O runtime: {0}")]
    Runtime(String),
}

/// A running relay.
#[derive(Clone, Debug)]
pub struct RelayHandle {
    /// The relay's URL (its name in challenges): what clients pass as `--relay`.
    pub url: String,
    /// The WebSocket listener's bound address.
    pub local_addr: SocketAddr,
    /// The bound STUN addresses, in the order configured.
    pub stun_addrs: Vec<SocketAddr>,
    /// The bound stats endpoint, if any.
    pub stats_addr: Option<SocketAddr>,
    /// The server actor: send it [`GetRelayMetrics`] and [`StopRelay`].
    pub addr: Addr<RelayServerActor>,
}

/// Starts relay servers.
#[derive(Debug)]
pub struct RelayServer;

/// Sockets bound on the I/O runtime before the actor starts.
pub(crate) struct BoundSockets {
    pub(crate) listener: tokio::net::TcpListener,
    pub(crate) stun: stun::StunSockets,
    pub(crate) stats: Option<tokio::net::TcpListener>,
}

fn bind_tcp(addr: SocketAddr, what: &'static str) -> Result<tokio::net::TcpListener, RelayServerError> {
    let fail = |source| RelayServerError::Bind { what, addr, source };
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
            .map_err(fail)?;
    // SO_REUSEADDR: a restarted relay rebinds its port at once despite TIME_WAIT sockets.
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)
}

async fn bind_all(config: &RelayServerConfig) -> Result<BoundSockets, RelayServerError> {
    let listener = bind_tcp(config.listen, "WebSocket listener")?;
    let stun = stun::StunSockets::bind(&config.stun).await?;
    let stats = config.stats_addr.map(|a| bind_tcp(a, "stats endpoint")).transpose()?;
    Ok(BoundSockets { listener, stun, stats })
}

impl RelayServer {
    /// Validates `config`, binds every socket, and starts the relay in the current actix
    /// system. Fails with [`RelayServerError::Config`] (saying what to fix) or
    /// [`RelayServerError::Bind`]; nothing keeps running after an error.
    pub async fn start(config: RelayServerConfig) -> Result<RelayHandle, RelayServerError> {
        config.admission.validate()?;
        config.limits.validate()?;
        config.handshake_limits.validate().map_err(RelayConfigError::BadHandshakeLimits)?;
        let cfg = config.clone();
        let bound = on_io(async move { bind_all(&cfg).await })
            .await
            .map_err(|e| RelayServerError::Runtime(e.to_string()))??;
        let local_addr = bound.listener.local_addr().map_err(|source| RelayServerError::Bind {
            what: "WebSocket listener",
            addr: config.listen,
            source,
        })?;
        let stun_addrs = bound.stun.client_addrs();
        let stats_addr = bound.stats.as_ref().and_then(|s| s.local_addr().ok());
        let scheme = if config.ws.server_tls().is_some() { "wss" } else { "ws" };
        let url = config.public_url.clone().unwrap_or_else(|| format!("{scheme}://{local_addr}"));
        let mut state = RelayState::new(config.limits.clone());
        state.set_stun(stun_addrs.clone());
        let actor = RelayServerActor::new(server::ServerParts {
            state,
            url: Arc::from(url.as_str()),
            config,
            sockets: Some(bound),
        });
        let addr = actor.start();
        tracing::info!(%url, %local_addr, stun = ?stun_addrs, stats = ?stats_addr, "relay listening");
        Ok(RelayHandle { url, local_addr, stun_addrs, stats_addr, addr })
    }
}
