//! The service protocol in process: two nodes on loopback, a server running
//! `services::serve`, and clients using the helpers or speaking raw headers to check that
//! hostile requests are refused cleanly.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use actix::Addr;
use kizuna::{ByteStream, Keypair, PeerAddress, PeerId, Protocol, TransportAddr};
use kizuna_actors::{
    api::{Connect, GetAddress, Listen, OpenStream},
    services::{self, header, Request, Response, ServeOptions, ServiceError, PING_TIMEOUT},
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

/// Starts a serving node (seed 1) listening on loopback; returns its ticket.
async fn server(protocol: Protocol, opts: ServeOptions) -> PeerAddress {
    let server = start(1, protocol).await;
    let lo = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let addr = match protocol {
        Protocol::Quic => TransportAddr::Quic(lo),
        _ => TransportAddr::Tcp(lo),
    };
    server.send(Listen { addr }).await.unwrap().expect("listen");
    let ev = server.send(Subscribe::default()).await.unwrap();
    actix::spawn(services::serve_with(server.clone(), ev, opts));
    server.send(GetAddress).await.unwrap()
}

/// A client node with identity `seed`, connected to the server at `ticket`.
async fn client(seed: u8, protocol: Protocol, ticket: &PeerAddress) -> Pair {
    let client = start(seed, protocol).await;
    let events = client.send(Subscribe::default()).await.unwrap();
    client.send(Connect { addr: ticket.clone() }).await.unwrap().expect("connect");
    Pair { client, events, server_peer: ticket.peer_id }
}

async fn pair(protocol: Protocol, recv_dir: Option<&Path>) -> Pair {
    let opts = ServeOptions { recv_dir: recv_dir.map(Path::to_path_buf), ..ServeOptions::default() };
    client(2, protocol, &server(protocol, opts).await).await
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

/// A receive directory `inbox` inside a temporary root that also holds `outside`, a file
/// the node must never touch.
struct Sandbox {
    root: tempfile::TempDir,
    inbox: PathBuf,
    outside: PathBuf,
}

/// What must stay the same about a file nobody may write.
#[derive(Debug, PartialEq)]
struct Untouched {
    data: Vec<u8>,
    modified: SystemTime,
}

impl Sandbox {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let inbox = root.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        let outside = root.path().join("outside.txt");
        std::fs::write(&outside, b"not for peers").unwrap();
        Sandbox { root, inbox, outside }
    }

    fn untouched(&self) -> Untouched {
        let data = std::fs::read(&self.outside).unwrap();
        Untouched { data, modified: std::fs::metadata(&self.outside).unwrap().modified().unwrap() }
    }

    /// A source file `name` with `data`, outside both directories.
    fn source(&self, name: &str, data: &[u8]) -> PathBuf {
        let dir = self.root.path().join("src");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    /// Asserts that a refusal names nothing of the node's file system beyond the file name.
    fn assert_no_path(&self, message: &str) {
        let root = self.root.path().to_str().unwrap();
        assert!(!message.contains(root), "the refusal reveals a local path: {message}");
    }
}

/// `send_file` that must be refused; returns the refusal.
async fn refused(pair: &Pair, file: &Path) -> String {
    let r = tokio::time::timeout(T, services::send_file(&pair.client, pair.server_peer, file, |_| {}))
        .await
        .expect("an answer in time");
    match r {
        Err(ServiceError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A raw request whose answer must be an error; returns its message.
async fn error_reply(pair: &Pair, req: &Request) -> String {
    let mut s = pair.stream().await;
    header::write(&mut s, req).await.unwrap();
    match reply(&mut s).await {
        Response::Error { message } => message,
        other => panic!("{req:?} answered {other:?}"),
    }
}

fn stat_req(name: &str, data: &[u8]) -> Request {
    Request::FileStat { name: name.into(), size: data.len() as u64, sha256: sha(data) }
}

fn file_req(name: &str, data: &[u8], offset: u64) -> Request {
    Request::File { name: name.into(), size: data.len() as u64, sha256: sha(data), offset }
}

#[actix_rt::test]
async fn a_part_file_planted_as_a_symlink_is_never_followed() {
    let sb = Sandbox::new();
    let before = sb.untouched();
    let pair = pair(Protocol::Tcp, Some(&sb.inbox)).await;
    std::os::unix::fs::symlink(&sb.outside, sb.inbox.join("a.bin.part")).unwrap();
    let data = b"an upload aimed at the link".to_vec();

    // file_stat does not describe the outside file (its size or hash).
    let m = error_reply(&pair, &stat_req("a.bin", &data)).await;
    assert!(m.contains("a.bin.part") && m.contains("symbolic link"), "{m}");
    sb.assert_no_path(&m);
    // Neither the helper nor a raw upload writes through it.
    let m = refused(&pair, &sb.source("a.bin", &data)).await;
    sb.assert_no_path(&m);
    let m = error_reply(&pair, &file_req("a.bin", &data, 0)).await;
    assert!(m.contains("symbolic link"), "{m}");
    assert_eq!(sb.untouched(), before);
    assert!(!sb.inbox.join("a.bin").exists());

    // A dangling link: nothing is created where it points.
    let target = sb.root.path().join("created-through-the-link");
    std::os::unix::fs::symlink(&target, sb.inbox.join("b.bin.part")).unwrap();
    let m = refused(&pair, &sb.source("b.bin", &data)).await;
    sb.assert_no_path(&m);
    assert!(!target.exists(), "a file was created through a dangling link");
    assert!(std::fs::symlink_metadata(sb.inbox.join("b.bin.part")).unwrap().file_type().is_symlink());
}

#[actix_rt::test]
async fn a_final_name_planted_as_a_symlink_already_exists() {
    let sb = Sandbox::new();
    let before = sb.untouched();
    let pair = pair(Protocol::Tcp, Some(&sb.inbox)).await;
    let data = b"aimed at the final name".to_vec();
    let nowhere = sb.root.path().join("nowhere");
    for (name, to) in [("c.bin", &sb.outside), ("d.bin", &nowhere)] {
        std::os::unix::fs::symlink(to, sb.inbox.join(name)).unwrap();
        let m = refused(&pair, &sb.source(name, &data)).await;
        assert!(m.contains("already exists"), "{m}");
        sb.assert_no_path(&m);
        assert!(error_reply(&pair, &stat_req(name, &data)).await.contains("already exists"));
    }

    // Planted while the upload runs: the final rename does not replace it either.
    let mut s = pair.stream().await;
    header::write(&mut s, &file_req("e.bin", &data, 0)).await.unwrap();
    assert_eq!(reply(&mut s).await, Response::Ready { offset: 0 });
    std::os::unix::fs::symlink(&sb.outside, sb.inbox.join("e.bin")).unwrap();
    s.write_all(&data).await.unwrap();
    s.flush().await.unwrap();
    let Response::Error { message } = reply(&mut s).await else { panic!("the rename replaced a link") };
    assert!(message.contains("e.bin already exists"), "{message}");
    sb.assert_no_path(&message);
    assert!(std::fs::symlink_metadata(sb.inbox.join("e.bin")).unwrap().file_type().is_symlink());
    assert_eq!(sb.untouched(), before);
    assert!(!nowhere.exists());
}

#[actix_rt::test]
async fn a_fifo_or_directory_named_part_is_refused_without_hanging() {
    let sb = Sandbox::new();
    let pair = pair(Protocol::Tcp, Some(&sb.inbox)).await;
    let fifo =
        std::ffi::CString::new(sb.inbox.join("f.bin.part").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(sb.inbox.join("d.bin.part")).unwrap();
    let data = b"x".to_vec();
    for name in ["f.bin", "d.bin"] {
        // `refused` and `error_reply` bound the wait: an open blocking on the FIFO fails here.
        let m = refused(&pair, &sb.source(name, &data)).await;
        assert!(m.contains(&format!("{name}.part")) && m.contains("not a regular file"), "{m}");
        sb.assert_no_path(&m);
        let m = error_reply(&pair, &file_req(name, &data, 0)).await;
        assert!(m.contains("not a regular file"), "{m}");
    }
    // Still serving.
    let ok = sb.source("ok.bin", &data);
    services::send_file(&pair.client, pair.server_peer, &ok, |_| {}).await.unwrap();
}

#[actix_rt::test]
async fn a_name_whose_part_file_would_be_too_long_is_refused_clearly() {
    let sb = Sandbox::new();
    let pair = pair(Protocol::Tcp, Some(&sb.inbox)).await;
    let data = b"long".to_vec();
    for len in [251, 255] {
        let name = "n".repeat(len);
        for req in [stat_req(&name, &data), file_req(&name, &data, 0)] {
            let m = error_reply(&pair, &req).await;
            assert!(m.contains("no room for its partial form") && m.contains("at most 250"), "{m}");
            assert!(!m.contains("os error"), "an OS error instead of a name check: {m}");
            sb.assert_no_path(&m);
        }
    }
    // The longest accepted name works end to end.
    let name = "n".repeat(250);
    let rep =
        services::send_file(&pair.client, pair.server_peer, &sb.source(&name, &data), |_| {}).await.unwrap();
    assert_eq!(rep.name, name);
    assert_eq!(std::fs::read(sb.inbox.join(&name)).unwrap(), data);
    assert_eq!(std::fs::read_dir(&sb.inbox).unwrap().count(), 1);
}

#[actix_rt::test]
async fn recv_from_accepts_the_listed_peer_and_refuses_others() {
    let sb = Sandbox::new();
    let listed = Keypair::from_seed([2; 32]).peer_id();
    let other = Keypair::from_seed([3; 32]).peer_id();
    let opts = ServeOptions {
        recv_dir: Some(sb.inbox.clone()),
        recv_from: Some(HashSet::from([listed])),
        ..ServeOptions::default()
    };
    let ticket = server(Protocol::Tcp, opts).await;
    let data = b"from a friend".to_vec();

    let stranger = client(3, Protocol::Tcp, &ticket).await;
    let m = refused(&stranger, &sb.source("s.bin", &data)).await;
    assert!(m.contains("accepts files only from selected peers") && m.contains(&other.short()), "{m}");
    let m = error_reply(&stranger, &stat_req("s.bin", &data)).await;
    assert!(m.contains("only from selected peers"), "{m}");
    // Other services stay open to it.
    services::perf(&stranger.client, stranger.server_peer, 1000, 1000).await.unwrap();
    assert_eq!(std::fs::read_dir(&sb.inbox).unwrap().count(), 0);

    let friend = client(2, Protocol::Tcp, &ticket).await;
    let rep = services::send_file(&friend.client, friend.server_peer, &sb.source("s.bin", &data), |_| {})
        .await
        .unwrap();
    assert_eq!(rep.sha256, sha(&data));
    assert_eq!(std::fs::read(sb.inbox.join("s.bin")).unwrap(), data);
}

/// Polls until `path` has `len` bytes (the server writes what it receives).
async fn wait_for_len(path: &Path, len: u64) {
    let deadline = Instant::now() + T;
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) != len {
        assert!(Instant::now() < deadline, "{} never reached {len} bytes", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_stale_upload_from_the_same_peer_is_superseded_at_once() {
    let sb = Sandbox::new();
    let opts = ServeOptions { recv_dir: Some(sb.inbox.clone()), ..ServeOptions::default() };
    let ticket = server(Protocol::Quic, opts).await;
    let sender = client(2, Protocol::Quic, &ticket).await;
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();

    // An upload that stops mid-way without closing its stream, as a killed sender's does.
    let mut stale = sender.stream().await;
    header::write(&mut stale, &file_req("big.bin", &data, 0)).await.unwrap();
    assert_eq!(reply(&mut stale).await, Response::Ready { offset: 0 });
    stale.write_all(&data[..700_000]).await.unwrap();
    stale.flush().await.unwrap();
    wait_for_len(&sb.inbox.join("big.bin.part"), 700_000).await;

    // Another identity may neither take the name over nor ask about it.
    let other = client(3, Protocol::Quic, &ticket).await;
    for req in [file_req("big.bin", &data, 0), stat_req("big.bin", &data)] {
        let m = error_reply(&other, &req).await;
        assert!(m.contains("big.bin is being received from another peer"), "{m}");
    }

    // The same identity again: the stale upload gives way, the new one resumes.
    let file = sb.source("big.bin", &data);
    let started = Instant::now();
    let rep = tokio::time::timeout(
        Duration::from_secs(10),
        services::send_file(&sender.client, sender.server_peer, &file, |_| {}),
    )
    .await
    .expect("the stale upload was superseded at once")
    .unwrap();
    assert_eq!((rep.resumed_from, rep.sent), (700_000, 1_300_000), "after {:?}", started.elapsed());
    assert_eq!(rep.sha256, sha(&data));
    assert!(std::fs::read(sb.inbox.join("big.bin")).unwrap() == data);
    assert!(!sb.inbox.join("big.bin.part").exists());
    // The stale stream is told why it ended.
    let Response::Error { message } = reply(&mut stale).await else {
        panic!("no error for the stale upload")
    };
    assert!(message.contains("superseded"), "{message}");
}
