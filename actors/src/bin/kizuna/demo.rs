//! `kizuna demo`: two nodes in one process on loopback, one row per transport.
//!
//! Each row ([`Scenario`]) starts a fresh client node limited to the row's transport,
//! connects to the serving node, pings, runs perf and reports. To add a row (WebSocket, a
//! relayed path, WebRTC): add what it needs to [`Setup`] (e.g. `Relayed { .. }` starting a
//! relay and listening through it), handle it in [`Demo::ticket_for`], and append the
//! scenario to [`SCENARIOS`].

use std::time::Duration;

use actix::Addr;
use kizuna::{
    relay::auth::Admission, relay::client::RelayEndpoint, transport::webrtc::WebRtcConfig, Keypair, PathKind,
    PeerAddress, PeerId, Protocol, TransportAddr,
};
use kizuna_actors::{
    api::{GetAddress, Listen},
    relay::{RelayHandle, RelayServer, RelayServerConfig, StopRelay},
    services::{self, PING_TIMEOUT},
    Shutdown, Subscribe, Supervisor,
};
use serde_json::json;

use crate::{
    args::{self, DialPlan, NetConfig},
    client, output, CliError, CliResult,
};

/// Run two nodes in this process on loopback and measure every transport.
///
/// Prints a table (transport, path, connect ms, RTT ms, upload/download Mbit/s, status);
/// with --json, one JSON object per row: {"transport", "path", "upgrade_ms", "connect_ms",
/// "rtt_ms", "upload_mbps", "download_mbps", "status" (ok|failed), "error"}. The last row
/// connects through the relay and is upgraded to direct QUIC by a hole punch (path
/// "relayed→direct", `upgrade_ms` the time that took). Exits 0 only if every row worked.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// Bytes each way in each perf run (e.g. 16MiB, 1G, 1000000).
    #[arg(long, value_parser = args::parse_size, default_value = "16MiB", value_name = "SIZE")]
    bytes: u64,
}

/// How a row reaches the serving node.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// Dial the server's own listener of this protocol.
    Direct(Protocol),
    /// Know only the server's peer id and reach it through the demo's relay (the server
    /// holds a reservation there; both ends run their own TLS through it).
    Relayed,
    /// As `Relayed`, but the client also runs QUIC: the relayed connection triggers a hole
    /// punch (trivial on loopback, but the full protocol: candidates, RTT-synchronised
    /// punch, QUIC over the punched socket) and is upgraded to the direct QUIC path.
    Upgraded,
    /// WebRTC data channels on loopback, signaled through the demo's relay.
    WebRtc,
}

/// One row of the demo.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// The row's label (the transport column).
    label: &'static str,
    /// How to reach the server.
    setup: Setup,
    /// The path the connection must take for the row to pass.
    path: PathKind,
}

/// The rows, in display order.
const SCENARIOS: &[Scenario] = &[
    Scenario { label: "quic", setup: Setup::Direct(Protocol::Quic), path: PathKind::Direct },
    Scenario { label: "tcp", setup: Setup::Direct(Protocol::Tcp), path: PathKind::Direct },
    Scenario { label: "websocket", setup: Setup::Direct(Protocol::WebSocket), path: PathKind::Direct },
    Scenario { label: "websocket", setup: Setup::Relayed, path: PathKind::Relayed },
    Scenario { label: "quic", setup: Setup::Upgraded, path: PathKind::Direct },
    Scenario { label: "webrtc", setup: Setup::WebRtc, path: PathKind::Direct },
];

/// How long the upgrade row waits for the relayed connection to go direct. 15 s: a
/// loopback punch takes milliseconds; the bound only keeps a failure from hanging.
const UPGRADE_WAIT: Duration = Duration::from_secs(15);

/// Pings per row; the row reports their mean.
const PINGS: u64 = 5;

/// Bound on one row: connect (10 s) + pings + a perf run of a few hundred MiB on loopback
/// fit comfortably, and a hung row cannot hang the demo.
const ROW_TIMEOUT: Duration = Duration::from_secs(120);

/// What a row measured.
#[derive(Debug, Default)]
struct RowResult {
    path: Option<PathKind>,
    /// Upgrade rows: time from the relayed connection to the direct path.
    upgrade_ms: Option<f64>,
    connect_ms: Option<f64>,
    rtt_ms: Option<f64>,
    upload_mbps: Option<f64>,
    download_mbps: Option<f64>,
    error: Option<String>,
}

struct Demo {
    server: Addr<Supervisor>,
    ticket: PeerAddress,
    bytes: u64,
    relay: RelayHandle,
}

impl Demo {
    async fn start(bytes: u64) -> Result<Self, CliError> {
        let mut protocols = Vec::new();
        for s in SCENARIOS {
            if let Setup::Direct(p) = s.setup {
                if !protocols.contains(&p) {
                    protocols.push(p);
                }
            }
        }
        let lo = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        // The demo measures the relayed path, not the relay's default shaping (16 MiB/s
        // per circuit, sized for a shared public relay): lift the bandwidth limits.
        let mut config = RelayServerConfig::new(lo, Admission::open());
        config.limits.circuit_bandwidth = 64 << 30;
        config.limits.total_bandwidth = 64 << 30;
        config.limits.max_circuit_bytes = 1 << 40;
        let relay = RelayServer::start(config)
            .await
            .map_err(|e| CliError::Failed(format!("cannot start the demo relay: {e}")))?;
        let net = NetConfig {
            relays: vec![RelayEndpoint { url: relay.url.clone(), token: None }],
            stun: vec![],
            webrtc: WebRtcConfig::loopback(),
            ..NetConfig::default()
        };
        let mut server_protocols = protocols.clone();
        server_protocols.push(Protocol::WebRtc);
        let server = client::start_node(Keypair::generate(), server_protocols, None, net)?;
        let mut events = server.send(Subscribe::default()).await?;
        for p in protocols {
            let addr = match p {
                Protocol::Quic => TransportAddr::Quic(lo),
                Protocol::WebSocket => TransportAddr::Ws(format!("ws://{lo}")),
                _ => TransportAddr::Tcp(lo),
            };
            server.send(Listen { addr }).await??;
        }
        wait_reserved(&mut events).await?;
        let ticket = server.send(GetAddress).await?;
        actix::spawn(services::serve(server.clone(), events, None));
        Ok(Self { server, ticket, bytes, relay })
    }

    /// What a scenario's client dials, and with which transports.
    fn plan_for(&self, s: &Scenario) -> Result<DialPlan, String> {
        let peer = self.ticket.peer_id;
        let plan =
            |addrs, protocols| DialPlan { target: PeerAddress::new(peer, addrs), protocols, carry: None };
        match s.setup {
            Setup::Relayed => Ok(plan(vec![], vec![])),
            Setup::Upgraded => Ok(plan(vec![], vec![Protocol::Quic])),
            Setup::WebRtc => Ok(DialPlan {
                carry: Some(vec![Protocol::WebRtc]),
                ..plan(vec![TransportAddr::WebRtc], vec![Protocol::WebRtc])
            }),
            Setup::Direct(p) => {
                let addrs: Vec<_> = self.ticket.addrs.iter().filter(|a| a.protocol() == p).cloned().collect();
                if addrs.is_empty() {
                    return Err(format!("the server has no {p} listener"));
                }
                Ok(plan(addrs, vec![p]))
            }
        }
    }

    async fn run_row(&self, s: &Scenario) -> RowResult {
        let mut row = RowResult::default();
        let work = self.measure(s, &mut row);
        match tokio::time::timeout(ROW_TIMEOUT, work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => row.error = Some(e),
            Err(_) => row.error = Some(format!("did not finish within {ROW_TIMEOUT:?}")),
        }
        row
    }

    async fn measure(&self, s: &Scenario, row: &mut RowResult) -> Result<(), String> {
        let plan = self.plan_for(s)?;
        let peer = plan.target.peer_id;
        let relays = match s.setup {
            Setup::Relayed | Setup::Upgraded | Setup::WebRtc => {
                vec![RelayEndpoint { url: self.relay.url.clone(), token: None }]
            }
            Setup::Direct(_) => Vec::new(),
        };
        let net =
            NetConfig { relays, stun: vec![], webrtc: WebRtcConfig::loopback(), ..NetConfig::default() };
        let mut session = client::connect(Keypair::generate(), plan, net).await.map_err(|e| e.to_string())?;
        row.path = Some(session.info.path);
        row.connect_ms = Some(output::ms(session.connect_time));
        let result = async {
            if matches!(s.setup, Setup::Upgraded) && session.info.path == PathKind::Relayed {
                let started = std::time::Instant::now();
                wait_upgraded(&mut session.events, peer).await?;
                row.upgrade_ms = Some(output::ms(started.elapsed()));
                row.path = Some(PathKind::Direct);
            } else if session.info.path != s.path {
                return Err(format!("expected a {} path, got {}", s.path, session.info.path));
            }
            let mut total = Duration::ZERO;
            for seq in 1..=PINGS {
                total += services::ping(&session.node, &mut session.events, peer, seq, PING_TIMEOUT)
                    .await
                    .map_err(|e| format!("ping {seq}: {e}"))?
                    .rtt;
            }
            row.rtt_ms = Some(output::ms(total / PINGS as u32));
            let r = services::perf(&session.node, peer, self.bytes, self.bytes)
                .await
                .map_err(|e| format!("perf: {e}"))?;
            row.upload_mbps = Some(output::round2(r.upload_mbps()));
            row.download_mbps = Some(output::round2(r.download_mbps()));
            Ok(())
        }
        .await;
        session.close().await;
        result
    }
}

/// Waits for `peer`'s connection to be upgraded to a direct path.
async fn wait_upgraded(events: &mut kizuna_actors::EventStream, peer: PeerId) -> Result<(), String> {
    let wait = async {
        while let Some(ev) = events.recv().await {
            match ev {
                kizuna_actors::Event::PathChanged {
                    peer: p,
                    reason: kizuna::peer::ChangeReason::Upgrade,
                    ..
                } if p == peer => return Ok(()),
                kizuna_actors::Event::HolePunchFailed { peer: p, reason } if p == peer => {
                    return Err(format!("hole punch failed: {reason}"))
                }
                _ => {}
            }
        }
        Err("the node stopped".to_string())
    };
    tokio::time::timeout(UPGRADE_WAIT, wait)
        .await
        .unwrap_or_else(|_| Err(format!("not upgraded to direct within {UPGRADE_WAIT:?}")))
}

/// How long the demo waits for its server's relay reservation. 10 s: a loopback
/// reservation takes milliseconds; anything near this is a failure worth reporting.
const RESERVATION_WAIT: Duration = Duration::from_secs(10);

async fn wait_reserved(events: &mut kizuna_actors::EventStream) -> Result<(), CliError> {
    let wait = async {
        while let Some(ev) = events.recv().await {
            if let kizuna_actors::Event::RelayReserved { .. } = ev {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(RESERVATION_WAIT, wait).await {
        Ok(true) => Ok(()),
        _ => Err(CliError::Failed("the demo node could not reserve at the demo relay".into())),
    }
}

fn cell(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into())
}

/// Runs `kizuna demo`.
pub(crate) async fn run(a: DemoArgs) -> CliResult {
    let demo = Demo::start(a.bytes).await?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for s in SCENARIOS {
        let r = demo.run_row(s).await;
        if r.error.is_some() {
            failed += 1;
        }
        if a.json {
            output::json_line(&json!({
                "transport": s.label,
                "path": r.path.map(|p| p.name()),
                "upgrade_ms": r.upgrade_ms,
                "connect_ms": r.connect_ms,
                "rtt_ms": r.rtt_ms,
                "upload_mbps": r.upload_mbps,
                "download_mbps": r.download_mbps,
                "bytes": a.bytes,
                "status": if r.error.is_none() { "ok" } else { "failed" },
                "error": r.error,
            }));
        }
        rows.push((s, r));
    }
    let _ = demo.server.send(Shutdown).await;
    let _ = demo.relay.addr.send(StopRelay).await;
    if !a.json {
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|(s, r)| {
                vec![
                    s.label.to_string(),
                    match (r.path, r.upgrade_ms) {
                        (Some(p), Some(ms)) => format!("relayed→{} in {ms:.0} ms", p.name()),
                        (Some(p), None) => p.name().to_string(),
                        (None, _) => "-".into(),
                    },
                    cell(r.connect_ms, 2),
                    cell(r.rtt_ms, 3),
                    cell(r.upload_mbps, 1),
                    cell(r.download_mbps, 1),
                    match &r.error {
                        None => "ok".into(),
                        Some(e) => format!("FAILED: {e}"),
                    },
                ]
            })
            .collect();
        output::line(&format!(
            "kizuna demo: two nodes on loopback, {} each way per perf run\n",
            output::bytes(a.bytes)
        ));
        output::line(&output::table(
            &["transport", "path", "connect ms", "rtt ms", "up Mbit/s", "down Mbit/s", "status"],
            &body,
        ));
    }
    if failed > 0 {
        return Err(CliError::Failed(format!("{failed} of {} demo rows failed", SCENARIOS.len())));
    }
    Ok(())
}
