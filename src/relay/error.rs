//! Errors of the relay layer, one enum per stage: configuration, token checks,
//! authentication/admission, forwarding.

use std::time::Duration;

use super::proto::ErrorCode;
use crate::identity::PeerId;

/// A relay configuration that must not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayConfigError {
    /// No admission rule: the relay would refuse everyone (or, worse, be open by accident).
    #[error(
        "no admission rule configured: pass --allow, --allow-file, --token-secret or --open \
         (--open admits any client that proves its key)"
    )]
    NoAdmissionRule,
    /// The token secret is too short to resist guessing.
    #[error("token secret is {len} bytes; it must be at least {min} bytes (e.g. 32 random bytes)")]
    TokenSecretTooShort {
        /// Length given.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// A relay client was configured without any relay.
    #[error("no relay configured: pass at least one --relay ws://HOST:PORT")]
    NoRelays,
    /// A limit has a value that makes the relay useless or is inconsistent.
    #[error("limit {name} = {value}: {reason}")]
    BadLimit {
        /// Which limit (its `RelayLimits` field name).
        name: &'static str,
        /// The value given.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The handshake admission limits cannot work.
    #[error("handshake admission: {0}")]
    BadHandshakeLimits(String),
}

/// Why a relay token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is not of the form `<expiry>.<mac>`.
    #[error("malformed relay token: {0}")]
    Malformed(&'static str),
    /// The MAC does not match: wrong secret, wrong peer, or an altered expiry.
    #[error("relay token is not valid for this peer at this relay")]
    BadMac,
    /// The token was valid but has expired.
    #[error("relay token expired at unix time {expiry} (now {now})")]
    Expired {
        /// Expiry written in the token (unix seconds).
        expiry: u64,
        /// The time it was checked at (unix seconds).
        now: u64,
    },
}

/// Why a client's authentication or admission failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The signature over the challenge does not verify for the claimed peer id.
    #[error("signature over the relay challenge does not verify for peer {peer}")]
    BadSignature {
        /// The peer id the client claimed.
        peer: PeerId,
    },
    /// The client proved its key but no admission rule admits it.
    #[error("peer {peer} is not allowed at this relay (not on the allow-list and no token given)")]
    NotAllowed {
        /// The authenticated peer.
        peer: PeerId,
    },
    /// The client's token was rejected.
    #[error("relay token of peer {peer} rejected: {source}")]
    Token {
        /// The authenticated peer.
        peer: PeerId,
        /// Why.
        #[source]
        source: TokenError,
    },
    /// The client sent something other than the expected handshake message.
    #[error("relay handshake violated: {0}")]
    Protocol(String),
    /// The handshake did not finish in time.
    #[error("relay handshake not finished within {0:?}")]
    Timeout(Duration),
}

impl AuthError {
    /// The error code sent to the client before the connection is closed.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::BadSignature { .. } | AuthError::Timeout(_) => ErrorCode::Unauthenticated,
            AuthError::NotAllowed { .. } => ErrorCode::NotAllowed,
            AuthError::Token { source: TokenError::Expired { .. }, .. } => ErrorCode::ExpiredToken,
            AuthError::Token { .. } => ErrorCode::BadToken,
            AuthError::Protocol(_) => ErrorCode::ProtocolViolation,
        }
    }
}

/// Why [`RelayState::record_forwarded`](super::server::RelayState::record_forwarded)
/// refused bytes. The bytes were not counted and must not be forwarded; the relay has
/// queued the closes of both ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The circuit is not open (never was, or already closed).
    #[error("circuit is not open")]
    NotOpen,
    /// Forwarding would exceed the circuit's data cap.
    #[error("circuit data cap of {limit} bytes reached ({attempted} bytes attempted)")]
    DataCap {
        /// The cap (both directions together).
        limit: u64,
        /// Bytes the circuit would have carried with this message.
        attempted: u64,
    },
    /// The circuit has lived for its maximum duration.
    #[error("circuit duration limit of {limit:?} reached")]
    DurationLimit {
        /// The limit.
        limit: Duration,
    },
}
