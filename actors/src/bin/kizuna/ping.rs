//! `kizuna ping`: round trips over the echo service.

use std::{path::PathBuf, time::Duration};

use kizuna::PeerAddress;
use kizuna_actors::services::{self, ServiceError, PING_TIMEOUT};
use serde_json::json;

use crate::{
    args::{self, TransportChoice},
    client, output, CliError, CliResult,
};

/// Measure round-trip times to a node (which must run `kizuna node`).
///
/// Human output follows the Unix ping. With --json, one JSON object per ping on its own
/// line: {"seq", "peer", "transport", "path" (direct|relayed), "switches" (path changes so
/// far), "connect_ms", "rtt_ms"
/// (null when lost), "status" (ok|timeout|error)}. Exits 1 if no reply came back.
#[derive(Debug, clap::Args)]
pub(crate) struct PingArgs {
    /// The node's ticket (PEERID@quic=IP:PORT,tcp=IP:PORT), or its bare PEERID with --relay.
    #[arg(value_name = "TARGET", value_parser = args::parse_ticket)]
    target: PeerAddress,
    /// Transport to use: auto tries the ticket's transports in order.
    #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
    transport: TransportChoice,
    #[command(flatten)]
    relay: args::RelayArgs,
    #[command(flatten)]
    ice: args::IceArgs,
    /// Pings to send; 0 = until Ctrl-C.
    #[arg(long, default_value_t = 4)]
    count: u64,
    /// Milliseconds between pings.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    interval: u64,
    /// Key file (default: $KIZUNA_KEY if set, else a fresh temporary identity).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// One JSON object per ping on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `kizuna ping`.
pub(crate) async fn run(a: PingArgs) -> CliResult {
    let (target, protocols) = a.transport.restrict(&a.target, &a.relay)?;
    let key = args::client_key(a.key.as_deref())?;
    let peer = target.peer_id;
    let mut session = client::connect(key, target, protocols, args::net(&a.relay, &a.ice)?).await?;
    let info = session.info.clone();
    let connect_ms = output::ms(session.connect_time);
    if !a.json {
        output::line(&format!(
            "PING {} ({}) via {}, {}: connected in {connect_ms:.2} ms",
            args::short(&peer),
            info.remote_addr,
            info.protocol,
            info.path
        ));
    }
    let mut rtts = Vec::new();
    let mut sent = 0u64;
    let mut seq = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut fatal = None;
    while a.count == 0 || seq < a.count {
        seq += 1;
        if seq > 1 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(a.interval)) => {}
                _ = &mut ctrl_c => break,
            }
        }
        sent += 1;
        let r = tokio::select! {
            r = services::ping(&session.node, &mut session.events, peer, seq, PING_TIMEOUT) => r,
            _ = &mut ctrl_c => break,
        };
        let (rtt, status) = match &r {
            Ok(p) => (Some(p.rtt), "ok"),
            Err(ServiceError::Timeout(_)) => (None, "timeout"),
            Err(_) => (None, "error"),
        };
        if let Some(rtt) = rtt {
            rtts.push(rtt);
        }
        // The path can change during a run (a relayed connection upgraded to direct by
        // hole punching): report the connection as it is now, one line per ping.
        let (now, switches) = current_info(&session.node, peer).await;
        let now = now.unwrap_or_else(|| info.clone());
        if a.json {
            let mut v = json!({
                "seq": seq,
                "peer": peer.to_string(),
                "transport": now.protocol.name(),
                "path": now.path.name(),
                "connect_ms": connect_ms,
                "rtt_ms": rtt.map(output::ms),
                "status": status,
                "switches": switches,
            });
            if let Err(e) = &r {
                v["error"] = json!(e.to_string());
            }
            output::json_line(&v);
        } else {
            match (&r, rtt) {
                (_, Some(rtt)) => output::line(&format!(
                    "seq={seq} time={:.3} ms via {} ({})",
                    output::ms(rtt),
                    now.protocol,
                    now.path
                )),
                (Err(e), None) => output::line(&format!("seq={seq} {status}: {e}")),
                (Ok(_), None) => {}
            }
        }
        if let Err(e @ (ServiceError::Disconnected(_) | ServiceError::Node(_))) = r {
            fatal = Some(e);
            break;
        }
    }
    session.close().await;
    if !a.json {
        let loss = if sent == 0 { 0.0 } else { 100.0 * (sent - rtts.len() as u64) as f64 / sent as f64 };
        output::line(&format!("--- {} ping statistics ---", args::short(&peer)));
        output::line(&format!("{sent} sent, {} received, {loss:.0}% loss", rtts.len()));
        if !rtts.is_empty() {
            let ms: Vec<f64> = rtts.iter().map(|d| output::ms(*d)).collect();
            let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
            let max = ms.iter().copied().fold(0.0, f64::max);
            let avg = ms.iter().sum::<f64>() / ms.len() as f64;
            output::line(&format!("rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms"));
        }
    }
    if let Some(e) = fatal {
        return Err(CliError::Failed(format!("ping stopped: {e}")));
    }
    if rtts.is_empty() && sent > 0 {
        return Err(CliError::Failed(format!("no reply from {peer}")));
    }
    Ok(())
}

/// The path carrying `peer`'s traffic now, if any, and how often it changed (this client
/// node has one peer, so the node's count is the peer's).
async fn current_info(
    node: &actix::Addr<kizuna_actors::Supervisor>,
    peer: kizuna::PeerId,
) -> (Option<kizuna::ConnectionInfo>, u64) {
    let Ok(stats) = node.send(kizuna_actors::GetStats).await else { return (None, 0) };
    (stats.connections.into_iter().find(|c| c.peer == peer), stats.path_changes)
}
