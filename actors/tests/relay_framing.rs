//! WebSocket framing attacks against a running relay, written by hand on a raw TCP socket
//! after a correct upgrade (`Sec-WebSocket-Protocol: kizuna`), before the relay handshake
//! (in place of `auth`) and after it (on a control connection holding a reservation):
//!
//! * a frame header announcing 2 GiB (and more) with the 64-bit extended length;
//! * fragmented messages: never finished (trickled in 1-byte continuation frames),
//!   interrupted by a new data frame, a continuation with nothing to continue, and endless
//!   continuation frames past the message limit;
//! * a text frame, RSV1/RSV2/RSV3 set, an unmasked client frame, reserved opcodes;
//! * control frames over 125 bytes or fragmented, and a flood of 10 000 pings;
//! * relay messages out of order (a second `auth`, the relay's own `challenge`, a second
//!   purpose) and unknown messages used to stretch the handshake.
//!
//! Each attack must end the attacker's connection promptly (an `error` and a close with a
//! protocol-error status, or the socket's end — never a hang), be counted as a violation
//! where the relay can tell, cost bounded memory (the relay runs in this process, one per
//! test under nextest, so its `/proc/self/status` is ours), and leave the relay serving a
//! legitimate reservation and a circuit with data both ways: that the relay still serves
//! is also the observable form of "nothing panicked".
//!
//! Garbage relay messages, `reserve` before `auth`, a wrong message on a control
//! connection, and text and an oversized message after the handshake are covered by
//! `relay_server.rs`'s `hostile_messages_cost_only_their_sender`; not repeated here.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod relay_client;

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use futures_util::SinkExt;
use kizuna::{
    relay::{
        auth::{client_handshake, Admission, HANDSHAKE_TIMEOUT},
        ErrorCode, Purpose, RelayMessage,
    },
    transport::ws::WsConfig,
    Keypair,
};
use kizuna_actors::relay::{GetRelayMetrics, RelayHandle};
use relay_client::*;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

/// Bound on the relay noticing an attack it can see in the bytes it has: far above the
/// time it takes (milliseconds), far below a hang.
const PROMPT: Duration = Duration::from_secs(5);

// First header byte: FIN, the reserved bits, opcodes (RFC 6455 §5.2).
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BIN: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A key no other client of this process uses (seeds counted from 1 << 24, clear of the
/// small seeds of `relay_client::key`).
fn fresh_key() -> Keypair {
    static NEXT: AtomicU32 = AtomicU32::new(1 << 24);
    let mut seed = [0x6b; 32];
    seed[..4].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    Keypair::from_seed(seed)
}

/// The masking key of every client frame here.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: `first` is the first header byte (FIN, RSV1-3, opcode); masked unless
/// `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xffff => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked binary frame carrying one relay message.
fn msg_frame(msg: &RelayMessage) -> Vec<u8> {
    frame(FIN | BIN, &msg.encode().unwrap(), true)
}

/// A masked binary frame header announcing `len` payload bytes in the 64-bit extended
/// length, without any payload.
fn huge_header(len: u64) -> Vec<u8> {
    let mut out = vec![FIN | BIN, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&MASK);
    out
}

/// One frame from the relay, `(first header byte, payload)`; `None` at the end of the
/// stream or on a reset.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.ok()?;
    assert_eq!(h[1] & 0x80, 0, "the relay sent a masked frame");
    let len = match h[1] & 0x7f {
        126 => u64::from(r.read_u16().await.ok()?),
        127 => r.read_u64().await.ok()?,
        n => u64::from(n),
    };
    assert!(len <= 1 << 20, "the relay announced a frame of {len} bytes");
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.ok()?;
    Some((h[0], payload))
}

/// A WebSocket to the relay on a raw TCP socket: frames are written and read by hand.
struct RawWs {
    tcp: TcpStream,
}

impl RawWs {
    /// TCP, then the upgrade written by hand, offering `kizuna`; reads the `challenge`.
    async fn open(relay: &RelayHandle) -> (Self, RelayMessage) {
        let mut tcp = TcpStream::connect(relay.local_addr).await.unwrap();
        // RFC 6455 §1.3's example key, so the expected accept value is the RFC's too.
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: kizuna\r\n\r\n",
            relay.local_addr
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        // Byte by byte, so that nothing after the response head (the challenge) is lost.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < 8192, "endless upgrade response");
            head.push(tokio::time::timeout(T, tcp.read_u8()).await.unwrap().unwrap());
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("sec-websocket-protocol: kizuna\r\n"), "{head}");
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"), "{head}");
        let mut ws = Self { tcp };
        let challenge = ws.next_msg().await;
        assert!(matches!(challenge, RelayMessage::Challenge { .. }), "{challenge:?}");
        (ws, challenge)
    }

    /// [`open`](Self::open), the relay handshake as `key` for a control connection, and
    /// a reservation: what follows is read by the relay's session, not its handshake.
    async fn login(relay: &RelayHandle, key: &Keypair) -> Self {
        let (mut ws, challenge) = Self::open(relay).await;
        for m in client_handshake(key, &challenge, &relay.url, None, Purpose::Control).unwrap() {
            ws.send(&msg_frame(&m)).await;
        }
        ws.send(&msg_frame(&RelayMessage::Reserve { ttl_secs: 600 })).await;
        let reserved = ws.next_msg().await;
        assert!(matches!(reserved, RelayMessage::Reserved { .. }), "{reserved:?}");
        ws
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// The next relay message (pings and pongs skipped), within [`T`].
    async fn next_msg(&mut self) -> RelayMessage {
        loop {
            let f = tokio::time::timeout(T, read_frame(&mut self.tcp)).await.expect("the relay answered");
            match f {
                Some((h, p)) if h == FIN | BIN => return RelayMessage::decode(&p).unwrap(),
                Some((h, _)) if h == FIN | PING || h == FIN | PONG => {}
                other => panic!("expected a relay message, got {other:?}"),
            }
        }
    }
}

/// How the relay ended an attacker's connection.
#[derive(Debug, Default)]
struct Dropped {
    /// The code of the relay's `error` message, if it sent one.
    error: Option<ErrorCode>,
    /// The relay's close frame and its status, if it sent one.
    close: Option<Option<u16>>,
}

/// Reads until the relay ends the connection (end of stream or reset), failing if that
/// takes more than `bound`. Any relay message other than `error` means the attack was
/// served: a failure.
async fn dropped_within(r: &mut (impl AsyncRead + Unpin), bound: Duration) -> Dropped {
    let mut d = Dropped::default();
    let read = async {
        loop {
            match read_frame(r).await {
                None => return,
                Some((h, p)) if h == FIN | CLOSE => {
                    assert!(d.close.is_none(), "two close frames: {d:?}");
                    d.close = Some((p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])));
                }
                Some((h, _)) if h == FIN | PING || h == FIN | PONG => {}
                Some((h, p)) if h == FIN | BIN && d.close.is_none() => match RelayMessage::decode(&p) {
                    Ok(RelayMessage::Error { code, .. }) => d.error = Some(code),
                    other => panic!("the relay answered an attack with {other:?}"),
                },
                Some((h, p)) => panic!("unexpected frame {h:#04x} of {} bytes after {d:?}", p.len()),
            }
        }
    };
    if tokio::time::timeout(bound, read).await.is_err() {
        panic!("the relay kept the attacker's connection open for {bound:?}");
    }
    d
}

/// The relay refused a frame or message as a protocol violation: an `error` with code
/// `protocol_violation` and the close code that goes with it (4012), a WebSocket
/// protocol-error status (1002; 1003 for text; 1009 for size), or no close frame at all
/// before the socket's end.
fn assert_violation(d: &Dropped) {
    let relay_code = ErrorCode::ProtocolViolation.ws_close_code();
    assert!(matches!(d.error, None | Some(ErrorCode::ProtocolViolation)), "{d:?}");
    match d.close {
        None => {}
        Some(Some(c)) if [1002, 1003, 1009, relay_code].contains(&c) => {}
        _ => panic!("not closed as a protocol violation: {d:?}"),
    }
}

/// Where an attack is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// In place of `auth`, right after the challenge: the relay's handshake reads it.
    BeforeAuth,
    /// On a control connection holding a reservation: the relay's session reads it.
    AfterAuth,
}

const BOTH: [At; 2] = [At::BeforeAuth, At::AfterAuth];

impl At {
    /// A connection at this point, and a message the relay would accept there (a valid
    /// `auth` for this very challenge, or a `reserve`), for the attacks to carry.
    async fn connect(self, relay: &RelayHandle) -> (RawWs, Vec<u8>) {
        match self {
            At::BeforeAuth => {
                let (ws, challenge) = RawWs::open(relay).await;
                let [auth, _] =
                    client_handshake(&fresh_key(), &challenge, &relay.url, None, Purpose::Control).unwrap();
                (ws, auth.encode().unwrap())
            }
            At::AfterAuth => {
                let ws = RawWs::login(relay, &fresh_key()).await;
                (ws, RelayMessage::Reserve { ttl_secs: 600 }.encode().unwrap())
            }
        }
    }

    /// The relay's count of violations at this point.
    async fn violations(self, relay: &RelayHandle) -> u64 {
        let m = relay.addr.send(GetRelayMetrics).await.unwrap();
        match self {
            At::BeforeAuth => m.handshakes.violations,
            At::AfterAuth => m.totals.protocol_violations,
        }
    }
}

/// Sends `attack(message the relay would accept)` at `at`: the relay must end the
/// connection at once as a protocol violation, count it, and go on serving.
async fn refused(relay: &RelayHandle, at: At, attack: impl FnOnce(&[u8]) -> Vec<u8>) {
    let before = at.violations(relay).await;
    let (mut ws, payload) = at.connect(relay).await;
    ws.send(&attack(&payload)).await;
    let d = dropped_within(&mut ws.tcp, PROMPT).await;
    assert_violation(&d);
    assert_eq!(at.violations(relay).await, before + 1, "{at:?}: {d:?} not counted as a violation");
    still_serves(relay).await;
}

/// A legitimate client still gets a reservation, and a circuit to it with data both ways.
async fn still_serves(relay: &RelayHandle) {
    let url = relay.url.as_str();
    let (ka, kb) = (fresh_key(), fresh_key());
    let mut control = reserve(url, &kb).await;
    let (mut a, mut b) = circuit(url, &ka, &kb, &mut control).await;
    a.send(Message::Binary(b"there".to_vec().into())).await.unwrap();
    assert!(matches!(next(&mut b).await, Got::Data(d) if &d[..] == b"there"));
    b.send(Message::Binary(b"and back".to_vec().into())).await.unwrap();
    assert!(matches!(next(&mut a).await, Got::Data(d) if &d[..] == b"and back"));
}

/// A field of `/proc/self/status` in KiB (`VmRSS:`, `VmPeak:`): the relay's memory, since
/// it runs in the test process.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// What the relay's resident memory may grow by while it deals with an attack: generous
/// next to its real cost (a few 64 KiB buffers per connection), so that allocator noise
/// never trips it, and below what buffering the endless message (64 MiB) would take. A
/// coarse guard: for the ping flood (about 1.3 MB each way) the sharper signs are that
/// the relay kept reading and still answered on that very connection.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn assert_rss_bounded(since: u64, what: &str) {
    let grown = status_kib("VmRSS:").saturating_sub(since);
    assert!(grown < RSS_BOUND_KIB, "{what}: VmRSS grew by {grown} KiB");
}

/// An attacker that sends `first`, then `then` every 250 ms, until the relay ends the
/// connection (within `bound`).
async fn drip_until_dropped(ws: RawWs, first: Vec<u8>, then: Vec<u8>, bound: Duration) -> Dropped {
    let (mut rd, mut wr) = ws.tcp.into_split();
    let drip = async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut f = first;
        loop {
            tick.tick().await;
            if wr.write_all(&f).await.is_err() {
                // The relay is gone; the reader says how.
                std::future::pending::<()>().await;
            }
            f.clone_from(&then);
        }
    };
    tokio::select! {
        d = dropped_within(&mut rd, bound) => d,
        () = drip => unreachable!(),
    }
}

/// A message started and never finished: one more byte of it at a time.
async fn trickle_until_dropped(ws: RawWs, bound: Duration) -> Dropped {
    drip_until_dropped(ws, frame(BIN, &[0x81], true), frame(CONT, &[0], true), bound).await
}

/// Relay messages of a type the relay does not know (ignored by design, for newer
/// clients), one at a time.
async fn unknown_messages_until_dropped(ws: RawWs, bound: Duration) -> Dropped {
    // {"type": "future", "x": [1, 2]}, as in `proto.rs`'s tests.
    let unknown = hex_bytes("82a474797065a6667574757265a178920102");
    assert_eq!(RelayMessage::decode(&unknown).unwrap(), RelayMessage::Unknown);
    let f = frame(FIN | BIN, &unknown, true);
    drip_until_dropped(ws, f.clone(), f, bound).await
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
}

#[actix_rt::test]
async fn a_2_gib_length_header_is_refused_at_once_without_allocating() {
    let relay = start(config(Admission::open())).await;
    let (rss, peak) = (status_kib("VmRSS:"), status_kib("VmPeak:"));
    // 2 GiB, then lengths that a 32-bit count or RFC 6455's "most significant bit 0" rule
    // could get wrong. Only the header is sent: a relay that waited for the payload would
    // not close at once.
    for at in BOTH {
        for len in [2u64 << 30, 1 << 63, u64::MAX] {
            refused(&relay, at, |_| huge_header(len)).await;
        }
    }
    // Reserving memory for an announced length raises the peak virtual size at once,
    // even if the pages are never touched. 1 GiB: half the smallest length announced,
    // and room for the allocator's per-thread arenas (64 MiB of address space each).
    let grown = status_kib("VmPeak:").saturating_sub(peak);
    assert!(grown < 1 << 20, "the relay reserved memory for an announced length: VmPeak +{grown} KiB");
    assert_rss_bounded(rss, "2 GiB headers");
}

#[actix_rt::test]
async fn a_fragmented_message_interrupted_or_never_started_is_refused() {
    let relay = start(config(Admission::open())).await;
    for at in BOTH {
        // The first half of a message, then a whole new message instead of the rest.
        refused(&relay, at, |p| {
            let mut f = frame(BIN, &p[..p.len() / 2], true);
            f.extend(frame(FIN | BIN, p, true));
            f
        })
        .await;
        // A continuation frame with no message to continue.
        refused(&relay, at, |p| frame(FIN | CONT, p, true)).await;
    }
}

#[actix_rt::test]
async fn nothing_stretches_the_handshake_deadline() {
    let relay = start(config(Admission::open())).await;
    // One connection trickles a never-finished message, the other sends unknown
    // messages. Neither finishes the handshake, so both are refused at its deadline.
    let bound = HANDSHAKE_TIMEOUT + PROMPT;
    let (fragments, _) = RawWs::open(&relay).await;
    let (unknown, _) = RawWs::open(&relay).await;
    let (a, b) =
        tokio::join!(trickle_until_dropped(fragments, bound), unknown_messages_until_dropped(unknown, bound));
    for d in [a, b] {
        // The refusal of a handshake that timed out.
        let code = ErrorCode::Unauthenticated;
        assert_eq!(d.error, Some(code), "{d:?}");
        assert_eq!(d.close, Some(Some(code.ws_close_code())), "{d:?}");
    }
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert_eq!(m.handshakes.timed_out, 2, "{:?}", m.handshakes);
    still_serves(&relay).await;
}

#[actix_rt::test]
async fn a_never_finished_message_does_not_keep_a_session_alive() {
    // Clients presumed dead after 3 s of silence (pings every second): short enough to
    // wait for here, long enough for every legitimate step of the test.
    let mut cfg = config(Admission::open());
    cfg.ws = WsConfig::new().with_keep_alive(Duration::from_secs(1), Duration::from_secs(3));
    let relay = start(cfg).await;
    // Fragments of a message that never ends are not activity: the idle clock runs on.
    let ws = RawWs::login(&relay, &fresh_key()).await;
    let d = trickle_until_dropped(ws, Duration::from_secs(3) + PROMPT).await;
    assert_eq!(d.error, None, "{d:?}");
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert_eq!((m.connections, m.reservations), (0, 0), "the trickling client is still registered");
    still_serves(&relay).await;
}

#[actix_rt::test]
async fn endless_continuation_frames_are_cut_off_at_the_message_limit() {
    let relay = start(config(Admission::open())).await;
    let rss = status_kib("VmRSS:");
    // What the attacker sends if the relay never stops it: 64 MiB of one message.
    const CAP: usize = 64 << 20;
    for at in BOTH {
        let before = at.violations(&relay).await;
        let (ws, _) = at.connect(&relay).await;
        let (mut rd, mut wr) = ws.tcp.into_split();
        let writer = async move {
            let chunk = vec![0x5a; 60 * 1024];
            let mut f = frame(BIN, &chunk, true);
            let mut sent = 0;
            while sent < CAP && wr.write_all(&f).await.is_ok() {
                sent += chunk.len();
                f = frame(CONT, &chunk, true);
            }
            sent
        };
        let (d, sent) = tokio::join!(dropped_within(&mut rd, PROMPT), writer);
        assert_violation(&d);
        // The socket buffers take a few MiB more after the relay stops reading.
        assert!(sent < CAP, "{at:?}: the relay took all {sent} bytes of one message");
        assert_eq!(at.violations(&relay).await, before + 1, "{at:?}: {d:?}");
        still_serves(&relay).await;
    }
    assert_rss_bounded(rss, "endless continuation frames");
}

#[actix_rt::test]
async fn text_reserved_bits_unmasked_frames_and_reserved_opcodes_are_refused() {
    let relay = start(config(Admission::open())).await;
    // Each frame carries the message the relay would accept at that point.
    for at in BOTH {
        for rsv in [RSV1, RSV2, RSV3] {
            refused(&relay, at, |p| frame(FIN | rsv | BIN, p, true)).await;
        }
        refused(&relay, at, |p| frame(FIN | BIN, p, false)).await;
        // Opcode 0x3 is a reserved data frame, 0xB a reserved control frame.
        refused(&relay, at, |p| frame(FIN | 0x3, p, true)).await;
        refused(&relay, at, |_| frame(FIN | 0xB, &[], true)).await;
    }
    // Text before auth (after it: `relay_server.rs`).
    refused(&relay, At::BeforeAuth, |_| frame(FIN | TEXT, br#"{"type":"auth"}"#, true)).await;
}

#[actix_rt::test]
async fn oversized_and_fragmented_control_frames_are_refused() {
    let relay = start(config(Admission::open())).await;
    for at in BOTH {
        refused(&relay, at, |_| frame(FIN | PING, &[1; 126], true)).await;
        refused(&relay, at, |_| frame(FIN | PONG, &[2; 126], true)).await;
        refused(&relay, at, |_| {
            let mut close = 1000u16.to_be_bytes().to_vec();
            close.extend_from_slice(&[b'x'; 124]);
            frame(FIN | CLOSE, &close, true)
        })
        .await;
        // Control frames must not be fragmented.
        refused(&relay, at, |_| frame(PING, b"ping", true)).await;
    }
}

#[actix_rt::test]
async fn a_ping_flood_is_answered_within_bounded_memory() {
    let relay = start(config(Admission::open())).await;
    let mut ws = RawWs::login(&relay, &fresh_key()).await;
    let rss = status_kib("VmRSS:");
    // 10 000 pings of 125 bytes in one write, without reading a single pong.
    const PINGS: usize = 10_000;
    let mut burst = Vec::with_capacity(PINGS * 131);
    for i in 0..PINGS {
        burst.extend(frame(FIN | PING, &[(i % 251) as u8; 125], true));
    }
    tokio::time::timeout(T, ws.send(&burst)).await.expect("the relay stopped reading");
    // Then a `reserve`: the relay either serves it (after some pongs) or has closed.
    ws.send(&msg_frame(&RelayMessage::Reserve { ttl_secs: 600 })).await;
    let mut pongs = 0;
    let served = tokio::time::timeout(T, async {
        loop {
            match read_frame(&mut ws.tcp).await {
                Some((h, _)) if h == FIN | PONG => pongs += 1,
                Some((h, _)) if h == FIN | PING => {}
                Some((h, p)) if h == FIN | BIN => match RelayMessage::decode(&p).unwrap() {
                    RelayMessage::Reserved { .. } => return true,
                    other => panic!("{other:?}"),
                },
                Some((h, _)) if h == FIN | CLOSE => return false,
                None => return false,
                Some((h, p)) => panic!("unexpected frame {h:#04x} of {} bytes", p.len()),
            }
        }
    })
    .await
    .expect("the relay neither served nor closed the flooding connection");
    assert!(pongs <= PINGS, "{pongs} pongs for {PINGS} pings");
    assert_rss_bounded(rss, &format!("ping flood (served: {served}, {pongs} pongs)"));
    still_serves(&relay).await;
}

#[actix_rt::test]
async fn relay_messages_out_of_order_are_refused() {
    let relay = start(config(Admission::open())).await;
    let url = relay.url.as_str();
    // A second `auth` instead of a purpose.
    let (mut ws, challenge) = RawWs::open(&relay).await;
    let [auth, _] = client_handshake(&fresh_key(), &challenge, url, None, Purpose::Control).unwrap();
    ws.send(&msg_frame(&auth)).await;
    ws.send(&msg_frame(&auth)).await;
    let d = dropped_within(&mut ws.tcp, PROMPT).await;
    assert_eq!(d.error, Some(ErrorCode::ProtocolViolation), "{d:?}");
    assert_violation(&d);
    // The relay's own challenge, sent back to it.
    let (mut ws, challenge) = RawWs::open(&relay).await;
    ws.send(&msg_frame(&challenge)).await;
    let d = dropped_within(&mut ws.tcp, PROMPT).await;
    assert_eq!(d.error, Some(ErrorCode::ProtocolViolation), "{d:?}");
    assert_violation(&d);
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert_eq!(m.handshakes.violations, 2, "{:?}", m.handshakes);
    // After the handshake: a second purpose, and an `auth`.
    refused(&relay, At::AfterAuth, |_| msg_frame(&RelayMessage::Control)).await;
    refused(&relay, At::AfterAuth, |_| msg_frame(&auth)).await;
}
