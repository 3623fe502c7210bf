//! `kizuna ping`: round trips over the echo service.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use kizuna::PeerAddress;
use kizuna_actors::{
    api::{Event, Send},
    services::{Echo, PingWindow, ServiceError, PING_TIMEOUT},
};
use serde_json::json;

use crate::{
    args::{self, TransportChoice},
    client, output, CliError, CliResult,
};

/// Measure round-trip times to a node (which must run `kizuna node`).
///
/// Human output follows the Unix ping. With --json, one JSON object per ping on its own
/// line, in the order the outcomes happen: {"seq", "peer", "transport", "path"
/// (direct|relayed), "switches" (path changes so far), "connect_ms", "rtt_ms" (null when
/// lost), "status" (ok|timeout|duplicate|error), "reordered" (an earlier ping was still
/// unanswered)}. A "duplicate" line is a second echo of a ping already answered or given
/// up. Exits 1 if no reply came back.
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
    /// Pings unanswered at most at once: with more than 1, the next ping goes out at its
    /// interval without waiting for the previous echo (a load test of exactly-once,
    /// in-order delivery: echoes are matched by number).
    #[arg(long, default_value_t = 1, value_name = "N")]
    in_flight: usize,
    /// Key file (default: $KIZUNA_KEY if set, else a fresh temporary identity).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// One JSON object per ping on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `kizuna ping`.
pub(crate) async fn run(a: PingArgs) -> CliResult {
    if a.in_flight == 0 {
        return Err(CliError::Usage("--in-flight must be at least 1".into()));
    }
    let plan = a.transport.restrict(&a.target, &a.relay)?;
    let key = args::client_key(a.key.as_deref())?;
    let peer = plan.target.peer_id;
    let mut session = client::connect(key, plan, args::net(&a.relay, &a.ice)?).await?;
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
    let mut out = Lines { json: a.json, peer, connect_ms, fallback: info, tally: Tally::default() };
    let mut window = PingWindow::new();
    let interval = Duration::from_millis(a.interval);
    let mut next_send = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut fatal = None;
    loop {
        let more = a.count == 0 || window.sent() < a.count;
        if !more && window.in_flight() == 0 {
            break;
        }
        let can_send = more && window.in_flight() < a.in_flight;
        let expiry = window.next_expiry(PING_TIMEOUT);
        tokio::select! {
            _ = tokio::time::sleep_until(next_send.into()), if can_send => {
                let now = Instant::now();
                // Keep the cadence; after a stall (the window was full), restart it.
                next_send = (next_send + interval).max(now.checked_sub(interval).unwrap_or(now));
                let (seq, data) = window.next(now);
                if let Err(e) = session.node.send(Send { peer, data }).await? {
                    out.print(&session.node, seq, Outcome::Error(e.to_string())).await;
                    fatal = Some(ServiceError::Node(e));
                    break;
                }
            }
            ev = session.events.recv() => match ev {
                Some(Event::MessageReceived { peer: p, data }) if p == peer => {
                    match window.on_message(Instant::now(), &data) {
                        Echo::Answered { seq, rtt, reordered } => {
                            out.print(&session.node, seq, Outcome::Ok { rtt, reordered }).await
                        }
                        Echo::Unexpected { seq } => out.print(&session.node, seq, Outcome::Duplicate).await,
                        Echo::Other => {}
                    }
                }
                Some(Event::PeerDisconnected { peer: p, .. }) if p == peer => {
                    fatal = Some(ServiceError::Disconnected(peer));
                    break;
                }
                Some(_) => {}
                None => {
                    fatal = Some(ServiceError::Node(kizuna_actors::NodeError::ShuttingDown));
                    break;
                }
            },
            _ = tokio::time::sleep_until(expiry.unwrap_or(next_send).into()), if expiry.is_some() => {
                for seq in window.expire(Instant::now(), PING_TIMEOUT) {
                    out.print(&session.node, seq, Outcome::Timeout).await;
                }
            }
            _ = &mut ctrl_c => break,
        }
    }
    session.close().await;
    let t = &out.tally;
    let sent = window.sent();
    if !a.json {
        let received = t.rtts.len() as u64;
        let loss = if sent == 0 { 0.0 } else { 100.0 * sent.saturating_sub(received) as f64 / sent as f64 };
        output::line(&format!("--- {} ping statistics ---", args::short(&peer)));
        let mut line = format!("{sent} sent, {received} received, {loss:.0}% loss");
        if t.duplicates > 0 || t.reordered > 0 {
            line += &format!(", {} duplicates, {} reordered", t.duplicates, t.reordered);
        }
        output::line(&line);
        if !t.rtts.is_empty() {
            let ms: Vec<f64> = t.rtts.iter().map(|d| output::ms(*d)).collect();
            let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
            let max = ms.iter().copied().fold(0.0, f64::max);
            let avg = ms.iter().sum::<f64>() / ms.len() as f64;
            output::line(&format!("rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms"));
        }
    }
    if let Some(e) = fatal {
        return Err(CliError::Failed(format!("ping stopped: {e}")));
    }
    if t.rtts.is_empty() && sent > 0 {
        return Err(CliError::Failed(format!("no reply from {peer}")));
    }
    Ok(())
}

/// What became of one ping.
enum Outcome {
    Ok { rtt: Duration, reordered: bool },
    Timeout,
    Duplicate,
    Error(String),
}

/// What the replies added up to.
#[derive(Default)]
struct Tally {
    rtts: Vec<Duration>,
    duplicates: u64,
    reordered: u64,
}

/// Prints one line per ping outcome (text or JSON) and keeps the tally.
struct Lines {
    json: bool,
    peer: kizuna::PeerId,
    connect_ms: f64,
    /// The connection as it was at connect time, if the node reports none now.
    fallback: kizuna::ConnectionInfo,
    tally: Tally,
}

impl Lines {
    async fn print(&mut self, node: &actix::Addr<kizuna_actors::Supervisor>, seq: u64, o: Outcome) {
        match &o {
            Outcome::Ok { rtt, reordered } => {
                self.tally.rtts.push(*rtt);
                self.tally.reordered += u64::from(*reordered);
            }
            Outcome::Duplicate => self.tally.duplicates += 1,
            _ => {}
        }
        // The path can change during a run (a relayed connection upgraded to direct by
        // hole punching, a failover): report the connection as it is now, one line per ping.
        let (now, switches) = current_info(node, self.peer).await;
        let now = now.unwrap_or_else(|| self.fallback.clone());
        let (status, rtt) = match &o {
            Outcome::Ok { rtt, .. } => ("ok", Some(*rtt)),
            Outcome::Timeout => ("timeout", None),
            Outcome::Duplicate => ("duplicate", None),
            Outcome::Error(_) => ("error", None),
        };
        if self.json {
            let mut v = json!({
                "seq": seq,
                "peer": self.peer.to_string(),
                "transport": now.protocol.name(),
                "path": now.path.name(),
                "connect_ms": self.connect_ms,
                "rtt_ms": rtt.map(output::ms),
                "status": status,
                "switches": switches,
                "reordered": matches!(o, Outcome::Ok { reordered: true, .. }),
            });
            if let Outcome::Error(e) = &o {
                v["error"] = json!(e);
            }
            output::json_line(&v);
            return;
        }
        match (&o, rtt) {
            (Outcome::Ok { reordered, .. }, Some(rtt)) => output::line(&format!(
                "seq={seq} time={:.3} ms via {} ({}){}",
                output::ms(rtt),
                now.protocol,
                now.path,
                if *reordered { " (reordered)" } else { "" }
            )),
            (Outcome::Error(e), _) => output::line(&format!("seq={seq} error: {e}")),
            _ => output::line(&format!("seq={seq} {status}")),
        }
    }
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
