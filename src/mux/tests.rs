//! Driver tests over in-memory `tokio::io::duplex` pairs.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::{
    error::{TransportError, WireError},
    transport::{ConnStats, ConnectionBackend},
    wire::{
        encode_header, read_frame, write_frame, CloseCode, Control, Frame, FrameDecoder, FrameType,
        MAX_FRAME_LEN,
    },
};

fn config() -> MuxConfig {
    MuxConfig {
        stream_window: 1024 * 1024,
        max_streams: DEFAULT_MAX_STREAMS,
        accept_backlog: DEFAULT_ACCEPT_BACKLOG,
        message_queue: 256,
        keep_alive_interval: Duration::from_secs(15),
        idle_timeout: Duration::from_secs(45),
        close_timeout: Duration::from_secs(2),
    }
}

fn mux(io: DuplexStream, dialer: bool, cfg: MuxConfig) -> Mux {
    Mux::new(
        io,
        dialer,
        cfg,
        if dialer { "listener" } else { "dialer" },
        None,
        Arc::new(ConnStats::default()),
    )
}

fn pair_with(a: MuxConfig, b: MuxConfig) -> (Mux, Mux) {
    let (x, y) = tokio::io::duplex(256 * 1024);
    (mux(x, true, a), mux(y, false, b))
}

fn pair() -> (Mux, Mux) {
    pair_with(config(), config())
}

/// A mux (listener side) and the raw other end of its byte stream.
fn raw(cfg: MuxConfig) -> (Mux, DuplexStream) {
    let (x, y) = tokio::io::duplex(256 * 1024);
    (mux(y, false, cfg), x)
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f).await.expect("test step timed out")
}

fn violation_of(r: crate::error::Result<Option<Bytes>>) -> WireError {
    match r {
        Err(TransportError::ProtocolViolation { source, .. }) => source,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[tokio::test]
async fn messages_both_ways() {
    let (a, b) = pair();
    for i in 0..1000u32 {
        a.send_message(Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
        b.send_message(Bytes::from(format!("m{i}"))).await.unwrap();
    }
    for i in 0..1000u32 {
        assert_eq!(within(b.recv_message()).await.unwrap().unwrap(), Bytes::from(i.to_be_bytes().to_vec()));
        assert_eq!(within(a.recv_message()).await.unwrap().unwrap(), Bytes::from(format!("m{i}")));
    }
    // The largest message goes through too.
    let big = Bytes::from(vec![9u8; crate::wire::MAX_MESSAGE_LEN]);
    a.send_message(big.clone()).await.unwrap();
    assert_eq!(within(b.recv_message()).await.unwrap().unwrap(), big);
    assert!(matches!(
        a.send_message(Bytes::from(vec![0u8; crate::wire::MAX_MESSAGE_LEN + 1])).await,
        Err(TransportError::LimitExceeded { .. })
    ));
    assert_eq!(
        a.stats().bytes_sent.load(Ordering::Relaxed),
        b.stats().bytes_received.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn batches_parts_and_queued_tries_arrive_as_single_messages_in_order() {
    let (a, b) = pair();
    let recv = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while got.len() < 5000 {
            let n = within(b.recv_messages(&mut buf, 64)).await.unwrap();
            assert!((1..=64).contains(&n) && buf.len() == n, "{n} taken, {} in the buffer", buf.len());
            got.append(&mut buf);
        }
        (b, got)
    });
    // 4000 in batches larger than the queue (1024 frames), then parts (small and large
    // bodies), then tries.
    let msg = |i: u32| Bytes::from(i.to_be_bytes().to_vec());
    for chunk in 0..2 {
        a.send_messages((chunk * 2000..chunk * 2000 + 2000).map(msg).collect()).await.unwrap();
    }
    for i in 4000..4500u32 {
        let body = if i % 2 == 0 { Bytes::from(vec![7u8; 20_000]) } else { Bytes::from_static(b"xy") };
        a.send_message_parts(msg(i), body, i % 3 == 0).await.unwrap();
    }
    let mut i = 4500;
    while i < 5000u32 {
        match a.try_send_message_parts(&msg(i), &Bytes::new()) {
            Some(r) => {
                r.unwrap();
                i += 1;
            }
            // Full: nothing was taken, so the same message is offered again.
            None => tokio::task::yield_now().await,
        }
    }
    let (b, got) = recv.await.unwrap();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(&m[..4], &(i as u32).to_be_bytes(), "message {i}");
        let len = match i {
            4000..4500 if i % 2 == 0 => 20_004,
            4000..4500 => 6,
            _ => 4,
        };
        assert_eq!(m.len(), len, "message {i}");
    }
    // A message over the limit, in parts or in a batch, is refused whole.
    let half = Bytes::from(vec![0u8; crate::wire::MAX_MESSAGE_LEN / 2 + 1]);
    assert!(matches!(
        a.send_message_parts(half.clone(), half.clone(), true).await,
        Err(TransportError::LimitExceeded { .. })
    ));
    let over = Bytes::from(vec![0u8; crate::wire::MAX_MESSAGE_LEN + 1]);
    assert!(matches!(a.send_messages(vec![msg(1), over]).await, Err(TransportError::LimitExceeded { .. })));
    a.send_message(msg(9)).await.unwrap();
    assert_eq!(within(b.recv_message()).await.unwrap().unwrap(), msg(9), "nothing of the refused batch went");
    // Once closed, a try reports the close rather than "full".
    a.close(CloseCode::Normal, "done").await;
    assert!(matches!(a.try_send_message_parts(&msg(1), &msg(2)), Some(Err(_))));
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_keep_their_bytes() {
    let (a, b) = pair();
    // The acceptor echoes every stream back.
    let echo = tokio::spawn(async move {
        let mut tasks = Vec::new();
        while let Ok(Some(mut s)) = b.accept_stream().await {
            tasks.push(tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.shutdown().await.unwrap();
                // Keep the handle until the peer finished, so the close is clean.
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            }));
            if tasks.len() == 100 {
                break;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        b
    });
    let mut tasks = Vec::new();
    for i in 0..100usize {
        let mut s = a.open_stream().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i, 10_000 + i * 3_000);
            let (mut r, mut w) = tokio::io::split(&mut s);
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let recv = r.read_to_end(&mut back);
            let (_, n) = tokio::join!(send, recv);
            n.unwrap();
            assert_eq!(back, data, "stream {i} corrupted");
        }));
    }
    for t in tasks {
        within(t).await.unwrap();
    }
    let b = within(echo).await.unwrap();
    assert!(a.is_connected() && b.is_connected());
}

/// Large stream writes and messages are written by the application's task when the
/// writer is idle; through a pipe far smaller than one write they are cut short and
/// handed over to the writer task. Everything must still arrive intact and in order,
/// interleaved with small messages and stream writes queued meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_through_a_tiny_pipe_keep_order() {
    let (x, y) = tokio::io::duplex(3000);
    let (a, b) = (mux(x, true, config()), mux(y, false, config()));
    let a = Arc::new(a);
    let streams = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..4 {
            let mut s = b.accept_stream().await.unwrap().unwrap();
            got.push(tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                buf
            }));
        }
        let mut msgs = Vec::new();
        for _ in 0..200 {
            msgs.push(b.recv_message().await.unwrap().unwrap());
        }
        let mut bufs = Vec::new();
        for g in got {
            bufs.push(g.await.unwrap());
        }
        (bufs, msgs, b)
    });
    let mut writers = Vec::new();
    for i in 0..4usize {
        let mut s = a.open_stream().await.unwrap();
        writers.push(tokio::spawn(async move {
            // Mixed sizes: below and above the direct-write threshold and the chunk size.
            let data = pattern(i, 700_000);
            let mut off = 0;
            for (k, len) in [100usize, 20_000, 70_000, 16_384, 5, 200_000].iter().cycle().enumerate() {
                if off == data.len() {
                    break;
                }
                let end = (off + len + k % 3).min(data.len());
                s.write_all(&data[off..end]).await.unwrap();
                off = end;
            }
            s.shutdown().await.unwrap();
            s
        }));
    }
    let sender = a.clone();
    let messages = tokio::spawn(async move {
        for m in 0..200usize {
            let len = if m % 2 == 0 { 40_000 + m } else { 10 + m };
            sender.send_message(Bytes::from(pattern(100 + m, len))).await.unwrap();
        }
    });
    within(messages).await.unwrap();
    let mut keep = Vec::new();
    for w in writers {
        keep.push(within(w).await.unwrap());
    }
    let (bufs, msgs, _b) = within(streams).await.unwrap();
    let mut bufs = bufs;
    bufs.sort_by_key(|b| b.first().copied());
    let mut want: Vec<Vec<u8>> = (0..4).map(|i| pattern(i, 700_000)).collect();
    want.sort_by_key(|b| b.first().copied());
    assert!(bufs == want, "stream bytes corrupted or reordered");
    for (m, got) in msgs.iter().enumerate() {
        let len = if m % 2 == 0 { 40_000 + m } else { 10 + m };
        assert!(got[..] == pattern(100 + m, len)[..], "message {m} corrupted or reordered");
    }
    assert!(a.is_connected());
}

#[tokio::test]
async fn a_reader_that_does_not_read_bounds_the_writer() {
    let (a, b) = pair();
    let window = config().stream_window as usize;
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut s = a.open_stream().await.unwrap();
    let count = accepted.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 16 * 1024];
        loop {
            match s.write(&chunk).await {
                Ok(n) => count.fetch_add(n, Ordering::SeqCst),
                Err(_) => return,
            };
        }
    });
    let mut peer = within(b.accept_stream()).await.unwrap().unwrap();
    // Give the writer ample time to push everything it can.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), window, "writer must stall after exactly one window");
    // Reading half a window lets exactly that much more through.
    let mut buf = vec![0u8; window / 2];
    peer.read_exact(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), window + window / 2);
    writer.abort();
}

#[tokio::test]
async fn a_slow_consumer_of_large_messages_stops_the_sender() {
    // Large messages take the direct-write path; a socket that stops draining must still
    // stop the sender (a partial direct write must not let later ones bypass the queue).
    let small = MuxConfig { message_queue: 4, ..config() };
    let (a, b) = pair_with(config(), small);
    let sent = Arc::new(AtomicUsize::new(0));
    let count = sent.clone();
    let sender = tokio::spawn(async move {
        let msg = Bytes::from(vec![0u8; 64 * 1024]);
        loop {
            if a.send_message(msg.clone()).await.is_err() {
                return;
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = sent.load(Ordering::SeqCst);
    // Receive queue (4) + reader buffers (2 MiB) + duplex buffer (256 KiB) + outbound
    // queue (1 MiB) + one partial write: well under 100 messages of 64 KiB.
    assert!(stalled_at < 100, "sender not slowed: {stalled_at} x 64 KiB accepted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sent.load(Ordering::SeqCst), stalled_at, "sender kept going");
    for _ in 0..stalled_at {
        within(b.recv_message()).await.unwrap().unwrap();
    }
    sender.abort();
}

#[tokio::test]
async fn a_slow_message_consumer_stops_the_sender() {
    let small = MuxConfig { message_queue: 4, ..config() };
    let (a, b) = pair_with(config(), small);
    let sent = Arc::new(AtomicUsize::new(0));
    let count = sent.clone();
    let sender = tokio::spawn(async move {
        let msg = Bytes::from(vec![0u8; 1024]);
        loop {
            if a.send_message(msg.clone()).await.is_err() {
                return;
            }
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stalled_at = sent.load(Ordering::SeqCst);
    // Bounded by the receive queue (4), the reader's buffer (64 KiB), the duplex buffer
    // (256 KiB), the writer's buffer (64 KiB), the batch the writer is stuck writing and
    // the refilled outbound queue (1024 frames each): ~2.5 k messages of 1 KiB at most.
    assert!(stalled_at < 2 * 1024 + 500, "sender not slowed: {stalled_at}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sent.load(Ordering::SeqCst), stalled_at, "sender kept going");
    for _ in 0..stalled_at {
        within(b.recv_message()).await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sent.load(Ordering::SeqCst) > stalled_at, "reading must let the sender go on");
    sender.abort();
}

#[tokio::test]
async fn credit_overrun_closes_the_connection() {
    let (m, mut peer) = raw(config());
    write_frame(&mut peer, &Frame::StreamOpen { id: 1 }).await.unwrap();
    let too_much = Bytes::from(vec![0u8; config().stream_window as usize + 1]);
    write_frame(&mut peer, &Frame::StreamData { id: 1, data: too_much }).await.unwrap();
    peer.flush().await.unwrap();
    let e = violation_of(within(m.recv_message()).await);
    assert!(matches!(&e, WireError::Unexpected(s) if s.contains("credit")), "{e}");
    assert!(!m.is_connected());
    assert!(matches!(m.close_error(), Some(TransportError::ProtocolViolation { .. })));
    // The peer is told why, then sees the end of the stream.
    let decoder = FrameDecoder::default();
    let mut saw_close = false;
    while let Ok(Some(f)) = within(read_frame(&mut peer, &decoder)).await {
        if let Frame::Control(Control::Close { code, .. }) = f {
            assert_eq!(code, CloseCode::ProtocolError);
            saw_close = true;
        }
    }
    assert!(saw_close);
}

#[tokio::test]
async fn data_on_an_unknown_stream_closes_the_connection() {
    let (m, mut peer) = raw(config());
    write_frame(&mut peer, &Frame::StreamData { id: 5, data: Bytes::from_static(b"x") }).await.unwrap();
    let e = violation_of(within(m.recv_message()).await);
    assert!(matches!(&e, WireError::Unexpected(s) if s.contains("unknown stream 5")), "{e}");
}

#[tokio::test]
async fn a_duplicate_open_closes_the_connection() {
    let (m, mut peer) = raw(config());
    write_frame(&mut peer, &Frame::StreamOpen { id: 1 }).await.unwrap();
    write_frame(&mut peer, &Frame::StreamOpen { id: 1 }).await.unwrap();
    let e = violation_of(within(m.recv_message()).await);
    assert!(matches!(&e, WireError::Unexpected(s) if s.contains("reused id 1")), "{e}");
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection() {
    let (m, mut peer) = raw(config());
    let mut header = BytesMut::new();
    encode_header(FrameType::Message, MAX_FRAME_LEN + 1, &mut header);
    peer.write_all(&header).await.unwrap();
    let e = violation_of(within(m.recv_message()).await);
    assert!(
        matches!(e, WireError::FrameTooLarge { len, max } if len == MAX_FRAME_LEN + 1 && max <= MAX_FRAME_LEN),
        "{e}"
    );
}

#[tokio::test]
async fn a_truncated_frame_is_a_violation_but_a_clean_eof_is_not() {
    let (m, mut peer) = raw(config());
    peer.write_all(&[0, 0, 0, 10, FrameType::Message as u8, 1, 2]).await.unwrap();
    drop(peer);
    assert!(matches!(violation_of(within(m.recv_message()).await), WireError::Truncated));

    let (m, mut peer) = raw(config());
    write_frame(&mut peer, &Frame::Message(Bytes::from_static(b"last"))).await.unwrap();
    drop(peer);
    assert_eq!(within(m.recv_message()).await.unwrap().unwrap(), Bytes::from_static(b"last"));
    assert!(within(m.recv_message()).await.unwrap().is_none());
}

#[tokio::test]
async fn keep_alive_measures_rtt() {
    let fast = MuxConfig {
        keep_alive_interval: Duration::from_millis(30),
        idle_timeout: Duration::from_secs(5),
        ..config()
    };
    let (a, b) = pair_with(fast.clone(), fast);
    within(async {
        while a.stats().rtt().is_none() || b.stats().rtt().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(a.stats().rtt().unwrap() < Duration::from_secs(1));
    assert!(a.is_connected() && b.is_connected());
}

#[tokio::test]
async fn a_silent_peer_is_declared_dead() {
    let fast = MuxConfig {
        keep_alive_interval: Duration::from_millis(30),
        idle_timeout: Duration::from_millis(200),
        ..config()
    };
    let (m, mut peer) = raw(fast);
    // The peer reads (so our pings go out) but never answers.
    let sink = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while peer.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    let r = within(m.recv_message()).await;
    assert!(matches!(r, Err(TransportError::Timeout { .. })), "{r:?}");
    assert!(!m.is_connected());
    within(sink).await.unwrap();
}

#[tokio::test]
async fn close_is_graceful_and_idempotent() {
    let (a, b) = pair();
    for i in 0..100u32 {
        a.send_message(Bytes::from(i.to_string())).await.unwrap();
    }
    let mut s = a.open_stream().await.unwrap();
    s.write_all(b"stream bytes").await.unwrap();
    let closer = {
        let a = a.clone();
        tokio::spawn(async move { a.close(CloseCode::Normal, "done").await })
    };
    // Everything sent before the close arrives, then the end.
    for i in 0..100u32 {
        assert_eq!(within(b.recv_message()).await.unwrap().unwrap(), Bytes::from(i.to_string()));
    }
    assert!(within(b.recv_message()).await.unwrap().is_none());
    within(closer).await.unwrap();
    within(a.close(CloseCode::Normal, "again")).await;
    assert!(!a.is_connected() && !b.is_connected());
    assert!(a.close_error().is_none() && b.close_error().is_none());
    assert!(matches!(a.send_message(Bytes::new()).await, Err(TransportError::Closed(_))));
    assert!(matches!(b.open_stream().await, Err(TransportError::Closed(_))));
    assert!(within(b.accept_stream()).await.unwrap().is_some(), "the stream opened before close is accepted");
    assert!(within(b.accept_stream()).await.unwrap().is_none());
    assert!(s.write_all(b"more").await.is_err());
    assert!(matches!(a.send_datagram(Bytes::new()), Err(TransportError::UnsupportedProtocol(_))));
}

#[tokio::test]
async fn shutdown_is_eof_and_drop_is_reset() {
    let (a, b) = pair();
    let mut s1 = a.open_stream().await.unwrap();
    s1.write_all(b"hello").await.unwrap();
    s1.shutdown().await.unwrap();
    let mut p1 = within(b.accept_stream()).await.unwrap().unwrap();
    let mut got = Vec::new();
    within(p1.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"hello");
    // The other direction is still open.
    p1.write_all(b"reply").await.unwrap();
    p1.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(s1.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"reply");

    let mut s2 = a.open_stream().await.unwrap();
    s2.write_all(b"partial").await.unwrap();
    let mut p2 = within(b.accept_stream()).await.unwrap().unwrap();
    drop(s2);
    let mut all = Vec::new();
    let e = within(p2.read_to_end(&mut all)).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(p2.write_all(b"x").await.is_err());
    assert!(a.is_connected() && b.is_connected());
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let (a, b) = pair();
    drop(a);
    assert!(within(b.recv_message()).await.unwrap().is_none());
    assert!(!b.is_connected());
}

/// A frame a hostile or buggy peer might send.
fn arb_frame() -> impl Strategy<Value = Frame> {
    let id = 0u32..12;
    prop_oneof![
        any::<Vec<u8>>().prop_map(|v| Frame::Message(Bytes::from(v))),
        id.clone().prop_map(|id| Frame::StreamOpen { id }),
        (id.clone(), prop::collection::vec(any::<u8>(), 0..70_000))
            .prop_map(|(id, v)| Frame::StreamData { id, data: Bytes::from(v) }),
        (id.clone(), any::<u32>()).prop_map(|(id, credit)| Frame::StreamWindow { id, credit }),
        id.clone().prop_map(|id| Frame::StreamFin { id }),
        (id, 0u32..3).prop_map(|(id, code)| Frame::StreamReset { id, code }),
        any::<u64>().prop_map(|nonce| Frame::Control(Control::Ping { nonce })),
        any::<u64>().prop_map(|nonce| Frame::Control(Control::Pong { nonce })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sequence of frames (and trailing garbage) from the peer ends in an orderly
    /// state: never a panic, and the connection is either open or closed with a reason.
    #[test]
    fn random_peer_frames_never_panic(
        frames in prop::collection::vec(arb_frame(), 0..40),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (m, peer) = raw(MuxConfig { max_streams: 4, accept_backlog: 2, ..config() });
            let acceptor = {
                let m = m.clone();
                tokio::spawn(async move {
                    while let Ok(Some(mut s)) = m.accept_stream().await {
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 1024];
                            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                        });
                    }
                })
            };
            let drain = tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(peer);
                let reader = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while r.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                });
                for f in &frames {
                    if write_frame(&mut w, f).await.is_err() {
                        break;
                    }
                }
                let _ = w.write_all(&garbage).await;
                let _ = w.shutdown().await;
                let _ = reader.await;
            });
            loop {
                match tokio::time::timeout(Duration::from_secs(5), m.recv_message()).await {
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                    Err(_) => panic!("connection neither open-and-reading nor closed"),
                }
            }
            drop(m);
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
            acceptor.abort();
        });
    }
}
