//! Simulated NAT boxes implementing the RFC 4787 behaviours.
//!
//! * Mapping (§4.1): endpoint-independent (one external port per internal endpoint),
//!   address-dependent (a new one per destination IP), address-and-port-dependent (a new
//!   one per destination IP and port).
//! * Filtering (§5): endpoint-independent (anything may reach a mapping),
//!   address-dependent (only IPs the mapping has sent to), address-and-port-dependent
//!   (only endpoints it has sent to).
//! * Mappings expire [`NatConfig::mapping_timeout`] after their last *outbound* packet
//!   (§4.3: REQ-6, outbound refresh; inbound packets do not refresh).
//! * Unsolicited inbound packets (no mapping on that port, or filtered) are dropped
//!   silently, and never create state.
//!
//! External ports are allocated at random (the default: what port-randomising NATs such
//! as Linux with `--random` or most carrier-grade NATs do) or sequentially (what makes
//! port prediction work).

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use crate::punch::MappingHint;

/// RFC 4787 §4.1 mapping behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MappingBehavior {
    /// One mapping per internal endpoint, whatever the destination.
    EndpointIndependent,
    /// A new mapping per destination IP address.
    AddressDependent,
    /// A new mapping per destination IP address and port ("symmetric").
    AddressAndPortDependent,
}

/// RFC 4787 §5 filtering behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilteringBehavior {
    /// Any external endpoint may send to a mapping.
    EndpointIndependent,
    /// Only IP addresses the mapping has sent to.
    AddressDependent,
    /// Only IP address and port pairs the mapping has sent to.
    AddressAndPortDependent,
}

/// How a NAT picks the external port of a new mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// Uniformly at random among free ports 1024–65535.
    Random,
    /// The next free port above the previous allocation, from 20000.
    Sequential,
}

/// One NAT box's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping behaviour.
    pub mapping: MappingBehavior,
    /// Filtering behaviour.
    pub filtering: FilteringBehavior,
    /// Port allocation.
    pub ports: PortAllocation,
    /// Idle time after which a mapping is removed. Default in the profiles: 120 s, RFC
    /// 4787 REQ-5's minimum.
    pub mapping_timeout: Duration,
}

impl NatConfig {
    /// A NAT with `mapping` and `filtering`, random ports and a 120 s mapping timeout.
    pub fn new(mapping: MappingBehavior, filtering: FilteringBehavior) -> Self {
        Self { mapping, filtering, ports: PortAllocation::Random, mapping_timeout: Duration::from_secs(120) }
    }
}

/// What stands between a host and the internet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteKind {
    /// No NAT: the host has a public address.
    Public,
    /// A NAT box.
    Nat(NatConfig),
    /// A firewall dropping all UDP in both directions.
    UdpBlocked,
}

impl SiteKind {
    /// The mapping hint the host's own NAT detection would report.
    pub fn mapping_hint(self) -> MappingHint {
        match self {
            SiteKind::Public => MappingHint::EndpointIndependent,
            SiteKind::Nat(c) => match c.mapping {
                MappingBehavior::EndpointIndependent => MappingHint::EndpointIndependent,
                MappingBehavior::AddressDependent => MappingHint::AddressDependent,
                MappingBehavior::AddressAndPortDependent => MappingHint::AddressAndPortDependent,
            },
            SiteKind::UdpBlocked => MappingHint::UdpBlocked,
        }
    }
}

/// The classic NAT types (the `NatType` names of NAT detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// No NAT.
    Open,
    /// EIM + EIF.
    FullCone,
    /// EIM + ADF.
    RestrictedCone,
    /// EIM + APDF.
    PortRestrictedCone,
    /// APDM + APDF.
    Symmetric,
    /// All UDP dropped.
    UdpBlocked,
}

impl Profile {
    /// Every profile, in the order of the matrix in `docs/punch.md`.
    pub const ALL: [Profile; 6] = [
        Profile::Open,
        Profile::FullCone,
        Profile::RestrictedCone,
        Profile::PortRestrictedCone,
        Profile::Symmetric,
        Profile::UdpBlocked,
    ];

    /// Whether RFC 4787 allows a direct path between sites of these two kinds (random port
    /// allocation, so no port prediction luck): every pair except symmetric with
    /// symmetric, symmetric with port-restricted cone (either way) — the symmetric side's
    /// fresh mapping is filtered by the other, whose own mapping is filtered back — and
    /// any pair with UDP blocked. The simulated matrix and the network-namespace lab both
    /// assert it.
    pub fn direct_possible(a: Profile, b: Profile) -> bool {
        use Profile::{PortRestrictedCone, Symmetric, UdpBlocked};
        !matches!(
            (a, b),
            (UdpBlocked, _)
                | (_, UdpBlocked)
                | (Symmetric, Symmetric)
                | (Symmetric, PortRestrictedCone)
                | (PortRestrictedCone, Symmetric)
        )
    }

    /// The site this profile describes (random port allocation, 120 s mappings).
    pub fn site(self) -> SiteKind {
        use FilteringBehavior as F;
        use MappingBehavior as M;
        match self {
            Profile::Open => SiteKind::Public,
            Profile::FullCone => {
                SiteKind::Nat(NatConfig::new(M::EndpointIndependent, F::EndpointIndependent))
            }
            Profile::RestrictedCone => {
                SiteKind::Nat(NatConfig::new(M::EndpointIndependent, F::AddressDependent))
            }
            Profile::PortRestrictedCone => {
                SiteKind::Nat(NatConfig::new(M::EndpointIndependent, F::AddressAndPortDependent))
            }
            Profile::Symmetric => {
                SiteKind::Nat(NatConfig::new(M::AddressAndPortDependent, F::AddressAndPortDependent))
            }
            Profile::UdpBlocked => SiteKind::UdpBlocked,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DestKey {
    Any,
    Ip(IpAddr),
    Endpoint(SocketAddr),
}

#[derive(Clone, Debug)]
struct Mapping {
    internal: SocketAddr,
    key: DestKey,
    external_port: u16,
    /// Endpoints this mapping has sent to (for filtering).
    contacted: Vec<SocketAddr>,
    last_outbound: Instant,
}

/// Most mappings a NAT box holds; the least recently used goes first. Far above what a
/// punch session creates (tens).
const MAX_MAPPINGS: usize = 4096;

/// A NAT box (see the module docs).
#[derive(Clone, Debug)]
pub struct NatBox {
    public_ip: IpAddr,
    cfg: NatConfig,
    mappings: Vec<Mapping>,
    rng: u64,
    next_port: u16,
}

impl NatBox {
    /// A NAT with external address `public_ip`; `seed` drives random port allocation.
    pub fn new(public_ip: IpAddr, cfg: NatConfig, seed: u64) -> Self {
        Self { public_ip, cfg, mappings: Vec::new(), rng: seed, next_port: 20_000 }
    }

    /// The external address.
    pub fn public_ip(&self) -> IpAddr {
        self.public_ip
    }

    /// Live mappings at `now`.
    pub fn mapping_count(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.mappings.len()
    }

    /// Translates a packet from `internal` to `dst`: returns its external source address,
    /// creating or refreshing the mapping.
    pub fn outbound(&mut self, now: Instant, internal: SocketAddr, dst: SocketAddr) -> SocketAddr {
        self.expire(now);
        let key = match self.cfg.mapping {
            MappingBehavior::EndpointIndependent => DestKey::Any,
            MappingBehavior::AddressDependent => DestKey::Ip(dst.ip()),
            MappingBehavior::AddressAndPortDependent => DestKey::Endpoint(dst),
        };
        let i = match self.mappings.iter().position(|m| m.internal == internal && m.key == key) {
            Some(i) => i,
            None => {
                if self.mappings.len() >= MAX_MAPPINGS {
                    if let Some(oldest) =
                        (0..self.mappings.len()).min_by_key(|&i| self.mappings[i].last_outbound)
                    {
                        self.mappings.swap_remove(oldest);
                    }
                }
                let external_port = self.allocate_port();
                self.mappings.push(Mapping {
                    internal,
                    key,
                    external_port,
                    contacted: Vec::new(),
                    last_outbound: now,
                });
                self.mappings.len() - 1
            }
        };
        let m = &mut self.mappings[i];
        m.last_outbound = now;
        if !m.contacted.contains(&dst) {
            m.contacted.push(dst);
        }
        SocketAddr::new(self.public_ip, m.external_port)
    }

    /// Filters and translates a packet from `src` to external port `port`: returns the
    /// internal destination, or `None` to drop it.
    pub fn inbound(&mut self, now: Instant, src: SocketAddr, port: u16) -> Option<SocketAddr> {
        self.expire(now);
        let m = self.mappings.iter().find(|m| m.external_port == port)?;
        let allowed = match self.cfg.filtering {
            FilteringBehavior::EndpointIndependent => true,
            FilteringBehavior::AddressDependent => m.contacted.iter().any(|c| c.ip() == src.ip()),
            FilteringBehavior::AddressAndPortDependent => m.contacted.contains(&src),
        };
        allowed.then_some(m.internal)
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.mapping_timeout;
        self.mappings.retain(|m| now.saturating_duration_since(m.last_outbound) < timeout);
    }

    fn allocate_port(&mut self) -> u16 {
        let in_use = |ms: &[Mapping], p: u16| ms.iter().any(|m| m.external_port == p);
        match self.cfg.ports {
            PortAllocation::Sequential => {
                while in_use(&self.mappings, self.next_port) {
                    self.next_port = self.next_port.checked_add(1).unwrap_or(20_000);
                }
                let p = self.next_port;
                self.next_port = self.next_port.checked_add(1).unwrap_or(20_000);
                p
            }
            PortAllocation::Random => loop {
                let p = 1024 + u16::try_from(splitmix(&mut self.rng) % (65536 - 1024)).unwrap_or(0);
                if !in_use(&self.mappings, p) {
                    return p;
                }
            },
        }
    }
}

/// splitmix64: a tiny deterministic generator (simulation only, no security role).
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
