//! Property tests: round trips, totality of the decoder, truncation, and limits.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use crate::{
    address::{Protocol, TransportAddr, TransportCapabilities},
    error::{TransportError, WireError},
    identity::Keypair,
    wire::{
        encode_frame, read_frame, CloseCode, Control, Frame, FrameDecoder, Hello, HelloPurpose, HEADER_LEN,
        MAX_CONTROL_LEN, MAX_FRAME_LEN, MAX_MESSAGE_LEN, PROTOCOL_VERSION,
    },
};

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn transport_addr() -> impl Strategy<Value = TransportAddr> {
    let url = ("[a-z0-9.-]{1,20}", 1u16..65535, "(/[a-z0-9]{0,8})?")
        .prop_map(|(host, port, path)| format!("ws://{host}:{port}{path}"));
    prop_oneof![
        socket_addr().prop_map(TransportAddr::Tcp),
        socket_addr().prop_map(TransportAddr::Quic),
        url.clone().prop_map(TransportAddr::Ws),
        url.prop_map(TransportAddr::Relay),
        Just(TransportAddr::WebRtc),
    ]
}

fn capabilities() -> impl Strategy<Value = TransportCapabilities> {
    (any::<[bool; 5]>(), any::<u64>()).prop_map(|(b, max)| TransportCapabilities {
        reliable: b[0],
        ordered: b[1],
        multiplexed: b[2],
        resumable: b[3],
        nat_traversal: b[4],
        max_message_size: max,
    })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<[u8; 32]>(),
        ".{0,40}",
        proptest::collection::btree_map(
            proptest::sample::select(Protocol::ALL.to_vec()),
            capabilities(),
            0..4,
        ),
        proptest::collection::vec(transport_addr(), 0..8),
        proptest::option::of(transport_addr()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(seed, agent, capabilities, listen_addrs, observed_addr, session)| Hello {
            peer_id: Keypair::from_seed(seed).peer_id(),
            agent,
            purpose: HelloPurpose::Session,
            capabilities: capabilities.into_iter().collect::<BTreeMap<_, _>>(),
            listen_addrs,
            observed_addr,
            session,
        })
}

fn close_code() -> impl Strategy<Value = CloseCode> {
    (0u32..6).prop_map(|v| CloseCode::from_u32(v).unwrap())
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| Control::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Control::Pong { nonce }),
        (close_code(), ".{0,100}").prop_map(|(code, reason)| Control::Close { code, reason }),
        Just(Control::Unknown),
    ]
}

fn data(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        hello().prop_map(Frame::Hello),
        data(600).prop_map(Frame::Message),
        control().prop_map(Frame::Control),
        any::<u32>().prop_map(|id| Frame::StreamOpen { id }),
        (any::<u32>(), data(600)).prop_map(|(id, data)| Frame::StreamData { id, data }),
        (any::<u32>(), any::<u32>()).prop_map(|(id, credit)| Frame::StreamWindow { id, credit }),
        any::<u32>().prop_map(|id| Frame::StreamFin { id }),
        (any::<u32>(), any::<u32>()).prop_map(|(id, code)| Frame::StreamReset { id, code }),
    ]
}

fn encode(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        encode_frame(f, &mut buf).unwrap();
    }
    buf
}

/// Splits `input` at the given cut points (taken modulo its length).
fn chunks(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.push(0);
    cuts.push(input.len());
    cuts.sort_unstable();
    cuts.windows(2).map(|w| input[w[0]..w[1]].to_vec()).collect()
}

/// Feeds `chunks` one by one, draining frames after each; stops at the first error.
/// Checks after every step that the decoder never leaves more than one frame buffered.
fn feed(decoder: &FrameDecoder, chunks: &[Vec<u8>]) -> (Vec<Frame>, Option<WireError>, BytesMut) {
    let bound = HEADER_LEN + decoder.max_frame_len();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e), buf),
            }
        }
        assert!(buf.len() < bound, "decoder left {} bytes buffered (bound {bound})", buf.len());
    }
    (out, None, buf)
}

/// A reader that yields `data`, then fails the test if read again (it would block).
struct ThenStall {
    data: Vec<u8>,
    pos: usize,
}

impl AsyncRead for ThenStall {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        assert!(self.pos < self.data.len(), "read past the header: the payload was requested");
        let n = buf.remaining().min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn wire_err(r: Result<Option<Frame>, TransportError>) -> WireError {
    match r {
        Err(TransportError::ProtocolViolation { source, .. }) => source,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in proptest::collection::vec(frame(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes = encode(&frames);
        let (decoded, err, rest) = feed(&FrameDecoder::default(), &chunks(&bytes, &cuts));
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert!(rest.is_empty());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn hello_round_trips(h in hello()) {
        let bytes = h.encode().unwrap();
        prop_assert_eq!(Hello::decode(&bytes).unwrap(), h);
    }

    #[test]
    fn decoder_is_total_on_arbitrary_bytes(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
        max in 0usize..1024,
    ) {
        // `feed` checks the buffering bound; reaching the end without a panic is the test.
        feed(&FrameDecoder::new(max), &chunks(&input, &cuts));
        feed(&FrameDecoder::default(), &chunks(&input, &cuts));
    }

    #[test]
    fn decoder_is_total_on_mutated_frames(
        frames in proptest::collection::vec(frame(), 1..4),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode(&frames).to_vec();
        for (at, x) in flips {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
        feed(&FrameDecoder::default(), &[bytes]);
    }

    #[test]
    fn hello_and_control_decode_are_total(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Control::decode(&input);
        let mut hello = b"KZ\x00\x01".to_vec();
        hello.extend_from_slice(&input);
        let _ = Hello::decode(&hello);
        let _ = Hello::decode(&input);
    }

    #[test]
    fn truncated_encodings_need_more_bytes(f in frame(), cut in any::<usize>()) {
        let bytes = encode(std::slice::from_ref(&f));
        let cut = cut % bytes.len(); // strictly shorter than the frame
        let mut buf = BytesMut::from(&bytes[..cut]);
        prop_assert!(matches!(FrameDecoder::default().decode(&mut buf), Ok(None)));
        prop_assert_eq!(buf.len(), cut, "Ok(None) must not consume input");
        let mut reader = &bytes[..cut];
        let r = block_on(read_frame(&mut reader, &FrameDecoder::default()));
        if cut == 0 {
            prop_assert!(matches!(r, Ok(None)), "{r:?}");
        } else {
            prop_assert!(matches!(wire_err(r), WireError::Truncated));
        }
    }

    #[test]
    fn read_frame_matches_decoder(f in frame()) {
        let bytes = encode(std::slice::from_ref(&f));
        let mut reader = &bytes[..];
        let got = block_on(read_frame(&mut reader, &FrameDecoder::default())).unwrap();
        prop_assert_eq!(got, Some(f));
        prop_assert!(reader.is_empty());
    }

    #[test]
    fn oversized_headers_fail_before_the_payload(
        ty in proptest::sample::select(vec![0x01u8, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13, 0x14]),
        excess in 1u32..1_000_000,
        max in 0usize..2048,
    ) {
        let decoder = FrameDecoder::new(max);
        let limit = match ty {
            0x01 | 0x03 => max.min(MAX_CONTROL_LEN),
            0x02 => max.min(MAX_MESSAGE_LEN),
            _ => max,
        };
        let len = u32::try_from(limit).unwrap().saturating_add(excess);
        let mut header = len.to_be_bytes().to_vec();
        header.push(ty);

        let mut buf = BytesMut::from(&header[..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        prop_assert!(matches!(err, WireError::FrameTooLarge { max: m, .. } if m == limit), "{err:?}");

        let mut reader = ThenStall { data: header, pos: 0 };
        let err = wire_err(block_on(read_frame(&mut reader, &decoder)));
        prop_assert!(matches!(err, WireError::FrameTooLarge { max: m, .. } if m == limit), "{err:?}");
    }
}

#[test]
fn default_limits_are_the_documented_constants() {
    let d = FrameDecoder::default();
    assert_eq!(d.max_frame_len(), MAX_FRAME_LEN);
    assert_eq!(FrameDecoder::new(usize::MAX).max_frame_len(), MAX_FRAME_LEN);
    let header = |len: u32, ty: u8| {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&len.to_be_bytes());
        h[4] = ty;
        h
    };
    assert!(d.parse_header(header(MAX_FRAME_LEN as u32, 0x11)).is_ok());
    assert!(matches!(
        d.parse_header(header(MAX_FRAME_LEN as u32 + 1, 0x11)),
        Err(WireError::FrameTooLarge { .. })
    ));
    assert!(d.parse_header(header(MAX_MESSAGE_LEN as u32, 0x02)).is_ok());
    assert!(matches!(
        d.parse_header(header(MAX_MESSAGE_LEN as u32 + 1, 0x02)),
        Err(WireError::FrameTooLarge { max: MAX_MESSAGE_LEN, .. })
    ));
    assert!(d.parse_header(header(MAX_CONTROL_LEN as u32, 0x03)).is_ok());
    assert!(matches!(
        d.parse_header(header(MAX_CONTROL_LEN as u32 + 1, 0x01)),
        Err(WireError::FrameTooLarge { .. })
    ));
    assert!(matches!(d.parse_header(header(0, 0x04)), Err(WireError::UnknownFrameType(0x04))));
    assert!(matches!(d.parse_header(header(u32::MAX, 0xff)), Err(WireError::UnknownFrameType(0xff))));
}

#[test]
fn encoder_refuses_what_the_decoder_would_reject() {
    let mut buf = BytesMut::new();
    let big = Bytes::from(vec![0u8; MAX_MESSAGE_LEN + 1]);
    assert!(matches!(encode_frame(&Frame::Message(big), &mut buf), Err(WireError::FrameTooLarge { .. })));
    let data = Frame::StreamData { id: 1, data: Bytes::from(vec![0u8; MAX_FRAME_LEN - 3]) };
    assert!(matches!(encode_frame(&data, &mut buf), Err(WireError::FrameTooLarge { .. })));
    let reason = "x".repeat(MAX_CONTROL_LEN);
    let close = Frame::Control(Control::Close { code: CloseCode::Normal, reason });
    assert!(matches!(encode_frame(&close, &mut buf), Err(WireError::FrameTooLarge { .. })));
    assert!(buf.is_empty(), "a refused frame must not leave partial bytes");
}

#[test]
fn fixed_size_payloads_must_have_their_exact_size() {
    for (ty, len) in [(0x10u8, 3u32), (0x10, 5), (0x13, 0), (0x12, 7), (0x14, 9), (0x11, 3)] {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        buf.extend_from_slice(&[ty]);
        buf.extend_from_slice(&vec![0u8; len as usize]);
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }), "type {ty:#x} len {len}: {err:?}");
    }
}

#[test]
fn control_decoding_of_unknown_and_malformed() {
    // Unknown type, with fields of any shape.
    let unknown =
        rmp_serde::to_vec_named(&BTreeMap::from([("type", "later"), ("nonce", "not a number")])).unwrap();
    assert_eq!(Control::decode(&unknown).unwrap(), Control::Unknown);
    // Known type with a missing or mistyped field is malformed.
    let bad_ping = rmp_serde::to_vec_named(&BTreeMap::from([("type", "ping")])).unwrap();
    assert!(matches!(Control::decode(&bad_ping), Err(WireError::Malformed { .. })));
    let bad_ping = rmp_serde::to_vec_named(&BTreeMap::from([("type", "ping"), ("nonce", "x")])).unwrap();
    assert!(matches!(Control::decode(&bad_ping), Err(WireError::Malformed { .. })));
    // No type, a non-string type, not a map, trailing bytes.
    for bad in [&b"\x80"[..], b"\x81\xa4type\x01", b"\x92\xa4ping\x01", b"\x81\xa4type\xa4pong\xc0", b""] {
        assert!(matches!(Control::decode(bad), Err(WireError::Malformed { .. })), "{bad:02x?}");
    }
    // Unknown fields of a known message are ignored.
    let extra = b"\x83\xa4type\xa4ping\xa5nonce\x05\xa5extra\x91\xc0";
    assert_eq!(Control::decode(extra).unwrap(), Control::Ping { nonce: 5 });
}

#[test]
fn hello_decode_rejections() {
    let good = super::sample_hello().encode().unwrap();
    assert!(Hello::decode(&good).is_ok());
    for short in [&b""[..], b"K", b"KZ", b"KZ\x00"] {
        assert!(matches!(Hello::decode(short), Err(WireError::Truncated)), "{short:?}");
    }
    let mut bad_magic = good.clone();
    bad_magic[0] = b'k';
    assert!(matches!(Hello::decode(&bad_magic), Err(WireError::BadMagic)));
    let mut v2 = good.clone();
    v2[2..4].copy_from_slice(&2u16.to_be_bytes());
    assert!(matches!(
        Hello::decode(&v2),
        Err(WireError::UnsupportedVersion { got: 2, supported: PROTOCOL_VERSION })
    ));
    let mut truncated_body = good.clone();
    truncated_body.pop();
    assert!(matches!(Hello::decode(&truncated_body), Err(WireError::Malformed { what: "hello", .. })));
    for body in [&b"\xc1"[..], b"\x90", b"\x80", b"\xa5hello", b"\x80\x80"] {
        let p = [&b"KZ\x00\x01"[..], body].concat();
        assert!(matches!(Hello::decode(&p), Err(WireError::Malformed { what: "hello", .. })), "{body:02x?}");
    }
    // An all-zero key is not a peer id.
    let h = super::sample_hello();
    let mut enc = h.encode().unwrap();
    let pos = enc.windows(32).position(|w| w == h.peer_id.as_bytes()).unwrap();
    enc[pos..pos + 32].fill(0);
    assert!(matches!(Hello::decode(&enc), Err(WireError::Malformed { .. })));
}

#[test]
fn hello_skips_entries_of_unknown_protocols() {
    /// A hello as a newer version might send it.
    #[derive(serde::Serialize)]
    struct FutureHello<'a> {
        peer_id: &'a serde_bytes::Bytes,
        agent: &'a str,
        purpose: &'a str,
        capabilities: BTreeMap<&'a str, CapValue>,
        listen_addrs: Vec<&'a str>,
        observed_addr: Option<&'a str>,
        future_field: Vec<u8>,
    }
    /// Known capabilities, or something of another shape.
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum CapValue {
        Known(TransportCapabilities),
        Other(&'static str),
    }
    let h = super::sample_hello();
    let tcp_caps = CapValue::Known(h.capabilities[&Protocol::Tcp]);
    let future = FutureHello {
        peer_id: serde_bytes::Bytes::new(h.peer_id.as_bytes()),
        agent: "kizuna/9.0",
        purpose: "session",
        capabilities: BTreeMap::from([("tcp", tcp_caps), ("pigeon", CapValue::Other("fast"))]),
        listen_addrs: vec!["pigeon=coop 7", "tcp=192.0.2.1:4000"],
        observed_addr: Some("pigeon=coop 9"),
        future_field: vec![1, 2, 3],
    };
    let body = rmp_serde::to_vec_named(&future).unwrap();
    let decoded = Hello::decode(&[&b"KZ\x00\x01"[..], &body].concat()).unwrap();
    assert_eq!(decoded.peer_id, h.peer_id);
    assert_eq!(decoded.capabilities.keys().collect::<Vec<_>>(), vec![&Protocol::Tcp]);
    assert_eq!(decoded.listen_addrs, vec![TransportAddr::Tcp("192.0.2.1:4000".parse().unwrap())]);
    assert_eq!(decoded.observed_addr, None);

    // A known protocol with an unparsable address is malformed, not skipped.
    let bad = FutureHello { listen_addrs: vec!["tcp=not-an-address"], ..future };
    let body = rmp_serde::to_vec_named(&bad).unwrap();
    let err = Hello::decode(&[&b"KZ\x00\x01"[..], &body].concat()).unwrap_err();
    assert!(matches!(err, WireError::Malformed { what: "hello", .. }), "{err:?}");
}

#[test]
fn deep_nesting_is_rejected_without_deep_recursion() {
    // `{"type": "ping", "x": [[[…]]]}` nested 1000 deep: under rmp-serde's own depth limit
    // (1024), and enough to overflow a thread stack if the decoder recursed per level.
    let nested = [&b"\x82\xa4type\xa4ping\xa1x"[..], &[0x91; 1000], &[0xc0]].concat();
    let hello = [&b"KZ\x00\x01\x81\xa5agent"[..], &[0x91; 1000], &[0xc0]].concat();
    // A small stack, as a constrained worker thread might have.
    let worker = std::thread::Builder::new().stack_size(128 * 1024).spawn(move || {
        let c = Control::decode(&nested);
        let h = Hello::decode(&hello);
        (c, h)
    });
    let (c, h) = worker.unwrap().join().unwrap();
    assert!(matches!(c, Err(WireError::Malformed { .. })), "{c:?}");
    assert!(matches!(h, Err(WireError::Malformed { .. })), "{h:?}");
}
