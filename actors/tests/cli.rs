//! The `kizuna` binary as users run it: real processes, real sockets on loopback.
//!
//! Every spawned node is wrapped in a [`NodeProc`] guard that kills it on drop, so a
//! failing assertion never leaks a process. Tests assert behaviour, never speed.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_kizuna");

/// Bound on waiting for a node's first line (it only has to bind two sockets).
const STARTUP: Duration = Duration::from_secs(30);

fn kizuna(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    // Keep every test away from the real user's key and config.
    c.env_remove("KIZUNA_KEY").env_remove("XDG_CONFIG_HOME").env("HOME", home).env("RUST_LOG", "warn");
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run kizuna")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// A running `kizuna node`, killed on drop.
struct NodeProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    first: String,
}

impl NodeProc {
    fn start(home: &Path, extra: &[&str]) -> Self {
        let mut cmd = kizuna(home);
        cmd.arg("node").args(["--listen", "quic=127.0.0.1:0", "--listen", "tcp=127.0.0.1:0"]).args(extra);
        Self::spawn(&mut cmd, "node")
    }

    /// Spawns `cmd` (a long-running kizuna command) and waits for its first stdout line.
    fn spawn(cmd: &mut Command, what: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn kizuna {what}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = NodeProc { child, lines: rx, first: String::new() };
        node.first = node.next_line(STARTUP).unwrap_or_else(|| panic!("{what} printed nothing on stdout"));
        node
    }

    fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Sends `signal` (`TERM`, `INT`) and waits for the process to exit.
    fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").arg(format!("-{signal}")).arg(&pid).status().expect("kill").success();
        assert!(ok, "kill -{signal} failed");
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node did not exit within 10 s of SIG{signal}");
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peer_of(ticket: &str) -> &str {
    ticket.split('@').next().unwrap_or_default()
}

/// Deterministic pseudo-random bytes (incompressible, unlike zeros).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn id_creates_a_private_key_and_prints_the_same_id_twice() {
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("keys/node.key");
    let a = run(kizuna(home.path()).args(["id", "--key"]).arg(&key));
    assert!(a.status.success(), "{}", stderr(&a));
    let id = stdout(&a).trim().to_string();
    assert_eq!(id.len(), 55, "peer id {id:?}");
    assert_eq!(mode(&key), 0o600);
    let b = run(kizuna(home.path()).args(["id", "--key"]).arg(&key));
    assert!(b.status.success());
    assert_eq!(stdout(&b).trim(), id);

    // Default location: $KIZUNA_KEY, else ~/.config/kizuna/key.
    let env_key = home.path().join("env.key");
    let c = run(kizuna(home.path()).arg("id").env("KIZUNA_KEY", &env_key));
    assert!(c.status.success(), "{}", stderr(&c));
    assert!(env_key.exists());
    let d = run(kizuna(home.path()).arg("id"));
    assert!(d.status.success(), "{}", stderr(&d));
    let default = home.path().join(".config/kizuna/key");
    assert_eq!(mode(&default), 0o600);
    assert_ne!(stdout(&c), stdout(&d));
    assert_eq!(stdout(&run(kizuna(home.path()).arg("id"))), stdout(&d));
}

#[test]
fn id_refuses_a_world_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("k");
    assert!(run(kizuna(home.path()).args(["id", "--key"]).arg(&key)).status.success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(kizuna(home.path()).args(["id", "--key"]).arg(&key));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
}

#[test]
fn id_refuses_a_dangling_key_link_and_its_advice_works() {
    let home = tempfile::tempdir().unwrap();
    let link = home.path().join("k");
    let target = home.path().join("keys/real.key");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = run(kizuna(home.path()).args(["id", "--key"]).arg(&link));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("symbolic link") && !err.contains("os error"), "{err}");
    assert!(
        err.contains(&link.display().to_string()) && err.contains(&target.display().to_string()),
        "{err}"
    );
    // Doing what it says: create the key at the target; the link then works.
    let made = run(kizuna(home.path()).args(["id", "--key"]).arg(&target));
    assert!(made.status.success(), "{}", stderr(&made));
    let via_link = run(kizuna(home.path()).args(["id", "--key"]).arg(&link));
    assert_eq!(stdout(&via_link), stdout(&made));
}

#[test]
fn bad_arguments_exit_2_and_say_what_is_wrong() {
    let home = tempfile::tempdir().unwrap();
    let id =
        stdout(&run(kizuna(home.path()).args(["id", "--key"]).arg(home.path().join("k")))).trim().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["ping".into(), "garbage".into()], "not a valid ticket"),
        (vec!["ping".into(), format!("{id}@sctp=1.2.3.4:5")], "unknown protocol"),
        (vec!["perf".into(), format!("{id}@tcp=localhost")], "HOST:PORT"),
        (vec!["ping".into(), format!("{id}@tcp=127.0.0.1:0")], "port 0, which cannot be dialed"),
        (vec!["send".into(), format!("{id}@quic=127.0.0.1:0"), "f".into()], "port 0"),
        (vec!["perf".into(), format!("{id}@ws=ws://127.0.0.1:0/")], "port 0"),
        (vec!["send".into(), format!("x{id}@tcp=127.0.0.1:1"), "f".into()], "not a valid ticket"),
        (vec!["ping".into(), id.clone()], "no address"),
        (
            vec!["ping".into(), format!("{id}@tcp=127.0.0.1:1"), "--transport".into(), "quic".into()],
            "no quic address",
        ),
        (vec!["ping".into(), format!("{id}@tcp=127.0.0.1:1"), "--transport".into(), "udp".into()], "udp"),
        (vec!["perf".into(), format!("{id}@tcp=127.0.0.1:1"), "--bytes".into(), "12XB".into()], "size"),
        (vec!["node".into(), "--listen".into(), "tcp=nowhere".into()], "HOST:PORT"),
        (vec!["frobnicate".into()], "frobnicate"),
    ];
    for (args, needle) in cases {
        let o = run(kizuna(home.path()).args(&args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: stderr lacks {needle:?}: {}", stderr(&o));
    }
}

#[test]
fn unreachable_peer_exits_1_with_a_reason() {
    let home = tempfile::tempdir().unwrap();
    let id =
        stdout(&run(kizuna(home.path()).args(["id", "--key"]).arg(home.path().join("k")))).trim().to_string();
    // A port nobody listens on: bound then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = run(kizuna(home.path()).args(["ping", &format!("{id}@tcp=127.0.0.1:{port}"), "--count", "1"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("error:"), "{}", stderr(&o));
}

fn check_ping(home: &Path, ticket: &str, transport: &str) {
    let o = run(kizuna(home).args([
        "ping",
        ticket,
        "--json",
        "--count",
        "3",
        "--interval",
        "50",
        "--transport",
        transport,
    ]));
    assert!(o.status.success(), "ping over {transport}: {}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 3, "{}", stdout(&o));
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["seq"], (i + 1) as u64);
        assert_eq!(v["peer"], peer_of(ticket));
        assert_eq!(v["transport"], transport);
        assert_eq!(v["path"], "direct");
        assert_eq!(v["status"], "ok");
        assert!(v["connect_ms"].as_f64().is_some_and(|x| x >= 0.0), "{v}");
        assert!(v["rtt_ms"].as_f64().is_some_and(|x| x >= 0.0), "{v}");
        assert_eq!(v["switches"], 0, "one direct path, never changed: {v}");
    }
}

fn check_perf(home: &Path, ticket: &str, transport: &str) {
    let o = run(kizuna(home).args(["perf", ticket, "--json", "--bytes", "8MiB", "--transport", transport]));
    assert!(o.status.success(), "perf over {transport}: {}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stdout(&o));
    let v = &lines[0];
    assert_eq!(v["transport"], transport);
    assert_eq!(v["path"], "direct");
    assert_eq!(v["bytes"], 8u64 << 20);
    assert!(v["upload_mbps"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    assert!(v["download_mbps"].as_f64().is_some_and(|x| x > 0.0), "{v}");
}

fn send(home: &Path, ticket: &str, file: &Path, transport: &str) -> Output {
    run(kizuna(home).args(["send", ticket]).arg(file).args(["--json", "--transport", transport]))
}

#[test]
fn node_serves_ping_perf_and_files_over_tcp_and_quic() {
    let home = tempfile::tempdir().unwrap();
    let recv = home.path().join("inbox");
    let key = home.path().join("node.key");
    let node =
        NodeProc::start(home.path(), &["--key", key.to_str().unwrap(), "--recv-dir", recv.to_str().unwrap()]);
    let ticket = node.first.clone();
    assert!(ticket.contains("tcp=127.0.0.1:") && ticket.contains("quic=127.0.0.1:"), "{ticket}");
    let id = stdout(&run(kizuna(home.path()).args(["id", "--key"]).arg(&key)));
    assert_eq!(peer_of(&ticket), id.trim(), "the ticket carries the key's peer id");

    for t in ["tcp", "quic"] {
        check_ping(home.path(), &ticket, t);
        check_perf(home.path(), &ticket, t);
    }

    // A 5 MiB file over each transport, byte-identical on arrival.
    let src = home.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (i, t) in ["tcp", "quic"].iter().enumerate() {
        let data = pattern(5 << 20, i as u64 + 7);
        let file = src.join(format!("data-{t}.bin"));
        std::fs::write(&file, &data).unwrap();
        let o = send(home.path(), &ticket, &file, t);
        assert!(o.status.success(), "send over {t}: {}", stderr(&o));
        let v = &json_lines(&o)[0];
        assert_eq!(v["status"], "ok");
        assert_eq!(v["transport"], *t);
        assert_eq!(v["size"], 5u64 << 20);
        assert_eq!(v["resumed_from"], 0);
        let got = std::fs::read(recv.join(format!("data-{t}.bin"))).unwrap();
        assert!(got == data, "received bytes differ over {t}");
        assert!(!recv.join(format!("data-{t}.bin.part")).exists());
    }

    // Resume: the receiver already holds a matching 2 MiB prefix.
    let data = pattern(5 << 20, 99);
    let file = src.join("resume.bin");
    std::fs::write(&file, &data).unwrap();
    std::fs::write(recv.join("resume.bin.part"), &data[..2 << 20]).unwrap();
    let o = send(home.path(), &ticket, &file, "auto");
    assert!(o.status.success(), "{}", stderr(&o));
    let v = &json_lines(&o)[0];
    assert_eq!(v["resumed_from"], 2u64 << 20);
    assert_eq!(v["sent"], 3u64 << 20);
    assert!(std::fs::read(recv.join("resume.bin")).unwrap() == data);

    // A partial file that does not match is not resumed from.
    let data = pattern(1 << 20, 5);
    let file = src.join("stale.bin");
    std::fs::write(&file, &data).unwrap();
    std::fs::write(recv.join("stale.bin.part"), pattern(1 << 19, 6)).unwrap();
    let o = send(home.path(), &ticket, &file, "tcp");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_lines(&o)[0]["resumed_from"], 0);
    assert!(std::fs::read(recv.join("stale.bin")).unwrap() == data);

    // An existing file is not overwritten: exit 1 with the reason.
    let o = send(home.path(), &ticket, &file, "tcp");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    // A missing local file: exit 1, clear message.
    let o = send(home.path(), &ticket, &src.join("nope.bin"), "tcp");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nope.bin"), "{}", stderr(&o));

    let status = node.signal("TERM");
    assert!(status.success(), "node exit status after SIGTERM: {status}");
}

#[test]
fn node_without_recv_dir_refuses_files() {
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("k");
    let node = NodeProc::start(home.path(), &["--key", key.to_str().unwrap()]);
    let file = home.path().join("f.bin");
    std::fs::write(&file, b"hello").unwrap();
    let o = send(home.path(), &node.first, &file, "auto");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not accept files"), "{}", stderr(&o));
    // Dialing the node's address under another peer id fails authentication.
    let other = stdout(&run(kizuna(home.path()).args(["id", "--key"]).arg(home.path().join("other"))));
    let (_, addrs) = node.first.split_once('@').unwrap();
    let o = run(kizuna(home.path()).args(["ping", &format!("{}@{addrs}", other.trim()), "--count", "1"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("authentication failed"), "{}", stderr(&o));
    // Ctrl-C stops the node gracefully.
    let status = node.signal("INT");
    assert!(status.success(), "node exit status after SIGINT: {status}");
}

#[test]
fn node_reports_a_port_in_use_and_exits_1() {
    let home = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = run(kizuna(home.path())
        .args(["node", "--key"])
        .arg(home.path().join("k"))
        .args(["--listen", &format!("tcp=127.0.0.1:{port}")]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("cannot listen on tcp=127.0.0.1:{port}")), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "no ticket for a node that is not listening: {}", stdout(&o));
}

#[test]
fn node_json_reports_listening_connections_and_shutdown() {
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("k");
    let node = NodeProc::start(home.path(), &["--key", key.to_str().unwrap(), "--json"]);
    let first: Value = serde_json::from_str(&node.first).expect("first line is JSON");
    assert_eq!(first["event"], "listening");
    let ticket = first["ticket"].as_str().expect("ticket").to_string();
    assert_eq!(first["peer"], peer_of(&ticket));
    let addrs: Vec<&str> = first["addrs"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs.iter().all(|a| ticket.contains(a)));

    let o = run(kizuna(home.path()).args(["ping", &ticket, "--count", "1", "--transport", "tcp"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("seq=1 time="), "human output: {}", stdout(&o));

    let mut seen = Vec::new();
    while let Some(l) = node.next_line(Duration::from_secs(10)) {
        let v: Value = serde_json::from_str(&l).expect("JSON line");
        let ev = v["event"].as_str().unwrap_or_default().to_string();
        seen.push(v);
        if ev == "disconnected" {
            break;
        }
    }
    let connected = seen.iter().find(|v| v["event"] == "connected").expect("a connected event");
    assert_eq!(connected["transport"], "tcp");
    assert_eq!(connected["path"], "direct");

    // Keep reading stdout after SIGTERM: the last line is the shutdown event.
    let NodeProc { lines, .. } = &node;
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut last = None;
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(10)) {
        last = Some(l);
    }
    let last: Value = serde_json::from_str(&last.expect("lines after SIGTERM")).unwrap();
    assert_eq!(last["event"], "shutdown");
}

#[test]
fn demo_prints_a_table_with_one_row_per_transport() {
    let home = tempfile::tempdir().unwrap();
    let o = run(kizuna(home.path()).args(["demo", "--bytes", "1MiB"]));
    assert!(o.status.success(), "demo failed: {}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let header = out.lines().find(|l| l.starts_with("transport")).expect("a table header");
    for col in ["path", "connect ms", "rtt ms", "up Mbit/s", "down Mbit/s", "status"] {
        assert!(header.contains(col), "{header}");
    }
    for t in ["quic", "tcp"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{t} ")))
            .unwrap_or_else(|| panic!("no {t} row: {out}"));
        assert!(row.contains("direct") && row.trim_end().ends_with("ok"), "{row}");
    }
}

#[test]
fn demo_runs_every_transport() {
    let home = tempfile::tempdir().unwrap();
    let o = run(kizuna(home.path()).args(["demo", "--json", "--bytes", "4MiB"]));
    assert!(o.status.success(), "demo failed: {}\n{}", stdout(&o), stderr(&o));
    let rows = json_lines(&o);
    let names: Vec<&str> = rows.iter().filter_map(|r| r["transport"].as_str()).collect();
    for t in ["tcp", "quic", "websocket", "webrtc"] {
        assert!(names.contains(&t), "no {t} row: {names:?}");
    }
    let paths: Vec<&str> = rows.iter().filter_map(|r| r["path"].as_str()).collect();
    assert!(paths.contains(&"relayed"), "a relayed row: {paths:?}");
    // The upgrade row: connected through the relay, then hole-punched to direct QUIC.
    let upgraded = rows.iter().find(|r| r["upgrade_ms"].is_f64()).expect("an upgrade row");
    assert_eq!((upgraded["transport"].as_str(), upgraded["path"].as_str()), (Some("quic"), Some("direct")));
    for r in &rows {
        assert_eq!(r["status"], "ok", "{r}");
        for f in ["connect_ms", "rtt_ms", "upload_mbps", "download_mbps"] {
            assert!(r[f].as_f64().is_some(), "{f} in {r}");
        }
    }
}

#[test]
fn node_reports_its_nat_type_at_start() {
    // A STUN responder (the relay's, as a library) on loopback.
    let stun = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stun_addr = stun.local_addr().unwrap();
    std::thread::spawn(move || {
        let responder = kizuna_actors::relay::stun::StunResponder::new("cli-test");
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = stun.recv_from(&mut buf) {
            if let Some(reply) = responder.answer(&buf[..n], from) {
                let _ = stun.send_to(&reply, from);
            }
        }
    });
    let home = tempfile::tempdir().unwrap();
    let node = NodeProc::start(home.path(), &["--json", "--stun", &stun_addr.to_string()]);
    let first: Value = serde_json::from_str(&node.first).unwrap();
    assert_eq!(first["event"], "listening", "the first line stays the listening line");
    let nat: Value = serde_json::from_str(&node.next_line(STARTUP).expect("a nat line")).unwrap();
    assert_eq!(nat["event"], "nat", "{nat}");
    assert_eq!(nat["nat_type"], "open", "loopback has no NAT: {nat}");
    assert!(nat["public_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{nat}");
}

/// `kizuna relay` on a free loopback port; returns the process and its URL.
fn start_cli_relay(home: &Path) -> (NodeProc, String) {
    let mut cmd = kizuna(home);
    cmd.args(["relay", "--listen", "ws://127.0.0.1:0", "--open", "--json"]);
    let relay = NodeProc::spawn(&mut cmd, "relay");
    let v: Value = serde_json::from_str(&relay.first).unwrap();
    let url = v["url"].as_str().unwrap().to_string();
    (relay, url)
}

#[test]
fn ping_over_webrtc_signaled_through_a_relay() {
    let home = tempfile::tempdir().unwrap();
    let (_relay, url) = start_cli_relay(home.path());
    let key = home.path().join("node.key");
    let node = NodeProc::start(
        home.path(),
        &[
            "--listen",
            "webrtc=1",
            "--relay",
            &url,
            "--webrtc-bind",
            "127.0.0.1:0",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(node.first.contains("webrtc=1"), "the ticket offers WebRTC: {}", node.first);
    let out = run(kizuna(home.path())
        .args(["ping", peer_of(&node.first), "--relay", &url, "--transport", "webrtc"])
        .args(["--webrtc-bind", "127.0.0.1:0", "--count", "2", "--interval", "100", "--json"]));
    assert!(out.status.success(), "ping failed: {}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    for l in lines {
        assert_eq!(l["transport"], "webrtc", "{l}");
        assert_eq!(l["status"], "ok", "{l}");
    }
    // Misconfiguration is a usage error that says what to fix.
    let out = run(kizuna(home.path()).args(["ping", peer_of(&node.first), "--transport", "webrtc"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--relay"), "{}", stderr(&out));
    let out = run(kizuna(home.path()).args([
        "ping",
        peer_of(&node.first),
        "--relay",
        &url,
        "--transport",
        "webrtc",
        "--turn",
        "turn:127.0.0.1:1",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--turn-user"), "{}", stderr(&out));
}

#[test]
fn ping_over_webrtc_signaled_over_a_direct_connection_without_a_relay() {
    let home = tempfile::tempdir().unwrap();
    let node = NodeProc::start(home.path(), &["--listen", "webrtc=1", "--webrtc-bind", "127.0.0.1:0"]);
    assert!(node.first.contains("webrtc=1") && node.first.contains("quic="), "{}", node.first);
    // The offer and answer travel on the QUIC connection; the traffic on WebRTC alone.
    let out = run(kizuna(home.path()).args(["ping", &node.first, "--transport", "webrtc"]).args([
        "--webrtc-bind",
        "127.0.0.1:0",
        "--count",
        "3",
        "--interval",
        "100",
        "--json",
    ]));
    assert!(out.status.success(), "ping failed: {}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    for l in lines {
        assert_eq!((l["transport"].as_str(), l["status"].as_str()), (Some("webrtc"), Some("ok")), "{l}");
        assert_eq!(l["switches"], 0, "{l}");
    }
    // A node that could never receive an offer is a usage error that says what to fix.
    let out = run(kizuna(home.path()).args(["node", "--listen", "webrtc=1"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--relay") && stderr(&out).contains("--listen quic"), "{}", stderr(&out));
}

#[test]
fn webrtc_only_through_turn_never_falls_back_to_the_relay() {
    if !kizuna_actors::testing::Coturn::available() {
        eprintln!("SKIP: `turnserver` not found (apt-get install coturn; .ci/run does): TURN not tested");
        return;
    }
    use kizuna_actors::testing::{Coturn, TURN_PASS, TURN_USER};
    let home = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let turn = rt.block_on(Coturn::start(std::net::Ipv4Addr::LOCALHOST, home.path()));
    let (_relay, url) = start_cli_relay(home.path());
    let ice = ["--turn", &turn.url, "--turn-user", TURN_USER, "--turn-pass", TURN_PASS, "--ice-relay-only"];
    let node = NodeProc::start(
        home.path(),
        &[&["--listen", "webrtc=1", "--relay", &url, "--webrtc-bind", "127.0.0.1:0"][..], &ice[..]].concat(),
    );
    // The WebSocket relay is the signaling path; it must never become the answer to a
    // WebRTC-only dial (its circuit connects long before ICE through TURN does).
    let out = run(kizuna(home.path())
        .args(["ping", peer_of(&node.first), "--relay", &url, "--transport", "webrtc"])
        .args(ice)
        .args(["--webrtc-bind", "127.0.0.1:0", "--count", "2", "--interval", "100", "--json"]));
    assert!(out.status.success(), "ping failed: {}", stderr(&out));
    for l in json_lines(&out) {
        assert_eq!(l["transport"], "webrtc", "{l}");
        assert_eq!(l["path"], "relayed", "through TURN: {l}");
        assert_eq!(l["status"], "ok", "{l}");
    }
}

#[test]
fn ping_keeps_many_in_flight_and_every_echo_comes_back_once_in_order() {
    let home = tempfile::tempdir().unwrap();
    let node = NodeProc::start(home.path(), &[]);
    let out = run(kizuna(home.path()).args(["ping", &node.first, "--transport", "tcp", "--json"]).args([
        "--count",
        "300",
        "--interval",
        "0",
        "--in-flight",
        "32",
    ]));
    assert!(out.status.success(), "ping failed: {}", stderr(&out));
    let lines = json_lines(&out);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "one line per ping, in order");
    for l in &lines {
        assert_eq!((l["status"].as_str(), l["reordered"].as_bool()), (Some("ok"), Some(false)), "{l}");
    }
    let text = run(kizuna(home.path())
        .args(["ping", &node.first, "--count", "20", "--interval", "0"])
        .args(["--in-flight", "8"]));
    assert!(stdout(&text).contains("20 sent, 20 received, 0% loss"), "{}", stdout(&text));
    let bad = run(kizuna(home.path()).args(["ping", &node.first, "--in-flight", "0"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--in-flight"), "{}", stderr(&bad));
}

#[test]
fn send_keeps_to_its_rate_limit() {
    let home = tempfile::tempdir().unwrap();
    let recv = home.path().join("inbox");
    let node = NodeProc::start(home.path(), &["--recv-dir", recv.to_str().unwrap()]);
    let file = home.path().join("paced.bin");
    write_pattern_file(&file, 1 << 20, 5);
    let out = run(kizuna(home.path())
        .args(["send", &node.first, file.to_str().unwrap(), "--json"])
        .args(["--rate", "512KiB"]));
    assert!(out.status.success(), "send failed: {}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    // 1 MiB at 512 KiB/s, a quarter second of it saved up at the start: 1.75 s at least
    // (a lower bound: a loaded machine only makes it slower).
    assert!(v["elapsed_ms"].as_f64().unwrap() >= 1700.0, "faster than its rate: {v}");
    assert_eq!(sha256_of(&recv.join("paced.bin")), sha256_of(&file));
    let bad = run(kizuna(home.path()).args(["send", &node.first, file.to_str().unwrap(), "--rate", "0"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--rate"), "{}", stderr(&bad));
}

/// Creates the key file `name` in `home` and returns its peer id.
fn make_key(home: &Path, name: &str) -> (std::path::PathBuf, String) {
    let key = home.join(name);
    let o = run(kizuna(home).args(["id", "--key"]).arg(&key));
    assert!(o.status.success(), "{}", stderr(&o));
    (key, stdout(&o).trim().to_string())
}

fn send_as(home: &Path, ticket: &str, file: &Path, key: &Path) -> Output {
    run(kizuna(home).args(["send", ticket]).arg(file).arg("--key").arg(key).args([
        "--json",
        "--transport",
        "quic",
    ]))
}

#[test]
fn node_recv_from_accepts_only_the_listed_peers() {
    let home = tempfile::tempdir().unwrap();
    let recv = home.path().join("inbox");
    let (friend, friend_id) = make_key(home.path(), "friend.key");
    let (stranger, stranger_id) = make_key(home.path(), "stranger.key");
    let recv_dir = recv.to_str().unwrap();
    let node = NodeProc::start(home.path(), &["--recv-dir", recv_dir, "--recv-from", &friend_id]);
    let file = home.path().join("gift.bin");
    std::fs::write(&file, pattern(100_000, 3)).unwrap();

    let o = send_as(home.path(), &node.first, &file, &stranger);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let why = format!("accepts files only from selected peers; {} is not one of them", &stranger_id[..8]);
    assert!(stderr(&o).contains(&why), "{}", stderr(&o));
    assert!(!recv.join("gift.bin").exists() && !recv.join("gift.bin.part").exists());

    let o = send_as(home.path(), &node.first, &file, &friend);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_lines(&o)[0]["status"], "ok");
    assert!(std::fs::read(recv.join("gift.bin")).unwrap() == pattern(100_000, 3));

    // Usage errors: a malformed id, and --recv-from without --recv-dir.
    let o = run(kizuna(home.path()).args(["node", "--recv-dir", recv_dir, "--recv-from", "nope"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a peer id"), "{}", stderr(&o));
    let o = run(kizuna(home.path()).args(["node", "--recv-from", &friend_id]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--recv-dir"), "{}", stderr(&o));
    // The help says what the default is and why.
    let help = stdout(&run(kizuna(home.path()).args(["node", "--help"])));
    assert!(help.contains("--recv-from <PEER_ID>") && help.contains("any authenticated peer"), "{help}");
}

/// Writes `len` pseudo-random bytes to `path` (chunked: the file is too large to build in
/// memory byte by byte in a debug build).
fn write_pattern_file(path: &Path, len: usize, seed: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..len / chunk.len() {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&chunk).unwrap();
    }
    out.flush().unwrap();
}

fn sha256_of(path: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    kizuna_actors::services::names::hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref())
}

/// A child process killed (SIGKILL) on drop unless already reaped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_send_killed_mid_transfer_resumes_at_once_when_run_again() {
    // 128 MiB: a debug build sends about 50 MB/s over loopback QUIC, so the transfer runs for
    // seconds after the first 8 MiB arrive — ample time to kill the sender mid-way.
    const SIZE: usize = 128 << 20;
    const KILL_AFTER: u64 = 8 << 20;
    let home = tempfile::tempdir().unwrap();
    let recv = home.path().join("inbox");
    let node = NodeProc::start(home.path(), &["--recv-dir", recv.to_str().unwrap()]);
    let (key, _) = make_key(home.path(), "sender.key");
    let file = home.path().join("big.bin");
    write_pattern_file(&file, SIZE, 11);
    let part = recv.join("big.bin.part");

    let mut first = Killed(
        kizuna(home.path())
            .args(["send", &node.first])
            .arg(&file)
            .arg("--key")
            .arg(&key)
            .args(["--json", "--transport", "quic"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < KILL_AFTER {
        assert!(first.0.try_wait().unwrap().is_none(), "the first send ended before it was killed");
        assert!(Instant::now() < deadline, "the node received nothing within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.0.kill().unwrap(); // SIGKILL: no close reaches the node, whose connection lingers.
    first.0.wait().unwrap();
    assert!(!recv.join("big.bin").exists(), "the transfer finished before the kill");

    // Without superseding, the node refuses this for as long as it takes to notice that
    // the killed sender's connection is dead (≈ 45 s).
    let started = Instant::now();
    let o = send_as(home.path(), &node.first, &file, &key);
    assert!(o.status.success(), "resend right after the kill: {}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    let v = &json_lines(&o)[0];
    let resumed = v["resumed_from"].as_u64().unwrap();
    assert!(resumed >= KILL_AFTER && resumed < SIZE as u64, "{v}");
    assert_eq!(v["sent"].as_u64().unwrap(), SIZE as u64 - resumed, "{v}");
    assert_eq!(v["sha256"].as_str().unwrap(), sha256_of(&file));
    assert_eq!(sha256_of(&recv.join("big.bin")), sha256_of(&file));
    assert!(!part.exists());
}

/// A transfer that starts relayed and outlives the upgrade to a direct path finishes (it
/// failed with "closed locally (Replaced)" when the relayed path was retired 2 s after the
/// upgrade, although the node had received the whole file).
#[test]
fn a_relayed_send_moves_to_the_direct_path_once_hole_punching_finds_one() {
    // 48 MiB through a relay shaped to 8 MiB/s: ~6 s relayed, while the hole punch
    // upgrades the peer to direct QUIC within a second; the transfer follows it.
    const SIZE: usize = 48 << 20;
    let home = tempfile::tempdir().unwrap();
    let mut cmd = kizuna(home.path());
    cmd.args(["relay", "--listen", "ws://127.0.0.1:0", "--open", "--json"]).args([
        "--circuit-bandwidth",
        "8MiB",
        "--total-bandwidth",
        "8MiB",
        "--max-circuit-bytes",
        "1GiB",
    ]);
    let relay = NodeProc::spawn(&mut cmd, "relay");
    let v: Value = serde_json::from_str(&relay.first).unwrap();
    let url = v["url"].as_str().unwrap().to_string();
    let recv = home.path().join("inbox");
    let node =
        NodeProc::start(home.path(), &["--relay", &url, "--recv-dir", recv.to_str().unwrap(), "--json"]);
    let first: Value = serde_json::from_str(&node.first).unwrap();
    let peer = first["peer"].as_str().unwrap().to_string();
    let file = home.path().join("big.bin");
    write_pattern_file(&file, SIZE, 11);
    // The bare peer id: the relay is the only route, then hole punching takes it direct. A
    // STUN server that never answers holds the punch back ~1 s (gathering gives up on it),
    // so the stream starts on the relayed path.
    let out = run(kizuna(home.path())
        .args(["send", &peer, file.to_str().unwrap(), "--relay", &url, "--json"])
        .args(["--stun", "127.0.0.1:9"]));
    assert!(out.status.success(), "send failed: {}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        (v["path"].as_str(), v["moves"].as_u64(), v["resumes"].as_u64()),
        (Some("relayed"), Some(1), Some(0)),
        "{v}"
    );
    assert_eq!(sha256_of(&recv.join("big.bin")), sha256_of(&file));
    // The node saw the upgrade while the transfer ran: before the file was complete.
    let mut events = Vec::new();
    while let Some(line) = node.next_line(Duration::from_millis(500)) {
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        events.push(
            v["event"].as_str().unwrap_or_default().to_string() + "/" + v["reason"].as_str().unwrap_or(""),
        );
    }
    let upgrade = events.iter().position(|e| e == "path_changed/upgrade");
    let received = events.iter().position(|e| e.starts_with("file_received"));
    assert!(
        matches!((upgrade, received), (Some(u), Some(r)) if u < r),
        "the transfer did not outlive an upgrade: {events:?}"
    );
}
