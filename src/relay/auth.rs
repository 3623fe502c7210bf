//! Relay authentication and admission (sans-IO).
//!
//! 1. The relay sends `challenge { nonce, relay }`: 32 fresh random bytes and its own name
//!    (its public URL as clients configure it).
//! 2. The client answers `auth { peer_id, signature, token }`, where `signature` is its
//!    Ed25519 signature over the transcript
//!    `"kizuna-relay-auth-v1" || nonce (32 bytes) || relay (UTF-8)`.
//!    The domain string keeps the signature from being valid in any other protocol; the
//!    nonce keeps a recorded answer from being replayed; the relay name keeps one relay
//!    from passing another relay's challenge to a client and reusing its answer.
//! 3. The relay verifies the signature, then applies [`Admission`]: the allow-list,
//!    expiring tokens, or open mode.
//! 4. The client declares the connection's [`Purpose`].
//!
//! Tokens follow the TURN REST credential idea
//! (<https://datatracker.ietf.org/doc/html/draft-uberti-behave-turn-rest-00>): whoever
//! holds the relay's secret can mint a token for a peer id that the relay verifies
//! without any database: `<expiry unix secs>.<base32(HMAC-SHA256(secret,
//! "kizuna-relay-token-v1" || peer_id (32 bytes) || expiry as u64 BE))>`.

use std::{
    collections::HashSet,
    fmt,
    time::{Duration, Instant},
};

use data_encoding::BASE32_NOPAD;
use ring::hmac;

use super::{
    error::{AuthError, RelayConfigError, TokenError},
    proto::{Purpose, RelayMessage},
};
use crate::identity::{Keypair, PeerId};

/// Domain separation prefix of the signed authentication transcript.
pub const AUTH_DOMAIN: &[u8] = b"kizuna-relay-auth-v1";
/// Domain separation prefix of the token MAC input.
pub const TOKEN_DOMAIN: &[u8] = b"kizuna-relay-token-v1";
/// Shortest accepted token secret, in bytes. 16 bytes = 128 bits, the usual floor for a
/// symmetric key; `kizuna relay` writes 32 random bytes when it creates one.
pub const MIN_TOKEN_SECRET_LEN: usize = 16;
/// Longest token text accepted. A real token is at most 20 + 1 + 52 = 73 characters;
/// anything much longer is garbage and is rejected before any parsing.
pub const MAX_TOKEN_LEN: usize = 128;
/// Time a fresh connection has to authenticate and declare its purpose. 10 s: the same
/// bound as Kizuna's TLS + hello handshake, generous for one round trip on a slow link
/// and short enough that idle unauthenticated sockets do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters of the base32 MAC (32 bytes, no padding).
const MAC_TEXT_LEN: usize = 52;

/// The bytes a client signs to answer a challenge.
pub fn auth_transcript(nonce: &[u8; 32], relay: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(AUTH_DOMAIN.len() + 32 + relay.len());
    t.extend_from_slice(AUTH_DOMAIN);
    t.extend_from_slice(nonce);
    t.extend_from_slice(relay.as_bytes());
    t
}

/// Verifies a client's answer to the challenge `(nonce, relay)`.
pub fn verify_auth(
    peer: &PeerId,
    nonce: &[u8; 32],
    relay: &str,
    signature: &[u8; 64],
) -> Result<(), AuthError> {
    if peer.verify(&auth_transcript(nonce, relay), signature) {
        Ok(())
    } else {
        Err(AuthError::BadSignature { peer: *peer })
    }
}

/// The client side of the handshake: the messages answering `challenge`.
///
/// Checks that the challenge names `expected_relay` (the relay the client meant to reach)
/// before signing anything, then returns `auth` followed by the purpose message; the client
/// sends both at once.
pub fn client_handshake(
    key: &Keypair,
    challenge: &RelayMessage,
    expected_relay: &str,
    token: Option<&str>,
    purpose: Purpose,
) -> Result<[RelayMessage; 2], AuthError> {
    let RelayMessage::Challenge { nonce, relay } = challenge else {
        return Err(AuthError::Protocol(format!("expected challenge, got {}", challenge.type_name())));
    };
    if relay != expected_relay {
        return Err(AuthError::Protocol(format!(
            "challenge names relay {relay:?}, but this client dialed {expected_relay:?}"
        )));
    }
    let signature = key.sign(&auth_transcript(nonce, relay));
    let auth = RelayMessage::Auth { peer_id: key.peer_id(), signature, token: token.map(str::to_owned) };
    Ok([auth, purpose.into()])
}

/// Who may use the relay once authenticated. At least one rule must be configured
/// ([`Admission::validate`]).
#[derive(Clone, Default)]
pub struct Admission {
    /// Peers admitted without a token.
    pub allow: HashSet<PeerId>,
    /// The secret tokens are minted with; `None`: tokens are not accepted.
    pub token_secret: Option<Vec<u8>>,
    /// Admit every peer that proves its key.
    pub open: bool,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Admission")
            .field("allow", &self.allow.len())
            .field("token_secret", &self.token_secret.as_ref().map(|_| "<set>"))
            .field("open", &self.open)
            .finish()
    }
}

impl Admission {
    /// Admits every authenticated peer (`--open`).
    pub fn open() -> Self {
        Self { open: true, ..Self::default() }
    }

    /// Checks that the relay may start with this configuration: some rule must exist, and
    /// a token secret must be long enough.
    pub fn validate(&self) -> Result<(), RelayConfigError> {
        if let Some(s) = &self.token_secret {
            if s.len() < MIN_TOKEN_SECRET_LEN {
                return Err(RelayConfigError::TokenSecretTooShort {
                    len: s.len(),
                    min: MIN_TOKEN_SECRET_LEN,
                });
            }
        }
        if !self.open && self.allow.is_empty() && self.token_secret.is_none() {
            return Err(RelayConfigError::NoAdmissionRule);
        }
        Ok(())
    }

    /// Decides whether the authenticated `peer` (with an optional `token`) may use the
    /// relay at `unix_now` (seconds).
    ///
    /// Open mode and the allow-list admit without looking at the token. Otherwise a token
    /// is checked against the secret; a token given to a relay without a secret, or no
    /// token at all, is [`AuthError::NotAllowed`].
    pub fn admit(&self, peer: &PeerId, token: Option<&str>, unix_now: u64) -> Result<(), AuthError> {
        if self.open || self.allow.contains(peer) {
            return Ok(());
        }
        match (&self.token_secret, token) {
            (Some(secret), Some(token)) => verify_token(secret, peer, token, unix_now)
                .map(|_| ())
                .map_err(|source| AuthError::Token { peer: *peer, source }),
            _ => Err(AuthError::NotAllowed { peer: *peer }),
        }
    }
}

fn token_mac(secret: &[u8], peer: &PeerId, expiry: u64) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(TOKEN_DOMAIN);
    ctx.update(peer.as_bytes());
    ctx.update(&expiry.to_be_bytes());
    ctx.sign()
}

/// Mints a token admitting `peer` until `now_unix + ttl` (whole seconds, saturating).
pub fn mint_token(secret: &[u8], peer: &PeerId, ttl: Duration, now_unix: u64) -> String {
    let expiry = now_unix.saturating_add(ttl.as_secs());
    let mac = BASE32_NOPAD.encode(token_mac(secret, peer, expiry).as_ref()).to_ascii_lowercase();
    format!("{expiry}.{mac}")
}

/// Verifies `token` for `peer` at `now_unix`; returns its expiry (unix seconds).
///
/// The MAC is compared in constant time (`ring::hmac::verify`) and checked before the
/// expiry, so an expired token is reported as expired only if it is genuine.
pub fn verify_token(secret: &[u8], peer: &PeerId, token: &str, now_unix: u64) -> Result<u64, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("longer than any token"));
    }
    let (expiry, mac) = token.split_once('.').ok_or(TokenError::Malformed("expected <expiry>.<mac>"))?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TokenError::Malformed("expiry is not a decimal number of seconds"));
    }
    let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed("expiry out of range"))?;
    if mac.len() != MAC_TEXT_LEN || !mac.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) {
        return Err(TokenError::Malformed("mac is not 52 lowercase base32 characters"));
    }
    let mac = BASE32_NOPAD
        .decode(mac.to_ascii_uppercase().as_bytes())
        .map_err(|_| TokenError::Malformed("mac is not base32"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut msg = Vec::with_capacity(TOKEN_DOMAIN.len() + 40);
    msg.extend_from_slice(TOKEN_DOMAIN);
    msg.extend_from_slice(peer.as_bytes());
    msg.extend_from_slice(&expiry.to_be_bytes());
    hmac::verify(&key, &msg, &mac).map_err(|_| TokenError::BadMac)?;
    if expiry <= now_unix {
        return Err(TokenError::Expired { expiry, now: now_unix });
    }
    Ok(expiry)
}

/// What the handshake produced after a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Authenticated; waiting for the purpose message.
    Authenticated {
        /// The admitted peer.
        peer: PeerId,
    },
    /// Done: pass `peer` and `purpose` to
    /// [`RelayState::handle_authenticated`](super::server::RelayState::handle_authenticated).
    Done {
        /// The admitted peer.
        peer: PeerId,
        /// What the connection is for.
        purpose: Purpose,
    },
    /// A message this version does not know; ignored.
    Ignored,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HsState {
    AwaitAuth,
    AwaitPurpose(PeerId),
    Finished,
}

/// The relay side of one connection's handshake: challenge, auth, purpose.
///
/// Create it when the WebSocket is up, send [`challenge`](Self::challenge), feed every
/// decoded message to [`handle_message`](Self::handle_message) until it returns
/// [`HandshakeStep::Done`], and call [`handle_timeout`](Self::handle_timeout) at
/// [`deadline`](Self::deadline). Any `Err` ends the connection: send
/// `error { code: err.code() }`, then close with that code.
#[derive(Debug)]
pub struct ServerHandshake {
    nonce: [u8; 32],
    relay: String,
    deadline: Instant,
    state: HsState,
}

impl ServerHandshake {
    /// A handshake with a fresh random `nonce` (from the shell's RNG; never reuse one),
    /// for the relay named `relay`, started at `now`.
    pub fn new(nonce: [u8; 32], relay: impl Into<String>, now: Instant) -> Self {
        Self { nonce, relay: relay.into(), deadline: now + HANDSHAKE_TIMEOUT, state: HsState::AwaitAuth }
    }

    /// The challenge to send first.
    pub fn challenge(&self) -> RelayMessage {
        RelayMessage::Challenge { nonce: self.nonce, relay: self.relay.clone() }
    }

    /// When the handshake times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Fails the handshake if `now` is at or past the deadline and it has not finished.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), AuthError> {
        if now >= self.deadline && self.state != HsState::Finished {
            self.state = HsState::Finished;
            return Err(AuthError::Timeout(HANDSHAKE_TIMEOUT));
        }
        Ok(())
    }

    /// Feeds one message from the client. `unix_now` (seconds) is for token expiry.
    pub fn handle_message(
        &mut self,
        msg: RelayMessage,
        admission: &Admission,
        unix_now: u64,
    ) -> Result<HandshakeStep, AuthError> {
        if matches!(msg, RelayMessage::Unknown) && self.state != HsState::Finished {
            return Ok(HandshakeStep::Ignored);
        }
        let state = std::mem::replace(&mut self.state, HsState::Finished);
        match (state, msg) {
            (HsState::AwaitAuth, RelayMessage::Auth { peer_id, signature, token }) => {
                verify_auth(&peer_id, &self.nonce, &self.relay, &signature)?;
                admission.admit(&peer_id, token.as_deref(), unix_now)?;
                self.state = HsState::AwaitPurpose(peer_id);
                Ok(HandshakeStep::Authenticated { peer: peer_id })
            }
            (HsState::AwaitPurpose(peer), msg) => match msg.purpose() {
                Some(purpose) => Ok(HandshakeStep::Done { peer, purpose }),
                None => Err(AuthError::Protocol(format!("expected a purpose, got {}", msg.type_name()))),
            },
            (HsState::AwaitAuth, msg) => {
                Err(AuthError::Protocol(format!("expected auth, got {}", msg.type_name())))
            }
            (HsState::Finished, msg) => {
                Err(AuthError::Protocol(format!("{} after the handshake ended", msg.type_name())))
            }
        }
    }
}
