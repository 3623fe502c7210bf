//! The serving side: [`serve`] reads a node's events, echoes messages and answers service
//! streams (perf, file receive).
//!
//! Stream handlers run on the I/O runtime ([`crate::runtime::io_runtime`]), at most
//! [`MAX_STREAMS`] at a time; beyond that `serve` waits for one to finish before taking the
//! next stream (backpressure, nothing queued without bound).
//!
//! Files are received only into the receive directory, through [`RecvDir`] (no symlink is
//! followed, only regular files are touched, nothing is overwritten), and only from the
//! peers [`ServeOptions::recv_from`] allows. Each file request holds a [`Claim`] on its
//! name; a newer request of the same peer supersedes a stale one ([`super::uploads`]).

use std::{
    collections::HashSet,
    io::SeekFrom,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::Addr;
use kizuna::{ByteStream, PeerId};
use ring::digest;
use tokio::{
    io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt},
    sync::{mpsc, Semaphore},
};

use super::{
    finish_stream,
    header::{self, Request, Response},
    names::{hex, is_sha256_hex},
    recv_dir::{RecvDir, Target},
    uploads::{Claim, Uploads},
    ServiceError, IO_CHUNK, MAX_PERF_BYTES,
};
use crate::{
    api::{self, Event},
    events::EventStream,
    runtime::io_runtime,
    Supervisor,
};

/// Stream handlers running at once. 64: far more than interactive use needs, few enough
/// that their buffers (2 × [`IO_CHUNK`] each at most) stay within a few tens of MiB.
pub const MAX_STREAMS: usize = 64;

/// How long one echo may wait for the peer's connection to accept it before it is dropped
/// (and logged). 10 s: the connect bound; a peer that slow is not being served anyway.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a file request waits for the same peer's stale transfer of that name to stop
/// once told to. 5 s: a stale transfer stops within one [`IO_CHUNK`] read or write plus a
/// flush — milliseconds on any disk — so this only bounds a stuck disk, and stays well
/// below the tens of seconds a connection takes to time out (what a restarted sender would
/// otherwise wait).
const SUPERSEDE_WAIT: Duration = Duration::from_secs(5);

/// Options of [`serve_with`].
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    /// Where received files go; `None` refuses file transfers. The directory is opened when
    /// the service starts (it must exist by then) and used through that handle.
    pub recv_dir: Option<PathBuf>,
    /// The peers whose files (and `file_stat` requests) are accepted. `None`, the default,
    /// accepts any authenticated peer: `recv_dir` itself is the opt-in, and a received
    /// file never overwrites anything and lands only in that directory.
    pub recv_from: Option<HashSet<PeerId>>,
    /// Where to report what was served (best effort: reports are dropped while the
    /// channel is full, never blocking the service).
    pub reports: Option<mpsc::Sender<ServiceReport>>,
}

/// Something the service did, for logs.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServiceReport {
    /// A perf request was served.
    PerfServed {
        /// The client.
        peer: PeerId,
        /// Bytes received from it.
        upload: u64,
        /// Bytes sent to it.
        download: u64,
        /// Time from request to last byte sent.
        elapsed: Duration,
    },
    /// A file upload ended (verified or not).
    FileReceived {
        /// The sender.
        peer: PeerId,
        /// Where it was stored (if verified) or would have been.
        path: PathBuf,
        /// The file's size.
        size: u64,
        /// Bytes the upload resumed from.
        resumed_from: u64,
        /// Whether its SHA-256 matched.
        ok: bool,
    },
    /// A stream request failed or was refused.
    StreamFailed {
        /// The client.
        peer: PeerId,
        /// Why.
        error: String,
    },
}

struct Shared {
    /// The receive directory, or why files are refused.
    recv_dir: Result<Arc<RecvDir>, &'static str>,
    recv_from: Option<HashSet<PeerId>>,
    reports: Option<mpsc::Sender<ServiceReport>>,
    /// Names being received right now, and by whom.
    uploads: Uploads,
}

impl Shared {
    fn report(&self, r: ServiceReport) {
        if let Some(tx) = &self.reports {
            let _ = tx.try_send(r);
        }
    }
}

/// Serves echo, perf and file receive for the node `addr`, reading `events` (a fresh
/// subscription of that node) until the node stops. Files go to `recv_dir` (`None`
/// refuses them). The future is `Send`: spawn it with `actix::spawn` or `tokio::spawn`.
pub async fn serve(addr: Addr<Supervisor>, events: EventStream, recv_dir: Option<PathBuf>) {
    serve_with(addr, events, ServeOptions { recv_dir, ..ServeOptions::default() }).await
}

/// [`serve`] with more options: which peers may send files, and reports of what was
/// served.
pub async fn serve_with(addr: Addr<Supervisor>, mut events: EventStream, opts: ServeOptions) {
    let recv_dir = match opts.recv_dir {
        None => Err(NO_RECV_DIR),
        Some(path) => open_recv_dir(path).await,
    };
    let shared = Arc::new(Shared {
        recv_dir,
        recv_from: opts.recv_from,
        reports: opts.reports,
        uploads: Uploads::default(),
    });
    let slots = Arc::new(Semaphore::new(MAX_STREAMS));
    while let Some(ev) = events.recv().await {
        match ev {
            Event::MessageReceived { peer, data } => {
                let send = addr.send(api::Send { peer, data });
                match tokio::time::timeout(ECHO_TIMEOUT, send).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => tracing::debug!(%peer, error = %e, "echo failed"),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "node stopped");
                        break;
                    }
                    Err(_) => tracing::warn!(%peer, "echo dropped: peer not reading"),
                }
            }
            Event::DatagramReceived { peer, data } => {
                // Best effort, like the datagram itself: never wait for the node's mailbox.
                let echo = addr.try_send(api::SendDatagram { peer, data });
                if let Err(e) = echo {
                    tracing::debug!(%peer, error = %e, "datagram echo dropped");
                }
            }
            Event::StreamOpened { peer, stream } => {
                let Some(stream) = stream.take() else { continue };
                // The semaphore is never closed, so acquiring only waits.
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let shared = shared.clone();
                io_runtime().spawn(async move {
                    handle_stream(stream, peer, &shared).await;
                    drop(permit);
                });
            }
            _ => {}
        }
    }
    tracing::debug!("service stopped: node gone");
}

/// Opens the receive directory (once: the service keeps the handle), logging why not.
async fn open_recv_dir(path: PathBuf) -> Result<Arc<RecvDir>, &'static str> {
    let shown = path.display().to_string();
    let opened = tokio::task::spawn_blocking(move || RecvDir::open(&path))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    opened.map(Arc::new).map_err(|e| {
        tracing::error!(path = %shown, error = %e, "cannot open the receive directory: files are refused");
        RECV_DIR_UNAVAILABLE
    })
}

async fn handle_stream(mut s: ByteStream, peer: PeerId, shared: &Shared) {
    let mut served = 0u64;
    loop {
        let req = match header::read::<_, Request>(&mut s).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(header::HeaderError::Io(e)) if served > 0 => {
                // The client went away between requests (e.g. reset instead of closing):
                // nothing was lost.
                tracing::debug!(%peer, error = %e, "stream ended between requests");
                break;
            }
            Err(e) => {
                fail(&mut s, peer, shared, ServiceError::Header(e)).await;
                return;
            }
        };
        served += 1;
        tracing::debug!(%peer, ?req, "service request");
        let r = match req {
            Request::Perf { upload, download } => serve_perf(&mut s, peer, shared, upload, download).await,
            Request::FileStat { name, size, sha256 } => {
                serve_file_stat(&mut s, peer, shared, &name, size, &sha256).await
            }
            Request::File { name, size, sha256, offset } => {
                serve_file(&mut s, peer, shared, FileReq { name, size, sha256, offset }).await
            }
        };
        if let Err(e) = r {
            fail(&mut s, peer, shared, e).await;
            return;
        }
    }
    let _ = s.shutdown().await;
}

/// Reports `e`, tells the client if the stream still works, and closes it.
async fn fail(s: &mut ByteStream, peer: PeerId, shared: &Shared, e: ServiceError) {
    let message = match &e {
        ServiceError::Refused(m) => m.clone(),
        other => other.to_string(),
    };
    tracing::debug!(%peer, error = %message, "service request failed");
    if !matches!(e, ServiceError::Stream(_) | ServiceError::Header(header::HeaderError::Io(_))) {
        let _ = header::write(s, &Response::Error { message: message.clone() }).await;
    }
    finish_stream(s).await;
    shared.report(ServiceReport::StreamFailed { peer, error: message });
}

async fn serve_perf(
    s: &mut ByteStream,
    peer: PeerId,
    shared: &Shared,
    upload: u64,
    download: u64,
) -> Result<(), ServiceError> {
    for (what, got) in [("perf upload", upload), ("perf download", download)] {
        if got > MAX_PERF_BYTES {
            return Err(ServiceError::TooLarge { what, got, max: MAX_PERF_BYTES });
        }
    }
    let start = Instant::now();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut left = upload;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = s.read(&mut buf[..want]).await.map_err(ServiceError::Stream)?;
        if n == 0 {
            return Err(ServiceError::Stream(std::io::ErrorKind::UnexpectedEof.into()));
        }
        left -= n as u64;
    }
    header::write(s, &Response::PerfAck { received: upload }).await?;
    write_zeros(s, download, &mut buf).await?;
    shared.report(ServiceReport::PerfServed { peer, upload, download, elapsed: start.elapsed() });
    Ok(())
}

/// Writes `n` zero bytes (the content does not matter: TLS does not compress).
pub(crate) async fn write_zeros(s: &mut ByteStream, n: u64, buf: &mut [u8]) -> Result<(), ServiceError> {
    buf.fill(0);
    let mut left = n;
    while left > 0 {
        let k = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        s.write_all(&buf[..k]).await.map_err(ServiceError::Stream)?;
        left -= k as u64;
    }
    s.flush().await.map_err(ServiceError::Stream)
}

/// Refusal when the node serves no receive directory.
const NO_RECV_DIR: &str = "this node does not accept files (start it with --recv-dir)";

/// Refusal when the receive directory could not be opened (the cause is logged locally).
const RECV_DIR_UNAVAILABLE: &str = "this node's receive directory is unavailable";

/// The receive directory, if `peer` may send files to this node (and ask about them).
fn files_from(shared: &Shared, peer: PeerId) -> Result<&Arc<RecvDir>, ServiceError> {
    let dir = shared.recv_dir.as_ref().map_err(|why| ServiceError::Refused((*why).into()))?;
    match &shared.recv_from {
        Some(allowed) if !allowed.contains(&peer) => Err(ServiceError::Refused(format!(
            "this node accepts files only from selected peers; {} is not one of them",
            peer.short()
        ))),
        _ => Ok(dir),
    }
}

/// Claims `t`'s name for `peer` (superseding this peer's stale transfer of it).
async fn claim<'a>(shared: &'a Shared, t: &Target, peer: PeerId) -> Result<Claim<'a>, ServiceError> {
    shared
        .uploads
        .claim(t.name(), peer, SUPERSEDE_WAIT)
        .await
        .map_err(|e| ServiceError::Refused(e.to_string()))
}

/// The error of a transfer a newer request of the same peer took over.
fn superseded(t: &Target) -> ServiceError {
    ServiceError::Refused(format!("superseded by a newer transfer of {} from the same peer", t.name()))
}

/// An I/O error on the receive directory's entry `name` (relative: it may reach the peer).
fn file_err(name: &str) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::File { path: name.into(), source }
}

fn check_hash(sha256: &str) -> Result<(), ServiceError> {
    if is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(ServiceError::Refused(format!("{sha256:?} is not a lowercase hex SHA-256")))
    }
}

/// Hashes the first `len` bytes of `t`'s partial file `f` from its current position,
/// stopping early if `claim` is superseded.
async fn hash_prefix(
    f: &mut tokio::fs::File,
    len: u64,
    t: &Target,
    claim: &Claim<'_>,
) -> Result<digest::Context, ServiceError> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; IO_CHUNK];
    let mut left = len;
    while left > 0 {
        if claim.is_cancelled() {
            return Err(superseded(t));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want]).await.map_err(file_err(t.part()))?;
        if n == 0 {
            return Err(file_err(t.part())(std::io::ErrorKind::UnexpectedEof.into()));
        }
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(ctx)
}

async fn serve_file_stat(
    s: &mut ByteStream,
    peer: PeerId,
    shared: &Shared,
    name: &str,
    size: u64,
    sha256: &str,
) -> Result<(), ServiceError> {
    let dir = files_from(shared, peer)?;
    let t = Target::parse(name)?;
    check_hash(sha256)?;
    // Released before answering: the client's `file` request follows on this stream.
    let (have, prefix) = {
        let claim = claim(shared, &t, peer).await?;
        dir.check_absent(&t).await?;
        match dir.open_part(&t).await? {
            Some(mut f) => {
                let len = f.metadata().await.map_err(file_err(t.part()))?.len().min(size);
                (len, hex(hash_prefix(&mut f, len, &t, &claim).await?.finish().as_ref()))
            }
            None => (0, hex(digest::digest(&digest::SHA256, b"").as_ref())),
        }
    };
    header::write(s, &Response::FileStat { have, prefix_sha256: prefix }).await?;
    Ok(())
}

struct FileReq {
    name: String,
    size: u64,
    sha256: String,
    offset: u64,
}

async fn serve_file(
    s: &mut ByteStream,
    peer: PeerId,
    shared: &Shared,
    req: FileReq,
) -> Result<(), ServiceError> {
    let dir = files_from(shared, peer)?;
    let t = Target::parse(&req.name)?;
    check_hash(&req.sha256)?;
    if req.offset > req.size {
        return Err(ServiceError::Refused(format!("offset {} beyond size {}", req.offset, req.size)));
    }
    let mut claim = claim(shared, &t, peer).await?;
    dir.check_absent(&t).await?;
    let mut f = dir.open_or_create_part(&t).await?;
    let received = receive(s, &mut f, &mut claim, &t, &req).await;
    // However the upload ended, let its last write land before the claim is released: a
    // newer request resumes from the partial file's length.
    let flushed = f.flush().await.map_err(file_err(t.part()));
    let ctx = received?;
    flushed?;
    f.sync_data().await.map_err(file_err(t.part()))?;
    drop(f);

    let actual = hex(ctx.finish().as_ref());
    let ok = actual == req.sha256;
    let path = dir.path().join(t.name());
    if ok {
        dir.finish(&t).await?;
        tracing::debug!(%peer, file = %path.display(), size = req.size, "file received");
    } else {
        tracing::debug!(%peer, name = %req.name, expected = %req.sha256, %actual, "file hash mismatch: discarded");
        let _ = dir.remove_part(&t).await;
    }
    drop(claim);
    shared.report(ServiceReport::FileReceived { peer, path, size: req.size, resumed_from: req.offset, ok });
    header::write(s, &Response::FileDone { ok, sha256: actual }).await?;
    Ok(())
}

/// Truncates the partial file `f` to `req.offset`, hashes what it keeps, answers
/// [`Response::Ready`] and receives the rest of the file into it. Returns the hash of the
/// whole file. Stops if `claim` is superseded; the caller flushes `f` in any case.
async fn receive(
    s: &mut ByteStream,
    f: &mut tokio::fs::File,
    claim: &mut Claim<'_>,
    t: &Target,
    req: &FileReq,
) -> Result<digest::Context, ServiceError> {
    let have = f.metadata().await.map_err(file_err(t.part()))?.len();
    if req.offset > have {
        return Err(ServiceError::Refused(format!(
            "cannot resume at {}: only {have} bytes were received before",
            req.offset
        )));
    }
    f.set_len(req.offset).await.map_err(file_err(t.part()))?;
    f.seek(SeekFrom::Start(0)).await.map_err(file_err(t.part()))?;
    let mut ctx = hash_prefix(f, req.offset, t, claim).await?;
    header::write(s, &Response::Ready { offset: req.offset }).await?;

    let mut buf = vec![0u8; IO_CHUNK];
    let mut left = req.size - req.offset;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = tokio::select! {
            biased;
            () = claim.cancelled() => return Err(superseded(t)),
            r = s.read(&mut buf[..want]) => r.map_err(ServiceError::Stream)?,
        };
        if n == 0 {
            // The partial file stays: the sender can resume from here.
            return Err(ServiceError::Stream(std::io::ErrorKind::UnexpectedEof.into()));
        }
        f.write_all(&buf[..n]).await.map_err(file_err(t.part()))?;
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(ctx)
}
