//! WebRTC benchmarks: Kizuna's WebRTC transport vs raw webrtc-rs 0.21 data channels, in
//! the same run, on loopback: throughput (raw with 4 MiB socket buffers, like Kizuna),
//! message round trips, and the time from creating the offer to an open channel (raw
//! out of the box vs Kizuna's tuned set-up).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use kizuna::{
    transport::{
        webrtc::{BufferedRuntime, Signaler, WebRtcConfig, WebRtcTransport},
        BoxFuture,
    },
    Connection, Incoming, PeerId, Transport, TransportAddr,
};
use tokio::sync::mpsc;
use webrtc::{
    data_channel::{DataChannel, DataChannelEvent},
    peer_connection::{
        PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit,
        RTCPeerConnectionIceEvent, RTCSessionDescription,
    },
};

use crate::{
    core_bench::{drain, node, pump},
    util::{gbps, median, report, Opts},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Message size of the raw data channel throughput run: Kizuna streams write 64 KiB
/// messages too.
const RAW_MSG: usize = 64 * 1024;
/// Send buffer limit of the raw run (the same bound Kizuna uses per channel).
const SEND_LIMIT: usize = 4 << 20;
/// Round trips per RTT sample.
const PINGS: usize = 200;

// ---- raw webrtc-rs ----

struct RawHandler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for RawHandler {
    async fn on_ice_candidate(&self, e: RTCPeerConnectionIceEvent) {
        if let Ok(c) = e.candidate.to_json() {
            let _ = self.candidates.send(c);
        }
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.channels.send(dc);
    }
}

struct RawPeer {
    pc: Arc<dyn PeerConnection>,
    candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    channels: mpsc::UnboundedReceiver<Arc<dyn DataChannel>>,
}

/// A raw peer connection on loopback; `buffers`: 4 MiB socket buffers (else kernel
/// defaults, webrtc-rs out of the box).
async fn raw_peer(buffers: bool) -> Result<RawPeer, BoxError> {
    let (ctx, candidates) = mpsc::unbounded_channel();
    let (chtx, channels) = mpsc::unbounded_channel();
    let mut b = PeerConnectionBuilder::new()
        .with_handler(Arc::new(RawHandler { candidates: ctx, channels: chtx }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .with_setting_engine(
            webrtc::peer_connection::SettingEngineBuilder::new()
                .with_include_loopback_candidate(true)
                .build(),
        )
        .with_data_channel_send_buffer_limit(SEND_LIMIT);
    if buffers {
        b = b.with_runtime(BufferedRuntime::new(4 << 20));
    }
    let pc = b.build().await?;
    Ok(RawPeer { pc: Arc::new(pc), candidates, channels })
}

/// Connects two raw peers (offer/answer and trickled candidates in process); returns the
/// offerer's channel and the answerer's, once open, and the time from `create_offer` to
/// the offerer's channel opening.
async fn raw_pair(buffers: bool) -> Result<(Arc<dyn DataChannel>, Arc<dyn DataChannel>, Duration), BoxError> {
    let mut a = raw_peer(buffers).await?;
    let mut b = raw_peer(buffers).await?;
    let dc = a.pc.create_data_channel("bench", None).await?;
    let t0 = Instant::now();
    let offer = a.pc.create_offer(None).await?;
    a.pc.set_local_description(offer).await?;
    let sdp = a.pc.local_description().await.ok_or("no offer")?.sdp;
    b.pc.set_remote_description(RTCSessionDescription::offer(sdp)?).await?;
    let answer = b.pc.create_answer(None).await?;
    b.pc.set_local_description(answer).await?;
    let sdp = b.pc.local_description().await.ok_or("no answer")?.sdp;
    a.pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await?;
    // Trickle both ways until the channel opens.
    let (apc, bpc) = (a.pc.clone(), b.pc.clone());
    let mut ac = std::mem::replace(&mut a.candidates, mpsc::unbounded_channel().1);
    let mut bc = std::mem::replace(&mut b.candidates, mpsc::unbounded_channel().1);
    let trickle = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(c) = ac.recv() => { let _ = bpc.add_ice_candidate(c).await; }
                Some(c) = bc.recv() => { let _ = apc.add_ice_candidate(c).await; }
                else => return,
            }
        }
    });
    loop {
        match dc.poll().await {
            Some(DataChannelEvent::OnOpen) => break,
            Some(_) => {}
            None => return Err("raw channel closed".into()),
        }
    }
    let open = t0.elapsed();
    let remote = b.channels.recv().await.ok_or("no remote channel")?;
    trickle.abort();
    // Keep the peer connections alive for the channels' lifetime (bench process).
    std::mem::forget(a);
    std::mem::forget(b);
    Ok((dc, remote, open))
}

async fn raw_throughput(bytes: u64) -> Result<Duration, BoxError> {
    let (tx, rx, _) = raw_pair(true).await?;
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        while got < bytes {
            match rx.poll().await {
                Some(DataChannelEvent::OnMessage(m)) => got += m.data.len() as u64,
                Some(_) => {}
                None => return Err::<Instant, BoxError>("raw receiver closed".into()),
            }
        }
        Ok(Instant::now())
    });
    let msg = vec![0x5au8; RAW_MSG];
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(RAW_MSG as u64) as usize;
        tx.send(BytesMut::from(&msg[..n])).await?;
        left -= n as u64;
    }
    let end = reader.await??;
    Ok(end - t0)
}

async fn raw_rtt() -> Result<Duration, BoxError> {
    let (a, b, _) = raw_pair(true).await?;
    let echo = tokio::spawn(async move {
        while let Some(ev) = b.poll().await {
            if let DataChannelEvent::OnMessage(m) = ev {
                if b.send(m.data).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut samples = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        a.send(BytesMut::from(&b"ping"[..])).await?;
        loop {
            match a.poll().await {
                Some(DataChannelEvent::OnMessage(_)) => break,
                Some(_) => {}
                None => return Err("raw echo closed".into()),
            }
        }
        samples.push(t.elapsed().as_secs_f64());
    }
    echo.abort();
    Ok(Duration::from_secs_f64(median(samples)))
}

// ---- Kizuna ----

/// Delivers signals between the two bench transports in process.
#[derive(Default)]
struct Board(Mutex<HashMap<PeerId, WebRtcTransport>>);

struct Port(Arc<Board>, PeerId);

impl Signaler for Port {
    fn signal(&self, to: PeerId, payload: Vec<u8>) -> BoxFuture<'_, kizuna::error::Result<()>> {
        Box::pin(async move {
            let t = self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).get(&to).cloned();
            if let Some(t) = t {
                if let Err(e) = t.handle_signal(self.1, &payload) {
                    eprintln!("bench signal refused: {e}");
                }
            }
            Ok(())
        })
    }
}

/// Two Kizuna WebRTC connections (dialer side, listener side) and the connect time.
async fn kizuna_pair() -> Result<(Connection, Connection, Duration), BoxError> {
    let board = Arc::new(Board::default());
    let make = |seed: u8| -> Result<(WebRtcTransport, PeerId), BoxError> {
        let n = node(seed)?;
        let id = n.peer_id();
        let t = WebRtcTransport::new(n, WebRtcConfig::loopback())?;
        t.set_signaler(Arc::new(Port(board.clone(), id)));
        board.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id, t.clone());
        Ok((t, id))
    };
    let (server, server_id) = make(1)?;
    let (client, _) = make(2)?;
    let mut l = server.listen(&TransportAddr::WebRtc).await?;
    let t0 = Instant::now();
    let (c, s) = tokio::join!(client.connect(&TransportAddr::WebRtc, server_id), l.accept());
    let open = t0.elapsed();
    let s = match s {
        Some(Incoming::Connection(s)) => s,
        other => return Err(format!("accept failed: {other:?}").into()),
    };
    std::mem::forget(l);
    Ok((c?, s, open))
}

async fn kizuna_throughput(bytes: u64) -> Result<Duration, BoxError> {
    let (c, s, _) = kizuna_pair().await?;
    let reader = tokio::spawn(async move {
        let mut st = s.accept_stream().await?.ok_or("no stream")?;
        let n = drain(&mut st).await?;
        Ok::<_, BoxError>((n, Instant::now()))
    });
    let mut st = c.open_stream().await?;
    let t0 = Instant::now();
    pump(&mut st, bytes).await?;
    tokio::io::AsyncWriteExt::shutdown(&mut st).await?;
    let (n, end) = reader.await??;
    if n != bytes {
        return Err(format!("received {n} of {bytes} bytes").into());
    }
    Ok(end - t0)
}

async fn kizuna_rtt() -> Result<Duration, BoxError> {
    let (c, s, _) = kizuna_pair().await?;
    let echo = tokio::spawn(async move {
        while let Ok(Some(m)) = s.recv().await {
            if s.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        c.send(Bytes::from_static(b"ping")).await?;
        c.recv().await?.ok_or("echo closed")?;
        samples.push(t.elapsed().as_secs_f64());
    }
    echo.abort();
    Ok(Duration::from_secs_f64(median(samples)))
}

pub(crate) async fn run(opts: &Opts) -> Result<(), BoxError> {
    let mb = opts.bytes;
    const TPUT: &str = "webrtc: throughput, stream vs raw data channel";
    if opts.wants(TPUT) {
        let (mut k, mut r) = (vec![], vec![]);
        for _ in 0..opts.runs {
            r.push(gbps(mb, raw_throughput(mb).await?));
            k.push(gbps(mb, kizuna_throughput(mb).await?));
        }
        report(opts, TPUT, "Gbit/s", median(k), median(r), true);
    }
    const RTT: &str = "webrtc: message round trip vs raw";
    if opts.wants(RTT) {
        let (mut k, mut r) = (vec![], vec![]);
        for _ in 0..opts.runs {
            r.push(raw_rtt().await?.as_secs_f64() * 1e3);
            k.push(kizuna_rtt().await?.as_secs_f64() * 1e3);
        }
        report(opts, RTT, "ms", median(k), median(r), false);
    }
    const OPEN: &str = "webrtc: offer -> open channel vs raw defaults";
    if opts.wants(OPEN) {
        let (mut k, mut r) = (vec![], vec![]);
        for _ in 0..opts.runs.max(5) {
            r.push(raw_pair(false).await?.2.as_secs_f64() * 1e3);
            k.push(kizuna_pair().await?.2.as_secs_f64() * 1e3);
        }
        report(opts, OPEN, "ms", median(k), median(r), false);
    }
    Ok(())
}
