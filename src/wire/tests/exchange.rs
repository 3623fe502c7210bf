//! `exchange_hello` over in-memory pipes.

use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream};

use super::sample_hello;
use crate::{
    error::{TransportError, WireError},
    identity::Keypair,
    wire::{exchange_hello, write_frame, Control, Frame, Hello},
};

/// Generous bound for the successful cases; the timeout case uses [`SHORT`].
const BOUND: Duration = Duration::from_secs(10);
/// Bound for the silent-peer case: short so the test is quick.
const SHORT: Duration = Duration::from_millis(200);

fn hello_of(seed: u8) -> Hello {
    Hello { peer_id: Keypair::from_seed([seed; 32]).peer_id(), ..sample_hello() }
}

fn pipe() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(64 * 1024)
}

#[tokio::test]
async fn succeeds_both_ways() {
    let (mut a, mut b) = pipe();
    let (ha, hb) = (hello_of(1), hello_of(2));
    let (ra, rb) = tokio::join!(
        exchange_hello(&mut a, &ha, hb.peer_id, "b", BOUND),
        exchange_hello(&mut b, &hb, ha.peer_id, "a", BOUND),
    );
    assert_eq!(ra.unwrap(), hb);
    assert_eq!(rb.unwrap(), ha);
}

#[tokio::test]
async fn hello_naming_another_peer_fails_authentication() {
    let (mut a, mut b) = pipe();
    let (ha, hb) = (hello_of(1), hello_of(2));
    let expected = Keypair::from_seed([3; 32]).peer_id();
    let (ra, _) = tokio::join!(
        exchange_hello(&mut a, &ha, expected, "b", BOUND),
        exchange_hello(&mut b, &hb, ha.peer_id, "a", BOUND),
    );
    match ra {
        Err(TransportError::AuthenticationFailed { expected: e, presented }) => {
            assert_eq!(e, expected);
            assert!(presented.contains(&hb.peer_id.to_string()), "{presented}");
        }
        other => panic!("expected AuthenticationFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn non_hello_first_frame_is_a_violation() {
    let (mut a, mut b) = pipe();
    let peer = async {
        write_frame(&mut b, &Frame::Control(Control::Ping { nonce: 1 })).await.unwrap();
        b.flush().await.unwrap();
        b
    };
    let ours = hello_of(1);
    let (ra, _b) = tokio::join!(exchange_hello(&mut a, &ours, hello_of(2).peer_id, "b", BOUND), peer);
    match ra {
        Err(TransportError::ProtocolViolation { remote, source: WireError::Unexpected(what) }) => {
            assert_eq!(remote, "b");
            assert!(what.contains("Control"), "{what}");
        }
        other => panic!("expected ProtocolViolation(Unexpected), got {other:?}"),
    }
}

#[tokio::test]
async fn eof_before_hello_is_truncated() {
    let (mut a, b) = pipe();
    drop(b);
    let r = exchange_hello(&mut a, &hello_of(1), hello_of(2).peer_id, "b", BOUND).await;
    // Our write may fail first (the pipe is closed): then it is an I/O error.
    assert!(
        matches!(
            r,
            Err(TransportError::ProtocolViolation { source: WireError::Truncated, .. })
                | Err(TransportError::Io(_))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn eof_inside_hello_is_truncated() {
    let (mut a, mut b) = pipe();
    let peer = async {
        let mut bytes = bytes::BytesMut::new();
        crate::wire::encode_frame(&Frame::Hello(hello_of(2)), &mut bytes).unwrap();
        b.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
        b.shutdown().await.unwrap();
        b // kept alive so our own write succeeds
    };
    let ours = hello_of(1);
    let (ra, _b) = tokio::join!(exchange_hello(&mut a, &ours, hello_of(2).peer_id, "b", BOUND), peer);
    assert!(
        matches!(ra, Err(TransportError::ProtocolViolation { source: WireError::Truncated, .. })),
        "{ra:?}"
    );
}

#[tokio::test]
async fn silent_peer_times_out() {
    let (mut a, _b) = pipe();
    let r = exchange_hello(&mut a, &hello_of(1), hello_of(2).peer_id, "b", SHORT).await;
    match r {
        Err(TransportError::Timeout { what, after }) => {
            assert_eq!(after, SHORT);
            assert!(what.contains("hello"), "{what}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_version_is_reported_as_unsupported() {
    let (mut a, mut b) = pipe();
    let peer = async {
        let mut body = hello_of(2).encode().unwrap();
        body[2..4].copy_from_slice(&9u16.to_be_bytes());
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.push(0x01);
        frame.extend_from_slice(&body);
        b.write_all(&frame).await.unwrap();
        b
    };
    let ours = hello_of(1);
    let (ra, _b) = tokio::join!(exchange_hello(&mut a, &ours, hello_of(2).peer_id, "b", BOUND), peer);
    assert!(
        matches!(
            ra,
            Err(TransportError::ProtocolViolation {
                source: WireError::UnsupportedVersion { got: 9, supported: 1 },
                ..
            })
        ),
        "{ra:?}"
    );
}
