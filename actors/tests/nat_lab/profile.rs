//! The NAT router profiles of the lab: the simulator's [`Profile`] (one list of the six
//! site kinds for simulation and lab), with what each must look like to the oracle and
//! to `kizuna nat`, and the nftables ruleset that builds it on a Linux router.

use std::net::Ipv4Addr;

pub(crate) use kizuna::punch::sim::Profile;

/// The lab's view of a [`Profile`].
pub(crate) trait LabProfile: Copy {
    /// Short name used in tables and file names.
    fn name(self) -> &'static str;
    /// What `kizuna nat --json` must report as `nat_type`.
    fn nat_type(self) -> &'static str;
    /// `(mapping, filtering)` as `kizuna nat --json` spells them (`None`: null).
    fn behaviours(self) -> (Option<&'static str>, Option<&'static str>);
    /// What `turnutils_natdiscovery` prints for mapping and filtering (`None`: it gets no
    /// STUN answer at all).
    fn oracle(self) -> Option<(&'static str, &'static str)>;
    /// The router's complete nftables ruleset (`nft -f` input, replacing everything).
    fn ruleset(self, wan: Ipv4Addr) -> String;
    /// How the router treats TCP, as the profile of the same behaviours: conntrack only
    /// admits replies (the cone maps are UDP-only), `snat` keeps ports (EIM) and
    /// `masquerade random` does not — so a port-restricted cone, except where there is no
    /// NAT or the NAT is symmetric. UDP blocked leaves TCP to a port-restricted NAT.
    fn tcp(self) -> Profile;
}

/// Where a pair must end up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Direct QUIC over a punched UDP path (RFC 4787 allows it).
    Quic,
    /// UDP cannot get through, but TCP simultaneous open can (RFC 5382 behaviours of the
    /// routers' TCP, by the same rule).
    Tcp,
    /// Stays relayed.
    Relayed,
}

impl Expect {
    /// The expectation for a node in an `a` site and a pinger in a `b` site.
    pub(crate) fn of(a: Profile, b: Profile) -> Expect {
        if Profile::direct_possible(a, b) {
            Expect::Quic
        } else if Profile::direct_possible(a.tcp(), b.tcp()) {
            Expect::Tcp
        } else {
            Expect::Relayed
        }
    }

    /// `(path, transport)` as `kizuna ping --json` reports it at the end.
    pub(crate) fn path(self) -> (&'static str, Option<&'static str>) {
        match self {
            Expect::Quic => ("direct", Some("quic")),
            Expect::Tcp => ("direct", Some("tcp")),
            Expect::Relayed => ("relayed", None),
        }
    }
}

impl LabProfile for Profile {
    fn tcp(self) -> Profile {
        match self {
            Profile::Open => Profile::Open,
            Profile::Symmetric => Profile::Symmetric,
            _ => Profile::PortRestrictedCone,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Profile::Open => "none",
            Profile::FullCone => "full_cone",
            Profile::RestrictedCone => "restricted_cone",
            Profile::PortRestrictedCone => "port_restricted_cone",
            Profile::Symmetric => "symmetric",
            Profile::UdpBlocked => "udp_blocked",
        }
    }

    fn nat_type(self) -> &'static str {
        match self {
            Profile::Open => "open",
            p => p.name(),
        }
    }

    fn behaviours(self) -> (Option<&'static str>, Option<&'static str>) {
        const EI: &str = "endpoint_independent";
        const AD: &str = "address_dependent";
        const APD: &str = "address_and_port_dependent";
        match self {
            Profile::Open | Profile::FullCone => (Some(EI), Some(EI)),
            Profile::RestrictedCone => (Some(EI), Some(AD)),
            Profile::PortRestrictedCone => (Some(EI), Some(APD)),
            Profile::Symmetric => (Some(APD), Some(APD)),
            Profile::UdpBlocked => (None, None),
        }
    }

    fn oracle(self) -> Option<(&'static str, &'static str)> {
        const EI: &str = "Endpoint Independent";
        match self {
            Profile::Open | Profile::FullCone => Some((EI, EI)),
            Profile::RestrictedCone => Some((EI, "Address Dependent")),
            Profile::PortRestrictedCone => Some((EI, "Address and Port Dependent")),
            Profile::Symmetric => Some(("Address and Port Dependent", "Address and Port Dependent")),
            Profile::UdpBlocked => None,
        }
    }

    /// The ruleset:
    ///
    /// * Endpoint-independent mapping: `snat to WAN` keeps the host's source port (one
    ///   host per site: no clash), so every destination sees the same mapping.
    /// * Full and restricted cone: each UDP mapping is recorded in the dynamic map
    ///   `@fullcone` (external port → host:port) when created, and prerouting DNATs
    ///   inbound UDP through it, so anyone (full) or any address the host has sent to
    ///   (restricted: set `@contacted`) reaches the mapping. Plain MASQUERADE cannot do this.
    /// * Port-restricted cone and symmetric: only conntrack replies get in;
    ///   symmetric uses `masquerade random`, a fresh random port per destination.
    /// * Unsolicited inbound packets for the router itself are dropped in `input`, before
    ///   conntrack confirms them: a stray punch packet arriving before the host's own
    ///   outbound one must not leave an entry that makes SNAT pick another port.
    /// * The prerouting nat chain exists in every profile, even when empty.
    fn ruleset(self, wan: Ipv4Addr) -> String {
        let cone_map = matches!(self, Profile::FullCone | Profile::RestrictedCone);
        let mut r = String::from("flush ruleset\ntable ip lab {\n");
        if cone_map {
            r += "  map fullcone { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout 300s; }\n";
        }
        if self == Profile::RestrictedCone {
            r += "  set contacted { type ipv4_addr; flags dynamic,timeout; timeout 300s; }\n";
        }
        r += "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n";
        if cone_map {
            r += "    iif \"wan\" meta l4proto udp dnat ip to udp dport map @fullcone\n";
        }
        r += "  }\n  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n";
        if cone_map {
            r += "    oif \"wan\" meta l4proto udp update @fullcone { udp sport timeout 300s : ip saddr . udp sport }\n";
        }
        match self {
            Profile::Open => {}
            Profile::Symmetric => r += "    oif \"wan\" masquerade random\n",
            _ => r += &format!("    oif \"wan\" snat ip to {wan}\n"),
        }
        r += "  }\n  chain forward { type filter hook forward priority filter; policy drop;\n";
        if self == Profile::UdpBlocked {
            r += "    meta l4proto udp drop\n";
        }
        if self == Profile::RestrictedCone {
            r += "    iif \"lan\" oif \"wan\" update @contacted { ip daddr }\n";
        }
        r += "    iif \"lan\" accept\n    ct state established,related accept\n";
        match self {
            Profile::Open => r += "    iif \"wan\" accept\n",
            Profile::FullCone => r += "    iif \"wan\" ct status dnat accept\n",
            Profile::RestrictedCone => r += "    iif \"wan\" ct status dnat ip saddr @contacted accept\n",
            _ => {}
        }
        r += "  }\n  chain input { type filter hook input priority filter; policy accept;\n";
        r += "    iif \"wan\" ct state established,related accept\n    iif \"wan\" drop\n  }\n}\n";
        r
    }
}
