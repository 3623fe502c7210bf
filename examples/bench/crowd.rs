//! Hostile-input benchmarks (issue 10): how long a legitimate client takes to connect
//! while a crowd of unauthenticated connections from another address holds the server's
//! listener, against the same connect with no crowd, in the same run; and the relay's
//! memory with the crowd.
//!
//! The crowd connects from 127.0.0.2, the legitimate client from 127.0.0.1. Crowds:
//! [`CROWD`] idle sockets; as many sending a truncated TLS ClientHello (node TCP); and
//! [`UPGRADES`] unfinished WebSocket upgrades (relay). The relay runs as a child process
//! with its default admission (`kizuna relay`), so its memory is its own.

use std::{net::SocketAddr, time::Instant};

use kizuna::{transport::tcp::TcpTransport, Transport, TransportAddr};
use kizuna_actors::runtime::io_runtime;
use tokio::net::TcpStream;

use crate::{
    core_bench::node,
    relay::{relayed_pair, reserve, ChildRelay},
    util::{figure, median, Opts},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections in a crowd (more than a listener's 256 handshake slots).
const CROWD: usize = 400;

/// Unfinished WebSocket upgrades added to the relay's crowd.
const UPGRADES: usize = 300;

/// Connects timed per case; the median is reported.
const SAMPLES: usize = 21;

/// The first bytes of a TLS ClientHello that never completes.
const TRUNCATED_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];

const UNFINISHED_UPGRADE: &[u8] =
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";

/// `n` connections to `to` from 127.0.0.2, each sending `first`, kept open.
async fn crowd(to: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    kizuna_actors::testing::crowd([127, 0, 0, 2].into(), to, n, first).await
}

async fn time_ms<F, Fut>(mut f: F) -> Result<f64, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let mut v = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        f().await?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(v))
}

async fn node_tcp() -> Result<[f64; 3], BoxError> {
    let server = node(40)?;
    let mut l =
        TcpTransport::new(server.clone()).listen(&TransportAddr::Tcp(([127, 0, 0, 1], 0).into())).await?;
    let addr = l.local_addr();
    let TransportAddr::Tcp(sa) = addr else { return Err("not a TCP address".into()) };
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(i) = l.accept().await {
            kept.push(i);
        }
    });
    let dial = TcpTransport::new(node(41)?);
    let peer = server.peer_id();
    let connect = || async {
        let c = dial.connect(&addr, peer).await?;
        c.close(kizuna::wire::CloseCode::Normal, "bench").await;
        Ok(())
    };
    let alone = time_ms(connect).await?;
    let idle = crowd(sa, CROWD, b"").await;
    let beside_idle = time_ms(connect).await?;
    drop(idle);
    let talking = crowd(sa, CROWD, TRUNCATED_CLIENT_HELLO).await;
    let beside_truncated = time_ms(connect).await?;
    drop(talking);
    Ok([alone, beside_idle, beside_truncated])
}

async fn relayed() -> Result<[f64; 4], BoxError> {
    let relay = ChildRelay::start(true).await?;
    let url = relay.url.clone();
    let mut target = reserve(node(42)?, &url).await?;
    let dialer = node(43)?;
    let sa: SocketAddr = url.trim_start_matches("ws://").trim_end_matches('/').parse()?;
    let mut alone = Vec::new();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let (s, c) = relayed_pair(&dialer, &mut target, &url).await?;
        alone.push(t.elapsed().as_secs_f64() * 1e3);
        drop((s, c));
    }
    let rss_before = relay.rss_bytes()?;
    let mut held = crowd(sa, CROWD, b"").await;
    held.extend(crowd(sa, UPGRADES, UNFINISHED_UPGRADE).await);
    let rss_crowd = relay.rss_bytes()?;
    let mut beside = Vec::new();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let (s, c) = relayed_pair(&dialer, &mut target, &url).await?;
        beside.push(t.elapsed().as_secs_f64() * 1e3);
        drop((s, c));
    }
    drop(held);
    relay.stop().await;
    Ok([median(alone), median(beside), rss_before as f64, rss_crowd as f64])
}

pub(crate) async fn run(opts: &Opts) -> Result<(), BoxError> {
    let [alone, idle, truncated] = io_runtime().spawn(node_tcp()).await??;
    figure(opts, "connect: node TCP, no crowd", "ms", alone);
    figure(opts, "connect: node TCP beside 400 idle sockets", "ms", idle);
    figure(opts, "connect: node TCP beside 400 truncated ClientHellos", "ms", truncated);
    figure(opts, "  … slowdown beside the idle crowd", "x", idle / alone);
    figure(opts, "  … slowdown beside the truncated crowd", "x", truncated / alone);
    let [alone, beside, rss0, rss1] = io_runtime().spawn(relayed()).await??;
    figure(opts, "connect: relayed circuit, no crowd", "ms", alone);
    figure(opts, "connect: relayed beside 400 idle + 300 unfinished", "ms", beside);
    figure(opts, "  … slowdown beside the crowd", "x", beside / alone);
    figure(opts, "relay RSS without the crowd", "MiB", rss0 / (1 << 20) as f64);
    figure(opts, "relay RSS with 700 idle/unfinished sockets", "MiB", rss1 / (1 << 20) as f64);
    Ok(())
}
