//! Error types of the core, one enum per layer.
//!
//! [`TransportError`] is what every public operation of a transport returns. The smaller
//! enums ([`IdentityError`], [`AddressError`], [`WireError`]) belong to one layer each and
//! convert into it. Every variant carries what a user needs to act on it: which address,
//! which peer, which bound.

use std::{io, time::Duration};

use crate::identity::PeerId;

/// An error of the identity layer: peer ids and key files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A peer id's text has the wrong number of characters.
    #[error("peer id has {got} characters, expected {expected}")]
    WrongLength {
        /// Characters found.
        got: usize,
        /// Characters a peer id has.
        expected: usize,
    },
    /// A peer id's text contains a character outside its alphabet.
    #[error("peer id contains {0:?}, which is not in its alphabet (a-z, 2-7)")]
    BadAlphabet(char),
    /// A peer id's checksum does not match: it was mistyped or truncated.
    #[error("peer id checksum mismatch: the id was mistyped or altered")]
    BadChecksum,
    /// The bytes are not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// The key file does not exist.
    #[error("key file {path} does not exist (create one with `kizuna id --key {path}`)")]
    KeyFileMissing {
        /// The file that was looked for.
        path: String,
    },
    /// The key file is a symbolic link to a file that does not exist, so it can be neither
    /// read nor created (creating a key never follows a link).
    #[error(
        "key file {path} is a symbolic link to {target}, which does not exist: create the key \
         there (`kizuna id --key {target}`), point the link at an existing key file, or remove \
         the link"
    )]
    KeyFileDanglingLink {
        /// The link.
        path: String,
        /// Where it points, resolved against the link's directory (the end of a chain).
        target: String,
    },
    /// The key file is readable by other users.
    #[error("key file {path} has permissions {mode:o}; it must be 0600 (run `chmod 600 {path}`)")]
    KeyFilePermissions {
        /// The file.
        path: String,
        /// Its current permission bits.
        mode: u32,
    },
    /// The key file is shorter than a key file can be.
    #[error("key file {path} is truncated")]
    KeyFileTruncated {
        /// The file.
        path: String,
    },
    /// The key file is not a Kizuna key file or fails its checksum.
    #[error("key file {path} is corrupt: {reason}")]
    KeyFileCorrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    KeyFileIo {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// An error parsing an address or a ticket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The ticket or address is empty.
    #[error("empty ticket: expected `PEER_ID` or `PEER_ID@tcp=HOST:PORT,quic=HOST:PORT,...`")]
    Empty,
    /// The peer id part is not valid.
    #[error("bad peer id in ticket: {0}")]
    PeerId(#[from] IdentityError),
    /// An address entry lacks the `protocol=` prefix.
    #[error("address entry {0:?} has no `protocol=` prefix (expected e.g. `tcp=127.0.0.1:4000`)")]
    MissingProtocol(String),
    /// An address entry names a protocol Kizuna does not know.
    #[error("unknown protocol {0:?} in ticket (known: tcp, quic, ws, relay, webrtc)")]
    UnknownProtocol(String),
    /// A socket address does not parse.
    #[error("bad socket address {addr:?} for {protocol}: expected HOST:PORT with an IP host")]
    BadSocketAddr {
        /// The protocol the address was given for.
        protocol: String,
        /// The text that failed to parse.
        addr: String,
    },
    /// A URL is not a `ws://` or `wss://` URL.
    #[error("bad URL {0:?}: expected ws://HOST:PORT[/PATH] or wss://HOST:PORT[/PATH]")]
    BadUrl(String),
    /// A ticket's address has port 0: no listener is there, so it cannot be dialed.
    #[error(
        "address {addr} in ticket has port 0, which cannot be dialed (port 0 only means \"any free \
         port\" when listening): use the port the peer listens on, as printed in its ticket"
    )]
    PortZero {
        /// The address entry, e.g. `tcp=127.0.0.1:0`.
        addr: String,
    },
}

/// An error decoding or encoding wire frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame's declared length exceeds the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Declared length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("input truncated: stream ended inside a frame")]
    Truncated,
    /// A frame type byte is unknown.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// The peer speaks a protocol version this node does not.
    #[error("unsupported protocol version {got} (this node speaks {supported})")]
    UnsupportedVersion {
        /// Version received.
        got: u16,
        /// Version this node speaks.
        supported: u16,
    },
    /// The hello does not start with the Kizuna magic bytes.
    #[error("not a Kizuna hello (bad magic)")]
    BadMagic,
    /// A frame's payload does not decode.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which structure failed.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A frame arrived where the protocol does not allow it.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
}

/// The error of every transport operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Establishing a connection to an address failed.
    #[error("connect to {addr} failed: {reason}")]
    ConnectFailed {
        /// The address dialed.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// An operation did not finish within its bound.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which operation or bound (e.g. "TCP connect to 10.0.0.1:4000").
        what: String,
        /// The bound that elapsed.
        after: Duration,
    },
    /// The protocol is not supported by this node or the peer.
    #[error("unsupported protocol: {0}")]
    UnsupportedProtocol(String),
    /// Capability negotiation did not finish in time.
    #[error("negotiation with {peer} timed out after {after:?}")]
    NegotiationTimeout {
        /// The peer.
        peer: PeerId,
        /// The bound that elapsed.
        after: Duration,
    },
    /// The remote proved an identity other than the one expected.
    #[error("authentication failed: expected peer {expected}, remote presented {presented}")]
    AuthenticationFailed {
        /// The peer that was dialed.
        expected: PeerId,
        /// The identity the remote proved (or a description if it proved none).
        presented: String,
    },
    /// The remote broke the wire protocol.
    #[error("protocol violation by {remote}: {source}")]
    ProtocolViolation {
        /// The remote address or peer.
        remote: String,
        /// What was wrong.
        #[source]
        source: WireError,
    },
    /// A configured limit was hit.
    #[error("limit exceeded: {limit} (limit {max}, attempted {attempted})")]
    LimitExceeded {
        /// Which limit.
        limit: &'static str,
        /// Its value.
        max: u64,
        /// The value that would have exceeded it.
        attempted: u64,
    },
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(String),
    /// An I/O error not covered by a more specific variant.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A QUIC error.
    #[error("QUIC: {0}")]
    Quic(String),
    /// A TLS error.
    #[error("TLS: {0}")]
    Tls(String),
    /// A bad configuration value; the message says what to fix.
    #[error("configuration: {0}")]
    Config(String),
    /// An identity error.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// An address error.
    #[error(transparent)]
    Address(#[from] AddressError),
}

impl TransportError {
    /// A [`TransportError::ConnectFailed`] for `addr`.
    pub fn connect_failed(addr: impl ToString, reason: impl ToString) -> Self {
        Self::ConnectFailed { addr: addr.to_string(), reason: reason.to_string() }
    }

    /// A [`TransportError::ProtocolViolation`] by `remote`.
    pub fn violation(remote: impl ToString, source: WireError) -> Self {
        Self::ProtocolViolation { remote: remote.to_string(), source }
    }

    /// Whether trying another address or transport may succeed where this failed.
    ///
    /// Authentication failures are final: the address is reachable but belongs to
    /// somebody else.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::AuthenticationFailed { .. } | Self::Config(_))
    }
}

/// A convenience alias for results of the core.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;
