//! Hex snapshots: each pins the exact bytes of one frame. If one of these changes, the
//! wire protocol changed — update `docs/protocol.md` and think about the version.

use bytes::{Bytes, BytesMut};

use super::sample_hello;
use crate::wire::{encode_frame, CloseCode, Control, Frame, FrameDecoder};

/// Encodes `frame`, compares with `hex`, then decodes `hex` and compares with `frame`.
fn snapshot(frame: Frame, hex: &str) {
    let mut buf = BytesMut::new();
    encode_frame(&frame, &mut buf).unwrap();
    assert_eq!(hex::encode(&buf), hex, "encoding of {frame:?} changed");
    let mut input = BytesMut::from(&hex::decode(hex).unwrap()[..]);
    let decoded = FrameDecoder::default().decode(&mut input).unwrap();
    assert_eq!(decoded, Some(frame));
    assert!(input.is_empty(), "snapshot left {} bytes undecoded", input.len());
}

#[test]
fn snapshot_hello() {
    snapshot(Frame::Hello(sample_hello()), "00000187014b5a000186a7706565725f6964c4208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ca56167656e74ac6b697a756e612f302e312e30a7707572706f7365a773657373696f6eac6361706162696c697469657382a374637086a872656c6961626c65c3a76f726465726564c3ab6d756c7469706c65786564c3a9726573756d61626c65c2ad6e61745f74726176657273616cc2b06d61785f6d6573736167655f73697a65ce00400000a47175696386a872656c6961626c65c3a76f726465726564c3ab6d756c7469706c65786564c3a9726573756d61626c65c3ad6e61745f74726176657273616cc3b06d61785f6d6573736167655f73697a65ce00400000ac6c697374656e5f616464727393b27463703d3139322e302e322e313a34303030b7717569633d5b323030313a6462383a3a315d3a34303031bd72656c61793d77733a2f2f72656c61792e6578616d706c653a37303030ad6f627365727665645f61646472b67463703d3139382e35312e3130302e373a3531303030");
}

#[test]
fn snapshot_message() {
    snapshot(Frame::Message(Bytes::from_static(b"hi kizuna")), "00000009026869206b697a756e61");
    snapshot(Frame::Message(Bytes::new()), "0000000002");
}

#[test]
fn snapshot_control_ping_pong() {
    snapshot(
        Frame::Control(Control::Ping { nonce: 0x0102_0304_0506_0708 }),
        "0000001a0382a474797065a470696e67a56e6f6e6365cf0102030405060708",
    );
    snapshot(Frame::Control(Control::Pong { nonce: 7 }), "000000120382a474797065a4706f6e67a56e6f6e636507");
}

#[test]
fn snapshot_control_close() {
    snapshot(
        Frame::Control(Control::Close { code: CloseCode::Idle, reason: "idle 45s".into() }),
        "000000220383a474797065a5636c6f7365a4636f646505a6726561736f6ea869646c6520343573",
    );
}

#[test]
fn snapshot_control_unknown() {
    snapshot(Frame::Control(Control::Unknown), "0000000e0381a474797065a7756e6b6e6f776e");
}

#[test]
fn unknown_control_types_decode_as_unknown() {
    // {"type": "future_thing", "x": [1, 2]}: a message from a newer version.
    let hex = "000000180382a474797065ac6675747572655f7468696e67a178920102";
    let mut input = BytesMut::from(&hex::decode(hex).unwrap()[..]);
    assert_eq!(FrameDecoder::default().decode(&mut input).unwrap(), Some(Frame::Control(Control::Unknown)));
    // {"type": "close", "code": 99, "reason": ""}: a close code from a newer version.
    let hex = "0000001a0383a474797065a5636c6f7365a4636f646563a6726561736f6ea0";
    let mut input = BytesMut::from(&hex::decode(hex).unwrap()[..]);
    assert_eq!(FrameDecoder::default().decode(&mut input).unwrap(), Some(Frame::Control(Control::Unknown)));
}

#[test]
fn snapshot_stream_open() {
    snapshot(Frame::StreamOpen { id: 1 }, "000000041000000001");
}

#[test]
fn snapshot_stream_data() {
    snapshot(
        Frame::StreamData { id: 3, data: Bytes::from_static(b"\x00\x01\xff") },
        "0000000711000000030001ff",
    );
}

#[test]
fn snapshot_stream_window() {
    snapshot(Frame::StreamWindow { id: 2, credit: 1024 * 1024 }, "00000008120000000200100000");
}

#[test]
fn snapshot_stream_fin() {
    snapshot(Frame::StreamFin { id: 0xdead_beef }, "0000000413deadbeef");
}

#[test]
fn snapshot_stream_reset() {
    snapshot(Frame::StreamReset { id: 4, code: 7 }, "00000008140000000400000007");
}
