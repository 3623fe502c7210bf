//! The relay server over real loopback sockets: admission, circuits, end-to-end
//! encryption through the relay, limits, hostile clients, restart, metrics and STUN.
//! The protocol is driven by the tiny client in `relay_client/`.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod relay_client;

use std::{collections::HashSet, time::Duration};

use futures_util::SinkExt;
use kizuna::{
    relay::{
        auth::{mint_token, Admission},
        limits::RelayLimits,
        ErrorCode, Purpose, RelayMessage,
    },
    LocalNode, NodeConfig,
};
use kizuna_actors::relay::{GetRelayMetrics, StopRelay, TappedMessage};
use relay_client::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[actix_rt::test]
async fn unauthenticated_and_unauthorized_clients_are_refused() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let admission = Admission {
        allow: HashSet::from([key(1).peer_id()]),
        token_secret: Some(secret.clone()),
        open: false,
    };
    let relay = start(config(admission)).await;
    let url = relay.url.as_str();

    // Bad signature: claims peer 1 but signs with another key.
    let mut ws = raw_connect(url, Some("kizuna")).await.unwrap();
    let challenge = match next(&mut ws).await {
        Got::Msg(m) => m,
        other => panic!("{other:?}"),
    };
    let [auth, purpose] =
        kizuna::relay::auth::client_handshake(&key(9), &challenge, url, None, Purpose::Control).unwrap();
    let RelayMessage::Auth { signature, .. } = auth else { panic!() };
    send(&mut ws, &RelayMessage::Auth { peer_id: key(1).peer_id(), signature, token: None }).await;
    send(&mut ws, &purpose).await;
    expect_refused(&mut ws, ErrorCode::Unauthenticated).await;

    // Not on the allow-list, no token.
    let mut ws = login(url, &key(3), None, Purpose::Control).await;
    expect_refused(&mut ws, ErrorCode::NotAllowed).await;
    // A token minted for another peer.
    let other = mint_token(&secret, &key(4).peer_id(), Duration::from_secs(3600), unix_now());
    let mut ws = login(url, &key(3), Some(&other), Purpose::Control).await;
    expect_refused(&mut ws, ErrorCode::BadToken).await;
    // An expired token.
    let old = mint_token(&secret, &key(3).peer_id(), Duration::from_secs(60), unix_now() - 7200);
    let mut ws = login(url, &key(3), Some(&old), Purpose::Control).await;
    expect_refused(&mut ws, ErrorCode::ExpiredToken).await;
    // A valid token, and an allowed peer, are admitted.
    let good = mint_token(&secret, &key(3).peer_id(), Duration::from_secs(3600), unix_now());
    let mut ws = login(url, &key(3), Some(&good), Purpose::Control).await;
    send(&mut ws, &RelayMessage::Reserve { ttl_secs: 60 }).await;
    assert!(matches!(next(&mut ws).await, Got::Msg(RelayMessage::Reserved { .. })));
    let _b = reserve(url, &key(1)).await;
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert_eq!(m.reservations, 2);

    // Open mode admits anyone who proves a key.
    let open = start(config(Admission::open())).await;
    let _c = reserve(&open.url, &key(77)).await;
}

#[actix_rt::test]
async fn circuits_flow_both_ways_and_refusals_are_typed() {
    let relay = start(config(Admission::open())).await;
    let url = relay.url.as_str();
    let (ka, kb) = (key(1), key(2));
    let mut control = reserve(url, &kb).await;
    let (mut a, mut b) = circuit(url, &ka, &kb, &mut control).await;
    for size in [1usize, 1000, 65_536] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        a.send(Message::Binary(payload.clone().into())).await.unwrap();
        match next(&mut b).await {
            Got::Data(d) => assert_eq!(&d[..], &payload[..]),
            Got::Msg(_) if size == 1 => panic!("1-byte payload decoded as a message"),
            other => panic!("{other:?}"),
        }
        let back: Vec<u8> = payload.iter().rev().copied().collect();
        b.send(Message::Binary(back.clone().into())).await.unwrap();
        match next(&mut a).await {
            Got::Data(d) => assert_eq!(&d[..], &back[..]),
            other => panic!("{other:?}"),
        }
    }
    // One end leaving closes the other normally.
    a.close(None).await.unwrap();
    expect_closed(&mut b, ErrorCode::Normal).await;

    // The target refuses.
    let mut a2 = login(url, &ka, None, Purpose::Dial { target: kb.peer_id() }).await;
    let circuit = expect_incoming(&mut control).await;
    send(&mut control, &RelayMessage::Refuse { circuit, reason: "busy".into() }).await;
    match next(&mut a2).await {
        Got::Msg(RelayMessage::CircuitRefused { reason }) => assert_eq!(reason, "busy"),
        other => panic!("{other:?}"),
    }
    expect_closed(&mut a2, ErrorCode::TargetRefused).await;

    // Dialing a peer without a reservation.
    let mut a3 = login(url, &ka, None, Purpose::Dial { target: key(5).peer_id() }).await;
    expect_refused(&mut a3, ErrorCode::TargetNotReserved).await;

    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert_eq!(m.totals.circuits_opened, 1);
    assert_eq!(m.totals.circuits_refused, 1);
    assert!(m.totals.bytes_forwarded >= 2 * (1 + 1000 + 65_536), "{:?}", m.totals);
}

#[actix_rt::test]
async fn the_relay_never_sees_the_plaintext() {
    let (tap_tx, mut tap_rx) = tokio::sync::mpsc::channel::<TappedMessage>(1024);
    let mut cfg = config(Admission::open());
    cfg.tap = Some(tap_tx);
    let relay = start(cfg).await;
    let url = relay.url.clone();
    let (ka, kb) = (key(1), key(2));
    let node_a = LocalNode::new(NodeConfig::new(ka.clone())).unwrap();
    let node_b = LocalNode::new(NodeConfig::new(kb.clone())).unwrap();
    let mut control = reserve(&url, &kb).await;
    let mut a = login_stream(&url, &ka, Purpose::Dial { target: kb.peer_id() }).await;
    let circuit = expect_incoming(&mut control).await;
    let mut b = login_stream(&url, &kb, Purpose::Accept { circuit }).await;
    assert!(matches!(stream_next(&mut a).await, RelayMessage::CircuitReady { .. }));
    assert!(matches!(stream_next(&mut b).await, RelayMessage::CircuitReady { .. }));

    const MARKER: &[u8] = b"KIZUNA-PLAINTEXT-MARKER-7f3a9c-never-on-the-wire";
    let pb = kb.peer_id();
    let sender = async move {
        let (mut tls, _) = node_a.secure().connect(a, pb, T).await.unwrap();
        for _ in 0..4 {
            tls.write_all(MARKER).await.unwrap();
        }
        tls.flush().await.unwrap();
        let mut ack = [0u8; 2];
        tls.read_exact(&mut ack).await.unwrap();
        assert_eq!(&ack, b"ok");
    };
    let receiver = async move {
        let (mut tls, peer) = node_b.secure().accept(b, T).await.unwrap();
        assert_eq!(peer, ka.peer_id());
        let mut got = vec![0u8; MARKER.len() * 4];
        tls.read_exact(&mut got).await.unwrap();
        tls.write_all(b"ok").await.unwrap();
        tls.flush().await.unwrap();
        got
    };
    let ((), got) = tokio::time::timeout(T, async { tokio::join!(sender, receiver) }).await.unwrap();
    assert_eq!(got, MARKER.repeat(4), "the receiver gets the plaintext");

    let mut seen = Vec::new();
    let mut messages = 0;
    while let Ok(m) = tap_rx.try_recv() {
        messages += 1;
        seen.extend_from_slice(&m.data);
    }
    assert!(messages >= 4 && seen.len() > MARKER.len() * 4, "the tap saw the circuit: {messages} messages");
    assert!(!seen.windows(MARKER.len()).any(|w| w == MARKER), "the marker crossed the relay in clear");
}

#[actix_rt::test]
async fn circuit_and_reservation_counts_are_limited() {
    let mut cfg = config(Admission::open());
    cfg.limits =
        RelayLimits { max_reservations: 3, max_circuits: 2, max_circuits_per_peer: 1, ..cfg.limits.clone() };
    let relay = start(cfg).await;
    let url = relay.url.as_str();
    let mut cb = reserve(url, &key(2)).await;
    let mut cd = reserve(url, &key(4)).await;
    let _cf = reserve(url, &key(6)).await;
    // A fourth reservation: error 9, the connection stays usable.
    let mut cg = login(url, &key(8), None, Purpose::Control).await;
    send(&mut cg, &RelayMessage::Reserve { ttl_secs: 60 }).await;
    match next(&mut cg).await {
        Got::Msg(RelayMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::ReservationLimit),
        other => panic!("{other:?}"),
    }
    // Circuits per peer: a second dial by peer 1 is refused.
    let _a1 = login(url, &key(1), None, Purpose::Dial { target: key(2).peer_id() }).await;
    expect_incoming(&mut cb).await;
    let mut a2 = login(url, &key(1), None, Purpose::Dial { target: key(4).peer_id() }).await;
    expect_refused(&mut a2, ErrorCode::CircuitLimitPeer).await;
    // Circuits in total: the third one.
    let _c1 = login(url, &key(3), None, Purpose::Dial { target: key(4).peer_id() }).await;
    expect_incoming(&mut cd).await;
    let mut e1 = login(url, &key(5), None, Purpose::Dial { target: key(6).peer_id() }).await;
    expect_refused(&mut e1, ErrorCode::CircuitLimitTotal).await;
    // The first pending circuit is unaffected: its target can still accept it.
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert_eq!(m.limit_hits.reservations, 1);
    assert_eq!(m.limit_hits.circuits_per_peer, 1);
    assert_eq!(m.limit_hits.circuits_total, 1);
    assert_eq!(m.circuits_pending, 2);
    // The reservation refused earlier succeeds once a slot frees up.
    drop(_cf);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut cg, &RelayMessage::Reserve { ttl_secs: 60 }).await;
    assert!(matches!(next(&mut cg).await, Got::Msg(RelayMessage::Reserved { .. })));
}

#[actix_rt::test]
async fn data_cap_and_bandwidth_are_enforced_per_circuit() {
    let mut cfg = config(Admission::open());
    cfg.limits =
        RelayLimits { max_circuit_bytes: 100_000, circuit_bandwidth: 64 * 1024, ..cfg.limits.clone() };
    let relay = start(cfg).await;
    let url = relay.url.as_str();
    let (ka, kb, kc, kd) = (key(1), key(2), key(3), key(4));
    let mut cb = reserve(url, &kb).await;
    let mut cd = reserve(url, &kd).await;
    let (mut a, mut b) = circuit(url, &ka, &kb, &mut cb).await;
    let (mut c, mut d) = circuit(url, &kc, &kd, &mut cd).await;
    let chunk = vec![7u8; 40_000];
    // Two messages fit the cap (80 000 bytes); the second waits for the bucket
    // (64 KiB burst at 64 KiB/s shared by two circuits); the third would cross the cap.
    for _ in 0..2 {
        a.send(Message::Binary(chunk.clone().into())).await.unwrap();
        assert!(matches!(next(&mut b).await, Got::Data(d) if d.len() == 40_000));
    }
    a.send(Message::Binary(chunk.clone().into())).await.unwrap();
    for ws in [&mut a, &mut b] {
        expect_refused(ws, ErrorCode::DataCap).await;
    }
    // The other circuit is unaffected.
    c.send(Message::Binary(vec![1u8; 1000].into())).await.unwrap();
    assert!(matches!(next(&mut d).await, Got::Data(x) if x.len() == 1000));
    // Byte reports are batched (64 KiB or 100 ms): wait for the last one.
    let mut m = relay.addr.send(GetRelayMetrics).await.unwrap();
    for _ in 0..50 {
        if m.totals.bytes_forwarded == 81_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = relay.addr.send(GetRelayMetrics).await.unwrap();
    }
    assert_eq!(m.limit_hits.data_cap, 1);
    assert!(m.limit_hits.bandwidth >= 1, "{:?}", m.limit_hits);
    assert_eq!(m.totals.bytes_forwarded, 81_000, "{:?}", m.totals);
    assert_eq!(m.circuits_open, 1);
}

#[actix_rt::test]
async fn a_burst_of_new_circuits_does_not_stop_a_circuit_under_backpressure() {
    // Every new circuit changes every open circuit's fair share (total / open).
    let mut cfg = config(Admission::open());
    cfg.limits = RelayLimits {
        circuit_bandwidth: 1 << 30,
        total_bandwidth: 1 << 30,
        max_circuit_bytes: 1 << 40,
        ..cfg.limits.clone()
    };
    let relay = start(cfg).await;
    let url = relay.url.clone();
    let kb = key(2);
    let mut cb = reserve(&url, &kb).await;
    let (mut a, mut b) = circuit(&url, &key(1), &kb, &mut cb).await;
    // b does not read: a's data fills the sockets and the forwarder waits on its write
    // (backpressure, not a fault).
    const MSGS: usize = 512; // 32 MiB, far beyond loopback socket buffers
    let writer = actix_rt::spawn(async move {
        for _ in 0..MSGS {
            a.send(Message::Binary(vec![3u8; 64 * 1024].into())).await.unwrap();
        }
        a
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // More new circuits (each a new fair share) than the forwarder's command queue holds.
    let mut others = Vec::new();
    for i in 0..24 {
        others.push(circuit(&url, &key(10 + i), &kb, &mut cb).await);
    }
    // Once b reads again, everything arrives: the circuit survived the burst.
    let mut got = 0;
    while got < MSGS * 64 * 1024 {
        match next(&mut b).await {
            Got::Data(d) => got += d.len(),
            other => panic!("after {got} bytes: {other:?}"),
        }
    }
    writer.await.unwrap();
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert_eq!(m.circuits_open, 25);
}

#[actix_rt::test]
async fn circuit_duration_is_limited() {
    let mut cfg = config(Admission::open());
    cfg.limits = RelayLimits { max_circuit_duration: Duration::from_secs(1), ..cfg.limits.clone() };
    let relay = start(cfg).await;
    let url = relay.url.as_str();
    let mut cb = reserve(url, &key(2)).await;
    let (mut a, mut b) = circuit(url, &key(1), &key(2), &mut cb).await;
    for ws in [&mut a, &mut b] {
        expect_refused(ws, ErrorCode::DurationLimit).await;
    }
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert_eq!(m.limit_hits.duration, 1);
    // The control connection is unaffected.
    send(&mut cb, &RelayMessage::Reserve { ttl_secs: 60 }).await;
    assert!(matches!(next(&mut cb).await, Got::Msg(RelayMessage::Reserved { .. })));
}

#[actix_rt::test]
async fn hostile_messages_cost_only_their_sender() {
    let relay = start(config(Admission::open())).await;
    let url = relay.url.as_str();
    let mut cb = reserve(url, &key(2)).await;

    // Garbage instead of auth.
    let mut w = raw_connect(url, Some("kizuna")).await.unwrap();
    let _challenge = next(&mut w).await;
    w.send(Message::Binary(vec![0xc1, 0xff, 0x00].into())).await.unwrap();
    expect_refused(&mut w, ErrorCode::ProtocolViolation).await;
    // Out of order: reserve before auth.
    let mut w = raw_connect(url, Some("kizuna")).await.unwrap();
    let _challenge = next(&mut w).await;
    send(&mut w, &RelayMessage::Reserve { ttl_secs: 5 }).await;
    expect_refused(&mut w, ErrorCode::ProtocolViolation).await;
    // Garbage after the handshake.
    let mut w = login(url, &key(5), None, Purpose::Control).await;
    w.send(Message::Binary(vec![0x93, 0x01].into())).await.unwrap();
    expect_refused(&mut w, ErrorCode::ProtocolViolation).await;
    // A message not allowed on a control connection.
    let mut w = login(url, &key(6), None, Purpose::Control).await;
    send(&mut w, &RelayMessage::Accept { circuit: kizuna::relay::CircuitId(99) }).await;
    expect_refused(&mut w, ErrorCode::ProtocolViolation).await;
    // Text, and an oversized message: dropped by the WebSocket binding.
    let mut w = login(url, &key(7), None, Purpose::Control).await;
    w.send(Message::Text("hello".into())).await.unwrap();
    assert!(matches!(next(&mut w).await, Got::Closed(_) | Got::Msg(RelayMessage::Error { .. })));
    let mut w = login(url, &key(8), None, Purpose::Control).await;
    let _ = w.send(Message::Binary(vec![0u8; 200_000].into())).await;
    loop {
        if let Got::Closed(_) = next(&mut w).await {
            break;
        }
    }

    // The relay still serves the others.
    let (mut a, mut b) = circuit(url, &key(1), &key(2), &mut cb).await;
    a.send(Message::Binary(vec![9u8; 10].into())).await.unwrap();
    assert!(matches!(next(&mut b).await, Got::Data(d) if d.len() == 10));
    let m = relay.addr.send(GetRelayMetrics).await.unwrap();
    assert!(m.totals.protocol_violations >= 3, "{:?}", m.totals);
}

#[actix_rt::test]
async fn a_websocket_client_without_the_subprotocol_is_refused() {
    let relay = start(config(Admission::open())).await;
    match raw_connect(&relay.url, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 400);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("kizuna"), "{body}");
        }
        other => panic!("expected HTTP 400, got {:?}", other.map(|_| ())),
    }
    assert!(raw_connect(&relay.url, Some("chat")).await.is_err());
    let _ok = reserve(&relay.url, &key(1)).await;
}

#[actix_rt::test]
async fn a_restarted_relay_takes_reservations_again() {
    let relay = start(config(Admission::open())).await;
    let mut b = reserve(&relay.url, &key(2)).await;
    relay.addr.send(StopRelay).await.unwrap();
    expect_refused(&mut b, ErrorCode::Shutdown).await;
    assert!(raw_connect(&relay.url, Some("kizuna")).await.is_err(), "the stopped relay still accepts");

    let mut cfg = config(Admission::open());
    cfg.listen = relay.local_addr;
    let again = start(cfg).await;
    assert_eq!(again.url, relay.url);
    let mut b = reserve(&again.url, &key(2)).await;
    let _a = login(&again.url, &key(1), None, Purpose::Dial { target: key(2).peer_id() }).await;
    expect_incoming(&mut b).await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out)).await.unwrap().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[actix_rt::test]
async fn metrics_over_http_and_stun_binding() {
    let mut cfg = config(Admission::open());
    cfg.stats_addr = Some("127.0.0.1:0".parse().unwrap());
    cfg.stun = vec!["127.0.0.1:0".parse().unwrap()];
    let relay = start(cfg).await;
    let _b = reserve(&relay.url, &key(2)).await;
    let stats = relay.stats_addr.unwrap();
    let (head, body) = http_get(stats, "/stats").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reservations"], 1);
    assert_eq!(v["totals"]["connections"], 1);
    assert_eq!(v["totals"]["reservations_granted"], 1);
    assert_eq!(v["peers"][0]["peer"], key(2).peer_id().to_string());
    assert!(v["limit_hits"]["data_cap"].is_u64());
    let (head, _) = http_get(stats, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = http_get(stats, "/nope").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    use stun_rs::{
        attributes::stun::XorMappedAddress, methods::BINDING, MessageClass, MessageDecoderBuilder,
        MessageEncoderBuilder, StunAttribute, StunMessageBuilder,
    };
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req = StunMessageBuilder::new(BINDING, MessageClass::Request).build();
    let mut buf = [0u8; 128];
    let n = MessageEncoderBuilder::default().build().encode(&mut buf, &req).unwrap();
    sock.send_to(&buf[..n], relay.stun_addrs[0]).await.unwrap();
    let mut resp = [0u8; 1500];
    let (n, from) = tokio::time::timeout(T, sock.recv_from(&mut resp)).await.unwrap().unwrap();
    assert_eq!(from, relay.stun_addrs[0]);
    let (msg, _) = MessageDecoderBuilder::default().build().decode(&resp[..n]).unwrap();
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
    assert_eq!(msg.transaction_id(), req.transaction_id());
    let Some(StunAttribute::XorMappedAddress(x)) = msg.get::<XorMappedAddress>() else { panic!("{msg:?}") };
    assert_eq!(x.socket_address(), &sock.local_addr().unwrap());
    // Garbage gets no answer and does not stop the responder.
    sock.send_to(b"not stun at all", relay.stun_addrs[0]).await.unwrap();
    sock.send_to(&buf[..n], relay.stun_addrs[0]).await.unwrap();
    let (n2, _) = tokio::time::timeout(T, sock.recv_from(&mut resp)).await.unwrap().unwrap();
    assert!(n2 > 20);
}

#[test]
fn cli_refuses_to_start_without_an_admission_rule_and_prints_its_url() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };
    let bin = env!("CARGO_BIN_EXE_kizuna");
    let out = Command::new(bin).args(["relay", "--listen", "ws://127.0.0.1:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pass --allow, --allow-file, --token-secret or --open"), "{err}");

    let mut child = Command::new(bin)
        .args(["relay", "--listen", "ws://127.0.0.1:0", "--open", "--stun", "127.0.0.1:0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "listening");
    assert!(first["url"].as_str().unwrap().starts_with("ws://127.0.0.1:"), "{first}");
    assert_eq!(first["stun"].as_array().unwrap().len(), 1);
    // SIGTERM: graceful stop, last line "shutdown", exit 0.
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let last: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(last["event"], "shutdown");
    assert!(child.wait().unwrap().success());

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, [7u8; 32]).unwrap();
    let peer = key(3).peer_id().to_string();
    let out = Command::new(bin)
        .args(["relay", "token", "--secret", secret.to_str().unwrap(), "--peer", &peer, "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let expiry =
        kizuna::relay::auth::verify_token(&[7u8; 32], &key(3).peer_id(), token.trim(), unix_now()).unwrap();
    assert!(expiry > unix_now() + 3500);
}

/// `reserved` tells the client where the relay sees it come from and which STUN servers
/// to learn its UDP mapping from; a wildcard STUN address is advertised as the IP the
/// client reached the relay on.
#[actix_rt::test]
async fn reserved_reports_observed_address_and_stun_servers() {
    let mut cfg = config(Admission::open());
    cfg.stun = vec!["0.0.0.0:0".parse().unwrap()];
    let relay = start(cfg).await;
    let mut ws = login(&relay.url, &key(2), None, Purpose::Control).await;
    send(&mut ws, &RelayMessage::Reserve { ttl_secs: 600 }).await;
    let Got::Msg(RelayMessage::Reserved { observed, stun, .. }) = next(&mut ws).await else {
        panic!("expected reserved")
    };
    let observed = observed.expect("the relay reports the observed address");
    assert_eq!(observed.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_ne!(observed.port(), 0);
    let port = relay.stun_addrs[0].port();
    assert_eq!(stun, vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))]);
}
