//! `kizuna nat` and `kizuna::nat` against a STUN server nobody here wrote (coturn's
//! `turnserver`, started by the test on loopback with RFC 5780 on two addresses), and the
//! Kizuna relay's responder cross-checked by coturn's own `turnutils_natdiscovery`.
//!
//! The tests install nothing: without `turnserver` (Debian package `coturn`, installed by
//! `.ci/run`) they print SKIP and pass. Every process started here is killed at the end,
//! also when an assertion fails (guards with `Drop`).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, UdpSocket as StdUdp},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use kizuna::nat::{discover, Filtering, Mapping, Method, NatType, ProbeConfig};

const BIN: &str = env!("CARGO_BIN_EXE_kizuna");

/// Kills and reaps a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A port `P` with `P` and `P + 1` free for UDP on 127.0.0.1 and 127.0.0.2 right now.
fn free_port_pair() -> u16 {
    for _ in 0..64 {
        let Ok(s) = StdUdp::bind("127.0.0.1:0") else { continue };
        let Ok(p) = s.local_addr().map(|a| a.port()) else { continue };
        if p == u16::MAX {
            continue;
        }
        drop(s);
        let free = ["127.0.0.1", "127.0.0.2"]
            .iter()
            .all(|ip| StdUdp::bind((*ip, p)).is_ok() && StdUdp::bind((*ip, p + 1)).is_ok());
        if free {
            return p;
        }
    }
    panic!("no free UDP port pair on loopback");
}

/// Waits until a Binding request to `server` is answered (the server is up).
/// Whether `server` answers a STUN Binding request within `within`.
fn answers_stun(server: SocketAddr, within: Duration) -> bool {
    let sock = StdUdp::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let req = kizuna::nat::probe::encode_request([7; 12], false, false);
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while start.elapsed() < within {
        let _ = sock.send_to(&req, server);
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if kizuna::nat::probe::parse_response(&buf[..n], from, &[7; 12]).is_some() {
                return true;
            }
        }
    }
    false
}

/// Starts coturn (STUN only, UDP only) on a free port pair of 127.0.0.1 and 127.0.0.2.
/// The free-port check races with other tests binding ports, so a server that does not
/// answer is replaced on new ports, a few times.
fn start_coturn(dir: &Path) -> (Guard, SocketAddr) {
    for attempt in 0..4 {
        let port = free_port_pair();
        let d = |f: &str| dir.join(format!("{attempt}-{f}")).to_string_lossy().into_owned();
        let child = Command::new("turnserver")
            .args(["-n", "--listening-ip", "127.0.0.1", "--listening-ip", "127.0.0.2"])
            .args(["--listening-port", &port.to_string(), "--alt-listening-port", &(port + 1).to_string()])
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--no-auth",
                "--stun-only",
                "--no-cli",
                "--simple-log",
            ])
            .args(["--log-file", &d("turn.log"), "--pidfile", &d("turn.pid"), "--db", &d("turndb")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let guard = Guard(child);
        let server: SocketAddr = ([127, 0, 0, 1], port).into();
        if answers_stun(server, Duration::from_secs(5)) {
            return (guard, server);
        }
        eprintln!("coturn on port {port} did not answer (attempt {attempt}); trying other ports");
    }
    panic!("coturn never answered STUN on loopback (4 attempts; see its logs in the temp dir)");
}

fn skip_without(program: &str) -> bool {
    if have(program) {
        return false;
    }
    eprintln!(
        "SKIP: `{program}` not found (apt-get install coturn; .ci/run does): coturn interop not tested"
    );
    true
}

#[tokio::test]
async fn coturn_library_probe_classifies_loopback_as_open() {
    if skip_without("turnserver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_coturn, server) = start_coturn(dir.path());
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = discover(&sock, &[server], &ProbeConfig::default()).await.unwrap();
    assert_eq!(r.nat_type, NatType::Open, "{r:?}");
    assert_eq!(r.mapping, Some(Mapping::EndpointIndependent), "{r:?}");
    assert_eq!(r.filtering, Some(Filtering::EndpointIndependent), "{r:?}");
    assert_eq!(r.public_addr, Some(sock.local_addr().unwrap()), "{r:?}");
    assert_eq!(r.method, Method::Rfc5780, "{r:?}");
}

fn nat_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN).arg("nat").args(args).arg("--json").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn assert_open(v: &serde_json::Value) {
    assert_eq!(v["nat_type"], "open", "{v}");
    assert_eq!(v["mapping"], "endpoint_independent", "{v}");
    assert_eq!(v["filtering"], "endpoint_independent", "{v}");
    assert_eq!(v["method"], "rfc5780", "{v}");
    assert!(v["public_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{v}");
    assert_eq!(v["public_addr"], v["local_addr"], "{v}");
}

#[test]
fn coturn_cli_end_to_end() {
    if skip_without("turnserver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_coturn, server) = start_coturn(dir.path());
    assert_open(&nat_json(&["--stun", &server.to_string(), "--bind", "127.0.0.1:0"]));
    let human = Command::new(BIN).args(["nat", "--stun", &server.to_string()]).output().unwrap();
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("NAT type:   open (no NAT)") && text.contains("RFC 5780 tests"), "{text}");
}

/// Starts `kizuna relay` with two STUN addresses; returns the guard and the STUN address
/// on 127.0.0.1.
fn start_kizuna_relay() -> (Guard, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["relay", "--listen", "ws://127.0.0.1:0", "--open", "--json"])
        .args(["--stun", "127.0.0.1:0", "--stun", "127.0.0.2:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let stun: SocketAddr = v["stun"][0].as_str().unwrap().parse().unwrap();
    (guard, stun)
}

#[test]
fn kizuna_relay_answers_coturns_natdiscovery_and_kizuna_nat() {
    let (_relay, stun) = start_kizuna_relay();
    assert_open(&nat_json(&["--stun", &stun.to_string(), "--bind", "127.0.0.1:0"]));
    if skip_without("turnutils_natdiscovery") {
        return;
    }
    let out = Command::new("timeout")
        .args(["30", "turnutils_natdiscovery", "-m", "-f", "-p", &stun.port().to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("NAT with Endpoint Independent Mapping"), "{text}");
    assert!(text.contains("NAT with Endpoint Independent Filtering"), "{text}");
    // The alternate address it was told about is the relay's grid (other IP, port + 1).
    assert!(text.contains(&format!("Other addr: : 127.0.0.2:{}", stun.port() + 1)), "{text}");
}

#[test]
fn no_answer_is_udp_blocked_with_exit_0_and_bad_servers_are_usage_errors() {
    let dead = StdUdp::bind("127.0.0.1:0").unwrap();
    let v = nat_json(&["--stun", &dead.local_addr().unwrap().to_string()]);
    assert_eq!(v["nat_type"], "udp_blocked", "{v}");
    assert!(v["public_addr"].is_null() && v["mapping"].is_null() && v["filtering"].is_null(), "{v}");
    let out = Command::new(BIN).args(["nat", "--stun", "not a server:::"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["nat"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
