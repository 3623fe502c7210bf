//! The serving side: [`serve`] reads a node's events, echoes messages and answers service
//! streams (perf, file receive).
//!
//! Stream handlers run on the I/O runtime ([`crate::runtime::io_runtime`]), at most
//! [`MAX_STREAMS`] at a time; beyond that `serve` waits for one to finish before taking the
//! next stream (backpressure, nothing queued without bound).

use std::{
    collections::HashSet,
    io::SeekFrom,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
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
    names::{hex, is_sha256_hex, target_paths},
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

/// Options of [`serve_with`].
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    /// Where received files go; `None` refuses file transfers.
    pub recv_dir: Option<PathBuf>,
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
    recv_dir: Option<PathBuf>,
    reports: Option<mpsc::Sender<ServiceReport>>,
    /// Names being received right now: a second upload of the same name is refused.
    busy: Mutex<HashSet<String>>,
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
    serve_with(addr, events, ServeOptions { recv_dir, reports: None }).await
}

/// [`serve`] with reports of what was served.
pub async fn serve_with(addr: Addr<Supervisor>, mut events: EventStream, opts: ServeOptions) {
    let shared =
        Arc::new(Shared { recv_dir: opts.recv_dir, reports: opts.reports, busy: Mutex::new(HashSet::new()) });
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
                serve_file_stat(&mut s, shared, &name, size, &sha256).await
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

fn recv_dir(shared: &Shared) -> Result<&Path, ServiceError> {
    shared.recv_dir.as_deref().ok_or_else(|| {
        ServiceError::Refused("this node does not accept files (start it with --recv-dir)".into())
    })
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::File { path: path.display().to_string(), source }
}

fn check_hash(sha256: &str) -> Result<(), ServiceError> {
    if is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(ServiceError::Refused(format!("{sha256:?} is not a lowercase hex SHA-256")))
    }
}

/// Hashes the first `len` bytes of `f` from its current position.
async fn hash_prefix(
    f: &mut tokio::fs::File,
    len: u64,
    path: &Path,
) -> Result<digest::Context, ServiceError> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; IO_CHUNK];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want]).await.map_err(file_err(path))?;
        if n == 0 {
            return Err(ServiceError::File {
                path: path.display().to_string(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(ctx)
}

async fn serve_file_stat(
    s: &mut ByteStream,
    shared: &Shared,
    name: &str,
    size: u64,
    sha256: &str,
) -> Result<(), ServiceError> {
    let dir = recv_dir(shared)?;
    let (final_path, part) = target_paths(dir, name)?;
    check_hash(sha256)?;
    if tokio::fs::try_exists(&final_path).await.unwrap_or(false) {
        return Err(ServiceError::Refused(format!("{name} already exists on the receiving node")));
    }
    let (have, prefix) = match tokio::fs::File::open(&part).await {
        Ok(mut f) => {
            let len = f.metadata().await.map_err(file_err(&part))?.len().min(size);
            (len, hex(hash_prefix(&mut f, len, &part).await?.finish().as_ref()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (0, hex(digest::digest(&digest::SHA256, b"").as_ref()))
        }
        Err(e) => return Err(file_err(&part)(e)),
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

/// Removes a name from the busy set when the upload ends, however it ends.
struct BusyGuard<'a>(&'a Shared, String);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

async fn serve_file(
    s: &mut ByteStream,
    peer: PeerId,
    shared: &Shared,
    req: FileReq,
) -> Result<(), ServiceError> {
    let dir = recv_dir(shared)?;
    let (final_path, part) = target_paths(dir, &req.name)?;
    check_hash(&req.sha256)?;
    if req.offset > req.size {
        return Err(ServiceError::Refused(format!("offset {} beyond size {}", req.offset, req.size)));
    }
    if !shared.busy.lock().unwrap_or_else(|e| e.into_inner()).insert(req.name.clone()) {
        return Err(ServiceError::Refused(format!("{} is being received from another upload", req.name)));
    }
    let _busy = BusyGuard(shared, req.name.clone());
    if tokio::fs::try_exists(&final_path).await.unwrap_or(false) {
        return Err(ServiceError::Refused(format!("{} already exists on the receiving node", req.name)));
    }

    let mut f = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .await
        .map_err(file_err(&part))?;
    let have = f.metadata().await.map_err(file_err(&part))?.len();
    if req.offset > have {
        return Err(ServiceError::Refused(format!(
            "cannot resume at {}: only {have} bytes were received before",
            req.offset
        )));
    }
    f.set_len(req.offset).await.map_err(file_err(&part))?;
    f.seek(SeekFrom::Start(0)).await.map_err(file_err(&part))?;
    let mut ctx = hash_prefix(&mut f, req.offset, &part).await?;
    header::write(s, &Response::Ready { offset: req.offset }).await?;

    let mut buf = vec![0u8; IO_CHUNK];
    let mut left = req.size - req.offset;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = s.read(&mut buf[..want]).await.map_err(ServiceError::Stream)?;
        if n == 0 {
            // Keep the partial file: the sender can resume from here.
            let _ = f.flush().await;
            return Err(ServiceError::Stream(std::io::ErrorKind::UnexpectedEof.into()));
        }
        f.write_all(&buf[..n]).await.map_err(file_err(&part))?;
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().await.map_err(file_err(&part))?;
    f.sync_data().await.map_err(file_err(&part))?;
    drop(f);

    let actual = hex(ctx.finish().as_ref());
    let ok = actual == req.sha256;
    if ok {
        tokio::fs::rename(&part, &final_path).await.map_err(file_err(&final_path))?;
        tracing::debug!(%peer, file = %final_path.display(), size = req.size, "file received");
    } else {
        tracing::debug!(%peer, name = %req.name, expected = %req.sha256, %actual, "file hash mismatch: discarded");
        let _ = tokio::fs::remove_file(&part).await;
    }
    shared.report(ServiceReport::FileReceived {
        peer,
        path: final_path,
        size: req.size,
        resumed_from: req.offset,
        ok,
    });
    header::write(s, &Response::FileDone { ok, sha256: actual }).await?;
    Ok(())
}
