//! The lab topology: network namespaces joined by veth pairs, built with iproute2 and
//! nftables, torn down by `Drop` (also when a test fails).
//!
//! ```text
//!   pub (br0: 203.0.113.1/24 + 203.0.113.2/24; relay, STUN servers)
//!    ├─ veth ─ [shim i] ─ router i (wan 203.0.113.(10+i), lan 198.51.100.(8i+1)/29) ─ veth ─ host i (198.51.100.(8i+2))
//!    └─ ...
//! ```
//!
//! Every site's LAN is routed from `pub` to its router, so a site without NAT is
//! reachable at its host's address; a NAT router's forward chain drops whatever inbound
//! traffic its profile does not let in, so its LAN addresses lead nowhere.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use super::{
    profile::{LabProfile, Profile},
    shim::{Impairment, Shim},
};

/// Every namespace this lab creates starts with this, then `<pid>n<counter>`.
const PREFIX: &str = "kzl";

/// The two public addresses of the relay / STUN host (RFC 5780 needs two).
pub(crate) const PUB1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The relay's second address.
pub(crate) const PUB2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// Sites per lab: /29 LANs carved from 198.51.100.0/24 (site 0 unused).
const MAX_SITES: u8 = 31;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command to completion; `Err` carries its stderr.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    run_input(prog, args, None)
}

/// Runs a command with `input` on its stdin.
pub(crate) fn run_input(prog: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{prog}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| format!("{prog} stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{prog} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[track_caller]
fn must(prog: &str, args: &[&str]) -> String {
    run(prog, args).unwrap_or_else(|e| panic!("lab setup: {e}"))
}

/// Why the lab cannot run here, if it cannot (not root, a tool missing, no namespaces).
pub(crate) fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need CAP_NET_ADMIN".into());
    }
    for tool in ["ip", "nft", "conntrack", "ethtool", "turnserver", "turnutils_natdiscovery", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "`{tool}` not found (apt-get install iproute2 nftables conntrack ethtool iputils-ping coturn; .ci/run does)"
            ));
        }
    }
    let probe = format!("{PREFIX}{}probe{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Err(e) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = run("ip", &["netns", "delete", &probe]);
    None
}

/// Deletes namespaces left by lab runs whose process no longer exists (a crashed run
/// cannot clean up after itself). Namespaces of live processes are left alone.
pub(crate) fn sweep_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(name);
        let _ = run("ip", &["netns", "delete", name]);
    }
}

/// SIGKILLs every process inside namespace `ns`.
fn kill_all_in(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill has no memory preconditions; the pid is one the kernel listed.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A command line to run inside namespace `ns`.
pub(crate) fn in_ns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

/// One lab: a public segment and the sites attached to it. Dropping it kills every
/// process inside its namespaces, stops the shims and deletes the namespaces.
pub(crate) struct Lab {
    id: String,
    namespaces: Vec<String>,
    shims: Vec<Shim>,
    next_site: u8,
    dir: tempfile::TempDir,
}

/// One private site: a router namespace and a host namespace behind it.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    /// The site's index in the lab (addresses derive from it).
    pub(crate) index: u8,
    /// The router's namespace.
    pub(crate) router: String,
    /// The host's namespace (where `kizuna` runs).
    pub(crate) host: String,
    /// The router's public address.
    pub(crate) wan: Ipv4Addr,
    /// The host's address on the site LAN.
    pub(crate) host_ip: Ipv4Addr,
    /// The router's current profile.
    pub(crate) profile: Profile,
}

impl Lab {
    /// Creates the public segment: namespace `pub` with bridge `br0` holding [`PUB1`] and
    /// [`PUB2`].
    pub(crate) fn new() -> Lab {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut lab = Lab {
            id: format!("{PREFIX}{}n{n}", std::process::id()),
            namespaces: Vec::new(),
            shims: Vec::new(),
            next_site: 1,
            dir: tempfile::tempdir().expect("lab temp dir"),
        };
        let p = lab.add_ns("pub");
        must("ip", &["-n", &p, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &p, "link", "set", "br0", "up"]);
        for a in [PUB1, PUB2] {
            must("ip", &["-n", &p, "addr", "add", &format!("{a}/24"), "dev", "br0"]);
        }
        no_offloads(&p, "br0");
        sysctl(&p, "net.ipv4.ip_forward=1");
        sysctl(&p, "net.ipv4.conf.all.send_redirects=0");
        sysctl(&p, "net.ipv4.conf.br0.send_redirects=0");
        lab
    }

    /// The public namespace (relay, STUN servers).
    pub(crate) fn public(&self) -> String {
        format!("{}-pub", self.id)
    }

    /// Frames the lab's shims have dropped on purpose so far.
    pub(crate) fn shim_drops(&self) -> u64 {
        self.shims.iter().map(|s| s.counters.dropped.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// A directory for logs and keys, removed with the lab.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh path in the lab directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn add_ns(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.id);
        must("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        must("ip", &["-n", &name, "link", "set", "lo", "up"]);
        sysctl(&name, "net.ipv6.conf.all.disable_ipv6=1");
        sysctl(&name, "net.ipv6.conf.default.disable_ipv6=1");
        name
    }

    /// Adds a site behind a router with `profile`; with `impair`, a userspace shim
    /// between the router and the public bridge drops and delays frames both ways.
    pub(crate) fn add_site(&mut self, profile: Profile, impair: Option<Impairment>) -> Site {
        let i = self.next_site;
        assert!(i <= MAX_SITES, "a lab holds at most {MAX_SITES} sites");
        self.next_site += 1;
        let router = self.add_ns(&format!("r{i}"));
        let host = self.add_ns(&format!("h{i}"));
        let public = self.public();
        let wan = Ipv4Addr::new(203, 0, 113, 10 + i);
        let lan_base = 8 * i;
        let router_lan = Ipv4Addr::new(198, 51, 100, lan_base + 1);
        let host_ip = Ipv4Addr::new(198, 51, 100, lan_base + 2);
        let port = format!("p{i}");

        let shim = impair.map(|imp| {
            let s = self.add_ns(&format!("s{i}"));
            must(
                "ip",
                &[
                    "link", "add", &port, "netns", &public, "type", "veth", "peer", "name", "outer", "netns",
                    &s,
                ],
            );
            must(
                "ip",
                &[
                    "link", "add", "inner", "netns", &s, "type", "veth", "peer", "name", "wan", "netns",
                    &router,
                ],
            );
            for dev in ["outer", "inner"] {
                must("ip", &["-n", &s, "link", "set", "dev", dev, "promisc", "on", "up"]);
                no_offloads(&s, dev);
            }
            self.shims.push(Shim::start(&s, "inner", "outer", imp).unwrap_or_else(|e| panic!("shim: {e}")));
            s
        });
        if shim.is_none() {
            must(
                "ip",
                &[
                    "link", "add", &port, "netns", &public, "type", "veth", "peer", "name", "wan", "netns",
                    &router,
                ],
            );
        }
        must("ip", &["-n", &public, "link", "set", &port, "master", "br0", "up"]);
        no_offloads(&public, &port);
        must(
            "ip",
            &["link", "add", "lan", "netns", &router, "type", "veth", "peer", "name", "eth0", "netns", &host],
        );
        must("ip", &["-n", &router, "addr", "add", &format!("{wan}/24"), "dev", "wan"]);
        must("ip", &["-n", &router, "addr", "add", &format!("{router_lan}/29"), "dev", "lan"]);
        must("ip", &["-n", &host, "addr", "add", &format!("{host_ip}/29"), "dev", "eth0"]);
        for (ns, dev) in [(&router, "wan"), (&router, "lan"), (&host, "eth0")] {
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            no_offloads(ns, dev);
        }
        must("ip", &["-n", &router, "route", "add", "default", "via", &PUB1.to_string()]);
        must("ip", &["-n", &host, "route", "add", "default", "via", &router_lan.to_string()]);
        must(
            "ip",
            &["-n", &public, "route", "add", &format!("198.51.100.{lan_base}/29"), "via", &wan.to_string()],
        );
        sysctl(&router, "net.ipv4.ip_forward=1");
        let mut site = Site { index: i, router, host, wan, host_ip, profile };
        site.set_profile(profile);
        site
    }
}

impl Site {
    /// Replaces the router's ruleset with `profile`'s and flushes its conntrack table, so
    /// no mapping from an earlier case survives.
    pub(crate) fn set_profile(&mut self, profile: Profile) {
        run_input("ip", &["netns", "exec", &self.router, "nft", "-f", "-"], Some(&profile.ruleset(self.wan)))
            .unwrap_or_else(|e| panic!("nft {}: {e}", profile.name()));
        self.profile = profile;
        self.flush();
    }

    /// Forgets every NAT mapping and connection on the router (rules reloaded too, which
    /// empties the dynamic maps and sets).
    pub(crate) fn reset(&mut self) {
        self.set_profile(self.profile);
    }

    fn flush(&self) {
        // `conntrack -F` exits 1 when the table was already empty on some versions.
        let _ = run("ip", &["netns", "exec", &self.router, "conntrack", "-F"]);
    }

    /// Drops, at the router, every forwarded UDP datagram that is not to or from the
    /// public servers ([`PUB1`], [`PUB2`]): a hole-punched path dies silently (nothing is
    /// refused, nothing arrives), the relay and STUN stay reachable, NAT mappings stay.
    pub(crate) fn blackhole_direct_udp(&self) {
        let table = format!(
            "table inet kzlab_blackhole {{\n chain blackhole {{\n  type filter hook forward priority -10; policy accept;\n  \
             meta l4proto udp ip saddr != {{ {PUB1}, {PUB2} }} ip daddr != {{ {PUB1}, {PUB2} }} drop\n }}\n}}\n"
        );
        run_input("ip", &["netns", "exec", &self.router, "nft", "-f", "-"], Some(&table))
            .unwrap_or_else(|e| panic!("blackhole: {e}"));
    }

    /// Lifts [`Site::blackhole_direct_udp`].
    pub(crate) fn lift_blackhole(&self) {
        must("ip", &["netns", "exec", &self.router, "nft", "delete", "table", "inet", "kzlab_blackhole"]);
    }

    /// A command to run on the site's host.
    pub(crate) fn cmd(&self, prog: &str) -> Command {
        in_ns(&self.host, prog)
    }
}

fn sysctl(ns: &str, kv: &str) {
    must("ip", &["netns", "exec", ns, "sysctl", "-qw", kv]);
}

/// Turns offloads off, so that every frame a shim reads is a real wire frame: at most
/// one MTU (a packet socket cannot send a 64 KiB GSO frame out of a 1500-byte veth) and
/// with its TCP/UDP checksum filled in (with `tx` offload on, locally sent packets carry a
/// partial checksum that a frame re-sent from user space would keep, and the receiver
/// would drop).
fn no_offloads(ns: &str, dev: &str) {
    // Some offloads are fixed on some devices; ethtool then fails harmlessly for those.
    let _ = run(
        "ip",
        &["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off"],
    );
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("KIZUNA_LAB_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("KIZUNA_LAB_KEEP: lab logs kept in {}", dir.keep().display());
        }
        for ns in &self.namespaces {
            kill_all_in(ns);
        }
        self.shims.clear();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run("ip", &["netns", "delete", ns]) {
                eprintln!("lab cleanup: {e}");
            }
        }
    }
}
