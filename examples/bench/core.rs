//! Core benchmarks: Kizuna TCP vs raw tokio-rustls, Kizuna QUIC vs raw quinn, handshakes.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use kizuna::{
    transport::{quic::QuicTransport, tcp::TcpTransport},
    Connection, Keypair, LocalNode, NodeConfig, Transport, TransportAddr,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::util::{gbps, median, report, Opts};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CHUNK: usize = 64 * 1024;

pub(crate) fn node(seed: u8) -> Result<Arc<LocalNode>, BoxError> {
    Ok(LocalNode::new(NodeConfig::new(Keypair::from_seed([seed; 32])))?)
}

pub(crate) async fn pump<W: AsyncWrite + Unpin>(w: &mut W, bytes: u64) -> std::io::Result<()> {
    let buf = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    w.flush().await
}

pub(crate) async fn drain<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// A listener node and a dialer node connected over `proto`.
pub(crate) async fn kizuna_pair(tcp: bool) -> Result<(Connection, Connection), BoxError> {
    let (a, b) = (node(1)?, node(2)?);
    let (ta, tb): (Arc<dyn Transport>, Arc<dyn Transport>) = if tcp {
        (Arc::new(TcpTransport::new(a.clone())), Arc::new(TcpTransport::new(b.clone())))
    } else {
        (Arc::new(QuicTransport::new(a.clone())), Arc::new(QuicTransport::new(b.clone())))
    };
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut l = ta.listen(&if tcp { TransportAddr::Tcp(any) } else { TransportAddr::Quic(any) }).await?;
    let addr = l.local_addr();
    let dial = tokio::spawn(async move {
        let c = tb.connect(&addr, a.peer_id()).await;
        (c, tb)
    });
    let server = match l.accept().await {
        Some(kizuna::Incoming::Connection(c)) => c,
        other => return Err(format!("accept failed: {other:?}").into()),
    };
    let (client, tb) = dial.await?;
    std::mem::forget(tb); // keep the dialing transport (and its endpoint) alive
    std::mem::forget(l);
    Ok((server, client?))
}

async fn kizuna_stream_throughput(tcp: bool, bytes: u64) -> Result<Duration, BoxError> {
    let (server, client) = kizuna_pair(tcp).await?;
    let reader = tokio::spawn(async move {
        let mut s = server.accept_stream().await?.ok_or("no stream")?;
        let n = drain(&mut s).await?;
        Ok::<_, BoxError>((n, Instant::now()))
    });
    let mut s = client.open_stream().await?;
    let start = Instant::now();
    pump(&mut s, bytes).await?;
    s.shutdown().await?;
    let (n, end) = reader.await??;
    assert_eq!(n, bytes);
    Ok(end - start)
}

pub(crate) async fn raw_tls_pair(
) -> Result<(impl AsyncRead + AsyncWrite + Unpin, impl AsyncRead + AsyncWrite + Unpin), BoxError> {
    let (a, b) = (node(1)?, node(2)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(a.secure().server_config());
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        Ok::<_, BoxError>(acceptor.accept(s).await?)
    });
    let connector = tokio_rustls::TlsConnector::from(b.secure().client_config(a.peer_id())?);
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(a.peer_id().to_string())?;
    let client = connector.connect(name, s).await?;
    Ok((server.await??, client))
}

async fn raw_tls_throughput(bytes: u64) -> Result<Duration, BoxError> {
    let (mut server, mut client) = raw_tls_pair().await?;
    let reader = tokio::spawn(async move {
        let n = drain(&mut server).await?;
        Ok::<_, BoxError>((n, Instant::now()))
    });
    let start = Instant::now();
    pump(&mut client, bytes).await?;
    client.shutdown().await?;
    let (n, end) = reader.await??;
    assert_eq!(n, bytes);
    Ok(end - start)
}

async fn raw_quinn_pair(
) -> Result<(quinn::Endpoint, quinn::Endpoint, quinn::Connection, quinn::Connection), BoxError> {
    let (a, b) = (node(1)?, node(2)?);
    let server = quinn::Endpoint::server(a.secure().quic_server_config()?, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(b.secure().quic_client_config(a.peer_id())?);
    let s2 = server.clone();
    let accept = tokio::spawn(async move {
        let inc = s2.accept().await.ok_or("endpoint closed")?;
        Ok::<_, BoxError>(inc.await?)
    });
    let c = client.connect(addr, &a.peer_id().to_string())?.await?;
    let s = accept.await??;
    Ok((server, client, s, c))
}

async fn raw_quinn_throughput(bytes: u64) -> Result<Duration, BoxError> {
    let (_se, _ce, server, client) = raw_quinn_pair().await?;
    let reader = tokio::spawn(async move {
        let (_send, mut recv) = server.accept_bi().await?;
        let n = drain(&mut recv).await?;
        Ok::<_, BoxError>((n, Instant::now()))
    });
    let (mut send, _recv) = client.open_bi().await?;
    let start = Instant::now();
    pump(&mut send, bytes).await?;
    send.finish()?;
    let (n, end) = reader.await??;
    assert_eq!(n, bytes);
    Ok(end - start)
}

async fn handshakes(opts: &Opts) -> Result<(), BoxError> {
    const N: usize = 30;
    // Raw TLS over TCP: TCP connect + TLS 1.3 full handshake (mutual, Ed25519).
    let (a, b) = (node(1)?, node(2)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(a.secure().server_config());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acc = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut t) = acc.accept(s).await {
                    let mut b = [0u8; 1];
                    let _ = t.read(&mut b).await;
                }
            });
        }
    });
    let mut raw_tls = vec![];
    for _ in 0..N {
        let connector = tokio_rustls::TlsConnector::from(b.secure().client_config(a.peer_id())?);
        let t0 = Instant::now();
        let s = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(a.peer_id().to_string())?;
        let mut c = connector.connect(name, s).await?;
        raw_tls.push(t0.elapsed().as_secs_f64() * 1e3);
        c.shutdown().await.ok();
    }
    // Kizuna TCP: TCP connect + TLS + hello exchange.
    let ka = Arc::new(TcpTransport::new(node(3)?));
    let kb = Arc::new(TcpTransport::new(node(4)?));
    let mut l = ka.listen(&TransportAddr::Tcp("127.0.0.1:0".parse()?)).await?;
    let laddr = l.local_addr();
    tokio::spawn(async move { while l.accept().await.is_some() {} });
    let target = ka.node().peer_id();
    let mut kiz_tcp = vec![];
    for _ in 0..N {
        let t0 = Instant::now();
        let c = kb.connect(&laddr, target).await?;
        kiz_tcp.push(t0.elapsed().as_secs_f64() * 1e3);
        c.close(kizuna::wire::CloseCode::Normal, "bench").await;
    }
    report(opts, "handshake: TCP+TLS (+hello)", "ms", median(kiz_tcp), median(raw_tls), false);

    // Raw quinn 1-RTT: a fresh client endpoint (no session ticket) each time.
    let (se, _ce, _s, _c) = raw_quinn_pair().await?;
    let qaddr = se.local_addr()?;
    tokio::spawn(async move {
        while let Some(inc) = se.accept().await {
            tokio::spawn(async move {
                if let Ok(c) = inc.await {
                    let _ = c.closed().await;
                }
            });
        }
    });
    let server_id = Keypair::from_seed([1; 32]).peer_id();
    let mut raw_q = vec![];
    for _ in 0..N {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        ep.set_default_client_config(node(2)?.secure().quic_client_config(server_id)?);
        let t0 = Instant::now();
        let c = ep.connect(qaddr, &server_id.to_string())?.await?;
        raw_q.push(t0.elapsed().as_secs_f64() * 1e3);
        c.close(0u32.into(), b"");
        ep.wait_idle().await;
    }
    // Kizuna QUIC full handshake: a fresh dialing node each time (no ticket).
    let qa = Arc::new(QuicTransport::new(node(5)?));
    let mut ql = qa.listen(&TransportAddr::Quic("127.0.0.1:0".parse()?)).await?;
    let qladdr = ql.local_addr();
    let Some(qsock) = qladdr.socket_addr() else { return Err("no quic addr".into()) };
    // Keep accepted connections: dropping the last handle closes a connection, which would
    // cut a 0-RTT dial short while its handshake is still completing.
    tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Some(c) = ql.accept().await {
            keep.push(c);
        }
    });
    let qtarget = Keypair::from_seed([5; 32]).peer_id();
    let mut kiz_q = vec![];
    for i in 0..N {
        let qb = QuicTransport::new(node(100 + i as u8)?);
        let t0 = Instant::now();
        let (c, _) = qb.connect_with_info(qsock, qtarget).await?;
        kiz_q.push(t0.elapsed().as_secs_f64() * 1e3);
        c.close(kizuna::wire::CloseCode::Normal, "bench").await;
    }
    report(opts, "handshake: QUIC 1-RTT (+hello)", "ms", median(kiz_q.clone()), median(raw_q), false);
    // Kizuna QUIC 0-RTT: the same dialing node again (session ticket cached).
    let qb = QuicTransport::new(node(99)?);
    let (c, _) = qb.connect_with_info(qsock, qtarget).await?;
    tokio::time::sleep(Duration::from_millis(50)).await; // let the ticket arrive
    c.close(kizuna::wire::CloseCode::Normal, "bench").await;
    let mut zero = vec![];
    let mut accepted = 0;
    for _ in 0..N {
        let t0 = Instant::now();
        let (c, info) = qb.connect_with_info(qsock, qtarget).await?;
        zero.push(t0.elapsed().as_secs_f64() * 1e3);
        accepted += info.zero_rtt_accepted as usize;
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.close(kizuna::wire::CloseCode::Normal, "bench").await;
    }
    report(opts, "handshake: QUIC 0-RTT vs 1-RTT (Kizuna)", "ms", median(zero), median(kiz_q), false);
    crate::util::figure(opts, "QUIC 0-RTT accepted", "of 30", accepted as f64);
    Ok(())
}

pub(crate) async fn run(opts: &Opts) -> Result<(), BoxError> {
    let mb = opts.bytes;
    const TCP: &str = "throughput: TCP stream vs raw tokio-rustls";
    if opts.wants(TCP) {
        let (mut k, mut r) = (vec![], vec![]);
        for _ in 0..opts.runs {
            r.push(gbps(mb, raw_tls_throughput(mb).await?));
            k.push(gbps(mb, kizuna_stream_throughput(true, mb).await?));
        }
        report(opts, TCP, "Gbit/s", median(k), median(r), true);
    }
    const QUIC: &str = "throughput: QUIC stream vs raw quinn";
    if opts.wants(QUIC) {
        let (mut k, mut r) = (vec![], vec![]);
        for _ in 0..opts.runs {
            r.push(gbps(mb, raw_quinn_throughput(mb).await?));
            k.push(gbps(mb, kizuna_stream_throughput(false, mb).await?));
        }
        report(opts, QUIC, "Gbit/s", median(k), median(r), true);
    }
    if opts.wants("handshake") {
        handshakes(opts).await?;
    }
    Ok(())
}
