//! Argument types and parsers shared by several commands.

use std::path::{Path, PathBuf};

use kizuna::{
    identity::PeerId,
    relay::client::RelayEndpoint,
    transport::{
        admission::AdmissionLimits,
        webrtc::{IceServer, WebRtcConfig},
    },
    Keypair, PeerAddress, Protocol, TransportAddr,
};

use crate::CliError;

/// The environment variable naming the default key file.
pub(crate) const KEY_ENV: &str = "KIZUNA_KEY";

/// Which transport a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TransportChoice {
    /// Every transport the ticket offers, best first, falling back to the next (and to
    /// the relays last).
    Auto,
    /// TLS 1.3 over TCP only.
    Tcp,
    /// QUIC only.
    Quic,
    /// WebSocket only (direct `ws=` addresses).
    Ws,
    /// WebRTC only (signaled through --relay; see --stun, --turn, --ice-relay-only).
    Webrtc,
}

/// Transports this build of the CLI can dial and listen on.
pub(crate) const SUPPORTED: [Protocol; 3] = [Protocol::Quic, Protocol::Tcp, Protocol::WebSocket];

/// Relays to use: `--relay URL` (repeatable; the first is preferred, the others are
/// failovers) and `--relay-token TOKEN`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct RelayArgs {
    /// Relay to reserve at and dial through (ws://HOST:PORT or wss://HOST:PORT), repeatable:
    /// the first is preferred, the others are failovers. With a relay, TARGET may be a bare
    /// peer id.
    #[arg(long = "relay", value_name = "URL", value_parser = parse_relay_url)]
    pub(crate) relays: Vec<String>,
    /// Admission token for the relays (minted by `kizuna relay token`).
    #[arg(long = "relay-token", value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// STUN server (HOST:PORT or stun:HOST:PORT, repeatable): hole punching learns this
    /// node's public UDP mapping from it (the relay's own STUN servers are used too),
    /// WebRTC's ICE gathers server-reflexive candidates from it, and `kizuna node` reports
    /// its NAT type from it at start.
    #[arg(long = "stun", value_name = "HOST:PORT")]
    pub(crate) stun: Vec<String>,
}

/// Admission of unauthenticated inbound connections on a node's or relay's listeners
/// (`kizuna::transport::admission`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct AdmissionArgs {
    /// Inbound handshakes in progress at once per listener (default 256).
    #[arg(long, value_name = "N")]
    pub(crate) max_pending_handshakes: Option<usize>,
    /// Inbound handshakes in progress at once from one address, an IPv4 address or an IPv6
    /// /64 (default 16): a newcomer replaces that address's oldest silent connection, and
    /// is refused when none is silent.
    #[arg(long, value_name = "N")]
    pub(crate) max_pending_per_address: Option<usize>,
    /// How long a new connection may stay silent before its first byte, e.g. 3s (default 3s).
    #[arg(long, value_name = "DUR", value_parser = crate::relay::parse_duration)]
    pub(crate) first_byte_timeout: Option<std::time::Duration>,
}

impl AdmissionArgs {
    /// The limits these flags give, or a usage error naming the flag to fix.
    pub(crate) fn limits(&self) -> Result<AdmissionLimits, CliError> {
        let d = AdmissionLimits::default();
        let l = AdmissionLimits {
            max_pending: self.max_pending_handshakes.unwrap_or(d.max_pending),
            max_pending_per_address: self.max_pending_per_address.unwrap_or(d.max_pending_per_address),
            first_byte_timeout: self.first_byte_timeout.unwrap_or(d.first_byte_timeout),
        };
        l.validate().map_err(|e| {
            CliError::Usage(
                e.replace("max_pending_handshakes_per_address", "--max-pending-per-address")
                    .replace("max_pending_handshakes", "--max-pending-handshakes")
                    .replace("first_byte_timeout", "--first-byte-timeout"),
            )
        })?;
        Ok(l)
    }
}

/// How a CLI node reaches the network beyond direct dials: relays, STUN servers, and
/// WebRTC's ICE configuration; and how it admits inbound handshakes.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetConfig {
    /// Relays, in failover order.
    pub(crate) relays: Vec<RelayEndpoint>,
    /// STUN servers for hole punching.
    pub(crate) stun: Vec<std::net::SocketAddr>,
    /// WebRTC (used when WebRTC is among the node's protocols).
    pub(crate) webrtc: WebRtcConfig,
    /// Admission of inbound handshakes on the node's TCP and WebSocket listeners.
    pub(crate) handshakes: AdmissionLimits,
}

/// The node's network configuration from `--relay`, `--relay-token`, `--stun` and the
/// ICE flags: one `--stun` list serves hole punching, NAT detection and WebRTC's ICE.
pub(crate) fn net(relay: &RelayArgs, ice: &IceArgs) -> Result<NetConfig, CliError> {
    let stun = relay.stun.iter().map(|s| crate::nat::resolve(s)).collect::<Result<_, _>>()?;
    Ok(NetConfig {
        relays: relay.endpoints(),
        stun,
        webrtc: ice.config(&relay.stun)?,
        handshakes: AdmissionLimits::default(),
    })
}

impl RelayArgs {
    /// The relays as endpoints for the supervisor.
    pub(crate) fn endpoints(&self) -> Vec<RelayEndpoint> {
        self.relays.iter().map(|url| RelayEndpoint { url: url.clone(), token: self.token.clone() }).collect()
    }
}

/// WebRTC's ICE configuration: `--turn URL --turn-user U --turn-pass P`,
/// `--ice-relay-only`, `--webrtc-bind` (its STUN servers are `--stun`, in [`RelayArgs`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct IceArgs {
    /// TURN server for WebRTC (turn:HOST:PORT), repeatable; needs --turn-user and --turn-pass.
    #[arg(long = "turn", value_name = "URL")]
    pub(crate) turn: Vec<String>,
    /// TURN user name (long-term credentials).
    #[arg(long = "turn-user", value_name = "USER")]
    pub(crate) turn_user: Option<String>,
    /// TURN password.
    #[arg(long = "turn-pass", value_name = "PASS")]
    pub(crate) turn_pass: Option<String>,
    /// Use only TURN relay candidates (the peer never learns this host's addresses).
    #[arg(long = "ice-relay-only")]
    pub(crate) relay_only: bool,
    /// Local UDP address for WebRTC host candidates, repeatable (default 0.0.0.0:0: every
    /// non-loopback interface; 127.0.0.1:0 for loopback).
    #[arg(long = "webrtc-bind", value_name = "IP:PORT")]
    pub(crate) bind: Vec<std::net::SocketAddr>,
    /// Never send multicast DNS queries (peers' `.local` host candidates are then ignored).
    #[arg(long = "no-mdns")]
    pub(crate) no_mdns: bool,
}

impl IceArgs {
    /// The WebRTC configuration with `stun` as its STUN servers, or a usage error saying
    /// what to fix.
    pub(crate) fn config(&self, stun: &[String]) -> Result<WebRtcConfig, CliError> {
        let mut c = WebRtcConfig {
            ice_servers: stun.iter().map(|s| IceServer::stun(s)).collect(),
            ..WebRtcConfig::default()
        };
        for url in &self.turn {
            if !url.starts_with("turn:") && !url.starts_with("turns:") {
                return Err(CliError::Usage(format!("--turn {url:?}: expected turn:HOST:PORT")));
            }
            let (Some(user), Some(pass)) = (&self.turn_user, &self.turn_pass) else {
                return Err(CliError::Usage(format!(
                    "--turn {url} needs --turn-user USER and --turn-pass PASS"
                )));
            };
            c.ice_servers.push(IceServer::turn(url, user, pass));
        }
        c.relay_only = self.relay_only;
        c.mdns = !self.no_mdns;
        if !self.bind.is_empty() {
            c.bind = self.bind.clone();
        }
        c.validate().map_err(|e| CliError::Usage(e.to_string()))?;
        Ok(c)
    }
}

/// Parses a relay URL, saying what is wrong.
pub(crate) fn parse_relay_url(s: &str) -> Result<String, String> {
    match format!("relay={s}").parse::<TransportAddr>() {
        Ok(TransportAddr::Relay(url)) => Ok(url),
        _ => Err(format!("not a relay URL: {s:?} (expected ws://HOST:PORT or wss://HOST:PORT)")),
    }
}

impl TransportChoice {
    /// The protocols this choice allows.
    pub(crate) fn protocols(self) -> Vec<Protocol> {
        match self {
            TransportChoice::Auto => SUPPORTED.to_vec(),
            TransportChoice::Tcp => vec![Protocol::Tcp],
            TransportChoice::Quic => vec![Protocol::Quic],
            TransportChoice::Ws => vec![Protocol::WebSocket],
            TransportChoice::Webrtc => vec![Protocol::WebRtc],
        }
    }

    /// What to dial for this choice: the ticket restricted to the addresses of the allowed
    /// protocols (relay routes only with `auto`); a usage error if nothing is left to dial.
    /// `webrtc` carries the traffic on WebRTC only, signaled over a connection to any of
    /// the ticket's addresses or through the relay.
    pub(crate) fn restrict(self, ticket: &PeerAddress, relays: &RelayArgs) -> Result<DialPlan, CliError> {
        let protocols = self.protocols();
        if self == TransportChoice::Webrtc {
            let mut addrs: Vec<_> =
                ticket.addrs.iter().filter(|a| **a != TransportAddr::WebRtc).cloned().collect();
            if addrs.is_empty() && relays.relays.is_empty() {
                return Err(CliError::Usage(
                    "--transport webrtc needs a way to signal: a ticket with an address (the whole ticket \
                     printed by `kizuna node`) or --relay URL"
                        .into(),
                ));
            }
            addrs.push(TransportAddr::WebRtc);
            let mut all = SUPPORTED.to_vec();
            all.extend(protocols.iter().copied());
            return Ok(DialPlan {
                target: PeerAddress::new(ticket.peer_id, addrs),
                protocols: all,
                carry: Some(protocols),
            });
        }
        let keep = |a: &TransportAddr| match a {
            TransportAddr::Relay(_) => self == TransportChoice::Auto,
            other => protocols.contains(&other.protocol()),
        };
        let addrs: Vec<_> = ticket.addrs.iter().filter(|a| keep(a)).cloned().collect();
        let via_relay = self == TransportChoice::Auto && !relays.relays.is_empty();
        if ticket.addrs.is_empty() && !via_relay {
            return Err(CliError::Usage(
                "the ticket has a peer id but no address: pass the whole ticket printed by `kizuna node`, \
                 or reach the peer through a relay with --relay URL"
                    .into(),
            ));
        }
        if addrs.is_empty() && !via_relay {
            let wanted = protocols.iter().map(|p| p.name()).collect::<Vec<_>>().join(" or ");
            let has = ticket.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
            return Err(CliError::Usage(format!(
                "the ticket has no {wanted} address (it has {has}); choose another --transport"
            )));
        }
        Ok(DialPlan { target: PeerAddress::new(ticket.peer_id, addrs), protocols, carry: None })
    }
}

/// What a client dials: the target, the transports its node enables, and those that may
/// carry the traffic (`None`: every enabled one; the others only signal).
#[derive(Clone, Debug)]
pub(crate) struct DialPlan {
    /// The peer and the addresses to dial.
    pub(crate) target: PeerAddress,
    /// The transports the client node enables.
    pub(crate) protocols: Vec<Protocol>,
    /// The transports allowed to carry the traffic (`SupervisorConfig::carry`).
    pub(crate) carry: Option<Vec<Protocol>>,
}

/// Parses a ticket (`PEERID@quic=IP:PORT,tcp=IP:PORT`), saying what is wrong.
pub(crate) fn parse_ticket(s: &str) -> Result<PeerAddress, String> {
    s.parse::<PeerAddress>().map_err(|e| {
        format!(
            "not a valid ticket: {e}\n  a ticket looks like PEERID@quic=IP:PORT,tcp=IP:PORT, as printed by \
             `kizuna node` (or a bare PEERID together with --relay URL)"
        )
    })
}

/// Parses a byte count: a number with an optional unit. `K`, `M`, `G`, `T` and
/// `KiB`, `MiB`, `GiB`, `TiB` are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000;
/// `B` or nothing is bytes. Case-insensitive; fractions allowed (`1.5G`).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("unknown size unit {unit:?} in {s:?} (use e.g. 1000000, 64MiB, 1G, 500MB)")),
    };
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (use e.g. 1000000, 64MiB, 1G, 500MB)"));
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"));
    }
    let f: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (use e.g. 1000000, 64MiB, 1G)"))?;
    let bytes = (f * mult as f64).round();
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(bytes as u64)
}

/// Parses a peer id, saying what is expected.
pub(crate) fn parse_peer_id(s: &str) -> Result<PeerId, String> {
    s.parse::<PeerId>().map_err(|e| format!("not a peer id: {e} (expected an id as printed by `kizuna id`)"))
}

/// The default key file: `$KIZUNA_KEY`, else `$XDG_CONFIG_HOME/kizuna/key`, else
/// `$HOME/.config/kizuna/key`.
pub(crate) fn default_key_path() -> Result<PathBuf, CliError> {
    if let Some(p) = std::env::var_os(KEY_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").filter(|p| !p.is_empty()).map(|h| PathBuf::from(h).join(".config"))
        })
        .ok_or_else(|| {
            CliError::Usage(format!("no default key location: set {KEY_ENV} or HOME, or pass --key FILE"))
        })?;
    Ok(config.join("kizuna").join("key"))
}

fn key_error(e: kizuna::error::IdentityError) -> CliError {
    match e {
        kizuna::error::IdentityError::KeyFileMissing { .. } => CliError::Usage(e.to_string()),
        other => CliError::Failed(other.to_string()),
    }
}

/// Loads the key at `path`, creating it (and a private parent directory) if missing.
pub(crate) fn load_or_create_key(path: &Path) -> Result<Keypair, CliError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(|e| CliError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    Keypair::load_or_create(path).map_err(key_error)
}

/// A client's identity: the key file given with `--key`, else `$KIZUNA_KEY` if set, else a
/// fresh in-memory key (servers accept any client).
pub(crate) fn client_key(key: Option<&Path>) -> Result<Keypair, CliError> {
    match key
        .map(PathBuf::from)
        .or_else(|| std::env::var_os(KEY_ENV).filter(|p| !p.is_empty()).map(PathBuf::from))
    {
        Some(p) => Keypair::load(&p).map_err(key_error),
        None => Ok(Keypair::generate()),
    }
}

/// The short form of a peer id for human output.
pub(crate) fn short(p: &PeerId) -> String {
    p.short()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let ok = [
            ("1000000", 1_000_000),
            ("0", 0),
            ("64MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("64M", 64 << 20),
            ("1G", 1 << 30),
            ("1GiB", 1 << 30),
            ("1GB", 1_000_000_000),
            ("500MB", 500_000_000),
            ("8KiB", 8192),
            ("12B", 12),
            ("1.5K", 1536),
            (" 2 MiB ", 2 << 20),
        ];
        for (s, n) in ok {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in ["", "MiB", "12XB", "-1", "1.2.3M", "99999999999999999999", "20000000T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restrict_by_transport() {
        let id = Keypair::from_seed([1; 32]).peer_id();
        let t: PeerAddress = format!("{id}@quic=127.0.0.1:1,tcp=127.0.0.1:2").parse().unwrap();
        let plan = TransportChoice::Tcp.restrict(&t, &RelayArgs::default()).unwrap();
        assert_eq!(plan.target.addrs.len(), 1);
        assert_eq!(plan.target.addrs[0].protocol(), Protocol::Tcp);
        assert_eq!(plan.protocols, vec![Protocol::Tcp]);
        assert_eq!(plan.carry, None);
        let plan = TransportChoice::Auto.restrict(&t, &RelayArgs::default()).unwrap();
        assert_eq!(plan.target.addrs, t.addrs);
        let only_tcp: PeerAddress = format!("{id}@tcp=127.0.0.1:2").parse().unwrap();
        let e = TransportChoice::Quic.restrict(&only_tcp, &RelayArgs::default()).unwrap_err();
        assert!(matches!(&e, CliError::Usage(m) if m.contains("no quic address")), "{e}");
    }

    #[test]
    fn webrtc_only_signals_over_the_tickets_addresses_or_the_relay() {
        let id = Keypair::from_seed([1; 32]).peer_id();
        let t: PeerAddress = format!("{id}@quic=127.0.0.1:1,tcp=127.0.0.1:2").parse().unwrap();
        let plan = TransportChoice::Webrtc.restrict(&t, &RelayArgs::default()).unwrap();
        let mut want = t.addrs.clone();
        want.push(TransportAddr::WebRtc);
        assert_eq!(plan.target.addrs, want);
        assert_eq!(plan.carry, Some(vec![Protocol::WebRtc]));
        assert!(plan.protocols.contains(&Protocol::WebRtc) && plan.protocols.contains(&Protocol::Quic));
        let bare = PeerAddress::new(id, vec![]);
        let e = TransportChoice::Webrtc.restrict(&bare, &RelayArgs::default()).unwrap_err();
        assert!(matches!(&e, CliError::Usage(m) if m.contains("needs a way to signal")), "{e}");
        let relays = RelayArgs { relays: vec!["ws://127.0.0.1:9".into()], ..RelayArgs::default() };
        let plan = TransportChoice::Webrtc.restrict(&bare, &relays).unwrap();
        assert_eq!(plan.target.addrs, vec![TransportAddr::WebRtc]);
    }

    #[test]
    fn peer_ids_parse_and_errors_are_explained() {
        let id = Keypair::from_seed([3; 32]).peer_id();
        assert_eq!(parse_peer_id(&id.to_string()), Ok(id));
        let e = parse_peer_id("nope").unwrap_err();
        assert!(e.contains("not a peer id") && e.contains("kizuna id"), "{e}");
    }

    #[test]
    fn ticket_errors_are_explained() {
        let e = parse_ticket("garbage").unwrap_err();
        assert!(e.contains("not a valid ticket") && e.contains("PEERID@"), "{e}");
    }
}
