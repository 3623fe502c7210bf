//! The network-namespace NAT lab: topology ([`netns`]), router profiles ([`profile`]),
//! the loss/delay shim ([`shim`]), processes ([`procs`]) and the servers and peer pairs
//! the tests run in it (here).

pub(crate) mod netns;
pub(crate) mod procs;
pub(crate) mod profile;
pub(crate) mod shim;

use std::time::{Duration, Instant};

use netns::{Lab, Site, PUB1, PUB2};
use procs::{kizuna, Proc};
use profile::{Expect, LabProfile, Profile};
use serde_json::Value;

/// The relay's WebSocket port on [`PUB1`] (fixed: the namespace is the lab's own).
pub(crate) const RELAY_PORT: u16 = 7000;
/// The relay's STUN port on [`PUB1`] and [`PUB2`] (RFC 5780 grid: also port + 1).
pub(crate) const STUN_PORT: u16 = 3478;
/// coturn's port on both public addresses (alternate: port + 1).
pub(crate) const COTURN_PORT: u16 = 4478;

/// Bound on a process printing its first line (a loaded 2-core machine).
pub(crate) const STARTUP: Duration = Duration::from_secs(30);

/// The relay URL clients use.
pub(crate) fn relay_url() -> String {
    format!("ws://{PUB1}:{RELAY_PORT}")
}

/// The relay's first STUN address.
pub(crate) fn stun1() -> String {
    format!("{PUB1}:{STUN_PORT}")
}

/// Prints why the lab is skipped and returns true when it cannot run here.
pub(crate) fn skip() -> bool {
    match netns::unavailable() {
        Some(why) => {
            eprintln!("SKIP: NAT lab not run: {why}");
            true
        }
        None => false,
    }
}

/// Starts `kizuna relay` (open admission, RFC 5780 STUN on both public addresses) in the
/// public namespace and waits until it listens.
pub(crate) fn start_relay(lab: &Lab) -> Proc {
    let mut cmd = kizuna(&lab.public(), lab.dir());
    cmd.args(["relay", "--listen", &relay_url(), "--open", "--json"]).args([
        "--stun",
        &stun1(),
        "--stun",
        &format!("{PUB2}:{STUN_PORT}"),
    ]);
    let relay = Proc::spawn(cmd, "relay", &lab.path("relay.log"));
    let (_, v) = relay.json(STARTUP).unwrap_or_else(|| panic!("relay did not start: {}", relay.log_tail(20)));
    assert_eq!(v["event"], "listening", "{v}");
    relay
}

/// Starts coturn (STUN only, RFC 5780 on both public addresses) in the public namespace
/// and waits until it answers.
pub(crate) fn start_coturn(lab: &Lab) -> Proc {
    let d = |f: &str| lab.path(&format!("coturn-{f}")).to_string_lossy().into_owned();
    let mut cmd = netns::in_ns(&lab.public(), "turnserver");
    cmd.args(["-n", "--listening-ip", &PUB1.to_string(), "--listening-ip", &PUB2.to_string()])
        .args([
            "--listening-port",
            &COTURN_PORT.to_string(),
            "--alt-listening-port",
            &(COTURN_PORT + 1).to_string(),
        ])
        .args(["--no-tls", "--no-dtls", "--no-tcp", "--no-auth", "--stun-only", "--no-cli", "--simple-log"])
        .args(["--log-file", &d("log"), "--pidfile", &d("pid"), "--db", &d("db")]);
    let coturn = Proc::spawn(cmd, "coturn", &lab.path("coturn.stderr"));
    let start = Instant::now();
    while start.elapsed() < STARTUP {
        let out = kizuna(&lab.public(), lab.dir())
            .args(["nat", "--stun", &format!("{PUB1}:{COTURN_PORT}"), "--json"])
            .output()
            .expect("kizuna nat");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["nat_type"] == "open" {
            return coturn;
        }
    }
    panic!("coturn did not answer STUN within {STARTUP:?}");
}

/// Runs `kizuna nat --json` on the site's host.
pub(crate) fn kizuna_nat(lab: &Lab, site: &Site, servers: &[String]) -> Value {
    let mut cmd = kizuna(&site.host, lab.dir());
    cmd.arg("nat").arg("--json");
    for s in servers {
        cmd.args(["--stun", s]);
    }
    let out = cmd.output().expect("kizuna nat");
    assert_eq!(out.status.code(), Some(0), "kizuna nat: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kizuna nat output: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Checks a `kizuna nat --json` report against the site's profile; `Err` says what differs.
pub(crate) fn check_nat_report(site: &Site, v: &Value) -> Result<(), String> {
    let p = site.profile;
    let (mapping, filtering) = p.behaviours();
    let public = match p {
        Profile::UdpBlocked => None,
        Profile::Open => Some(site.host_ip),
        _ => Some(site.wan),
    };
    let got_public_ip =
        v["public_addr"].as_str().and_then(|a| a.parse::<std::net::SocketAddr>().ok()).map(|a| a.ip());
    let ok = v["nat_type"] == p.nat_type()
        && v["mapping"].as_str() == mapping
        && v["filtering"].as_str() == filtering
        && got_public_ip == public.map(std::net::IpAddr::V4);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "site {} ({}): expected nat_type {}, mapping {mapping:?}, filtering {filtering:?}, public ip {public:?}; got {v}",
            site.index,
            p.name(),
            p.nat_type()
        ))
    }
}

/// Runs coturn's `turnutils_natdiscovery` (the independent oracle) on the site's host
/// against coturn: mapping and filtering each on a freshly reset router (the mapping test
/// contacts the second address, which would open a restricted cone's filter for the
/// filtering test). `Err` says how it disagrees with the profile.
pub(crate) fn check_oracle(site: &mut Site) -> Result<(), String> {
    let mut text = String::new();
    let mut verdicts = Vec::new();
    for (flag, kind) in [("-m", "Mapping"), ("-f", "Filtering")] {
        site.reset();
        let out = site
            .cmd("timeout")
            .args(["60", "turnutils_natdiscovery", flag, "-p", &COTURN_PORT.to_string(), &PUB1.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        let t = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let verdict = t
            .lines()
            .find_map(|l| l.strip_prefix("NAT with ").and_then(|r| r.strip_suffix(&format!(" {kind}!"))))
            .map(str::to_string);
        verdicts.push(verdict);
        text += &t;
    }
    site.reset();
    let reflexive = text
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok());
    let expected = site.profile.oracle();
    let got = match (&verdicts[0], &verdicts[1]) {
        (Some(m), Some(f)) => Some((m.as_str(), f.as_str())),
        _ => None,
    };
    let mut problems = Vec::new();
    if got != expected {
        problems.push(format!("verdicts {got:?}, expected {expected:?}"));
    }
    let want_reflexive = match site.profile {
        Profile::UdpBlocked => None,
        Profile::Open => Some(site.host_ip),
        _ => Some(site.wan),
    };
    if reflexive.map(|a| a.ip()) != want_reflexive.map(std::net::IpAddr::V4) {
        problems.push(format!("reflexive address {reflexive:?}, expected ip {want_reflexive:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "oracle disagrees on site {} ({}): {}\n{text}",
            site.index,
            site.profile.name(),
            problems.join("; ")
        ))
    }
}

/// What happened between a node in one site and a pinger in another.
#[derive(Clone, Debug)]
pub(crate) struct PairResult {
    /// The node's site profile.
    pub(crate) a: Profile,
    /// The pinger's site profile.
    pub(crate) b: Profile,
    /// Pings answered.
    pub(crate) ok: usize,
    /// Pings sent.
    pub(crate) sent: usize,
    /// Path of the first ping.
    pub(crate) first_path: Option<String>,
    /// Whether a ping went over a direct path.
    pub(crate) direct: bool,
    /// The transport of the first direct ping.
    pub(crate) direct_transport: Option<String>,
    /// Time from the relayed connection to the direct path.
    pub(crate) time_to_direct: Option<Duration>,
    /// Direct pings seen after the first direct one, and relayed ones after it (should be 0).
    pub(crate) relayed_after_direct: usize,
    /// The node's `hole_punch_failed` reason, if it printed one.
    pub(crate) punch_failed: Option<String>,
    /// Why the pair could not even run (node did not start...).
    pub(crate) error: Option<String>,
    /// Logs to read when it went wrong.
    pub(crate) logs: String,
}

/// Pings sent per pair at most, and the interval: 64 × 250 ms = 16 s, about twice what
/// the UDP punch needs to give up (3 rounds, ~7 s) before a TCP simultaneous open is used.
pub(crate) const PING_COUNT: u32 = 64;
/// Interval between pings (ms): also the resolution of the fallback time-to-direct.
pub(crate) const PING_INTERVAL_MS: u64 = 250;
/// Direct pings seen after the upgrade before a pair is called done.
const DIRECT_CONFIRM: usize = 3;

/// Runs `kizuna node` in `a`'s host and `kizuna ping` (by peer id, through the relay) in
/// `b`'s host; watches the path of every ping.
pub(crate) fn run_pair(lab: &Lab, a: &Site, b: &Site, count: u32) -> PairResult {
    let tag = format!("{}-{}", a.index, b.index);
    let mut r = PairResult {
        a: a.profile,
        b: b.profile,
        ok: 0,
        sent: 0,
        first_path: None,
        direct: false,
        direct_transport: None,
        time_to_direct: None,
        relayed_after_direct: 0,
        punch_failed: None,
        error: None,
        logs: String::new(),
    };
    let key = lab.path(&format!("node-{tag}.key"));
    let mut cmd = kizuna(&a.host, lab.dir());
    // Default listeners (wildcard): the node's host candidates come from its interfaces.
    cmd.args(["node", "--json", "--relay", &relay_url(), "--stun", &stun1()]).arg("--key").arg(&key);
    let node = Proc::spawn(cmd, "node", &lab.path(&format!("node-{tag}.log")));
    let mut node_lines = Vec::new();
    let Some((_, listening)) = node.wait_event("listening", STARTUP, &mut node_lines) else {
        r.error = Some(format!("node did not start: {}", node.log_tail(20)));
        return r;
    };
    let peer = listening["peer"].as_str().unwrap_or_default().to_string();
    // The node answers pings only once its NAT report is out (it probes before serving).
    if node.wait_event("nat", STARTUP, &mut node_lines).is_none() {
        r.error = Some(format!("node printed no NAT report: {}", node.log_tail(20)));
        return r;
    }
    let mut cmd = kizuna(&b.host, lab.dir());
    cmd.args(["ping", &peer, "--json", "--relay", &relay_url(), "--stun", &stun1()]).args([
        "--count",
        &count.to_string(),
        "--interval",
        &PING_INTERVAL_MS.to_string(),
    ]);
    let ping = Proc::spawn(cmd, "ping", &lab.path(&format!("ping-{tag}.log")));
    let deadline = Instant::now() + STARTUP + Duration::from_millis(PING_INTERVAL_MS * u64::from(count)) * 2;
    let mut first_at = None;
    let mut direct_at = None;
    let mut direct_seen = 0;
    while let Some((t, v)) = ping.json(deadline.saturating_duration_since(Instant::now())) {
        r.sent += 1;
        if v["status"] == "ok" {
            r.ok += 1;
        }
        let path = v["path"].as_str().unwrap_or_default().to_string();
        if r.first_path.is_none() {
            r.first_path = Some(path.clone());
            first_at = Some(t);
        }
        if path == "direct" {
            if direct_at.is_none() {
                r.direct_transport = v["transport"].as_str().map(str::to_string);
            }
            direct_at.get_or_insert(t);
            direct_seen += 1;
            if direct_seen > DIRECT_CONFIRM {
                break;
            }
        } else if direct_at.is_some() {
            r.relayed_after_direct += 1;
        }
    }
    r.direct = direct_at.is_some();
    // Prefer the node's own events (connected → path_changed to direct); fall back to ping
    // lines.
    while let Some((t, v)) = node.json(Duration::from_millis(200)) {
        node_lines.push((t, v));
    }
    let connected = node_lines.iter().find(|(_, v)| v["event"] == "connected").map(|(t, _)| *t);
    let upgraded = node_lines.iter().find(|(_, v)| is_upgrade(v)).map(|(t, _)| *t);
    r.punch_failed = node_lines
        .iter()
        .find(|(_, v)| v["event"] == "hole_punch_failed")
        .map(|(_, v)| v["reason"].as_str().unwrap_or_default().to_string());
    r.time_to_direct = match (connected, upgraded, first_at, direct_at) {
        (Some(c), Some(u), _, Some(_)) if u >= c => Some(u - c),
        (_, _, Some(f), Some(d)) => Some(d - f),
        _ => None,
    };
    let punch =
        |l: &str| l.contains("punch") || l.contains("upgrade") || l.contains("WARN") || l.contains("ERROR");
    r.logs = format!(
        "--- node {tag} ({}) stderr, punch lines ---\n{}\n--- ping {tag} ({}) stderr, punch lines ---\n{}",
        a.profile.name(),
        node.log_lines(20, punch),
        b.profile.name(),
        ping.log_lines(20, punch)
    );
    r
}

/// Why a pair's outcome breaks the RFC 4787 expectation, if it does.
pub(crate) fn pair_problem(r: &PairResult) -> Option<String> {
    let name = format!("{} × {}", r.a.name(), r.b.name());
    if let Some(e) = &r.error {
        return Some(format!("{name}: {e}"));
    }
    if r.ok == 0 {
        return Some(format!("{name}: never connected ({} pings, none answered)", r.sent));
    }
    if r.first_path.as_deref() != Some("relayed") {
        return Some(format!("{name}: first ping went {:?}, expected relayed", r.first_path));
    }
    let want = Expect::of(r.a, r.b);
    let got = if r.direct { ("direct", r.direct_transport.as_deref()) } else { ("relayed", None) };
    if got != want.path() {
        return Some(format!(
            "{name}: ended {got:?}, expected {:?} (node's punch failure: {:?})",
            want.path(),
            r.punch_failed
        ));
    }
    if r.relayed_after_direct > 0 {
        return Some(format!("{name}: {} pings relayed again after going direct", r.relayed_after_direct));
    }
    None
}

/// Renders results as a Markdown table (rows: node's site, columns: pinger's site).
pub(crate) fn matrix_table(results: &[PairResult]) -> String {
    let short = |p: Profile| match p {
        Profile::Open => "None",
        Profile::FullCone => "Full",
        Profile::RestrictedCone => "Restr",
        Profile::PortRestrictedCone => "PortRestr",
        Profile::Symmetric => "Sym",
        Profile::UdpBlocked => "Blocked",
    };
    let mut t = String::from("| node \\ pinger |");
    for b in Profile::ALL {
        t += &format!(" {} |", short(b));
    }
    t += "\n|---|";
    t += &"---|".repeat(Profile::ALL.len());
    t += "\n";
    for a in Profile::ALL {
        t += &format!("| {} |", short(a));
        for b in Profile::ALL {
            let cell = match results.iter().find(|r| r.a == a && r.b == b) {
                None => "–".to_string(),
                Some(r) if r.ok == 0 => "FAIL".to_string(),
                Some(r) => {
                    let kind = if r.direct_transport.as_deref() == Some("tcp") { "T" } else { "D" };
                    match (r.direct, r.time_to_direct) {
                        (true, Some(d)) => format!("{kind} {:.2} s", d.as_secs_f64()),
                        (true, None) => kind.to_string(),
                        (false, _) => "R".to_string(),
                    }
                }
            };
            t += &format!(" {cell} |");
        }
        t += "\n";
    }
    t
}

/// The results as JSON (one object per pair).
pub(crate) fn matrix_json(results: &[PairResult]) -> Value {
    Value::Array(
        results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "node": r.a.name(),
                    "pinger": r.b.name(),
                    "expected": Expect::of(r.a, r.b).path().0,
                    "expected_transport": Expect::of(r.a, r.b).path().1,
                    "path": if r.direct { "direct" } else if r.ok > 0 { "relayed" } else { "failed" },
                    "transport": r.direct_transport,
                    "time_to_direct_ms": r.time_to_direct.map(|d| d.as_millis() as u64),
                    "pings_ok": r.ok,
                    "pings_sent": r.sent,
                    "punch_failed": r.punch_failed,
                })
            })
            .collect(),
    )
}

/// Creates the key file `name` in the lab directory (run on `site`'s host) and returns its
/// path and peer id.
pub(crate) fn make_key(lab: &Lab, site: &Site, name: &str) -> (std::path::PathBuf, String) {
    let key = lab.path(name);
    let out = kizuna(&site.host, lab.dir()).args(["id", "--key"]).arg(&key).output().expect("kizuna id");
    assert!(out.status.success(), "kizuna id: {}", String::from_utf8_lossy(&out.stderr));
    (key, String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether a `kizuna node --json` line reports `peer`'s traffic moving to a `to` path
/// (`direct` or `relayed`).
pub(crate) fn moved_to(v: &Value, peer: &str, to: &str) -> bool {
    v["event"] == "path_changed" && v["peer"] == peer && v["to"]["path"] == to
}

/// Whether a `kizuna node --json` line reports the traffic moving to a direct path.
pub(crate) fn is_upgrade(v: &serde_json::Value) -> bool {
    v["event"] == "path_changed" && v["to"]["path"] == "direct"
}
