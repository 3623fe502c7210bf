//! Candidates: the addresses a node offers its peer for punching, their kinds and
//! priorities, and the target list a session derives from the peer's offer (including
//! predicted ports).
//!
//! Kinds and priorities follow ICE (RFC 8445 §5.1.2) in spirit: a host address is
//! preferred over a peer-reflexive one, which is preferred over a server-reflexive one;
//! an address observed by the relay (the source of the node's relay connection — a TCP
//! mapping, so at best its IP is right for UDP) comes last.

use std::net::{IpAddr, SocketAddr};

use super::MAX_CANDIDATES;

/// Where a candidate address comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CandidateKind {
    /// An address of a local interface (the node's UDP socket's port).
    Host,
    /// The mapping a STUN server reported for the node's UDP socket.
    ServerReflexive,
    /// The address the relay saw the node's relay connection come from.
    RelayObserved,
    /// An address a punch packet of the peer actually came from, learned during the
    /// session (never offered on the wire).
    PeerReflexive,
    /// A port guessed next to a server-reflexive candidate of a peer whose NAT maps per
    /// destination (never offered on the wire).
    Predicted,
    /// A TCP address for simultaneous open: the node's TCP punch socket's port with a
    /// host or relay-observed IP. Never a UDP target.
    Tcp,
}

impl CandidateKind {
    /// ICE-style type preference (RFC 8445 §5.1.2.2: host 126, peer-reflexive 110,
    /// server-reflexive 100); the relay-observed and predicted kinds are guesses and get
    /// the lowest preferences.
    pub fn type_preference(self) -> u32 {
        match self {
            CandidateKind::Host => 126,
            CandidateKind::PeerReflexive => 110,
            CandidateKind::ServerReflexive => 100,
            CandidateKind::RelayObserved => 10,
            CandidateKind::Predicted => 5,
            CandidateKind::Tcp => 1,
        }
    }

    /// The kind's name on the wire, for the kinds that are offered.
    pub fn wire_name(self) -> Option<&'static str> {
        match self {
            CandidateKind::Host => Some("host"),
            CandidateKind::ServerReflexive => Some("srflx"),
            CandidateKind::RelayObserved => Some("relay"),
            CandidateKind::Tcp => Some("tcp"),
            CandidateKind::PeerReflexive | CandidateKind::Predicted => None,
        }
    }

    /// The offered kind named `s` on the wire.
    pub fn from_wire_name(s: &str) -> Option<Self> {
        match s {
            "host" => Some(CandidateKind::Host),
            "srflx" => Some(CandidateKind::ServerReflexive),
            "relay" => Some(CandidateKind::RelayObserved),
            "tcp" => Some(CandidateKind::Tcp),
            _ => None,
        }
    }
}

/// One address offered for punching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// What kind of address it is.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
    /// Higher is tried first.
    pub priority: u32,
}

impl Candidate {
    /// A candidate with the default priority of its kind: `type_preference << 24`, minus
    /// `index` (the position among candidates of the same kind, most preferred first) so
    /// priorities stay distinct.
    pub fn new(kind: CandidateKind, addr: SocketAddr, index: u16) -> Self {
        let priority = (kind.type_preference() << 24) | (0xffff - u32::from(index)) << 8 | 0xff;
        Self { kind, addr, priority }
    }
}

/// The sender's NAT mapping behaviour (RFC 4787 §4.1), as its NAT detection found it.
/// It tells the peer whether predicting ports next to the sender's server-reflexive
/// address is worth trying.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MappingHint {
    /// Not measured.
    #[default]
    Unknown,
    /// Endpoint-independent mapping (or no NAT): the STUN mapping is what peers see.
    EndpointIndependent,
    /// Address-dependent mapping: a new mapping per destination IP.
    AddressDependent,
    /// Address-and-port-dependent mapping ("symmetric"): a new mapping per destination.
    AddressAndPortDependent,
    /// No STUN server answered over UDP although some were asked: UDP is most likely
    /// blocked at this node, so a UDP punch cannot work and the peer should not wait for
    /// one before using another path (TCP simultaneous open).
    UdpBlocked,
}

impl MappingHint {
    /// Its name on the wire.
    pub fn wire_name(self) -> &'static str {
        match self {
            MappingHint::Unknown => "unknown",
            MappingHint::EndpointIndependent => "eim",
            MappingHint::AddressDependent => "adm",
            MappingHint::AddressAndPortDependent => "apdm",
            MappingHint::UdpBlocked => "blocked",
        }
    }

    /// The hint named `s` (unknown names: [`MappingHint::Unknown`]).
    pub fn from_wire_name(s: &str) -> Self {
        match s {
            "eim" => MappingHint::EndpointIndependent,
            "adm" => MappingHint::AddressDependent,
            "apdm" => MappingHint::AddressAndPortDependent,
            "blocked" => MappingHint::UdpBlocked,
            _ => MappingHint::Unknown,
        }
    }

    /// Whether the NAT allocates a new mapping per destination, so that the mapping a
    /// peer will see differs from the STUN one (and predicting it may help).
    pub fn is_destination_dependent(self) -> bool {
        matches!(self, MappingHint::AddressDependent | MappingHint::AddressAndPortDependent)
    }
}

/// Whether packets may be sent to `addr`: not port 0, not unspecified, not multicast,
/// not the IPv4 broadcast address. Offers naming such addresses are rejected, so a peer
/// cannot turn a session into a broadcast or multicast source.
pub fn is_usable(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match addr.ip() {
        IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
        IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
    }
}

/// Cleans a local candidate list before offering it: drops unusable addresses and
/// duplicates (keeping the higher priority), sorts by priority (highest first, stable),
/// and keeps at most [`MAX_CANDIDATES`].
pub fn sanitize(mut cands: Vec<Candidate>) -> Vec<Candidate> {
    cands.retain(|c| is_usable(c.addr) && c.kind.wire_name().is_some());
    cands.sort_by_key(|c| std::cmp::Reverse(c.priority));
    let mut out: Vec<Candidate> = Vec::with_capacity(cands.len().min(MAX_CANDIDATES));
    for c in cands {
        if out.len() == MAX_CANDIDATES {
            break;
        }
        let is_tcp = c.kind == CandidateKind::Tcp;
        if !out.iter().any(|o| o.addr == c.addr && (o.kind == CandidateKind::Tcp) == is_tcp) {
            out.push(c);
        }
    }
    out
}

/// A node's candidates for its UDP socket bound at `bound`, ready to offer (sanitized):
///
/// * host: `bound` itself, or, when it is a wildcard address, each of `interfaces` of the
///   same family with `bound`'s port (only the loopback address when the relay observed
///   this node on loopback: the peers are then on this host);
/// * server-reflexive: each of `reflexive` (the mappings STUN servers reported for this
///   very socket);
/// * relay-observed: the IP the relay saw this node's relay connection come from, with
///   the socket's own port — right whenever the NAT preserves ports, a common policy
///   (RFC 4787 §4.1 REQ-3 recommends port preservation where possible).
pub fn local_candidates(
    bound: SocketAddr,
    interfaces: &[IpAddr],
    reflexive: &[SocketAddr],
    relay_observed: Option<IpAddr>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (i, ip) in host_ips(bound, interfaces, relay_observed).into_iter().enumerate() {
        out.push(Candidate::new(CandidateKind::Host, SocketAddr::new(ip, bound.port()), index(i)));
    }
    for (i, addr) in reflexive.iter().enumerate() {
        out.push(Candidate::new(CandidateKind::ServerReflexive, *addr, index(i)));
    }
    if let Some(ip) = relay_observed {
        out.push(Candidate::new(CandidateKind::RelayObserved, SocketAddr::new(ip, bound.port()), 0));
    }
    sanitize(out)
}

/// TCP candidates for simultaneous open from a socket bound at `bound` (see
/// [`local_candidates`] for how host and relay-observed addresses are chosen; STUN cannot
/// learn TCP mappings, so there is no server-reflexive kind).
pub fn tcp_candidates(
    bound: SocketAddr,
    interfaces: &[IpAddr],
    relay_observed: Option<IpAddr>,
) -> Vec<Candidate> {
    let mut ips = host_ips(bound, interfaces, relay_observed);
    ips.extend(relay_observed);
    let out = ips
        .into_iter()
        .enumerate()
        .map(|(i, ip)| Candidate::new(CandidateKind::Tcp, SocketAddr::new(ip, bound.port()), index(i)));
    let mut out: Vec<Candidate> = sanitize(out.collect());
    out.truncate(MAX_TCP_CANDIDATES);
    out
}

/// Most TCP candidates a node offers: each costs the peer one connect attempt per retry.
pub const MAX_TCP_CANDIDATES: usize = 4;

/// The host IPs to offer for a socket bound at `bound`: its own IP, or, for a wildcard
/// socket, each of `interfaces` of its family — except when the relay sees this node
/// come from a loopback address: then the peers are on this very host and the loopback
/// address is the only one worth offering (and nothing is sent to the host's other
/// addresses).
fn host_ips(bound: SocketAddr, interfaces: &[IpAddr], relay_observed: Option<IpAddr>) -> Vec<IpAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound.ip()];
    }
    match relay_observed {
        Some(ip) if ip.is_loopback() && ip.is_ipv4() == bound.is_ipv4() => vec![ip],
        _ => interfaces.iter().copied().filter(|ip| ip.is_ipv4() == bound.is_ipv4()).collect(),
    }
}

fn index(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}

/// Ports predicted for a peer whose NAT maps per destination: the `window` ports right
/// above each of its server-reflexive candidates (many such NATs allocate sequentially,
/// so the mapping created toward this node is likely a few ports above the one the STUN
/// server saw). At most [`MAX_PREDICTED`] addresses, in order of distance.
pub fn predicted_ports(remote: &[Candidate], hint: MappingHint, window: u16) -> Vec<SocketAddr> {
    if !hint.is_destination_dependent() || window == 0 {
        return Vec::new();
    }
    let bases: Vec<SocketAddr> =
        remote.iter().filter(|c| c.kind == CandidateKind::ServerReflexive).map(|c| c.addr).collect();
    let mut out = Vec::new();
    for delta in 1..=window {
        for base in &bases {
            let Some(port) = base.port().checked_add(delta) else { continue };
            let addr = SocketAddr::new(base.ip(), port);
            if out.len() < MAX_PREDICTED && !out.contains(&addr) && !remote.iter().any(|c| c.addr == addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// Most predicted ports per session. 16: a window of 8 over two server-reflexive
/// addresses (IPv4 and IPv6); prediction is a bonus and must not flood the peer's NAT.
pub const MAX_PREDICTED: usize = 16;
