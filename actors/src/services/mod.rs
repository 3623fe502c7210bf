//! The application protocol `kizuna node` serves, as a library: echo, throughput tests and
//! resumable file transfer over any Kizuna connection.
//!
//! * **Echo** — every *message* a serving node receives is sent back to its sender
//!   unchanged; [`ping`] measures the round trip of one. Every *datagram* (QUIC, WebRTC's
//!   unreliable channel) is sent back too, best effort: dropped if the node is busy.
//! * **Streams** — every *stream* starts with a request [`header`] (`u32` big-endian
//!   length + MessagePack map, at most [`header::MAX_HEADER_LEN`] bytes); several requests
//!   may follow each other on one stream, answered in order:
//!   * [`Request::Perf`]`{ upload, download }`: the client sends `upload` bytes, the server
//!     answers [`Response::PerfAck`] and sends `download` bytes ([`perf`]);
//!   * [`Request::FileStat`]`{ name, size, sha256 }`: the server answers how many bytes of
//!     a partial `name.part` it holds and their SHA-256 ([`Response::FileStat`]), so a
//!     client resumes only over a prefix that really matches its file;
//!   * [`Request::File`]`{ name, size, sha256, offset }`: the server answers
//!     [`Response::Ready`], receives `size - offset` bytes into `name.part`, verifies the
//!     SHA-256 of the whole file, renames it to `name` and answers
//!     [`Response::FileDone`] ([`send_file`]). A mismatching file is deleted so the next
//!     attempt starts over; an interrupted one stays for resuming.
//!
//! Any refusal or failure is answered with [`Response::Error`] and the stream closed.
//!
//! **Receiving files** is opt-in ([`ServeOptions::recv_dir`]); with it, files are accepted
//! from any authenticated peer unless [`ServeOptions::recv_from`] names the peers allowed.
//! That default is safe because a peer can only add files to that one directory: names are
//! plain file names (no separators, at most [`names::MAX_NAME_LEN`] bytes so `name.part`
//! fits too), every file operation is relative to a handle on the directory and never
//! follows a symlink or touches anything but a regular file with a single link, and the
//! final rename never replaces an existing entry (a dangling symlink counts as one). A
//! refusal names files relative to the directory only.
//!
//! One transfer of a name at a time: a `file_stat` or `file` request for a name another
//! peer is transferring is refused. The same peer's new request supersedes its own stale
//! one at once (a sender killed mid-transfer and restarted with the same identity resumes
//! without waiting for the node to notice the dead connection); the stale stream is
//! answered with an error.
//!
//! ```no_run
//! # async fn demo(ticket: kizuna::PeerAddress) -> Result<(), Box<dyn std::error::Error>> {
//! use kizuna_actors::{api::Connect, services, Subscribe, Supervisor, SupervisorConfig};
//!
//! // A serving node…
//! let server = Supervisor::start(SupervisorConfig::new(kizuna::Keypair::generate()))?;
//! let events = server.send(Subscribe::default()).await?;
//! actix::spawn(services::serve(server.clone(), events, Some("/tmp/inbox".into())));
//!
//! // …and a client of another one.
//! let client = Supervisor::start(SupervisorConfig::new(kizuna::Keypair::generate()))?;
//! let mut events = client.send(Subscribe::default()).await?;
//! let peer = ticket.peer_id;
//! client.send(Connect { addr: ticket }).await??;
//! let ping = services::ping(&client, &mut events, peer, 1, services::PING_TIMEOUT).await?;
//! let perf = services::perf(&client, peer, 8 << 20, 8 << 20).await?;
//! println!("rtt {:?}, up {:.0} Mbit/s", ping.rtt, perf.upload_mbps());
//! # Ok(()) }
//! ```

mod client;
pub mod header;
pub mod names;
mod ping;
mod recv_dir;
mod server;
mod uploads;

use std::time::Duration;

use kizuna::{ByteStream, PeerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use client::{perf, send_file, send_file_with, FileReport, PerfReport, Progress, SendOptions, Stage};
pub use header::{HeaderError, Request, Response};
pub use names::NameError;
pub use ping::{ping, Echo, PingReport, PingWindow};
pub use server::{serve, serve_with, ServeOptions, ServiceReport, MAX_STREAMS};

use crate::api::NodeError;

/// How long [`finish_stream`] waits for the peer to close its side. 5 s: a well-behaved peer
/// closes right after its last reply, so this only matters when the peer is gone or stuck.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes our side of a finished exchange and waits (bounded, discarding what arrives) for
/// the peer to close its side, so that dropping the stream cannot reset it while the peer
/// still reads our last bytes: a stream dropped before its receive side ended is reset, and
/// a reset may discard data not yet read.
pub(crate) async fn finish_stream(s: &mut ByteStream) {
    let _ = s.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 512];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
}

/// A sensible bound on waiting for one echo: well above any RTT a working path has, short
/// enough that a lost ping is reported promptly.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest upload or download one perf request may ask for: 64 GiB. Bounds how long one
/// request can keep a server busy while leaving room for minutes-long runs on fast links.
pub const MAX_PERF_BYTES: u64 = 64 << 30;

/// Size of the I/O buffers of the perf and file services. 256 KiB: large enough that the
/// per-call overhead is negligible at multi-Gbit/s, small enough to keep many transfers.
pub(crate) const IO_CHUNK: usize = 256 * 1024;

/// An error of a service client (or a server-side failure reported in a
/// [`ServiceReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The node refused or failed the command (not connected, connection lost, ...).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A header could not be read or written.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// Reading or writing the stream failed.
    #[error("stream: {0}")]
    Stream(std::io::Error),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the request.
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The peer answered something the protocol does not allow here.
    #[error("protocol violation by the peer: {0}")]
    Unexpected(String),
    /// The file arrived, but its SHA-256 differs from the sender's.
    #[error("SHA-256 mismatch for {name}: sent {expected}, peer computed {actual}")]
    HashMismatch {
        /// The file name.
        name: String,
        /// The sender's hash.
        expected: String,
        /// The receiver's hash.
        actual: String,
    },
    /// A file name is not acceptable.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer disconnected while waiting.
    #[error("peer {0} disconnected")]
    Disconnected(PeerId),
    /// A request's size is out of bounds.
    #[error("{what} of {got} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Requested.
        got: u64,
        /// Limit.
        max: u64,
    },
}

impl From<actix::MailboxError> for ServiceError {
    fn from(e: actix::MailboxError) -> Self {
        ServiceError::Node(NodeError::from(e))
    }
}

#[cfg(test)]
mod tests {
    use actix::Addr;

    use crate::{events::EventStream, Supervisor};

    /// `serve` must stay spawnable on a multi-threaded runtime.
    #[allow(dead_code)]
    fn serve_is_send(addr: Addr<Supervisor>, events: EventStream) {
        fn is_send<T: Send>(_: T) {}
        is_send(super::serve(addr, events, None));
    }
}
