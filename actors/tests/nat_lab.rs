//! The network-namespace NAT lab (docs/nat-traversal.md, "NAT lab"): real kernel NAT
//! (nftables) in front of real `kizuna` processes.
//!
//! Needs root, iproute2, nftables, conntrack, ethtool, ping and coturn (`.ci/run`
//! installs them); without them every test prints `SKIP: ...` and passes. Run alone with
//! `cargo nextest run -P lab`. Each test builds its own namespaces (unique names) and
//! removes them, and every process it started, also when it fails.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

#[path = "nat_lab/mod.rs"]
mod lab;

use std::time::Duration;

use lab::{
    is_upgrade,
    netns::{self, Lab, PUB1, PUB2},
    procs,
    profile::{LabProfile, Profile},
    shim::Impairment,
    PairResult,
};

/// Every emulated profile is what coturn's own client says it is, and `kizuna nat`
/// agrees with both the Kizuna relay's RFC 5780 responder and coturn.
#[test]
fn every_profile_matches_the_oracle_and_kizuna_nat() {
    if lab::skip() {
        return;
    }
    let mut lab = Lab::new();
    let _coturn = lab::start_coturn(&lab);
    let _relay = lab::start_relay(&lab);
    let mut sites: Vec<_> = Profile::ALL.iter().map(|p| lab.add_site(*p, None)).collect();
    let kizuna_stun = vec![lab::stun1(), format!("{PUB2}:{}", lab::STUN_PORT)];
    let coturn_stun = vec![format!("{PUB1}:{}", lab::COTURN_PORT)];
    let lab = &lab;
    let problems: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = sites
            .iter_mut()
            .map(|site| {
                let (k, c) = (&kizuna_stun, &coturn_stun);
                s.spawn(move || {
                    let mut problems = Vec::new();
                    // The oracle first: nothing else is trusted unless it agrees.
                    if let Err(e) = lab::check_oracle(site) {
                        problems.push(e);
                    }
                    for (servers, what) in [(k, "kizuna relay"), (c, "coturn")] {
                        site.reset();
                        let v = lab::kizuna_nat(lab, site, servers);
                        if let Err(e) = lab::check_nat_report(site, &v) {
                            problems.push(format!("kizuna nat against {what}: {e}"));
                        }
                    }
                    problems
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

/// Sums `ping` statistics: (transmitted, received, average rtt in ms).
fn ping_stats(site: &lab::netns::Site, count: u32) -> (u32, u32, Option<f64>) {
    let out = site
        .cmd("ping")
        .args(["-n", "-q", "-c", &count.to_string(), "-i", "0.05", "-W", "3", &PUB1.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |needle: &str| -> u32 {
        text.lines()
            .find(|l| l.contains("transmitted"))
            .and_then(|l| l.split(',').find(|p| p.contains(needle)))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {needle:?} in ping output: {text}"))
    };
    let avg = text
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok());
    (field("transmitted"), field("received"), avg)
}

/// The shim really drops and delays: pings through 20 % loss and 50 ms delay each way
/// lose about a third and take at least 100 ms; the same pings without a shim lose
/// nothing and are faster.
#[test]
fn shim_drops_and_delays_frames() {
    if lab::skip() {
        return;
    }
    let mut lab = Lab::new();
    let imp = Impairment { loss_pct: 20.0, delay: Duration::from_millis(50) };
    let shimmed = lab.add_site(Profile::Open, Some(imp));
    let plain = lab.add_site(Profile::Open, None);
    let (tx, rx, avg) = ping_stats(&shimmed, 60);
    // Round trip survives with 0.8² = 64 %: 38 of 60 expected; binomial sd ≈ 3.7.
    assert_eq!(tx, 60);
    assert!((20..=54).contains(&rx), "{rx}/60 answered through 20 % loss each way");
    let avg = avg.unwrap();
    assert!(avg >= 100.0, "average rtt {avg} ms through 50 ms delay each way");
    assert!(lab.shim_drops() > 0, "the shim counted no drops");
    let (tx, rx, plain_avg) = ping_stats(&plain, 20);
    assert_eq!((tx, rx), (20, 20), "no shim, no loss");
    assert!(plain_avg.unwrap() < avg, "plain {plain_avg:?} ms vs shimmed {avg} ms");
}

fn report(results: &[PairResult], name: &str) {
    let table = lab::matrix_table(results);
    eprintln!("{name}:\n{table}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.json"));
    let json = serde_json::json!({ "table_markdown": table, "pairs": lab::matrix_json(results) });
    match std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()) {
        Ok(()) => eprintln!("written to {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}

fn assert_pairs(results: &[PairResult]) {
    let problems: Vec<_> = results.iter().filter_map(|r| lab::pair_problem(r).map(|p| (p, r))).collect();
    if !problems.is_empty() {
        for (_, r) in &problems {
            eprintln!("{}", r.logs);
        }
        let list: Vec<_> = problems.iter().map(|(p, _)| p.as_str()).collect();
        panic!(
            "{} of {} pairs broke the RFC 4787 expectation:\n{}",
            list.len(),
            results.len(),
            list.join("\n")
        );
    }
}

/// The 6×6 matrix: a node in one site, a pinger (dialing by peer id through the relay) in
/// another; every pair connects relayed first and goes direct over QUIC exactly where
/// RFC 4787 allows a UDP path, else over TCP where the routers' TCP behaviour allows a
/// simultaneous open (a UDP-blocked site with anything but a symmetric NAT), else stays
/// relayed. One row (node profile) at a time, its six pairs concurrently on twelve sites
/// that are reconfigured (rules reloaded, conntrack flushed) between rows.
#[test]
fn matrix_6x6_direct_where_rfc_4787_allows() {
    if lab::skip() {
        return;
    }
    let mut lab = Lab::new();
    let _relay = lab::start_relay(&lab);
    let mut a_sites: Vec<_> = Profile::ALL.iter().map(|_| lab.add_site(Profile::Open, None)).collect();
    let mut b_sites: Vec<_> = Profile::ALL.iter().map(|p| lab.add_site(*p, None)).collect();
    let mut results = Vec::new();
    // KIZUNA_LAB_ROWS=none,symmetric runs only those rows (for debugging one case).
    let rows = std::env::var("KIZUNA_LAB_ROWS").unwrap_or_default();
    for a in Profile::ALL.into_iter().filter(|p| rows.is_empty() || rows.split(',').any(|r| r == p.name())) {
        for s in &mut a_sites {
            s.set_profile(a);
        }
        for s in &mut b_sites {
            s.reset();
        }
        let lab = &lab;
        let row: Vec<PairResult> = std::thread::scope(|sc| {
            let hs: Vec<_> = a_sites
                .iter()
                .zip(&b_sites)
                .map(|(sa, sb)| sc.spawn(move || lab::run_pair(lab, sa, sb, lab::PING_COUNT)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        results.extend(row);
    }
    report(&results, "nat-lab-matrix");
    assert_pairs(&results);
}

/// With 2 % loss and 50 ms delay each way on every site's link (the shim), the cone-NAT
/// pairs still go direct.
#[test]
fn cone_pairs_go_direct_through_loss_and_delay() {
    if lab::skip() {
        return;
    }
    let mut lab = Lab::new();
    let _relay = lab::start_relay(&lab);
    let imp = Impairment { loss_pct: 2.0, delay: Duration::from_millis(50) };
    let cones = [Profile::FullCone, Profile::RestrictedCone, Profile::PortRestrictedCone];
    let pairs: Vec<_> = cones
        .iter()
        .flat_map(|a| cones.iter().map(move |b| (*a, *b)))
        .map(|(a, b)| (lab.add_site(a, Some(imp)), lab.add_site(b, Some(imp))))
        .collect();
    let lab = &lab;
    let results: Vec<PairResult> = std::thread::scope(|sc| {
        let hs: Vec<_> = pairs
            .iter()
            .map(|(sa, sb)| sc.spawn(move || lab::run_pair(lab, sa, sb, lab::PING_COUNT * 2)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    report(&results, "nat-lab-lossy-cones");
    assert_pairs(&results);
}

/// A network change retries the punch at once. The pinger's host first may reach only the
/// relay's addresses (a host firewall: its punch fails, UDP and TCP, and the pair stays
/// relayed); then its network changes — the firewall goes and an address is added to its
/// interface — and it must go direct well before the fixed 60 s retry would have fired:
/// the pinger's interface watcher reports the new address (a netlink notification,
/// debounced by 100 ms) and it punches again.
#[test]
fn a_network_change_retries_the_punch_at_once() {
    if lab::skip() {
        return;
    }
    let mut lab = Lab::new();
    let _relay = lab::start_relay(&lab);
    let (a, b) = (lab.add_site(Profile::FullCone, None), lab.add_site(Profile::FullCone, None));
    let firewall = format!(
        "table inet kzlab_fw {{\n chain out {{\n type filter hook output priority 0; policy accept;\n \
         oif \"lo\" accept\n ip daddr != {{ {PUB1}, {PUB2} }} drop\n }}\n}}\n"
    );
    netns::run_input("ip", &["netns", "exec", &b.host, "nft", "-f", "-"], Some(&firewall)).unwrap();

    let mut cmd = procs::kizuna(&a.host, lab.dir());
    cmd.args(["node", "--json", "--relay", &lab::relay_url(), "--stun", &lab::stun1()]);
    let node = procs::Proc::spawn(cmd, "node", &lab.path("node-netchange.log"));
    let mut seen = Vec::new();
    let (_, listening) = node.wait_event("listening", lab::STARTUP, &mut seen).expect("node started");
    node.wait_event("nat", lab::STARTUP, &mut seen).expect("node NAT report");
    let peer = listening["peer"].as_str().unwrap().to_string();
    let mut cmd = procs::kizuna(&b.host, lab.dir());
    cmd.args(["ping", &peer, "--json", "--relay", &lab::relay_url(), "--stun", &lab::stun1()]).args([
        "--count",
        "240",
        "--interval",
        "250",
    ]);
    let ping = procs::Proc::spawn(cmd, "ping", &lab.path("ping-netchange.log"));

    let failed = node.wait_event("hole_punch_failed", Duration::from_secs(45), &mut seen);
    assert!(failed.is_some(), "the first punch should fail behind the firewall: {}", ping.log_tail(20));
    assert!(!seen.iter().any(|(_, v)| is_upgrade(v)), "went direct through the firewall");

    netns::run("ip", &["netns", "exec", &b.host, "nft", "delete", "table", "inet", "kzlab_fw"]).unwrap();
    netns::run("ip", &["-n", &b.host, "addr", "add", "10.255.0.1/32", "dev", "eth0"]).unwrap();
    let changed = std::time::Instant::now();
    let upgraded = node.wait_line(is_upgrade, Duration::from_secs(30), &mut seen);
    let took = changed.elapsed();
    assert!(upgraded.is_some(), "no direct path within 30 s of the network change: {}", ping.log_tail(30));
    eprintln!("direct {took:.2?} after the network change");
    // The fixed retry comes 60 s after the failure. The change-triggered one follows the
    // interface notification (debounced by 100 ms) with one punch of tens of
    // milliseconds here. 5 s, the old polling interval, leaves a loaded machine ample room
    // (and a node that fell back to polling would usually miss it).
    assert!(took < Duration::from_secs(5), "took {took:?}: not triggered by the network change at once");
}

/// Writes `size` bytes of a deterministic pattern that does not repeat in 4 KiB (so a
/// misplaced block changes the hash).
fn write_pattern(path: &std::path::Path, size: usize) {
    let mut data = vec![0u8; size];
    let mut x: u32 = 0x9e37_79b9;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(path, data).unwrap();
}

fn sha256_hex(path: &std::path::Path) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(path).unwrap());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A hole-punched direct path that dies silently mid-transfer, then comes back: the NAT
/// router of the node's site starts dropping all UDP but the relay's (a blackhole: no
/// error, no reset), and lifts the drop a few seconds later. Meanwhile `kizuna send`
/// moves 64 MiB and `kizuna ping` keeps 3,000 numbered messages in flight, from two
/// clients in another site. Both peers' traffic goes direct → relayed (failover) →
/// direct (recovered); the file arrives whole (SHA-256 verified, resumed on the relayed
/// path after its stream died with the direct one); every echo comes back exactly once
/// and in order.
#[test]
fn a_blackholed_direct_path_fails_over_to_the_relay_and_back() {
    if lab::skip() {
        return;
    }
    const SIZE: usize = 64 << 20;
    let mut lab = Lab::new();
    let _relay = lab::start_relay(&lab);
    let (a, b) = (lab.add_site(Profile::FullCone, None), lab.add_site(Profile::FullCone, None));
    let inbox = lab.path("inbox");
    let file = lab.path("big.bin");
    write_pattern(&file, SIZE);
    let mut cmd = procs::kizuna(&a.host, lab.dir());
    cmd.args(["node", "--json", "--relay", &lab::relay_url(), "--stun", &lab::stun1()])
        .arg("--recv-dir")
        .arg(&inbox);
    let node = procs::Proc::spawn(cmd, "node", &lab.path("node-blackhole.log"));
    let mut seen = Vec::new();
    let (_, listening) = node.wait_event("listening", lab::STARTUP, &mut seen).expect("node started");
    node.wait_event("nat", lab::STARTUP, &mut seen).expect("node NAT report");
    let peer = listening["peer"].as_str().unwrap().to_string();
    let (send_key, sender) = lab::make_key(&lab, &b, "sender.key");
    let (ping_key, pinger) = lab::make_key(&lab, &b, "pinger.key");
    // 64 MiB at 2 MiB/s: ~32 s, long enough to span the whole sequence below.
    let mut cmd = procs::kizuna(&b.host, lab.dir());
    cmd.args(["send", &peer])
        .arg(&file)
        .args(["--json", "--rate", "2MiB", "--relay", &lab::relay_url(), "--stun", &lab::stun1()])
        .arg("--key")
        .arg(&send_key);
    let send = procs::Proc::spawn(cmd, "send", &lab.path("send-blackhole.log"));
    // 3,000 pings, 10 ms apart, up to 64 unanswered: ~30 s.
    let mut cmd = procs::kizuna(&b.host, lab.dir());
    cmd.args(["ping", &peer, "--json", "--relay", &lab::relay_url(), "--stun", &lab::stun1()])
        .args(["--count", "3000", "--interval", "10", "--in-flight", "64"])
        .arg("--key")
        .arg(&ping_key);
    let ping = procs::Proc::spawn(cmd, "ping", &lab.path("ping-blackhole.log"));

    let diag = |what: &str| {
        format!(
            "{what}\n--- node ---\n{}\n--- send ---\n{}\n--- ping ---\n{}",
            node.log_tail(30),
            send.log_tail(30),
            ping.log_tail(30)
        )
    };
    let since = seen.len();
    for p in [&sender, &pinger] {
        let up = node.wait_seen(|v| lab::moved_to(v, p, "direct"), Duration::from_secs(30), &mut seen, since);
        assert!(up.is_some(), "{}", diag(&format!("{p} never went direct")));
    }
    // The transfer follows the upgrade onto the direct path; let it run there a moment.
    std::thread::sleep(Duration::from_secs(2));
    let since = seen.len();
    a.blackhole_direct_udp();
    let dropped = std::time::Instant::now();
    let mut to_relay = Vec::new();
    for p in [&sender, &pinger] {
        let down =
            node.wait_seen(|v| lab::moved_to(v, p, "relayed"), Duration::from_secs(15), &mut seen, since);
        let (t, v) =
            down.unwrap_or_else(|| panic!("{}", diag(&format!("{p} did not fail over to the relay"))));
        assert_eq!(v["reason"], "failover", "{v}");
        to_relay.push(t.saturating_duration_since(dropped));
    }
    std::thread::sleep(Duration::from_secs(3));
    let since = seen.len();
    a.lift_blackhole();
    let lifted = std::time::Instant::now();
    let mut back = Vec::new();
    for p in [&sender, &pinger] {
        let up = node.wait_seen(|v| lab::moved_to(v, p, "direct"), Duration::from_secs(30), &mut seen, since);
        let (t, v) = up.unwrap_or_else(|| panic!("{}", diag(&format!("{p} did not come back direct"))));
        assert!(["recovered", "upgrade", "better"].contains(&v["reason"].as_str().unwrap_or("")), "{v}");
        back.push(t.saturating_duration_since(lifted));
    }
    eprintln!("blackhole → relayed: {to_relay:.2?} (sender, pinger); lifted → direct: {back:.2?}");

    let (_, result) =
        send.json(Duration::from_secs(90)).unwrap_or_else(|| panic!("{}", diag("send printed no result")));
    assert_eq!(result["status"], "ok", "{result}");
    assert!(result["resumes"].as_u64().unwrap() >= 1, "the stream on the dead path resumed: {result}");
    assert_eq!(sha256_hex(&inbox.join("big.bin")), sha256_hex(&file), "the received file differs");

    let mut lines = Vec::new();
    while let Some((_, v)) = ping.json(Duration::from_secs(30)) {
        lines.push(v);
    }
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    let bad: Vec<_> =
        lines.iter().filter(|l| l["status"] != "ok" || l["reordered"] == true).take(5).collect();
    assert!(bad.is_empty(), "pings not answered once in order: {bad:?}");
    assert_eq!(seqs, (1..=3000).collect::<Vec<_>>(), "every ping answered exactly once, in order");
    // The pinger saw its traffic go direct, relayed, direct again.
    let mut paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
    paths.dedup();
    assert!(paths.windows(3).any(|w| w == ["direct", "relayed", "direct"]), "pinger's paths: {paths:?}");
}

/// Percentile `p` (0–100) of `v` (sorted here), nearest-rank.
fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

/// Seconds since midnight (UTC) of a tracing log line's timestamp
/// (`2026-12-04T21:57:22.172929Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?.strip_suffix('Z')?;
    let mut parts = t.split(':');
    let (h, m, s) = (
        parts.next()?.parse::<f64>().ok()?,
        parts.next()?.parse::<f64>().ok()?,
        parts.next()?.parse::<f64>().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds since midnight (UTC) now.
fn wall_now() -> f64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) / 1e9
}

/// Benchmark (not run by default; `cargo nextest run -P lab --run-ignored only -E
/// 'test(failover_timing)'`): ten blackholes of a hole-punched path under steady ping
/// traffic. Prints p50/p95 of blackhole → traffic on the relay, and of lifted → traffic
/// back on the direct path: for the pinger (the side whose traffic meets the silence,
/// from its log) and for the node (which answers, and follows the pinger; its
/// `path_changed` lines). Figures: docs/benchmarks.md.
#[test]
#[ignore = "benchmark: ~2 min; run explicitly"]
fn failover_timing() {
    if lab::skip() {
        return;
    }
    const CYCLES: usize = 10;
    let mut lab = Lab::new();
    let _relay = lab::start_relay(&lab);
    let (a, b) = (lab.add_site(Profile::FullCone, None), lab.add_site(Profile::FullCone, None));
    let mut cmd = procs::kizuna(&a.host, lab.dir());
    cmd.args(["node", "--json", "--relay", &lab::relay_url(), "--stun", &lab::stun1()]);
    let node = procs::Proc::spawn(cmd, "node", &lab.path("node-timing.log"));
    let mut seen = Vec::new();
    let (_, listening) = node.wait_event("listening", lab::STARTUP, &mut seen).expect("node started");
    node.wait_event("nat", lab::STARTUP, &mut seen).expect("node NAT report");
    let peer = listening["peer"].as_str().unwrap().to_string();
    let (key, pinger) = lab::make_key(&lab, &b, "pinger.key");
    let mut cmd = procs::kizuna(&b.host, lab.dir());
    cmd.args(["ping", &peer, "--json", "--relay", &lab::relay_url(), "--stun", &lab::stun1()])
        .args(["--count", "0", "--interval", "20", "--in-flight", "16"])
        .arg("--key")
        .arg(&key);
    let ping = procs::Proc::spawn(cmd, "ping", &lab.path("ping-timing.log"));
    let wait = |to: &str, seen: &mut Vec<_>| {
        let since = seen.len();
        node.wait_seen(|v| lab::moved_to(v, &pinger, to), Duration::from_secs(30), seen, since)
            .unwrap_or_else(|| panic!("no move to {to}: {}", node.log_tail(30)))
            .0
    };
    wait("direct", &mut seen);
    let (mut down, mut up, mut marks) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CYCLES {
        std::thread::sleep(Duration::from_secs(2));
        a.blackhole_direct_udp();
        let (t, wall) = (std::time::Instant::now(), wall_now());
        down.push(wait("relayed", &mut seen).saturating_duration_since(t));
        std::thread::sleep(Duration::from_secs(1));
        a.lift_blackhole();
        let t2 = std::time::Instant::now();
        marks.push((wall, wall + t2.duration_since(t).as_secs_f64()));
        up.push(wait("direct", &mut seen).saturating_duration_since(t2));
    }
    // The pinger moves back on its own schedule (its probe of the dead path): let it.
    std::thread::sleep(Duration::from_secs(6));
    drop(ping);
    // The pinger's own moves, from its log: the first failover after each blackhole and
    // the first move back after each lift.
    let log = std::fs::read_to_string(lab.path("ping-timing.log")).unwrap();
    let moves: Vec<(f64, bool)> = log
        .lines()
        .filter(|l| {
            l.contains("path quic direct -> ws relayed") || l.contains("path ws relayed -> quic direct")
        })
        .filter_map(|l| Some((log_time(l)?, l.contains("-> ws relayed"))))
        .collect();
    let after = |t: f64, to_relay: bool| {
        moves.iter().find(|(m, r)| *m >= t && *r == to_relay).map(|(m, _)| Duration::from_secs_f64(m - t))
    };
    let mut own_down: Vec<Duration> = marks.iter().filter_map(|(d, _)| after(*d, true)).collect();
    let mut own_up: Vec<Duration> = marks.iter().filter_map(|(_, l)| after(*l, false)).collect();
    assert_eq!((own_down.len(), own_up.len()), (CYCLES, CYCLES), "pinger moves: {moves:?}");
    let p = |v: &mut Vec<Duration>| format!("p50 {:.2?} p95 {:.2?}", percentile(v, 50), percentile(v, 95));
    eprintln!("node:   blackhole → relayed {down:.2?}");
    eprintln!("node:   lifted → direct     {up:.2?}");
    eprintln!("pinger: blackhole → relayed {own_down:.2?}");
    eprintln!("pinger: lifted → direct     {own_up:.2?}");
    eprintln!("FAILOVER  pinger {}; node {}", p(&mut own_down), p(&mut down));
    eprintln!("RECOVERY  pinger {}; node {}", p(&mut own_up), p(&mut up));
}
