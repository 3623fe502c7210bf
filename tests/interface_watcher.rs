//! The interface watcher against a real kernel: in a network namespace of its own (so
//! nothing else on the machine changes its interfaces meanwhile), adding an address to an
//! interface wakes `InterfaceWatcher::changed` within a short bound, and so does removing
//! it; with nothing changing, it stays asleep.
//!
//! Needs root (creating a namespace and entering it with `setns`) and `ip` (iproute2).
//! Without them the test prints `SKIP: ...` and passes — except under CI (`CI` set),
//! where it must run and fails instead. The namespace, `kzw-<pid>`, is deleted when the
//! test ends, also when it fails; namespaces left by a killed run are deleted by the next.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests: a panic is the failure report.

use std::{
    net::IpAddr,
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use kizuna::nat::interfaces::{interface_ips, InterfaceWatcher, WatchMode, DEBOUNCE};

/// Every namespace this test creates is `kzw-<pid>`.
const PREFIX: &str = "kzw-";

/// Bound on the wake-up after a change: the 100 ms debounce plus scheduling slack on a
/// loaded 2-core machine (measured: ~100–110 ms).
const WAKE_BOUND: Duration = Duration::from_secs(2);

/// How long the watcher must stay asleep while nothing changes: several debounces.
const QUIET: Duration = Duration::from_millis(400);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why this test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: creating and entering a network namespace needs CAP_SYS_ADMIN".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` not found (apt-get install iproute2)".into());
    }
    None
}

/// Prints why the test is skipped and returns true — unless under CI, where it must run.
fn skip() -> bool {
    let Some(why) = unavailable() else { return false };
    assert!(std::env::var_os("CI").is_none(), "the interface watcher test must run under CI: {why}");
    eprintln!("SKIP: interface watcher namespace test not run: {why}");
    true
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        sweep_stale();
        let name = format!("{PREFIX}{}", std::process::id());
        let _ = ip(&["netns", "delete", &name]); // a leftover of this very pid
        ip(&["netns", "add", &name]).unwrap();
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.0]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Deletes namespaces of earlier runs whose process no longer exists.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix(PREFIX) else { continue };
        if pid.chars().all(|c| c.is_ascii_digit()) && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

/// Moves the calling thread into namespace `ns` (the switch is per thread).
fn enter(ns: &str) -> Result<(), String> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| format!("open netns: {e}"))?;
    // SAFETY: setns with a descriptor of a namespace file that stays open for the call.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether `changed` resolves within `bound`.
async fn wakes(w: &mut InterfaceWatcher, bound: Duration) -> bool {
    tokio::time::timeout(bound, w.changed()).await.is_ok()
}

/// The test body, on a thread inside the namespace: returns how long the watcher took to
/// wake after the address was added and after it was removed.
async fn body(ns: &str) -> Result<(Duration, Duration), String> {
    let addr: IpAddr = "198.51.100.77".parse().unwrap();
    let mut w = InterfaceWatcher::new();
    if w.mode() != WatchMode::Netlink {
        return Err(format!("watcher fell back to {:?}", w.mode()));
    }
    if wakes(&mut w, QUIET).await {
        return Err("woke with nothing changing".into());
    }
    if interface_ips().contains(&addr) {
        return Err(format!("{addr} already listed"));
    }

    let t = Instant::now();
    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "kzw0"])?;
    if !wakes(&mut w, WAKE_BOUND).await {
        return Err(format!("no wake-up within {WAKE_BOUND:?} of adding {addr}"));
    }
    let added = t.elapsed();
    if !interface_ips().contains(&addr) {
        return Err(format!("woke, but {addr} is not listed: {:?}", interface_ips()));
    }
    if wakes(&mut w, QUIET).await {
        return Err("woke again after one change (the burst was not debounced)".into());
    }

    let t = Instant::now();
    ip(&["-n", ns, "addr", "del", &format!("{addr}/24"), "dev", "kzw0"])?;
    if !wakes(&mut w, WAKE_BOUND).await {
        return Err(format!("no wake-up within {WAKE_BOUND:?} of removing {addr}"));
    }
    let removed = t.elapsed();
    if interface_ips().contains(&addr) {
        return Err(format!("woke, but {addr} is still listed"));
    }
    Ok((added, removed))
}

#[test]
fn adding_and_removing_an_address_wakes_the_watcher() {
    if skip() {
        return;
    }
    let ns = Netns::create();
    let name = ns.0.clone();
    // No IPv6 (its link-local address and DAD would add notifications of their own),
    // then an interface that is up, so its addresses count (`interface_ips` skips down
    // ones). A dummy if the kernel has it, else a veth pair.
    let _ = ip(&["netns", "exec", &name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    let _ = ip(&["netns", "exec", &name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    if ip(&["-n", &name, "link", "add", "kzw0", "type", "dummy"]).is_err() {
        ip(&["-n", &name, "link", "add", "kzw0", "type", "veth", "peer", "name", "kzw1"]).unwrap();
        ip(&["-n", &name, "link", "set", "kzw1", "up"]).unwrap();
    }
    ip(&["-n", &name, "link", "set", "kzw0", "up"]).unwrap();
    // Let the set-up's own notifications pass before the watcher exists.
    std::thread::sleep(Duration::from_millis(200));

    let result = std::thread::spawn(move || -> Result<(Duration, Duration), String> {
        enter(&name)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        rt.block_on(body(&name))
    })
    .join();
    match result {
        Ok(Ok((added, removed))) => {
            eprintln!(
                "watcher woke {added:.0?} after an address was added, {removed:.0?} after it was removed"
            );
            assert!(added >= DEBOUNCE && removed >= DEBOUNCE, "debounced");
        }
        Ok(Err(e)) => panic!("{e}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    drop(ns);
}
