//! The service protocol in process: two nodes on loopback, a server running
//! `services::serve`, and clients using the helpers or speaking raw headers to check that
//! hostile requests are refused cleanly.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::{path::Path, time::Duration};

use actix::Addr;
use kizuna::{ByteStream, Keypair, PeerAddress, PeerId, Protocol, TransportAddr};
use kizuna_actors::{
    api::{Connect, GetAddress, Listen, OpenStream},
    services::{self, header, Request, Response, ServiceError, PING_TIMEOUT},
    EventStream, Subscribe, Supervisor, SupervisorConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

struct Pair {
    client: Addr<Supervisor>,
    events: EventStream,
    server_peer: PeerId,
}

async fn start(seed: u8, protocol: Protocol) -> Addr<Supervisor> {
    let mut c = SupervisorConfig::new(Keypair::from_seed([seed; 32]));
    c.protocols = vec![protocol];
    Supervisor::start(c).expect("start node")
}

async fn pair(protocol: Protocol, recv_dir: Option<&Path>) -> Pair {
    let server = start(1, protocol).await;
    let lo = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let addr = match protocol {
        Protocol::Quic => TransportAddr::Quic(lo),
        _ => TransportAddr::Tcp(lo),
    };
    server.send(Listen { addr }).await.unwrap().expect("listen");
    let ev = server.send(Subscribe::default()).await.unwrap();
    actix::spawn(services::serve(server.clone(), ev, recv_dir.map(Path::to_path_buf)));
    let ticket: PeerAddress = server.send(GetAddress).await.unwrap();
    let client = start(2, protocol).await;
    let events = client.send(Subscribe::default()).await.unwrap();
    let server_peer = ticket.peer_id;
    client.send(Connect { addr: ticket }).await.unwrap().expect("connect");
    Pair { client, events, server_peer }
}

impl Pair {
    async fn stream(&self) -> ByteStream {
        self.client.send(OpenStream { peer: self.server_peer }).await.unwrap().expect("open stream")
    }
}

async fn reply(s: &mut ByteStream) -> Response {
    tokio::time::timeout(T, header::expect::<_, Response>(s)).await.expect("reply in time").expect("a reply")
}

fn sha(data: &[u8]) -> String {
    services::names::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

#[actix_rt::test]
async fn helpers_work_over_both_transports() {
    for p in [Protocol::Tcp, Protocol::Quic] {
        let dir = tempfile::tempdir().unwrap();
        let mut pair = pair(p, Some(dir.path())).await;
        for seq in 1..=3 {
            services::ping(&pair.client, &mut pair.events, pair.server_peer, seq, PING_TIMEOUT)
                .await
                .unwrap();
        }
        let r = services::perf(&pair.client, pair.server_peer, 1 << 20, 3 << 20).await.unwrap();
        assert_eq!((r.upload_bytes, r.download_bytes), (1 << 20, 3 << 20));
        let src = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = src.path().join("f.bin");
        std::fs::write(&file, &data).unwrap();
        let rep = services::send_file(&pair.client, pair.server_peer, &file, |_| {}).await.unwrap();
        assert_eq!(rep.sha256, sha(&data));
        assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), data);
    }
}

#[actix_rt::test]
async fn malformed_and_oversized_headers_get_an_error_and_the_server_survives() {
    let pair = pair(Protocol::Tcp, None).await;
    let mut s = pair.stream().await;
    s.write_all(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1]).await.unwrap();
    assert!(matches!(reply(&mut s).await, Response::Error { message } if message.contains("malformed")));

    let mut s = pair.stream().await;
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(matches!(reply(&mut s).await, Response::Error { message } if message.contains("limit")));

    let mut s = pair.stream().await;
    header::write(&mut s, &Request::Perf { upload: 0, download: u64::MAX }).await.unwrap();
    assert!(matches!(reply(&mut s).await, Response::Error { message } if message.contains("exceeds")));

    // Still serving.
    let r = services::perf(&pair.client, pair.server_peer, 1000, 1000).await.unwrap();
    assert_eq!(r.download_bytes, 1000);
}

#[actix_rt::test]
async fn file_requests_are_confined_to_the_receive_directory() {
    let root = tempfile::tempdir().unwrap();
    let inbox = root.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let pair = pair(Protocol::Tcp, Some(&inbox)).await;
    let h = sha(b"x");
    for name in ["../evil", "/tmp/evil", "..", "a/b", "x.part", ""] {
        let mut s = pair.stream().await;
        let req = Request::File { name: name.into(), size: 1, sha256: h.clone(), offset: 0 };
        header::write(&mut s, &req).await.unwrap();
        assert!(matches!(reply(&mut s).await, Response::Error { .. }), "{name:?} accepted");
        let mut s = pair.stream().await;
        header::write(&mut s, &Request::FileStat { name: name.into(), size: 1, sha256: h.clone() })
            .await
            .unwrap();
        assert!(matches!(reply(&mut s).await, Response::Error { .. }), "{name:?} stat accepted");
    }
    assert!(!root.path().join("evil").exists());
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0);
}

#[actix_rt::test]
async fn wrong_hash_is_reported_and_the_partial_file_discarded() {
    let inbox = tempfile::tempdir().unwrap();
    let pair = pair(Protocol::Tcp, Some(inbox.path())).await;
    let mut s = pair.stream().await;
    let data = b"hello world";
    let req =
        Request::File { name: "h.txt".into(), size: data.len() as u64, sha256: sha(b"other"), offset: 0 };
    header::write(&mut s, &req).await.unwrap();
    assert_eq!(reply(&mut s).await, Response::Ready { offset: 0 });
    s.write_all(data).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(reply(&mut s).await, Response::FileDone { ok: false, sha256: sha(data) });
    assert!(!inbox.path().join("h.txt").exists());
    assert!(!inbox.path().join("h.txt.part").exists());
}

#[actix_rt::test]
async fn interrupted_upload_resumes() {
    let inbox = tempfile::tempdir().unwrap();
    let pair = pair(Protocol::Quic, Some(inbox.path())).await;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    {
        let mut s = pair.stream().await;
        let req =
            Request::File { name: "r.bin".into(), size: data.len() as u64, sha256: sha(&data), offset: 0 };
        header::write(&mut s, &req).await.unwrap();
        assert_eq!(reply(&mut s).await, Response::Ready { offset: 0 });
        s.write_all(&data[..400_000]).await.unwrap();
        s.shutdown().await.unwrap();
        // The server gives up on the truncated upload and closes.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(T, s.read_to_end(&mut rest)).await;
    }
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("r.bin");
    std::fs::write(&file, &data).unwrap();
    let rep = services::send_file(&pair.client, pair.server_peer, &file, |_| {}).await.unwrap();
    assert_eq!(rep.resumed_from, 400_000);
    assert_eq!(rep.sent, 600_000);
    assert_eq!(std::fs::read(inbox.path().join("r.bin")).unwrap(), data);
}

#[actix_rt::test]
async fn ping_times_out_without_an_echo_service() {
    // A server that does not serve: no echo comes back.
    let server = start(3, Protocol::Tcp).await;
    server.send(Listen { addr: "tcp=127.0.0.1:0".parse().unwrap() }).await.unwrap().unwrap();
    let ticket = server.send(GetAddress).await.unwrap();
    let client = start(4, Protocol::Tcp).await;
    let mut events = client.send(Subscribe::default()).await.unwrap();
    client.send(Connect { addr: ticket.clone() }).await.unwrap().unwrap();
    let r = services::ping(&client, &mut events, ticket.peer_id, 1, Duration::from_millis(300)).await;
    assert!(matches!(r, Err(ServiceError::Timeout(_))), "{r:?}");
}
