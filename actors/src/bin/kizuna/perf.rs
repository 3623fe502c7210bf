//! `kizuna perf`: throughput both ways over one stream.

use std::path::PathBuf;

use kizuna::PeerAddress;
use kizuna_actors::services;
use serde_json::json;

use crate::{
    args::{self, TransportChoice},
    client, output, CliResult,
};

/// Measure throughput to a node (which must run `kizuna node`), each direction separately.
///
/// With --json, one JSON object: {"peer", "transport", "path", "connect_ms", "bytes",
/// "upload_mbps", "download_mbps", "upload_ms", "download_ms"}. Mbit/s are 10^6 bit/s.
#[derive(Debug, clap::Args)]
pub(crate) struct PerfArgs {
    /// The node's ticket (PEERID@quic=IP:PORT,tcp=IP:PORT), or its bare PEERID with --relay.
    #[arg(value_name = "TARGET", value_parser = args::parse_ticket)]
    target: PeerAddress,
    /// Bytes to send each way: 1000000, 64MiB (=64M, powers of 1024), 500MB (powers of 1000), 1G.
    #[arg(long, value_parser = args::parse_size, default_value = "64MiB", value_name = "SIZE")]
    bytes: u64,
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
}

/// Runs `kizuna perf`.
pub(crate) async fn run(a: PerfArgs) -> CliResult {
    let plan = a.transport.restrict(&a.target, &a.relay)?;
    let key = args::client_key(a.key.as_deref())?;
    let peer = plan.target.peer_id;
    let session = client::connect(key, plan, args::net(&a.relay, &a.ice)?).await?;
    let info = session.info.clone();
    if !a.json {
        output::line(&format!(
            "connected to {} via {} ({}) in {:.2} ms; sending {} each way",
            args::short(&peer),
            info.protocol,
            info.path,
            output::ms(session.connect_time),
            output::bytes(a.bytes)
        ));
    }
    let r = services::perf(&session.node, peer, a.bytes, a.bytes).await;
    let connect_ms = output::ms(session.connect_time);
    session.close().await;
    let r = r?;
    if a.json {
        output::json_line(&json!({
            "peer": peer.to_string(),
            "transport": info.protocol.name(),
            "path": info.path.name(),
            "connect_ms": connect_ms,
            "bytes": a.bytes,
            "upload_mbps": output::round2(r.upload_mbps()),
            "download_mbps": output::round2(r.download_mbps()),
            "upload_ms": output::ms(r.upload_time),
            "download_ms": output::ms(r.download_time),
        }));
    } else {
        output::line(&format!(
            "upload    {} in {:.3} s = {:.1} Mbit/s",
            output::bytes(r.upload_bytes),
            r.upload_time.as_secs_f64(),
            r.upload_mbps()
        ));
        output::line(&format!(
            "download  {} in {:.3} s = {:.1} Mbit/s",
            output::bytes(r.download_bytes),
            r.download_time.as_secs_f64(),
            r.download_mbps()
        ));
    }
    Ok(())
}
