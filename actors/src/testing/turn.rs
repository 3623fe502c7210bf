//! A real TURN server for tests: Debian's coturn (`turnserver`), one long-term-credential
//! user, listening and relaying on one IPv4 address.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
};

use kizuna::nat::{
    classify::{Test, TestKind},
    probe::{binding, ProbeConfig},
};

/// The TURN user of [`Coturn`].
pub const TURN_USER: &str = "kizuna";
/// Its password.
pub const TURN_PASS: &str = "turn-secret";

/// A running coturn; killed when dropped (also when the test fails).
pub struct Coturn {
    child: Child,
    /// `turn:IP:PORT`.
    pub url: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Coturn {
    /// Whether `turnserver` is installed (`apt-get install coturn`; `.ci/run` does).
    pub fn available() -> bool {
        Command::new("sh").args(["-c", "command -v turnserver"]).output().is_ok_and(|o| o.status.success())
    }

    /// Starts coturn on `ip` with its files in `dir`, on fresh ports; up once it answers a
    /// STUN Binding request. A server that does not answer is replaced on new ports (a
    /// few times), since a free port picked here may be taken before coturn binds it.
    pub async fn start(ip: Ipv4Addr, dir: &Path) -> Coturn {
        for attempt in 0..4 {
            let free = || std::net::UdpSocket::bind((ip, 0)).and_then(|s| s.local_addr()).map(|a| a.port());
            let (Ok(port), Ok(low)) = (free(), free()) else { continue };
            let low = low.clamp(20_000, 60_000);
            let file = |f: &str| dir.join(format!("{attempt}-{f}")).display().to_string();
            let mut cmd = Command::new("turnserver");
            cmd.args(["-n", "--listening-ip", &ip.to_string(), "--relay-ip", &ip.to_string()])
                .args(["--listening-port", &port.to_string()])
                .args(["--min-port", &low.to_string(), "--max-port", &(low + 200).to_string()])
                .args([
                    "--lt-cred-mech",
                    "--user",
                    &format!("{TURN_USER}:{TURN_PASS}"),
                    "--realm",
                    "kizuna.test",
                ])
                .args(["--no-tls", "--no-dtls", "--no-tcp", "--no-cli", "--simple-log"])
                .args([
                    "--log-file",
                    &file("turn.log"),
                    "--pidfile",
                    &file("turn.pid"),
                    "--db",
                    &file("turndb"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if ip.is_loopback() {
                cmd.arg("--allow-loopback-peers");
            }
            let child = cmd.spawn().expect("start turnserver (apt-get install coturn)");
            let addr = SocketAddr::from((ip, port));
            let turn = Coturn { child, url: format!("turn:{addr}"), addr };
            if answers_stun(ip, addr).await {
                return turn;
            }
            eprintln!("coturn on {addr} did not answer (attempt {attempt}); trying other ports");
        }
        panic!("coturn never answered on {ip} (4 attempts)");
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `server` answers a STUN Binding request, with the library's prober (retries).
async fn answers_stun(ip: Ipv4Addr, server: SocketAddr) -> bool {
    let Ok(socket) = tokio::net::UdpSocket::bind((ip, 0)).await else { return false };
    let test = Test { kind: TestKind::Binding(0), dest: server, change_ip: false, change_port: false };
    let config = ProbeConfig { max_transmissions: 20, ..ProbeConfig::default() };
    binding(&socket, &test, &config).await.is_ok()
}
