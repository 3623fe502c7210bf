//! `kizuna nat`: classify the NAT in front of this machine over STUN.

use std::net::{SocketAddr, ToSocketAddrs};

use kizuna::nat::{self, NatReport, ProbeConfig};

use crate::{output, CliError, CliResult};

/// Classify the NAT in front of this machine (RFC 4787 behaviours, RFC 5780 STUN tests).
///
/// With one STUN server that supports RFC 5780 (a `kizuna relay` with two --stun
/// addresses, coturn, ...) mapping and filtering are both measured; with servers that do
/// not, give two --stun servers on different IPs to compare mappings (filtering then
/// stays unknown). docs/nat-traversal.md explains the tests.
///
/// Prints a short report, or with --json one JSON object with at least nat_type, mapping,
/// filtering and public_addr (null when undecided). nat_type is one of open, full_cone,
/// restricted_cone, port_restricted_cone, symmetric, udp_blocked, unknown.
///
/// Exit codes: 0 with a classification — INCLUDING nat_type udp_blocked, reported when no
/// server answered at all (that is a result, not a failure); 1 if the UDP socket fails;
/// 2 on bad arguments or a server name that does not resolve.
#[derive(Debug, clap::Args)]
pub(crate) struct NatArgs {
    /// STUN server, HOST:PORT (repeatable, the first preferred; at most 8).
    #[arg(long = "stun", value_name = "HOST:PORT", required = true)]
    stun: Vec<String>,
    /// Local UDP address to probe from (default: any address, a free port).
    #[arg(long, value_name = "ADDR")]
    bind: Option<SocketAddr>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn resolve(s: &str) -> Result<SocketAddr, CliError> {
    let t = s.trim_start_matches("stun:").trim_start_matches("udp://");
    let with_port =
        if t.parse::<SocketAddr>().is_err() && !t.contains(':') { format!("{t}:3478") } else { t.into() };
    with_port.to_socket_addrs().ok().and_then(|mut it| it.next()).ok_or_else(|| {
        CliError::Usage(format!("--stun {s:?}: not a reachable HOST:PORT (e.g. 192.0.2.1:3478)"))
    })
}

pub(crate) async fn run(a: NatArgs) -> CliResult {
    let report = probe(&a.stun, a.bind).await?;
    if a.json {
        let v = serde_json::to_value(&report).map_err(|e| CliError::Failed(e.to_string()))?;
        output::json_line(&v);
    } else {
        output::line(&human(&report));
    }
    Ok(())
}

/// Runs NAT discovery against the `stun` servers from a UDP socket bound to `bind` (default:
/// the wildcard address of the servers' family).
pub(crate) async fn probe(stun: &[String], bind: Option<SocketAddr>) -> Result<NatReport, CliError> {
    let mut servers = stun.iter().map(|s| resolve(s)).collect::<Result<Vec<_>, _>>()?;
    if servers.len() > nat::MAX_SERVERS {
        return Err(CliError::Usage(format!("at most {} --stun servers", nat::MAX_SERVERS)));
    }
    let bind = bind.unwrap_or_else(|| {
        let v4 = servers.first().is_none_or(|s| s.is_ipv4());
        if v4 { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    });
    servers.dedup();
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| CliError::Failed(format!("cannot bind UDP {bind}: {e}")))?;
    let report = match nat::discover(&socket, &servers, &ProbeConfig::default()).await {
        Ok(r) => r,
        Err(e @ (nat::NatError::AddressFamily { .. } | nat::NatError::TooManyServers { .. })) => {
            return Err(CliError::Usage(e.to_string()))
        }
        Err(e) => return Err(CliError::Failed(e.to_string())),
    };
    Ok(report)
}

/// A short human-readable report.
pub(crate) fn human(r: &NatReport) -> String {
    let or_unknown = |o: Option<String>| o.unwrap_or_else(|| "unknown".into());
    let mut s = format!("NAT type:   {}\n", r.nat_type);
    s.push_str(&format!("mapping:    {}\n", or_unknown(r.mapping.map(|m| m.to_string()))));
    s.push_str(&format!("filtering:  {}\n", or_unknown(r.filtering.map(|f| f.to_string()))));
    s.push_str(&format!("public:     {}\n", or_unknown(r.public_addr.map(|a| a.to_string()))));
    s.push_str(&format!("local:      {}\n", r.local_addr));
    let method = match r.method {
        nat::Method::Rfc5780 => "RFC 5780 tests",
        nat::Method::TwoServers => "two servers compared",
        nat::Method::SingleServer => "one server, no RFC 5780",
        nat::Method::NoAnswer => "no answer",
    };
    s.push_str(&format!("server:     {} ({method})", or_unknown(r.server.map(|a| a.to_string()))));
    for n in &r.notes {
        s.push_str(&format!("\nnote:       {n}"));
    }
    s
}
