//! Actor-API benchmarks: messages (64 B, 64 KiB) and the stream handle through the
//! supervisor, against the core connection directly and the raw TLS stream; memory per
//! idle connection.

use std::time::Instant;

use bytes::Bytes;
use futures_util::{stream::FuturesOrdered, StreamExt};
use kizuna::{Keypair, Protocol, TransportAddr};
use kizuna_actors::{
    api::{GetAddress, GetSender},
    runtime::io_runtime,
    Connect, Event, Listen, OpenStream, Send as SendMsg, Subscribe, Supervisor, SupervisorConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use crate::util::{figure, gbps, median, report, rss_bytes, Opts};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn config(seed: u8) -> SupervisorConfig {
    let mut c = SupervisorConfig::new(Keypair::from_seed([seed; 32]));
    c.protocols = vec![Protocol::Tcp];
    c
}

/// Raw baseline for messages: u32-length-prefixed frames over raw TLS, batched writes.
async fn raw_messages(size: usize, count: usize) -> Result<f64, BoxError> {
    let (mut server, client) = crate::core_bench::raw_tls_pair().await?;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; size];
        for _ in 0..count {
            let len = server.read_u32().await? as usize;
            server.read_exact(&mut buf[..len]).await?;
        }
        Ok::<_, BoxError>(Instant::now())
    });
    let mut w = BufWriter::with_capacity(64 * 1024, client);
    let msg = vec![1u8; size];
    let start = Instant::now();
    for _ in 0..count {
        w.write_u32(size as u32).await?;
        w.write_all(&msg).await?;
    }
    w.flush().await?;
    let end = reader.await??;
    Ok(count as f64 / (end - start).as_secs_f64())
}

/// Core baseline: `Connection::send` / `recv` directly, no actors.
async fn core_messages(size: usize, count: usize) -> Result<f64, BoxError> {
    let (server, client) = crate::core_bench::kizuna_pair(true).await?;
    let reader = tokio::spawn(async move {
        for _ in 0..count {
            server.recv().await?.ok_or("closed")?;
        }
        Ok::<_, BoxError>(Instant::now())
    });
    let msg = Bytes::from(vec![1u8; size]);
    let start = Instant::now();
    for _ in 0..count {
        client.send(msg.clone()).await?;
    }
    let end = reader.await??;
    Ok(count as f64 / (end - start).as_secs_f64())
}

async fn actor_pair(
    seed: u8,
    session_layer: bool,
) -> Result<(actix::Addr<Supervisor>, actix::Addr<Supervisor>, kizuna::PeerId), BoxError> {
    let config = |seed| {
        let mut c = config(seed);
        c.node.session_layer = session_layer;
        c
    };
    let a = Supervisor::start(config(seed))?;
    let b = Supervisor::start(config(seed + 1))?;
    b.send(Listen { addr: TransportAddr::Tcp("127.0.0.1:0".parse()?) }).await??;
    let t = b.send(GetAddress).await?;
    a.send(Connect { addr: t.clone() }).await??;
    Ok((a, b, t.peer_id))
}

/// How messages go through the actor API in [`actor_messages`].
#[derive(Clone, Copy)]
enum Via {
    /// `Send` to the supervisor, 256 in flight.
    Supervisor,
    /// A `GetSender` handle, one `send` per message.
    Handle,
    /// A `GetSender` handle, `send_many` of 256 at a time.
    Batches,
    /// A `GetSender` handle between nodes without the session layer (its cost).
    Plain,
}

/// Through the actor API (see [`Via`]); the receiver counts `MessageReceived` events.
async fn actor_messages(size: usize, count: usize, via: Via, seed: u8) -> Result<f64, BoxError> {
    let (a, b, peer) = actor_pair(seed, !matches!(via, Via::Plain)).await?;
    let mut events = b.send(Subscribe { capacity: 8192 }).await?;
    let reader = actix_rt::spawn(async move {
        let mut n = 0;
        while n < count {
            match events.recv().await {
                Some(Event::MessageReceived { .. }) => n += 1,
                Some(_) => {}
                None => break,
            }
        }
        Instant::now()
    });
    let msg = Bytes::from(vec![1u8; size]);
    let start = Instant::now();
    if let Via::Batches = via {
        let sender = a.send(GetSender { peer }).await??;
        let mut left = count;
        while left > 0 {
            let n = left.min(256);
            sender.send_many(vec![msg.clone(); n]).await?;
            left -= n;
        }
    } else if let Via::Supervisor = via {
        let mut inflight = FuturesOrdered::new();
        for _ in 0..count {
            inflight.push_back(a.send(SendMsg { peer, data: msg.clone() }));
            if inflight.len() >= 256 {
                inflight.next().await.ok_or("no reply")???;
            }
        }
        while let Some(r) = inflight.next().await {
            r??;
        }
    } else {
        let sender = a.send(GetSender { peer }).await??;
        for _ in 0..count {
            sender.send(msg.clone()).await?;
        }
    }
    let end = reader.await?;
    Ok(count as f64 / (end - start).as_secs_f64())
}

async fn actor_stream(bytes: u64, seed: u8) -> Result<f64, BoxError> {
    let (a, b, peer) = actor_pair(seed, true).await?;
    let mut events = b.send(Subscribe { capacity: 64 }).await?;
    let reader = actix_rt::spawn(async move {
        loop {
            if let Some(Event::StreamOpened { stream, .. }) = events.recv().await {
                let mut s = stream.take()?;
                let done = io_runtime().spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut n = 0u64;
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        n += k as u64;
                    }
                    (n, Instant::now())
                });
                return done.await.ok();
            }
        }
    });
    let mut s = a.send(OpenStream { peer }).await??;
    let start = Instant::now();
    let writer = io_runtime().spawn(async move {
        let buf = vec![7u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        s.shutdown().await
    });
    writer.await??;
    let (n, end) = reader.await?.ok_or("stream reader failed")?;
    assert_eq!(n, bytes);
    Ok(gbps(bytes, end - start))
}

async fn idle_memory(opts: &Opts) -> Result<(), BoxError> {
    const N: usize = 100;
    let server = Supervisor::start(config(200))?;
    server.send(Listen { addr: TransportAddr::Tcp("127.0.0.1:0".parse()?) }).await??;
    let t = server.send(GetAddress).await?;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(Supervisor::start(config(i as u8))?);
    }
    // Warm up allocator and runtime with one connection before measuring.
    clients[0].send(Connect { addr: t.clone() }).await??;
    let before = rss_bytes();
    for c in &clients[1..] {
        c.send(Connect { addr: t.clone() }).await??;
    }
    let after = rss_bytes();
    // Both ends of each connection live in this process.
    figure(
        opts,
        "memory per idle connection (both ends)",
        "KiB",
        (after.saturating_sub(before)) as f64 / (N - 1) as f64 / 1024.0,
    );
    Ok(())
}

/// Runs `bench` `runs` times, returning the median.
async fn med<F, Fut>(runs: usize, mut bench: F) -> Result<f64, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64, BoxError>>,
{
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        v.push(bench().await?);
    }
    Ok(median(v))
}

/// The raw TLS stream baseline of the stream-handle bench.
async fn raw_stream(bytes: u64) -> Result<f64, BoxError> {
    let (mut server, mut client) = crate::core_bench::raw_tls_pair().await?;
    let r = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            let k = server.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        Ok::<_, BoxError>((n, Instant::now()))
    });
    let buf = vec![7u8; 64 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        client.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    client.shutdown().await?;
    let (_, end) = r.await??;
    Ok(gbps(bytes, end - start))
}

/// Runs `f` on the shared I/O runtime (where the raw and core benches belong).
async fn on_io<Fut>(f: Fut) -> Result<f64, BoxError>
where
    Fut: std::future::Future<Output = Result<f64, BoxError>> + Send + 'static,
{
    io_runtime().spawn(f).await?
}

pub(crate) fn run(opts: &Opts) -> Result<(), BoxError> {
    let sys = actix::System::new();
    let opts = Opts {
        suite: opts.suite.clone(),
        bytes: opts.bytes,
        runs: opts.runs,
        json: opts.json,
        filter: opts.filter.clone(),
    };
    sys.block_on(async move {
        let runs = opts.runs;
        let small = 1_000_000;
        const CORE64: &str = "64 B msgs: core Connection vs raw TLS";
        const HANDLE64: &str = "64 B msgs: actor GetSender vs raw TLS";
        const BATCH64: &str = "64 B msgs: GetSender send_many(256) vs raw";
        const SUP64: &str = "64 B msgs: actor Send (supervisor) vs raw";
        if [CORE64, HANDLE64, BATCH64, SUP64].iter().any(|w| opts.wants(w)) {
            let raw = med(runs, || on_io(raw_messages(64, small))).await?;
            if opts.wants(CORE64) {
                let core = med(runs, || on_io(core_messages(64, small))).await?;
                report(&opts, CORE64, "msg/s", core, raw, true);
            }
            if opts.wants(HANDLE64) {
                let handle = med(runs, || actor_messages(64, small, Via::Handle, 10)).await?;
                report(&opts, HANDLE64, "msg/s", handle, raw, true);
            }
            if opts.wants(BATCH64) {
                let batches = med(runs, || actor_messages(64, 4 * small, Via::Batches, 20)).await?;
                report(&opts, BATCH64, "msg/s", batches, raw, true);
            }
            if opts.wants(SUP64) {
                let sup = med(runs, || actor_messages(64, small, Via::Supervisor, 12)).await?;
                report(&opts, SUP64, "msg/s", sup, raw, true);
            }
        }
        let big = (opts.bytes / (64 * 1024)) as usize;
        let to_gbps = |rate: f64| rate * 64.0 * 1024.0 * 8.0 / 1e9;
        const CORE64K: &str = "64 KiB msgs: core Connection vs raw TLS";
        const HANDLE64K: &str = "64 KiB msgs: actor GetSender vs raw TLS";
        const SUP64K: &str = "64 KiB msgs: actor Send (supervisor) vs raw";
        const SESSION64K: &str = "64 KiB msgs: GetSender, session layer on vs off";
        if [CORE64K, HANDLE64K, SUP64K].iter().any(|w| opts.wants(w)) {
            let raw = to_gbps(med(runs, || on_io(raw_messages(64 * 1024, big))).await?);
            if opts.wants(CORE64K) {
                let core = to_gbps(med(runs, || on_io(core_messages(64 * 1024, big))).await?);
                report(&opts, CORE64K, "Gbit/s", core, raw, true);
            }
            if opts.wants(HANDLE64K) {
                let handle = to_gbps(med(runs, || actor_messages(64 * 1024, big, Via::Handle, 14)).await?);
                report(&opts, HANDLE64K, "Gbit/s", handle, raw, true);
            }
            if opts.wants(SUP64K) {
                let sup = to_gbps(med(runs, || actor_messages(64 * 1024, big, Via::Supervisor, 16)).await?);
                report(&opts, SUP64K, "Gbit/s", sup, raw, true);
            }
        }
        if opts.wants(SESSION64K) {
            // Interleaved, so that both see the same load.
            let (mut on, mut off) = (Vec::new(), Vec::new());
            for _ in 0..runs.max(1) {
                off.push(to_gbps(actor_messages(64 * 1024, big, Via::Plain, 22).await?));
                on.push(to_gbps(actor_messages(64 * 1024, big, Via::Handle, 24).await?));
            }
            report(&opts, SESSION64K, "Gbit/s", median(on), median(off), true);
        }
        const STREAM: &str = "stream handle (OpenStream) vs raw TLS";
        if opts.wants(STREAM) {
            let bytes = opts.bytes;
            let raw = med(runs, || on_io(raw_stream(bytes))).await?;
            let stream = med(runs, || actor_stream(bytes, 18)).await?;
            report(&opts, STREAM, "Gbit/s", stream, raw, true);
        }
        if opts.wants("memory per idle connection") {
            idle_memory(&opts).await?;
        }
        Ok::<_, BoxError>(())
    })
}
