//! The client side of the services: [`perf`] and [`send_file`] (pings: [`super::ping`]).
//!
//! Bulk transfers run on the I/O runtime, so an actix arbiter never copies bytes.

use std::{
    io::SeekFrom,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix::Addr;
use kizuna::{relay::limits::TokenBucket, ByteStream, PeerId};
use ring::digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{
    finish_stream,
    header::{self, Request, Response},
    names::{check_file_name, hex},
    server::write_zeros,
    ServiceError, IO_CHUNK, MAX_PERF_BYTES,
};
use crate::{
    api::{Event, OpenStream},
    runtime::on_io,
    Supervisor,
};

/// The outcome of a [`perf`] run. Each direction is timed separately.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerfReport {
    /// Bytes sent to the peer.
    pub upload_bytes: u64,
    /// Bytes received from the peer.
    pub download_bytes: u64,
    /// From the first byte sent to the peer's acknowledgement of the last.
    pub upload_time: Duration,
    /// From the acknowledgement to the last byte received.
    pub download_time: Duration,
}

fn mbps(bytes: u64, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if s <= 0.0 {
        return 0.0;
    }
    bytes as f64 * 8.0 / s / 1e6
}

impl PerfReport {
    /// Upload throughput in Mbit/s (10⁶ bits per second).
    pub fn upload_mbps(&self) -> f64 {
        mbps(self.upload_bytes, self.upload_time)
    }

    /// Download throughput in Mbit/s (10⁶ bits per second).
    pub fn download_mbps(&self) -> f64 {
        mbps(self.download_bytes, self.download_time)
    }
}

async fn open(addr: &Addr<Supervisor>, peer: PeerId) -> Result<ByteStream, ServiceError> {
    Ok(addr.send(OpenStream { peer }).await??)
}

/// Measures throughput to a connected `peer` over one new stream: sends `upload` bytes,
/// then receives `download` bytes.
pub async fn perf(
    addr: &Addr<Supervisor>,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> Result<PerfReport, ServiceError> {
    for (what, got) in [("perf upload", upload), ("perf download", download)] {
        if got > MAX_PERF_BYTES {
            return Err(ServiceError::TooLarge { what, got, max: MAX_PERF_BYTES });
        }
    }
    let mut s = open(addr, peer).await?;
    on_io(async move {
        header::write(&mut s, &Request::Perf { upload, download }).await?;
        let mut buf = vec![0u8; IO_CHUNK];
        let t0 = Instant::now();
        write_zeros(&mut s, upload, &mut buf).await?;
        match header::expect::<_, Response>(&mut s).await? {
            Response::PerfAck { received } if received == upload => {}
            other => return Err(unexpected(other)),
        }
        let upload_time = t0.elapsed();
        let t1 = Instant::now();
        let mut got = 0u64;
        while got < download {
            let want = buf.len().min(usize::try_from(download - got).unwrap_or(usize::MAX));
            let n = s.read(&mut buf[..want]).await.map_err(ServiceError::Stream)?;
            if n == 0 {
                return Err(ServiceError::Stream(std::io::ErrorKind::UnexpectedEof.into()));
            }
            got += n as u64;
        }
        let download_time = t1.elapsed();
        finish_stream(&mut s).await;
        Ok(PerfReport { upload_bytes: upload, download_bytes: download, upload_time, download_time })
    })
    .await?
}

fn unexpected(r: Response) -> ServiceError {
    match r {
        Response::Error { message } => ServiceError::Refused(message),
        other => ServiceError::Unexpected(format!("{other:?}")),
    }
}

/// What [`send_file`] is doing, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Computing the local file's SHA-256.
    Hashing,
    /// Sending bytes (`done` counts from 0, including resumed bytes).
    Sending,
    /// Waiting for the receiver's verification.
    Verifying,
}

/// Progress of [`send_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The current stage.
    pub stage: Stage,
    /// Bytes done in this stage.
    pub done: u64,
    /// Bytes in total.
    pub total: u64,
}

/// The outcome of a verified [`send_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The name the file got on the receiver.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Bytes the receiver already had (resumed transfer), 0 for a fresh one.
    pub resumed_from: u64,
    /// Bytes sent in this run.
    pub sent: u64,
    /// SHA-256 of the file, lowercase hex, as both sides computed it.
    pub sha256: String,
    /// Time from opening the stream to the receiver's verification.
    pub elapsed: Duration,
    /// Times the transfer resumed on a new stream after its stream (or path) failed.
    pub resumes: u32,
    /// Times it moved from a relayed to a direct path ([`SendOptions::follow_upgrades`]).
    pub moves: u32,
}

async fn hash_file(
    f: &mut tokio::fs::File,
    len: u64,
    path: &Path,
    mut progress: impl FnMut(u64),
) -> Result<String, ServiceError> {
    let err = |source| ServiceError::File { path: path.display().to_string(), source };
    f.seek(SeekFrom::Start(0)).await.map_err(err)?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; IO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min(usize::try_from(len - done).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want]).await.map_err(err)?;
        if n == 0 {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            )));
        }
        ctx.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// Sends the file at `path` to a connected `peer` (which must serve files), resuming a
/// partial earlier upload when the receiver's partial copy matches this file's prefix.
/// `progress` is called as work advances (on an I/O thread). Fails with
/// [`ServiceError::HashMismatch`] if the receiver's SHA-256 differs.
pub async fn send_file<F>(
    addr: &Addr<Supervisor>,
    peer: PeerId,
    path: &Path,
    progress: F,
) -> Result<FileReport, ServiceError>
where
    F: FnMut(Progress) + Send + 'static,
{
    send_file_with(addr, peer, path, SendOptions::default(), progress).await
}

/// How [`send_file_with`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// Bytes per second at most (`None`: as fast as the path goes).
    pub rate: Option<u64>,
    /// Whether a transfer running on a relayed path moves to a direct one once the peer's
    /// traffic does (the stream ends at a chunk boundary and the upload resumes on a new
    /// stream, which opens on the direct path). Default: yes.
    pub follow_upgrades: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self { rate: None, follow_upgrades: true }
    }
}

/// [`send_file`] with options: a rate limit, and whether to follow an upgrade.
pub async fn send_file_with<F>(
    addr: &Addr<Supervisor>,
    peer: PeerId,
    path: &Path,
    opts: SendOptions,
    progress: F,
) -> Result<FileReport, ServiceError>
where
    F: FnMut(Progress) + Send + 'static,
{
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ServiceError::File {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name in UTF-8"),
        })?
        .to_string();
    check_file_name(&name)?;
    let path = path.to_path_buf();
    let err = {
        let p = path.display().to_string();
        move |source| ServiceError::File { path: p.clone(), source }
    };
    let mut f = tokio::fs::File::open(&path).await.map_err(err.clone())?;
    let meta = f.metadata().await.map_err(err.clone())?;
    if !meta.is_file() {
        return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let size = meta.len();
    let start = Instant::now();
    let progress = Arc::new(Mutex::new(progress));
    let (p, hpath) = (progress.clone(), path.clone());
    let (back, sha256) = on_io(async move {
        let hashing = |done| {
            (p.lock().unwrap_or_else(|e| e.into_inner()))(Progress {
                stage: Stage::Hashing,
                done,
                total: size,
            })
        };
        let r = hash_file(&mut f, size, &hpath, hashing).await;
        (f, r)
    })
    .await?;
    let sha256 = sha256?;
    let mut f = back;
    let (mut resumes, mut moves) = (0, 0);
    // Where the first attempt started (what an earlier, interrupted run left).
    let mut resumed_from: Option<u64> = None;
    let carrying = match opts.follow_upgrades {
        true => Some(carrying_path(addr, peer).await?),
        false => None,
    };
    let mut pace = opts.rate.map(|r| TokenBucket::with_rate(r, Instant::now()));
    loop {
        let s = open(addr, peer).await?;
        let job = Upload {
            f,
            path: path.clone(),
            name: name.clone(),
            size,
            sha256: sha256.clone(),
            offset: None,
            // Each move needs an upgrade, so they are few; bounded all the same.
            carrying: carrying.clone().filter(|_| moves < MAX_MOVES),
            pace,
        };
        let p = progress.clone();
        let report = move |pr: Progress| (p.lock().unwrap_or_else(|e| e.into_inner()))(pr);
        let (back, offset, result) = on_io(job.run(s, report)).await?;
        (f, pace) = back;
        resumed_from = resumed_from.or(offset);
        match result {
            Ok(Ended::Done) => {
                let from = resumed_from.unwrap_or(0);
                return Ok(FileReport {
                    name,
                    size,
                    resumed_from: from,
                    sent: size - from,
                    sha256,
                    elapsed: start.elapsed(),
                    resumes,
                    moves,
                });
            }
            // The peer's traffic went direct: go with it.
            Ok(Ended::Moved) => {
                moves += 1;
                tracing::info!(%peer, moves, "file transfer moving to the direct path");
            }
            // The stream's path died under it: once the peer is reachable again (on its
            // next path), resume from what the receiver holds.
            Err(e) if resumable(&e) && resumes < MAX_RESUMES => {
                resumes += 1;
                tracing::info!(%peer, attempt = resumes, "file transfer interrupted ({e}); resuming");
                wait_reachable(addr, peer).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Times a transfer resumes by itself after its stream failed. 8: a path change or two per
/// transfer is normal on a mobile host; more in one transfer means the peer is not there.
const MAX_RESUMES: u32 = 8;

/// Times a transfer moves to a direct path by itself; beyond, it finishes where it is. 8,
/// as [`MAX_RESUMES`]: a path that keeps coming and going is no faster than the relay.
const MAX_MOVES: u32 = 8;

/// How an upload attempt ended without an error.
enum Ended {
    /// The receiver verified the file.
    Done,
    /// The stream was ended early to continue on the direct path.
    Moved,
}

/// The kind of path carrying `peer`'s traffic, kept current from the node's events by a
/// task that ends with the receiver.
async fn carrying_path(
    addr: &Addr<Supervisor>,
    peer: PeerId,
) -> Result<tokio::sync::watch::Receiver<Option<kizuna::PathKind>>, ServiceError> {
    let mut events = addr.send(crate::api::Subscribe::default()).await?;
    let stats = addr.send(crate::api::GetStats).await?;
    let now = stats.connections.iter().find(|c| c.peer == peer).map(|c| c.path);
    let (tx, rx) = tokio::sync::watch::channel(now);
    crate::runtime::io_runtime().spawn(async move {
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                () = tx.closed() => return,
            };
            let path = match ev {
                None => return,
                Some(Event::PathChanged { peer: p, to, .. }) if p == peer => Some(to.path),
                Some(Event::PeerConnected { info }) if info.peer == peer => Some(info.path),
                Some(Event::PeerDisconnected { peer: p, .. }) if p == peer => None,
                Some(_) => continue,
            };
            tx.send_replace(path);
        }
    });
    Ok(rx)
}

/// How long a resuming transfer waits for the peer to be reachable again. 30 s: re-dials
/// back off up to 10 s, so this covers a few of them.
const RESUME_WAIT: Duration = Duration::from_secs(30);

/// Whether a failed upload may be resumed on another stream: the stream (or its path)
/// failed, not the receiver's verdict.
fn resumable(e: &ServiceError) -> bool {
    matches!(e, ServiceError::Stream(_) | ServiceError::Header(header::HeaderError::Io(_)))
}

/// Waits until a stream to `peer` can be opened again (or gives up after [`RESUME_WAIT`]).
async fn wait_reachable(addr: &Addr<Supervisor>, peer: PeerId) -> Result<(), ServiceError> {
    let deadline = Instant::now() + RESUME_WAIT;
    loop {
        let stats = addr.send(crate::api::GetStats).await?;
        if stats.connections.iter().any(|c| c.peer == peer) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ServiceError::Timeout(RESUME_WAIT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One attempt at uploading a file over one stream.
struct Upload {
    f: tokio::fs::File,
    path: PathBuf,
    name: String,
    size: u64,
    sha256: String,
    /// Where the receiver let this attempt start.
    offset: Option<u64>,
    /// The kind of path carrying the peer's traffic, to follow an upgrade (`None`: stay).
    carrying: Option<tokio::sync::watch::Receiver<Option<kizuna::PathKind>>>,
    /// The rate limit, across attempts.
    pace: Option<TokenBucket>,
}

impl Upload {
    /// Runs the attempt; gives the file and the pacing back, with where it started and
    /// the outcome.
    async fn run(
        mut self,
        mut s: ByteStream,
        mut progress: impl FnMut(Progress) + Send,
    ) -> ((tokio::fs::File, Option<TokenBucket>), Option<u64>, Result<Ended, ServiceError>) {
        let r = self.attempt(&mut s, &mut progress).await;
        ((self.f, self.pace), self.offset, r)
    }

    /// Whether the stream runs relayed while the peer's traffic went direct.
    fn overtaken(&self, s: &ByteStream) -> bool {
        let now = self.carrying.as_ref().and_then(|c| *c.borrow());
        s.path() == Some(kizuna::PathKind::Relayed) && now == Some(kizuna::PathKind::Direct)
    }

    /// Waits until the rate limit allows `n` more bytes (taken a burst at a time, so the
    /// limit holds from the first byte).
    async fn paced(&mut self, n: usize) {
        let Some(bucket) = &mut self.pace else { return };
        let mut left = n as u64;
        while left > 0 {
            let piece = left.min(bucket.burst());
            while let Err(wait) = bucket.take(Instant::now(), piece) {
                tokio::time::sleep(wait).await;
            }
            left -= piece;
        }
    }

    async fn attempt(
        &mut self,
        s: &mut ByteStream,
        progress: &mut (impl FnMut(Progress) + Send),
    ) -> Result<Ended, ServiceError> {
        let (name, size, sha256) = (self.name.clone(), self.size, self.sha256.clone());
        let p = self.path.display().to_string();
        let err = move |source| ServiceError::File { path: p.clone(), source };
        header::write(s, &Request::FileStat { name: name.clone(), size, sha256: sha256.clone() }).await?;
        let (have, prefix_sha256) = match header::expect::<_, Response>(s).await? {
            Response::FileStat { have, prefix_sha256 } if have <= size => (have, prefix_sha256),
            other => return Err(unexpected(other)),
        };
        let offset = if have > 0 && hash_file(&mut self.f, have, &self.path, |_| {}).await? == prefix_sha256 {
            have
        } else {
            0
        };
        header::write(s, &Request::File { name: name.clone(), size, sha256: sha256.clone(), offset }).await?;
        match header::expect::<_, Response>(s).await? {
            Response::Ready { offset: o } if o == offset => self.offset = Some(offset),
            other => return Err(unexpected(other)),
        }
        self.f.seek(SeekFrom::Start(offset)).await.map_err(err.clone())?;
        let mut buf = vec![0u8; IO_CHUNK];
        let mut done = offset;
        progress(Progress { stage: Stage::Sending, done, total: size });
        while done < size {
            let want = buf.len().min(usize::try_from(size - done).unwrap_or(usize::MAX));
            let n = self.f.read(&mut buf[..want]).await.map_err(err.clone())?;
            if n == 0 {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shrank while being sent",
                )));
            }
            self.paced(n).await;
            s.write_all(&buf[..n]).await.map_err(ServiceError::Stream)?;
            done += n as u64;
            progress(Progress { stage: Stage::Sending, done, total: size });
            if done < size && self.overtaken(s) {
                // End the stream here: the receiver keeps what it got (its partial file)
                // and the next attempt resumes from it on the direct path.
                s.flush().await.map_err(ServiceError::Stream)?;
                finish_stream(s).await;
                return Ok(Ended::Moved);
            }
        }
        s.flush().await.map_err(ServiceError::Stream)?;
        progress(Progress { stage: Stage::Verifying, done: size, total: size });
        let reply = header::expect::<_, Response>(s).await?;
        finish_stream(s).await;
        match reply {
            Response::FileDone { ok: true, sha256: theirs } if theirs == sha256 => Ok(Ended::Done),
            Response::FileDone { sha256: theirs, .. } => {
                Err(ServiceError::HashMismatch { name, expected: sha256, actual: theirs })
            }
            other => Err(unexpected(other)),
        }
    }
}
