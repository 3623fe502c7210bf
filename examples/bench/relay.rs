//! Relay and WebSocket benchmarks (issue 4):
//!
//! 1. throughput of raw tokio-tungstenite (plain TCP, 64 KiB binary messages, `feed` and a
//!    `flush` per MiB) against a Kizuna `ByteStream` over `WsTransport` (TLS 1.3 + mux
//!    inside the WebSocket) and the same stream relayed A → relay → B through a
//!    `RelayServer` in this process;
//! 2. the relay's CPU time per GiB forwarded, with the relay in a child process
//!    (`kizuna relay`) so that its CPU is its own;
//! 3. how many circuits one relay (child process) holds at once, and its memory per
//!    circuit.
//!
//! Parts 2 and 3 need the `kizuna` binary next to the benchmark (`cargo build --release
//! -p kizuna-actors --bin kizuna`) or named by `KIZUNA_BIN`.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{stream::FuturesUnordered, SinkExt, StreamExt};
use kizuna::{
    relay::{auth::Admission, Purpose, RelayMessage},
    transport::{relay as relay_client, ws::WsOptions, ws::WsTransport},
    Connection, Keypair, LocalNode, NodeConfig, Transport, TransportAddr,
};
use kizuna_actors::{
    relay::{RelayServer, RelayServerConfig, StopRelay},
    runtime::io_runtime,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    core_bench::{drain, node, pump},
    util::{figure, gbps, median, report, Opts},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CHUNK: usize = 64 * 1024;

/// Raw baseline: tungstenite's buffer is flushed once per this many messages (1 MiB).
const RAW_FLUSH_EVERY: usize = 16;

/// Bytes relayed per run while the relay's CPU time is measured.
const CPU_BYTES: u64 = 1 << 30;

/// Circuits opened through one relay.
const CIRCUITS: usize = 1000;

/// Relayed dials in flight at once while opening the circuits. 32: well under the relay's
/// handshake bound (256) and the pending-circuit timeout, fast enough on 2 cores.
const DIAL_CONCURRENCY: usize = 32;

/// Relay limits lifted for throughput runs (the defaults shape a circuit to 16 MiB/s
/// and 1 GiB): as the demo does.
const LIFTED_BANDWIDTH: u64 = 64 << 30;
const LIFTED_CIRCUIT_BYTES: u64 = 1 << 40;

fn ws_options(node: &LocalNode) -> WsOptions {
    WsOptions::from_node(node.config())
}

// ---------------------------------------------------------------------------------------
// Raw tokio-tungstenite over TCP.

async fn raw_ws_throughput(bytes: u64) -> Result<Duration, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (accepted, client) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
    let (server, client) = (accepted?.0, client?);
    server.set_nodelay(true)?;
    client.set_nodelay(true)?;
    ws_transfer(server, client, bytes).await
}

/// The same over raw tokio-rustls (same certificates as Kizuna): what a WebSocket inside
/// TLS 1.3 costs without Kizuna's channel and multiplexer.
async fn raw_tls_ws_throughput(bytes: u64) -> Result<Duration, BoxError> {
    let (server, client) = crate::core_bench::raw_tls_pair().await?;
    ws_transfer(server, client, bytes).await
}

/// WebSocket upgrade over the two ends, then `bytes` in 64 KiB binary messages.
async fn ws_transfer<S, C>(server: S, client: C, bytes: u64) -> Result<Duration, BoxError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let server = tokio::spawn(async move {
        let mut ws = tokio_tungstenite::accept_async(server).await?;
        let mut n = 0u64;
        while n < bytes {
            match ws.next().await.ok_or("raw WebSocket ended early")?? {
                Message::Binary(b) => n += b.len() as u64,
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok::<_, BoxError>((n, Instant::now()))
    });
    let (mut ws, _) = tokio_tungstenite::client_async("ws://bench.invalid/", client).await?;
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let start = Instant::now();
    let mut left = bytes;
    let mut i = 0;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        ws.feed(Message::Binary(chunk.slice(..n))).await?;
        left -= n as u64;
        i += 1;
        if i % RAW_FLUSH_EVERY == 0 {
            ws.flush().await?;
        }
    }
    ws.flush().await?;
    let (n, end) = server.await??;
    ws.close(None).await.ok();
    assert_eq!(n, bytes);
    Ok(end - start)
}

// ---------------------------------------------------------------------------------------
// Kizuna streams over a connection pair.

/// Moves `bytes` over a new stream from `client` to `server`; the time from the first
/// write to the reader's end of stream.
async fn stream_throughput(server: Connection, client: Connection, bytes: u64) -> Result<Duration, BoxError> {
    let reader = tokio::spawn(async move {
        let mut s = server.accept_stream().await?.ok_or("no stream")?;
        let n = drain(&mut s).await?;
        Ok::<_, BoxError>((n, Instant::now(), server))
    });
    let mut s = client.open_stream().await?;
    let start = Instant::now();
    pump(&mut s, bytes).await?;
    s.shutdown().await?;
    let (n, end, server) = reader.await??;
    assert_eq!(n, bytes);
    client.close(kizuna::wire::CloseCode::Normal, "bench").await;
    server.close(kizuna::wire::CloseCode::Normal, "bench").await;
    Ok(end - start)
}

/// A `WsTransport` listener and dialer connected over `ws://` on loopback.
async fn ws_pair() -> Result<(Connection, Connection), BoxError> {
    let (a, b) = (node(21)?, node(22)?);
    let ta = WsTransport::new(a.clone());
    let tb = WsTransport::new(b);
    let mut l = ta.listen(&TransportAddr::Ws("ws://127.0.0.1:0".into())).await?;
    let addr = l.local_addr();
    let dial = tokio::spawn(async move { tb.connect(&addr, a.peer_id()).await });
    let server = match l.accept().await {
        Some(kizuna::Incoming::Connection(c)) => c,
        other => return Err(format!("WebSocket accept failed: {other:?}").into()),
    };
    let client = dial.await??;
    Ok((server, client))
}

// ---------------------------------------------------------------------------------------
// A relay target with the core only: one control connection holding a reservation,
// accepting every announced circuit.

pub(crate) struct Target {
    node: Arc<LocalNode>,
    incoming: mpsc::UnboundedReceiver<Connection>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn reserve(node: Arc<LocalNode>, url: &str) -> Result<Target, BoxError> {
    let opts = ws_options(&node);
    let mut ctl = relay_client::open(&node, url, None, Purpose::Control, &opts).await?;
    relay_client::send(&mut ctl, url, &RelayMessage::Reserve { ttl_secs: 3600 }).await?;
    match relay_client::recv(&mut ctl, url).await? {
        RelayMessage::Reserved { .. } => {}
        other => return Err(format!("reservation refused: {}", other.type_name()).into()),
    }
    let (tx, incoming) = mpsc::unbounded_channel();
    let (n, url) = (node.clone(), url.to_string());
    let task = tokio::spawn(async move {
        while let Ok(msg) = relay_client::recv(&mut ctl, &url).await {
            if let RelayMessage::Incoming { circuit, from } = msg {
                let (n, url, tx, opts) = (n.clone(), url.clone(), tx.clone(), opts.clone());
                tokio::spawn(async move {
                    match relay_client::accept(&n, &url, None, circuit, from, &opts).await {
                        Ok(c) => {
                            let _ = tx.send(c);
                        }
                        Err(e) => eprintln!("relay bench: accepting circuit {circuit} failed: {e}"),
                    }
                });
            }
        }
    });
    Ok(Target { node, incoming, task })
}

/// Dials `target` through `url` from `from`; returns (target's end, dialer's end).
pub(crate) async fn relayed_pair(
    from: &LocalNode,
    target: &mut Target,
    url: &str,
) -> Result<(Connection, Connection), BoxError> {
    let client = relay_client::dial(from, url, None, target.node.peer_id(), &ws_options(from)).await?;
    let server = tokio::time::timeout(Duration::from_secs(10), target.incoming.recv())
        .await?
        .ok_or("relay target stopped")?;
    Ok((server, client))
}

// ---------------------------------------------------------------------------------------
// The relay as a child process.

pub(crate) struct ChildRelay {
    child: tokio::process::Child,
    pid: u32,
    pub(crate) url: String,
    stats: String,
}

fn kizuna_bin() -> Result<PathBuf, BoxError> {
    if let Some(p) = std::env::var_os("KIZUNA_BIN") {
        return Ok(p.into());
    }
    // target/<profile>/examples/bench -> target/<profile>/kizuna
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(|p| p.parent()).map(|p| p.join("kizuna")).ok_or("no exe dir")?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p kizuna-actors --bin kizuna` \
             (or set KIZUNA_BIN)",
            bin.display()
        )
        .into())
    }
}

/// The string value of `"key":"…"` in a flat JSON line.
fn json_str(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    Some(line[at..].split('"').next()?.to_string())
}

/// The integer value of `"key":N` in JSON text.
fn json_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl ChildRelay {
    /// A relay with bandwidth and count limits lifted; `crowd_caps` keeps the per-address
    /// and per-target caps at their defaults (else they are lifted too: the circuit bench
    /// opens every circuit from one host to one target, many at a time).
    pub(crate) async fn start(crowd_caps: bool) -> Result<Self, BoxError> {
        let circuits = (2 * CIRCUITS).to_string();
        let mut cmd = tokio::process::Command::new(kizuna_bin()?);
        cmd.args(["relay", "--listen", "ws://127.0.0.1:0", "--open", "--json"])
            .args(["--stats-addr", "127.0.0.1:0"])
            .args(["--circuit-bandwidth", "64GiB", "--total-bandwidth", "64GiB"])
            .args(["--max-circuit-bytes", "1TiB"])
            .args(["--max-circuits", &circuits, "--max-circuits-per-peer", &circuits])
            .args(["--max-reservations", &circuits]);
        if !crowd_caps {
            cmd.args(["--max-pending-per-address", "256", "--max-unconfirmed-per-address", "256"])
                .args(["--max-unconfirmed-per-target", "256"]);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("relay child exited")?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let line = tokio::time::timeout(Duration::from_secs(10), BufReader::new(out).lines().next_line())
            .await??
            .ok_or("relay child printed nothing")?;
        let url = json_str(&line, "url").ok_or_else(|| format!("no url in {line:?}"))?;
        let stats = json_str(&line, "stats").ok_or_else(|| format!("no stats address in {line:?}"))?;
        Ok(Self { child, pid, url, stats })
    }

    /// utime + stime of the child, seconds.
    fn cpu_secs(&self) -> Result<f64, BoxError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let rest = stat.rsplit_once(')').ok_or("bad /proc stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of proc(5); `rest` starts at field 3.
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        Ok(ticks as f64 / clock_ticks() as f64)
    }

    pub(crate) fn rss_bytes(&self) -> Result<u64, BoxError> {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid))?;
        let pages: u64 = statm.split_whitespace().nth(1).ok_or("bad statm")?.parse()?;
        Ok(pages * 4096)
    }

    /// The relay's metrics, from its stats endpoint.
    async fn metrics(&self) -> Result<String, BoxError> {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(&self.stats).await?;
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of this process, seconds.
fn self_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / clock_ticks() as f64
}

// ---------------------------------------------------------------------------------------
// The three measurements.

async fn throughput(opts: &Opts, url: String) -> Result<(), BoxError> {
    let bytes = opts.bytes;
    let runs = opts.runs;
    let [raw, raw_tls, tcp, direct, relayed] = io_runtime()
        .spawn(async move {
            let mut target = reserve(node(23)?, &url).await?;
            let dialer = node(24)?;
            let mut v: [Vec<f64>; 5] = Default::default();
            for _ in 0..runs {
                v[0].push(gbps(bytes, raw_ws_throughput(bytes).await?));
                v[1].push(gbps(bytes, raw_tls_ws_throughput(bytes).await?));
                let (s, c) = crate::core_bench::kizuna_pair(true).await?;
                v[2].push(gbps(bytes, stream_throughput(s, c, bytes).await?));
                let (s, c) = ws_pair().await?;
                v[3].push(gbps(bytes, stream_throughput(s, c, bytes).await?));
                let (s, c) = relayed_pair(&dialer, &mut target, &url).await?;
                v[4].push(gbps(bytes, stream_throughput(s, c, bytes).await?));
            }
            Ok::<_, BoxError>(v.map(median))
        })
        .await??;
    report(opts, "throughput: WebSocket direct vs raw tungstenite", "Gbit/s", direct, raw, true);
    report(opts, "throughput: relayed vs WebSocket direct", "Gbit/s", relayed, direct, true);
    report(opts, "throughput: relayed vs raw tungstenite", "Gbit/s", relayed, raw, true);
    report(opts, "throughput: WebSocket direct vs raw tungstenite+TLS", "Gbit/s", direct, raw_tls, true);
    report(opts, "throughput: WebSocket direct vs Kizuna TCP", "Gbit/s", direct, tcp, true);
    Ok(())
}

async fn relay_cpu(opts: &Opts) -> Result<(), BoxError> {
    let runs = opts.runs;
    let (relay_cpu, self_cpu, rate) = io_runtime()
        .spawn(async move {
            let relay = ChildRelay::start(false).await?;
            let mut target = reserve(node(25)?, &relay.url).await?;
            let dialer = node(26)?;
            let (mut relay_cpu, mut self_cpu, mut rate) = (vec![], vec![], vec![]);
            let gib = CPU_BYTES as f64 / (1u64 << 30) as f64;
            for _ in 0..runs {
                let (s, c) = relayed_pair(&dialer, &mut target, &relay.url).await?;
                let (r0, s0) = (relay.cpu_secs()?, self_cpu_secs());
                let d = stream_throughput(s, c, CPU_BYTES).await?;
                let (r1, s1) = (relay.cpu_secs()?, self_cpu_secs());
                relay_cpu.push((r1 - r0) / gib);
                self_cpu.push((s1 - s0) / gib);
                rate.push(gbps(CPU_BYTES, d));
            }
            drop(target);
            relay.stop().await;
            Ok::<_, BoxError>((median(relay_cpu), median(self_cpu), median(rate)))
        })
        .await??;
    figure(opts, "relay CPU per GiB forwarded (child process)", "CPU-s", relay_cpu);
    figure(opts, "both endpoints' CPU per GiB (bench process)", "CPU-s", self_cpu);
    figure(opts, "throughput through the child relay", "Gbit/s", rate);
    Ok(())
}

async fn circuits(opts: &Opts) -> Result<(), BoxError> {
    let (reached, open, echoed, per_circuit, secs, first_err) = io_runtime()
        .spawn(async move {
            let relay = ChildRelay::start(false).await?;
            let url = relay.url.clone();
            let mut target = reserve(node(27)?, &url).await?;
            let target_peer = target.node.peer_id();
            // The target echoes every message on every circuit.
            let mut incoming = std::mem::replace(&mut target.incoming, mpsc::unbounded_channel().1);
            let echo = tokio::spawn(async move {
                let mut kept = Vec::new();
                while let Some(c) = incoming.recv().await {
                    let c2 = c.clone();
                    tokio::spawn(async move {
                        while let Ok(Some(m)) = c2.recv().await {
                            if c2.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                    kept.push(c);
                }
                kept.len()
            });
            let dial = |i: usize| {
                let url = url.clone();
                async move {
                    let mut seed = [0x77u8; 32];
                    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    let n = LocalNode::new(NodeConfig::new(Keypair::from_seed(seed)))?;
                    let c = relay_client::dial(&n, &url, None, target_peer, &ws_options(&n)).await?;
                    Ok::<_, BoxError>((n, c))
                }
            };
            // One circuit first (allocator and runtime warm-up), then the baseline.
            let mut conns = vec![dial(0).await?];
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = relay.rss_bytes()?;
            let t0 = Instant::now();
            let mut first_err = None;
            let mut pending = FuturesUnordered::new();
            let mut next = 1;
            while next < CIRCUITS || !pending.is_empty() {
                while next < CIRCUITS && pending.len() < DIAL_CONCURRENCY {
                    pending.push(dial(next));
                    next += 1;
                }
                match pending.next().await {
                    Some(Ok(c)) => conns.push(c),
                    Some(Err(e)) => {
                        first_err.get_or_insert_with(|| e.to_string());
                    }
                    None => {}
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            // Every circuit: a 32-byte round trip.
            let mut rts = FuturesUnordered::new();
            for (_, c) in &conns {
                rts.push(async move {
                    c.send(Bytes::from_static(&[9u8; 32])).await?;
                    let m = tokio::time::timeout(Duration::from_secs(10), c.recv()).await??;
                    Ok::<_, BoxError>(m.map(|m| m.len()) == Some(32))
                });
            }
            let mut echoed = 0;
            while let Some(r) = rts.next().await {
                echoed += matches!(r, Ok(true)) as usize;
            }
            drop(rts);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = relay.rss_bytes()?;
            let open = json_u64(&relay.metrics().await?, "circuits_open").unwrap_or(0);
            let reached = conns.len();
            let per_circuit = after.saturating_sub(before) as f64 / (reached.max(2) - 1) as f64;
            for (_, c) in &conns {
                c.close(kizuna::wire::CloseCode::Normal, "bench").await;
            }
            drop(conns);
            drop(target);
            echo.abort();
            relay.stop().await;
            Ok::<_, BoxError>((reached, open, echoed, per_circuit, secs, first_err))
        })
        .await??;
    if let Some(e) = first_err {
        eprintln!("relay bench: some circuits failed; first error: {e}");
    }
    figure(opts, &format!("circuits open at one relay (of {CIRCUITS})"), "circuits", reached as f64);
    figure(opts, "  … counted open by the relay's metrics", "circuits", open as f64);
    figure(opts, "  … with a working round trip", "circuits", echoed as f64);
    figure(opts, "  … time to open them (32 dials in flight)", "s", secs);
    figure(opts, "relay memory per open circuit (RSS)", "KiB", per_circuit / 1024.0);
    Ok(())
}

pub(crate) fn run(opts: &Opts) -> Result<(), BoxError> {
    let sys = actix::System::new();
    sys.block_on(async move {
        let mut config = RelayServerConfig::new("127.0.0.1:0".parse()?, Admission::open());
        config.limits.circuit_bandwidth = LIFTED_BANDWIDTH;
        config.limits.total_bandwidth = LIFTED_BANDWIDTH;
        config.limits.max_circuit_bytes = LIFTED_CIRCUIT_BYTES;
        let relay = RelayServer::start(config).await?;
        throughput(opts, relay.url.clone()).await?;
        relay.addr.send(StopRelay).await?;
        relay_cpu(opts).await?;
        circuits(opts).await
    })
}
