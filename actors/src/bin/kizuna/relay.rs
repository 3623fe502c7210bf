//! `kizuna relay`: run a relay server; `kizuna relay token`: mint an admission token.

use std::{
    collections::HashSet,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kizuna::{
    identity::PeerId,
    relay::{
        auth::{mint_token, Admission, MIN_TOKEN_SECRET_LEN},
        limits::RelayLimits,
    },
};
use kizuna_actors::relay::{RelayServer, RelayServerConfig, RelayServerError, StopRelay};
use serde_json::json;

use crate::{args, output, signals::StopSignals, CliError, CliResult};

/// Run a relay: peers behind firewalls reach each other through it (docs/relay.md).
///
/// The FIRST line of stdout is the relay's URL (what clients pass as --relay), followed
/// by ` stun=ADDR,ADDR` when --stun is given; with --json it is
/// {"event":"listening","url":...,"stun":[...],"stats":...,"peer":...} and a final
/// {"event":"shutdown"}. Runs until Ctrl-C or SIGTERM, then closes every connection
/// with code 4017. Refuses to start (exit 2) without an admission rule: pass --allow,
/// --allow-file, --token-secret or --open.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
    /// WebSocket address to listen on, e.g. ws://0.0.0.0:7000 (port 0 picks a free port).
    #[arg(long, value_name = "ws://ADDR")]
    listen: Option<String>,
    /// The relay's public URL, its name in the authentication challenge: clients must dial
    /// exactly this URL. Default: ws://<bound address>. Required in practice when
    /// listening on 0.0.0.0 or behind a proxy.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Answer STUN Binding requests on this UDP address (repeatable), e.g. 0.0.0.0:3478.
    #[arg(long, value_name = "UDP_ADDR")]
    stun: Vec<String>,
    /// Admit this peer id (repeatable).
    #[arg(long, value_name = "PEER_ID")]
    allow: Vec<String>,
    /// Admit the peer ids in FILE: one per line; blank lines and `#` comments ignored.
    #[arg(long, value_name = "FILE")]
    allow_file: Option<PathBuf>,
    /// Admit peers presenting a token minted with the secret in FILE (at least 16 bytes;
    /// e.g. `head -c 32 /dev/urandom > FILE`). See `kizuna relay token`.
    #[arg(long, value_name = "FILE")]
    token_secret: Option<PathBuf>,
    /// Admit every peer that proves its key.
    #[arg(long)]
    open: bool,
    /// Reservations held at once (default 1024).
    #[arg(long, value_name = "N")]
    max_reservations: Option<usize>,
    /// Circuits, pending and open, at once (default 1024).
    #[arg(long, value_name = "N")]
    max_circuits: Option<usize>,
    /// Circuits one peer takes part in at once (default 64).
    #[arg(long, value_name = "N")]
    max_circuits_per_peer: Option<usize>,
    /// Bytes per second one circuit may carry, both directions, e.g. 10MiB (default 16MiB).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    circuit_bandwidth: Option<u64>,
    /// Bytes per second all circuits together, shared equally, e.g. 100MiB (default 128MiB).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    total_bandwidth: Option<u64>,
    /// Longest life of a circuit, e.g. 90s, 10m, 1h (default 1h).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    max_circuit_duration: Option<Duration>,
    /// Bytes one circuit may carry, both directions, e.g. 64MiB (default 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = args::parse_size)]
    max_circuit_bytes: Option<u64>,
    /// Time an open circuit has to carry the three flights of its ends' end-to-end
    /// handshake before it is closed, e.g. 5s (default 5s).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    circuit_handshake_timeout: Option<Duration>,
    /// Circuits without a completed end-to-end handshake one key may have initiated at
    /// once (default 8).
    #[arg(long, value_name = "N")]
    max_unconfirmed_per_key: Option<usize>,
    /// Circuits without a completed end-to-end handshake initiated from one address at
    /// once (default 16).
    #[arg(long, value_name = "N")]
    max_unconfirmed_per_address: Option<usize>,
    /// Circuits without a completed end-to-end handshake to one target at once, one
    /// initiating address at most half (default 16).
    #[arg(long, value_name = "N")]
    max_unconfirmed_per_target: Option<usize>,
    /// Admission of WebSocket clients before they authenticate: --max-pending-handshakes,
    /// --max-pending-per-address, --first-byte-timeout.
    #[command(flatten)]
    admission: args::AdmissionArgs,
    /// Serve the metrics as JSON over HTTP on this address (GET / or /stats).
    #[arg(long, value_name = "ADDR")]
    stats_addr: Option<SocketAddr>,
    /// The relay's own key file (created if missing); its peer id is reported at start.
    /// The relay protocol does not need one today.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Print JSON lines on stdout (see above).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum RelayCommand {
    Token(TokenArgs),
}

/// Mint an admission token for one peer (printed on stdout).
#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The relay's token secret file (the relay's --token-secret).
    #[arg(long, value_name = "FILE")]
    secret: PathBuf,
    /// The peer id the token admits.
    #[arg(long, value_name = "PEER_ID")]
    peer: String,
    /// How long the token works, e.g. 90s, 10m, 1h, 7d.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    ttl: Duration,
}

/// Parses `90s`, `10m`, `1h`, `7d`, `250ms` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (use e.g. 90s, 10m, 1h)"))?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        other => return Err(format!("unknown duration unit {other:?} in {s:?} (use ms, s, m, h or d)")),
    };
    d.ok_or_else(|| format!("duration {s:?} is too large"))
}

/// Parses a rate in bytes per second: a size (`10MiB`), optionally followed by `/s`.
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    args::parse_size(s.trim().trim_end_matches("/s"))
}

fn parse_peer(s: &str, origin: &str) -> Result<PeerId, CliError> {
    s.trim().parse::<PeerId>().map_err(|e| CliError::Usage(format!("{origin}: {s:?} is not a peer id: {e}")))
}

fn read_secret(path: &Path) -> Result<Vec<u8>, CliError> {
    let secret = std::fs::read(path)
        .map_err(|e| CliError::Usage(format!("cannot read token secret {}: {e}", path.display())))?;
    if secret.len() < MIN_TOKEN_SECRET_LEN {
        return Err(CliError::Usage(format!(
            "token secret {} is {} bytes; it must be at least {MIN_TOKEN_SECRET_LEN} (e.g. head -c 32 /dev/urandom > {})",
            path.display(),
            secret.len(),
            path.display()
        )));
    }
    Ok(secret)
}

fn parse_listen(url: &str) -> Result<SocketAddr, CliError> {
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if url.starts_with("wss://") {
        return Err(CliError::Usage(
            "wss:// is not served by `kizuna relay` yet: listen on ws:// behind a TLS-terminating proxy \
             that forwards the Sec-WebSocket-Protocol header, and give the proxy's wss:// URL as --public-url"
                .into(),
        ));
    } else {
        return Err(CliError::Usage(format!(
            "--listen {url:?}: expected ws://HOST:PORT, e.g. ws://0.0.0.0:7000"
        )));
    };
    let hostport = rest.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::Usage(format!("--listen {url:?}: {hostport:?} is not a HOST:PORT address")))
}

fn parse_udp(s: &str) -> Result<SocketAddr, CliError> {
    let t = s.trim_start_matches("udp://").trim_start_matches("stun:");
    t.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| CliError::Usage(format!("--stun {s:?}: expected a UDP address like 0.0.0.0:3478")))
}

fn admission(a: &RelayArgs) -> Result<Admission, CliError> {
    let mut allow = HashSet::new();
    for p in &a.allow {
        allow.insert(parse_peer(p, "--allow")?);
    }
    if let Some(file) = &a.allow_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::Usage(format!("cannot read --allow-file {}: {e}", file.display())))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                allow.insert(parse_peer(line, &format!("{}:{}", file.display(), i + 1))?);
            }
        }
    }
    let token_secret = a.token_secret.as_deref().map(read_secret).transpose()?;
    Ok(Admission { allow, token_secret, open: a.open })
}

fn limits(a: &RelayArgs) -> RelayLimits {
    let d = RelayLimits::default();
    RelayLimits {
        max_reservations: a.max_reservations.unwrap_or(d.max_reservations),
        max_circuits: a.max_circuits.unwrap_or(d.max_circuits),
        max_circuits_per_peer: a.max_circuits_per_peer.unwrap_or(d.max_circuits_per_peer),
        circuit_bandwidth: a.circuit_bandwidth.unwrap_or(d.circuit_bandwidth),
        total_bandwidth: a.total_bandwidth.unwrap_or(d.total_bandwidth),
        max_circuit_duration: a.max_circuit_duration.unwrap_or(d.max_circuit_duration),
        max_circuit_bytes: a.max_circuit_bytes.unwrap_or(d.max_circuit_bytes),
        circuit_handshake_timeout: a.circuit_handshake_timeout.unwrap_or(d.circuit_handshake_timeout),
        max_unconfirmed_per_initiator: a.max_unconfirmed_per_key.unwrap_or(d.max_unconfirmed_per_initiator),
        max_unconfirmed_per_address: a.max_unconfirmed_per_address.unwrap_or(d.max_unconfirmed_per_address),
        max_unconfirmed_per_target: a.max_unconfirmed_per_target.unwrap_or(d.max_unconfirmed_per_target),
        ..d
    }
}

fn token(t: TokenArgs) -> CliResult {
    let secret = read_secret(&t.secret)?;
    let peer = parse_peer(&t.peer, "--peer")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    output::line(&mint_token(&secret, &peer, t.ttl, now));
    Ok(())
}

/// Runs `kizuna relay` (or `kizuna relay token`); `token` needs no actix system.
pub(crate) fn run(a: RelayArgs) -> CliResult {
    match a.command {
        Some(RelayCommand::Token(t)) => token(t),
        None => actix::System::new().block_on(serve(a)),
    }
}

async fn serve(a: RelayArgs) -> CliResult {
    let listen = a.listen.as_deref().ok_or_else(|| {
        CliError::Usage("--listen ws://ADDR is required (e.g. --listen ws://0.0.0.0:7000)".into())
    })?;
    let listen = parse_listen(listen)?;
    let stun = a.stun.iter().map(|s| parse_udp(s)).collect::<Result<Vec<_>, _>>()?;
    let peer = match &a.key {
        Some(p) => Some(args::load_or_create_key(p)?.peer_id()),
        None => None,
    };
    let mut config = RelayServerConfig::new(listen, admission(&a)?);
    config.public_url = a.public_url.clone();
    config.limits = limits(&a);
    config.handshake_limits = a.admission.limits()?;
    config.stun = stun;
    config.stats_addr = a.stats_addr;
    let relay = RelayServer::start(config).await.map_err(|e| match e {
        RelayServerError::Config(e) => CliError::Usage(e.to_string()),
        other => CliError::Failed(other.to_string()),
    })?;
    let mut stop = StopSignals::install()?;
    let stun: Vec<String> = relay.stun_addrs.iter().map(|a| a.to_string()).collect();
    if a.json {
        output::json_line(&json!({
            "event": "listening",
            "url": relay.url,
            "stun": stun,
            "stats": relay.stats_addr.map(|a| a.to_string()),
            "peer": peer.map(|p| p.to_string()),
        }));
    } else {
        let stun_part = if stun.is_empty() { String::new() } else { format!(" stun={}", stun.join(",")) };
        output::line(&format!("{}{stun_part}", relay.url));
        eprintln!("relay listening on {}; clients: kizuna node --relay {}", relay.local_addr, relay.url);
    }
    stop.recv().await;
    tracing::info!("shutting down");
    let _ = relay.addr.send(StopRelay).await;
    if a.json {
        output::json_line(&json!({ "event": "shutdown" }));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(parse_rate("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_rate("10MiB/s").unwrap(), 10 << 20);
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn listen_urls() {
        assert_eq!(
            parse_listen("ws://127.0.0.1:7000").unwrap(),
            "127.0.0.1:7000".parse::<std::net::SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_listen("ws://127.0.0.1:7000/").unwrap(),
            "127.0.0.1:7000".parse::<std::net::SocketAddr>().unwrap()
        );
        assert!(matches!(parse_listen("wss://127.0.0.1:7000"), Err(CliError::Usage(_))));
        assert!(matches!(parse_listen("127.0.0.1:7000"), Err(CliError::Usage(_))));
        assert_eq!(
            parse_udp("udp://127.0.0.1:3478").unwrap(),
            "127.0.0.1:3478".parse::<std::net::SocketAddr>().unwrap()
        );
    }
}
