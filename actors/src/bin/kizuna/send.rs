//! `kizuna send`: resumable, verified file transfer.

use std::{
    io::IsTerminal,
    path::PathBuf,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use kizuna::PeerAddress;
use kizuna_actors::services::{self, Progress, SendOptions, Stage};
use serde_json::json;

use crate::{
    args::{self, TransportChoice},
    client, output, CliResult,
};

/// Send a file to a node started with `kizuna node --recv-dir DIR`.
///
/// An interrupted transfer resumes where it stopped when sent again (the receiver keeps
/// `NAME.part`; only a prefix whose SHA-256 matches is reused). Sent again with the same
/// --key, it takes over at once even from an upload the receiver still thinks is running
/// (the sender was killed); another identity is refused until that upload ends. The
/// receiver verifies the SHA-256 of the whole file; a mismatch exits with code 1. Progress
/// goes to stderr (a bar on a terminal, a line every second otherwise). With --json, the
/// result is one JSON object: {"peer", "transport", "path" (at connect), "name", "size",
/// "resumed_from", "sent", "sha256", "elapsed_ms", "mbps", "resumes" (new streams after a
/// failed one), "moves" (relayed to direct mid-transfer), "status"}. A transfer follows
/// the peer's traffic: started relayed, it moves to the direct path once hole punching
/// found one; cut by a dead path, it resumes on the next.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// The node's ticket (PEERID@quic=IP:PORT,tcp=IP:PORT), or its bare PEERID with --relay.
    #[arg(value_name = "TARGET", value_parser = args::parse_ticket)]
    target: PeerAddress,
    /// The file to send (stored under its file name).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Transport to use: auto tries the ticket's transports in order.
    #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
    transport: TransportChoice,
    #[command(flatten)]
    relay: args::RelayArgs,
    #[command(flatten)]
    ice: args::IceArgs,
    /// Key file (default: $KIZUNA_KEY if set, else a fresh temporary identity).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Send at most this many bytes per second, e.g. 4MiB (default: as fast as the path
    /// goes).
    #[arg(long, value_parser = args::parse_size, value_name = "SIZE")]
    rate: Option<u64>,
}

/// How often plain progress lines are printed when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(1);

fn progress_reporter(name: String) -> (Box<dyn FnMut(Progress) + Send>, Option<ProgressBar>) {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{msg:>9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let b = bar.clone();
        let f = move |p: Progress| {
            b.set_length(p.total);
            b.set_position(p.done);
            b.set_message(match p.stage {
                Stage::Hashing => "hashing",
                Stage::Sending => "sending",
                _ => "verifying",
            });
        };
        (Box::new(f), Some(bar))
    } else {
        let mut last: Option<(Instant, Stage)> = None;
        let f = move |p: Progress| {
            let due = match last {
                None => true,
                Some((t, stage)) => stage != p.stage || t.elapsed() >= PLAIN_PROGRESS_EVERY,
            };
            if due {
                last = Some((Instant::now(), p.stage));
                let pct = if p.total == 0 { 100.0 } else { 100.0 * p.done as f64 / p.total as f64 };
                let stage = match p.stage {
                    Stage::Hashing => "hashing",
                    Stage::Sending => "sending",
                    _ => "verifying",
                };
                eprintln!("{name}: {stage} {}/{} ({pct:.0}%)", output::bytes(p.done), output::bytes(p.total));
            }
        };
        (Box::new(f), None)
    }
}

/// Runs `kizuna send`.
pub(crate) async fn run(a: SendArgs) -> CliResult {
    if a.rate == Some(0) {
        return Err(crate::CliError::Usage("--rate must be more than 0 bytes per second".into()));
    }
    let plan = a.transport.restrict(&a.target, &a.relay)?;
    let key = args::client_key(a.key.as_deref())?;
    let peer = plan.target.peer_id;
    let session = client::connect(key, plan, args::net(&a.relay, &a.ice)?).await?;
    let info = session.info.clone();
    let name = a.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (report, bar) = progress_reporter(name);
    let opts = SendOptions { rate: a.rate, ..SendOptions::default() };
    let r = services::send_file_with(&session.node, peer, &a.file, opts, report).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    session.close().await;
    let r = r?;
    let mbps = if r.elapsed.is_zero() { 0.0 } else { r.sent as f64 * 8.0 / r.elapsed.as_secs_f64() / 1e6 };
    if a.json {
        output::json_line(&json!({
            "peer": peer.to_string(),
            "transport": info.protocol.name(),
            "path": info.path.name(),
            "name": r.name,
            "size": r.size,
            "resumed_from": r.resumed_from,
            "sent": r.sent,
            "sha256": r.sha256,
            "elapsed_ms": output::ms(r.elapsed),
            "mbps": output::round2(mbps),
            "resumes": r.resumes,
            "moves": r.moves,
            "status": "ok",
        }));
    } else {
        let resumed = if r.resumed_from > 0 {
            format!(" (resumed at {})", output::bytes(r.resumed_from))
        } else {
            String::new()
        };
        output::line(&format!(
            "sent {} ({}) to {} via {} in {:.2} s{resumed}, {mbps:.1} Mbit/s; sha256 {} verified",
            r.name,
            output::bytes(r.size),
            args::short(&peer),
            info.protocol,
            r.elapsed.as_secs_f64(),
            r.sha256
        ));
    }
    Ok(())
}
