//! The relay's STUN responder probed from outside with a raw UDP socket: every kind of
//! request gets an answer of at most `MAX_AMPLIFICATION` (3) times its size, or none at
//! all (`docs/relay.md` §5 has the table). Requests are built byte by byte so that
//! anything can be sent (unknown attributes, other methods, broken lengths).

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::{net::SocketAddr, time::Duration};

use kizuna::relay::auth::Admission;
use kizuna_actors::relay::{stun::MAX_AMPLIFICATION, RelayHandle, RelayServer, RelayServerConfig};
use stun_rs::{MessageClass, MessageDecoderBuilder, MAGIC_COOKIE};
use tokio::net::UdpSocket;

/// Bound on a wait for an answer that must come.
const T: Duration = Duration::from_secs(10);

/// How long to wait for an answer that must not come. Loopback answers take well under a
/// millisecond; 300 ms leaves room for a loaded machine without slowing the test much.
const SILENCE: Duration = Duration::from_millis(300);

/// A STUN message of `msg_type` with transaction id `[tid; 12]` and `attrs` (type, value),
/// zero-padded.
fn raw(msg_type: u16, tid: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut m = msg_type.to_be_bytes().to_vec();
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.as_u32().to_be_bytes());
    m.extend_from_slice(&[tid; 12]);
    m.extend_from_slice(&body);
    m
}

/// What comes back: `Some(class)` of an answer to `[tid; 12]`, or `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Success,
    Error(u16),
    Nothing,
}

/// The request kinds a hostile or careless client may send (the transaction id is the
/// index + 1), and what a responder with or without an RFC 5780 `grid` answers.
fn kinds(grid: bool) -> Vec<(&'static str, Vec<u8>, Expect)> {
    let change = if grid { Expect::Success } else { Expect::Error(420) };
    let binding = |attrs: &[(u16, &[u8])], tid| raw(0x0001, tid, attrs);
    let many: Vec<(u16, &[u8])> = (0x4000..0x4040).map(|t| (t, &[][..])).collect();
    let mut truncated = binding(&[], 0);
    truncated[3] = 40;
    let mut out = vec![
        ("Binding", binding(&[], 0), Expect::Success),
        ("Binding + CHANGE-REQUEST (change IP and port)", binding(&[(0x0003, &[0, 0, 0, 6])], 0), change),
        ("Binding + CHANGE-REQUEST (change port)", binding(&[(0x0003, &[0, 0, 0, 2])], 0), change),
        ("Binding + PADDING", binding(&[(0x0026, &[0; 40])], 0), Expect::Success),
        ("Binding + unknown comprehension-optional", binding(&[(0x8777, &[])], 0), Expect::Success),
        ("Binding + unknown comprehension-required", binding(&[(0x7777, &[])], 0), Expect::Error(420)),
        ("Binding + 64 unknown comprehension-required", binding(&many, 0), Expect::Error(420)),
        ("Binding + RESPONSE-PORT", binding(&[(0x0027, &[0x12, 0x34, 0, 0])], 0), Expect::Error(420)),
        ("Allocate request", raw(0x0003, 0, &[]), Expect::Error(400)),
        ("Refresh request", raw(0x0004, 0, &[]), Expect::Error(400)),
        ("Malformed Binding request", truncated, Expect::Error(400)),
        ("Binding indication", raw(0x0011, 0, &[]), Expect::Nothing),
        ("Binding success response", raw(0x0101, 0, &[]), Expect::Nothing),
        ("Binding error response", raw(0x0111, 0, &[]), Expect::Nothing),
        ("Not STUN", vec![0x80; 64], Expect::Nothing),
    ];
    for (i, (_, m, _)) in out.iter_mut().enumerate() {
        if m.len() >= 20 && m[0] & 0xc0 == 0 {
            m[8..20].fill(i as u8 + 1);
        }
    }
    out
}

async fn relay_with_stun(stun: &[&str]) -> RelayHandle {
    let mut cfg = RelayServerConfig::new("127.0.0.1:0".parse().unwrap(), Admission::open());
    cfg.stun = stun.iter().map(|s| s.parse().unwrap()).collect();
    RelayServer::start(cfg).await.expect("relay starts")
}

/// Sends every kind to `server` from `sock` and checks what comes back; returns the
/// (kind, request size, answer size) rows.
async fn probe(
    sock: &UdpSocket,
    server: SocketAddr,
    grid: bool,
) -> Vec<(&'static str, usize, Option<usize>)> {
    let mut rows = Vec::new();
    let mut buf = [0u8; 1500];
    for (i, (kind, req, expect)) in kinds(grid).into_iter().enumerate() {
        sock.send_to(&req, server).await.unwrap();
        let wait = if expect == Expect::Nothing { SILENCE } else { T };
        let got = match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Err(_) => None,
            Ok(r) => Some(r.unwrap().0),
        };
        rows.push((kind, req.len(), got));
        let Some(n) = got else {
            assert_eq!(expect, Expect::Nothing, "{kind}: no answer");
            continue;
        };
        assert!(n <= MAX_AMPLIFICATION * req.len(), "{kind}: {n} bytes for {}", req.len());
        let (msg, _) = MessageDecoderBuilder::default().build().decode(&buf[..n]).unwrap();
        assert_eq!(msg.transaction_id().as_ref(), &[i as u8 + 1; 12], "{kind}");
        let seen = match msg.class() {
            MessageClass::SuccessResponse => Expect::Success,
            MessageClass::ErrorResponse => {
                let Some(stun_rs::StunAttribute::ErrorCode(e)) =
                    msg.get::<stun_rs::attributes::stun::ErrorCode>()
                else {
                    panic!("{kind}: {msg:?}")
                };
                Expect::Error(e.error_code().error_code())
            }
            other => panic!("{kind}: {other:?}"),
        };
        assert_eq!(seen, expect, "{kind}");
    }
    // The responder is still there.
    sock.send_to(&raw(0x0001, 0xee, &[]), server).await.unwrap();
    let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[8..20], &[0xee; 12], "{n} bytes");
    rows
}

fn print(title: &str, rows: &[(&str, usize, Option<usize>)]) {
    eprintln!("{title}");
    for (kind, req, resp) in rows {
        match resp {
            Some(n) => eprintln!("  {kind}: {req} → {n} bytes ({:.2}×)", *n as f64 / *req as f64),
            None => eprintln!("  {kind}: {req} → nothing"),
        }
    }
}

#[actix_rt::test]
async fn rfc5780_responder_answers_every_kind_within_three_times() {
    let relay = relay_with_stun(&["127.0.0.1:0", "127.0.0.2:0"]).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    print("RFC 5780 grid, IPv4:", &probe(&sock, relay.stun_addrs[0], true).await);
}

#[actix_rt::test]
async fn plain_responder_answers_every_kind_within_three_times() {
    let relay = relay_with_stun(&["127.0.0.1:0"]).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    print("plain, IPv4:", &probe(&sock, relay.stun_addrs[0], false).await);
    match UdpSocket::bind("[::1]:0").await {
        Ok(sock6) => {
            let relay6 = relay_with_stun(&["[::1]:0"]).await;
            print("plain, IPv6:", &probe(&sock6, relay6.stun_addrs[0], false).await);
        }
        Err(e) => eprintln!("SKIP the IPv6 part: no [::1] here ({e})"),
    }
}
