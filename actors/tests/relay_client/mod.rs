//! A tiny relay test client for the relay-server tests: a plain tokio-tungstenite
//! WebSocket (so close codes are visible) driven through the relay handshake with
//! `kizuna::relay::auth::client_handshake`, or a Kizuna `WsStream` (for circuits that
//! carry a real secure channel).

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)] // Tests: a panic is the failure report.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use kizuna::{
    relay::{auth::client_handshake, ErrorCode, Purpose, RelayMessage},
    transport::ws::{ws_connect, WsOptions, WsSocket, WsStream},
    Keypair,
};
use kizuna_actors::relay::{RelayHandle, RelayServer, RelayServerConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    client_async,
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    WebSocketStream,
};

/// Bound on every wait in these tests.
pub const T: Duration = Duration::from_secs(10);

/// A raw WebSocket to the relay.
pub type Raw = WebSocketStream<TcpStream>;

/// What the relay sent next.
#[derive(Debug)]
pub enum Got {
    /// A decoded relay message.
    Msg(RelayMessage),
    /// Circuit data or anything that does not decode.
    Data(Bytes),
    /// A close frame with this code (None: no code), or the end of the stream.
    Closed(Option<u16>),
}

/// Starts a relay on loopback.
pub async fn start(config: RelayServerConfig) -> RelayHandle {
    RelayServer::start(config).await.expect("relay starts")
}

/// A config on a free loopback port. The circuits these tests open with [`circuit`] carry
/// test bytes, not an end-to-end handshake, so the unconfirmed-circuit rules are relaxed
/// here (see [`strict_config`]).
pub fn config(admission: kizuna::relay::auth::Admission) -> RelayServerConfig {
    let mut c = strict_config(admission);
    c.limits.circuit_handshake_timeout = Duration::from_secs(3600);
    c.limits.max_unconfirmed_per_initiator = 1024;
    c.limits.max_unconfirmed_per_address = 1024;
    c.limits.max_unconfirmed_per_target = 1024;
    c
}

/// A config on a free loopback port with every default limit.
pub fn strict_config(admission: kizuna::relay::auth::Admission) -> RelayServerConfig {
    RelayServerConfig::new("127.0.0.1:0".parse().unwrap(), admission)
}

/// A key from a seed.
pub fn key(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

/// Opens a WebSocket offering `subprotocol`.
pub async fn raw_connect(
    url: &str,
    subprotocol: Option<&str>,
) -> Result<Raw, tokio_tungstenite::tungstenite::Error> {
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let tcp = TcpStream::connect(addr).await?;
    upgrade(tcp, url, subprotocol).await
}

/// [`raw_connect`] with the `kizuna` subprotocol from the local address `from` (e.g.
/// `127.0.0.2`, to look like another host on loopback).
pub async fn raw_connect_from(url: &str, from: &str) -> Result<Raw, tokio_tungstenite::tungstenite::Error> {
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{from}:0").parse().unwrap())?;
    let tcp = sock.connect(addr.parse().unwrap()).await?;
    upgrade(tcp, url, Some("kizuna")).await
}

async fn upgrade(
    tcp: TcpStream,
    url: &str,
    subprotocol: Option<&str>,
) -> Result<Raw, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    if let Some(p) = subprotocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    Ok(client_async(req, tcp).await?.0)
}

/// Sends one relay message.
pub async fn send(ws: &mut Raw, msg: &RelayMessage) {
    ws.send(Message::Binary(msg.encode().unwrap().into())).await.unwrap();
}

/// The next thing the relay sends (pings skipped), within [`T`].
pub async fn next(ws: &mut Raw) -> Got {
    loop {
        let m = tokio::time::timeout(T, ws.next()).await.expect("relay answered in time");
        return match m {
            Some(Ok(Message::Binary(b))) => match RelayMessage::decode(&b) {
                Ok(m) => Got::Msg(m),
                Err(_) => Got::Data(b),
            },
            Some(Ok(Message::Close(f))) => Got::Closed(f.map(|f| u16::from(f.code))),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(_)) | None => Got::Closed(None),
        };
    }
}

/// Expects `error {code}` then a close with 4000 + code.
pub async fn expect_refused(ws: &mut Raw, code: ErrorCode) {
    match next(ws).await {
        Got::Msg(RelayMessage::Error { code: c, message }) => assert_eq!(c, code, "{message}"),
        other => panic!("expected error {code:?}, got {other:?}"),
    }
    expect_closed(ws, code).await;
}

/// Expects a close with 4000 + code.
pub async fn expect_closed(ws: &mut Raw, code: ErrorCode) {
    match next(ws).await {
        Got::Closed(c) => assert_eq!(c, Some(code.ws_close_code())),
        other => panic!("expected close {}, got {other:?}", code.ws_close_code()),
    }
}

/// Connects, answers the challenge as `key` (with `token`) and declares `purpose`.
pub async fn login(url: &str, key: &Keypair, token: Option<&str>, purpose: Purpose) -> Raw {
    let ws = raw_connect(url, Some("kizuna")).await.unwrap();
    answer_challenge(ws, url, key, token, purpose).await
}

/// [`login`] without a token from the local address `from` (see [`raw_connect_from`]).
pub async fn login_from(url: &str, from: &str, key: &Keypair, purpose: Purpose) -> Raw {
    let ws = raw_connect_from(url, from).await.unwrap();
    answer_challenge(ws, url, key, None, purpose).await
}

async fn answer_challenge(
    mut ws: Raw,
    url: &str,
    key: &Keypair,
    token: Option<&str>,
    purpose: Purpose,
) -> Raw {
    let challenge = match next(&mut ws).await {
        Got::Msg(m) => m,
        other => panic!("expected challenge, got {other:?}"),
    };
    for m in client_handshake(key, &challenge, url, token, purpose).unwrap() {
        send(&mut ws, &m).await;
    }
    ws
}

/// A control connection holding a reservation.
pub async fn reserve(url: &str, key: &Keypair) -> Raw {
    let mut ws = login(url, key, None, Purpose::Control).await;
    send(&mut ws, &RelayMessage::Reserve { ttl_secs: 600 }).await;
    match next(&mut ws).await {
        Got::Msg(RelayMessage::Reserved { expires_in_secs, .. }) => assert!(expires_in_secs > 0),
        other => panic!("expected reserved, got {other:?}"),
    }
    ws
}

/// Expects `incoming` on a control connection; returns the circuit id.
pub async fn expect_incoming(ws: &mut Raw) -> kizuna::relay::CircuitId {
    match next(ws).await {
        Got::Msg(RelayMessage::Incoming { circuit, .. }) => circuit,
        other => panic!("expected incoming, got {other:?}"),
    }
}

/// Expects `circuit_ready`.
pub async fn expect_ready(ws: &mut Raw) {
    match next(ws).await {
        Got::Msg(RelayMessage::CircuitReady { .. }) => {}
        other => panic!("expected circuit_ready, got {other:?}"),
    }
}

/// A dialer and an acceptor with an open circuit between them (`target` must hold a
/// reservation on `control`).
pub async fn circuit(url: &str, dialer: &Keypair, target: &Keypair, control: &mut Raw) -> (Raw, Raw) {
    let mut a = login(url, dialer, None, Purpose::Dial { target: target.peer_id() }).await;
    let circuit = expect_incoming(control).await;
    let mut b = login(url, target, None, Purpose::Accept { circuit }).await;
    expect_ready(&mut a).await;
    expect_ready(&mut b).await;
    (a, b)
}

/// The same handshake over a Kizuna `WsStream` (message mode), returning the stream.
pub async fn login_stream(url: &str, key: &Keypair, purpose: Purpose) -> WsStream<WsSocket> {
    let mut ws = ws_connect(url, &WsOptions::default()).await.unwrap();
    let challenge = RelayMessage::decode(&ws.recv_message().await.unwrap().unwrap()).unwrap();
    for m in client_handshake(key, &challenge, url, None, purpose).unwrap() {
        ws.send_message(m.encode().unwrap().into()).await.unwrap();
    }
    ws
}

/// Reads relay messages on a `WsStream` until one matches.
pub async fn stream_next(ws: &mut WsStream<WsSocket>) -> RelayMessage {
    let b = tokio::time::timeout(T, ws.recv_message()).await.unwrap().unwrap().unwrap();
    RelayMessage::decode(&b).unwrap()
}
