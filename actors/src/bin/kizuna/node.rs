//! `kizuna node`: a node serving echo, perf and file receive until stopped.

use std::path::PathBuf;

use kizuna::{PeerId, Protocol, TransportAddr};
use kizuna_actors::{
    api::{Event, GetAddress, Listen},
    services::{self, ServeOptions, ServiceReport},
    Shutdown, Subscribe,
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{args, client, output, signals::StopSignals, CliError, CliResult};

/// Run a node: listen, print its ticket, serve echo, perf and file receive until Ctrl-C or
/// SIGTERM.
///
/// The FIRST line of stdout is the ticket (PEERID@quic=IP:PORT,tcp=IP:PORT) to pass to
/// `kizuna ping/perf/send`; connection events are logged to stderr. With --json, stdout
/// carries one JSON object per line instead, the first being
/// {"event":"listening","ticket":...,"peer":...,"addrs":[...]}, then "connected"
/// {peer, transport, path, remote}, "disconnected" {peer, reason}, "file_received"
/// {peer, path, size, resumed_from, ok}, "perf_served" {peer, upload, download, ms},
/// "stream_failed" {peer, error}, and "shutdown" last.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// Key file, created if missing. Default: $KIZUNA_KEY if set, else
    /// $XDG_CONFIG_HOME/kizuna/key, else ~/.config/kizuna/key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Address to listen on, repeatable, e.g. tcp=0.0.0.0:4000, quic=[::]:4001, or webrtc=1
    /// (answer WebRTC offers from nodes and browsers, signaled over another connection to
    /// this node or through --relay).
    /// Default: quic=0.0.0.0:0 and tcp=0.0.0.0:0 (port 0 picks a free port). The ticket shows
    /// a wildcard address as 127.0.0.1: to be reachable from other hosts, listen on the
    /// host's own IP.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<TransportAddr>,
    /// Accept files into this directory (created if missing); without it, files are refused.
    /// A file is written only as DIR/NAME.part and renamed to DIR/NAME once its SHA-256 is
    /// verified: it never overwrites an existing entry, and symlinks there are never
    /// followed.
    #[arg(long, value_name = "DIR")]
    recv_dir: Option<PathBuf>,
    /// Accept files only from this peer (repeatable; a peer id as printed by `kizuna id`).
    /// Default: from any authenticated peer, since --recv-dir itself is the opt-in and
    /// received files never overwrite anything and land only in that directory.
    #[arg(long = "recv-from", value_name = "PEER_ID", requires = "recv_dir", value_parser = args::parse_peer_id)]
    recv_from: Vec<PeerId>,
    /// Print JSON lines on stdout (see above) instead of the bare ticket.
    #[arg(long)]
    json: bool,
    /// Relays and STUN servers (with --stun, the node reports its NAT type at start: a
    /// log line, or a JSON line `{"event":"nat",...}`).
    #[command(flatten)]
    relay: args::RelayArgs,
    /// WebRTC (enabled by `--listen webrtc=1`; offers arrive over any other connection to
    /// the node, or through the relay): --turn, --turn-user,
    /// --turn-pass, --ice-relay-only, --webrtc-bind (--stun, above, serves ICE too).
    #[command(flatten)]
    ice: args::IceArgs,
    /// Admission of inbound handshakes: --max-pending-handshakes, --max-pending-per-address,
    /// --first-byte-timeout.
    #[command(flatten)]
    admission: args::AdmissionArgs,
}

/// Reports buffered between the service and the output loop; beyond that they are dropped
/// (they are logs, and the service must never wait for its log).
const REPORT_BUFFER: usize = 256;

fn default_listen() -> Vec<TransportAddr> {
    let any = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    vec![TransportAddr::Quic(any), TransportAddr::Tcp(any)]
}

/// Runs `kizuna node`.
pub(crate) async fn run(a: NodeArgs) -> CliResult {
    let listen = if a.listen.is_empty() { default_listen() } else { a.listen };
    let mut protocols: Vec<Protocol> = Vec::new();
    if listen.iter().all(|l| *l == TransportAddr::WebRtc) && a.relay.relays.is_empty() {
        return Err(CliError::Usage(
            "--listen webrtc=1 alone needs --relay URL: WebRTC offers are signaled over another \
             connection to this node (add e.g. --listen quic=0.0.0.0:0) or through a relay"
                .into(),
        ));
    }
    for l in &listen {
        if !args::SUPPORTED.contains(&l.protocol()) && *l != TransportAddr::WebRtc {
            return Err(CliError::Usage(format!(
                "cannot listen on {l}: this node supports only tcp, quic, ws and webrtc"
            )));
        }
        if !protocols.contains(&l.protocol()) {
            protocols.push(l.protocol());
        }
    }
    let key_path = match a.key {
        Some(p) => p,
        None => args::default_key_path()?,
    };
    let key = args::load_or_create_key(&key_path)?;
    if let Some(dir) = &a.recv_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::Failed(format!("cannot create receive directory {}: {e}", dir.display()))
        })?;
    }

    let mut net = args::net(&a.relay, &a.ice)?;
    net.handshakes = a.admission.limits()?;
    let node = client::start_node(key, protocols, None, net)?;
    let service_events = node.send(Subscribe::default()).await?;
    let mut log_events = node.send(Subscribe::default()).await?;
    // The WebRTC listener starts with the node (it answers offers through the relay).
    for l in listen.iter().filter(|l| **l != TransportAddr::WebRtc) {
        if let Err(e) = node.send(Listen { addr: l.clone() }).await? {
            let _ = node.send(Shutdown).await;
            return Err(CliError::Failed(e.to_string()));
        }
    }
    if !a.relay.relays.is_empty() {
        wait_for_reservation(&mut log_events, a.json).await;
    }
    let mut stop = StopSignals::install()?;
    let ticket = node.send(GetAddress).await?;
    if a.json {
        output::json_line(&json!({
            "event": "listening",
            "ticket": ticket.ticket(),
            "peer": ticket.peer_id.to_string(),
            "addrs": ticket.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        }));
    } else {
        output::line(&ticket.ticket());
        eprintln!("node {} listening; try: kizuna ping {}", ticket.peer_id, ticket.ticket());
    }

    if !a.relay.stun.is_empty() {
        report_nat(&a.relay.stun, a.json).await;
    }

    let (tx, mut reports) = mpsc::channel(REPORT_BUFFER);
    let recv_from = (!a.recv_from.is_empty()).then(|| a.recv_from.iter().copied().collect());
    let opts = ServeOptions { recv_dir: a.recv_dir.clone(), recv_from, reports: Some(tx) };
    actix::spawn(services::serve_with(node.clone(), service_events, opts));

    loop {
        tokio::select! {
            _ = stop.recv() => break,
            ev = log_events.recv() => match ev {
                Some(ev) => log_event(&ev, a.json),
                None => return Err(CliError::Failed("the node stopped unexpectedly".into())),
            },
            Some(r) = reports.recv() => log_report(&r, a.json),
        }
    }
    tracing::info!("shutting down");
    let _ = node.send(Shutdown).await;
    if a.json {
        output::json_line(&json!({ "event": "shutdown" }));
    }
    Ok(())
}

/// How long the node waits for its first relay reservation before printing its ticket
/// anyway. 15 s: the relay client's own bound on connecting and reserving.
const RESERVATION_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits until the node holds a reservation at one of its relays (so the ticket's relay
/// route works as soon as it is printed), logging relay failures meanwhile.
async fn wait_for_reservation(events: &mut kizuna_actors::EventStream, json: bool) {
    let deadline = tokio::time::Instant::now() + RESERVATION_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::RelayReserved { url })) => {
                tracing::info!(%url, "reserved at relay");
                return;
            }
            Ok(Some(ev)) => log_event(&ev, json),
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(
                    "no relay reservation after {RESERVATION_WAIT:?}; still trying in the background"
                );
                return;
            }
        }
    }
}

fn log_event(ev: &Event, json: bool) {
    match ev {
        Event::PeerConnected { info } => {
            if json {
                output::json_line(&json!({
                    "event": "connected",
                    "peer": info.peer.to_string(),
                    "transport": info.protocol.name(),
                    "path": info.path.name(),
                    "remote": info.remote_addr.to_string(),
                }));
            } else {
                tracing::info!(peer = %info.peer, transport = %info.protocol, path = %info.path, remote = %info.remote_addr, "peer connected");
            }
        }
        Event::PeerDisconnected { peer, reason } => {
            if json {
                output::json_line(&json!({
                    "event": "disconnected",
                    "peer": peer.to_string(),
                    "reason": reason.to_string(),
                }));
            } else {
                tracing::info!(%peer, %reason, "peer disconnected");
            }
        }
        Event::ListenerFailed { addr, error } => tracing::warn!(%addr, %error, "listener failed"),
        Event::ChildGivenUp { child, last_error } => {
            tracing::warn!(%child, %last_error, "gave up restarting")
        }
        Event::LimitHit { limit, detail } => tracing::warn!(%limit, %detail, "limit hit"),
        Event::PathChanged { peer, from, to, reason } => {
            if json {
                output::json_line(&json!({
                    "event": "path_changed",
                    "peer": peer.to_string(),
                    "from": path_json(from),
                    "to": path_json(to),
                    "reason": reason.name(),
                    // As before this event existed (`path_upgraded`): where traffic goes now.
                    "transport": to.protocol.name(),
                    "path": to.path.name(),
                }));
            } else {
                tracing::info!(
                    %peer,
                    reason = reason.name(),
                    "path changed: {} {} -> {} {}",
                    from.protocol,
                    from.path,
                    to.protocol,
                    to.path
                );
            }
        }
        Event::PathDegraded { peer, path, rtt, loss } => {
            let rtt_ms = rtt.map(|r| r.as_secs_f64() * 1e3);
            if json {
                output::json_line(&json!({
                    "event": "path_degraded",
                    "peer": peer.to_string(),
                    "path": path_json(path),
                    "rtt_ms": rtt_ms,
                    "loss": loss,
                }));
            } else {
                tracing::warn!(%peer, transport = %path.protocol, path = %path.path, ?rtt_ms, loss, "path degraded");
            }
        }
        Event::HolePunchFailed { peer, reason } => {
            if json {
                output::json_line(&json!({
                    "event": "hole_punch_failed",
                    "peer": peer.to_string(),
                    "reason": reason,
                }));
            } else {
                tracing::info!(%peer, %reason, "hole punch failed; staying relayed");
            }
        }
        Event::RelayReserved { url } => {
            if json {
                output::json_line(&json!({ "event": "relay_reserved", "relay": url }));
            } else {
                tracing::info!(%url, "reserved at relay");
            }
        }
        Event::RelayFailed { url, reason } => {
            if json {
                output::json_line(&json!({ "event": "relay_failed", "relay": url, "reason": reason }));
            } else {
                tracing::warn!(%url, %reason, "relay failed");
            }
        }
        _ => {}
    }
}

/// A path in JSON lines: `{"transport", "path", "remote"}`.
fn path_json(info: &kizuna::ConnectionInfo) -> serde_json::Value {
    json!({
        "transport": info.protocol.name(),
        "path": info.path.name(),
        "remote": info.remote_addr.to_string(),
    })
}

fn log_report(r: &ServiceReport, json: bool) {
    match r {
        ServiceReport::PerfServed { peer, upload, download, elapsed } => {
            if json {
                output::json_line(&json!({
                    "event": "perf_served",
                    "peer": peer.to_string(),
                    "upload": upload,
                    "download": download,
                    "ms": output::ms(*elapsed),
                }));
            } else {
                tracing::info!(%peer, upload, download, ?elapsed, "perf served");
            }
        }
        ServiceReport::FileReceived { peer, path, size, resumed_from, ok } => {
            if json {
                output::json_line(&json!({
                    "event": "file_received",
                    "peer": peer.to_string(),
                    "path": path.display().to_string(),
                    "size": size,
                    "resumed_from": resumed_from,
                    "ok": ok,
                }));
            } else if *ok {
                tracing::info!(%peer, path = %path.display(), size, resumed_from, "file received and verified");
            } else {
                tracing::warn!(%peer, path = %path.display(), "file discarded: SHA-256 mismatch");
            }
        }
        ServiceReport::StreamFailed { peer, error } => {
            if json {
                output::json_line(
                    &json!({ "event": "stream_failed", "peer": peer.to_string(), "error": error }),
                );
            } else {
                tracing::info!(%peer, %error, "service request failed");
            }
        }
        _ => {}
    }
}

/// Classifies the NAT in front of the node over STUN and reports it (never fatal: the node
/// serves whatever the answer).
async fn report_nat(stun: &[String], json: bool) {
    match crate::nat::probe(stun, None).await {
        Ok(report) if json => {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["event"] = json!("nat");
            output::json_line(&v);
        }
        Ok(report) => {
            let mapping = report.mapping.map(|m| m.to_string()).unwrap_or_else(|| "unknown".into());
            let public = report.public_addr.map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
            tracing::info!(nat_type = %report.nat_type, %mapping, %public, "NAT detected");
            eprintln!("NAT type: {} (mapping {mapping}, public address {public})", report.nat_type);
        }
        Err(e) => tracing::warn!("NAT detection failed: {e}"),
    }
}
