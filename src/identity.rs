//! Node identity: an Ed25519 key pair, the [`PeerId`] derived from it, and key files.
//!
//! A `PeerId` is the node's 32-byte Ed25519 public key. Its one canonical text form is
//! 55 characters of lowercase RFC 4648 base32 (no padding) over the key followed by a
//! two-byte checksum (the first two bytes of `SHA-256("kizuna-peer-id" || key)`), so a
//! mistyped id is caught before anyone dials it.
//!
//! Key files hold the 32-byte secret seed as text (`kizuna-secret-key-v1` on the first
//! line, the base32 seed plus checksum on the second) and must have mode 0600. A key file
//! is never created through a symbolic link: a link to a missing file is an error naming
//! both ([`IdentityError::KeyFileDanglingLink`]).

use std::{
    fmt, fs,
    io::Write,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use data_encoding::BASE32_NOPAD;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;

/// Length of a peer id's text form.
pub const PEER_ID_TEXT_LEN: usize = 55;
const CHECKSUM_DOMAIN: &[u8] = b"kizuna-peer-id";
const KEY_FILE_HEADER: &str = "kizuna-secret-key-v1";
/// Links followed when naming the target of a dangling key-file link: Linux's own limit
/// for path resolution (`MAXSYMLINKS`), past which the system reports a loop anyway.
const MAX_LINK_HOPS: usize = 40;

/// The identity of a node: its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "PeerIdBytes")]
pub struct PeerId(#[serde(with = "serde_bytes")] [u8; 32]);

/// Serde form of a peer id: decoding goes through [`PeerId::from_public_key`].
#[derive(Deserialize)]
struct PeerIdBytes(#[serde(with = "serde_bytes")] [u8; 32]);

impl TryFrom<PeerIdBytes> for PeerId {
    type Error = IdentityError;
    fn try_from(b: PeerIdBytes) -> Result<Self, IdentityError> {
        PeerId::from_public_key(b.0)
    }
}

impl PeerId {
    /// The peer id of an Ed25519 public key. Fails if the bytes are not a valid point.
    pub fn from_public_key(key: [u8; 32]) -> Result<Self, IdentityError> {
        // Verifying a signature made by a key is the only check ring offers; a point that
        // is not on the curve is still rejected at signature verification time. Reject the
        // all-zero key here, which no generator produces.
        if key == [0u8; 32] {
            return Err(IdentityError::InvalidKey);
        }
        Ok(Self(key))
    }

    /// The raw 32-byte public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies an Ed25519 `signature` of `message` by this peer.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }

    /// A short form for logs: the first 8 characters of the text form.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

fn checksum(data: &[u8], domain: &[u8]) -> [u8; 2] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(domain);
    ctx.update(data);
    let d = ctx.finish();
    [d.as_ref()[0], d.as_ref()[1]]
}

fn encode_checked(data: &[u8; 32], domain: &[u8]) -> String {
    let mut buf = [0u8; 34];
    buf[..32].copy_from_slice(data);
    buf[32..].copy_from_slice(&checksum(data, domain));
    BASE32_NOPAD.encode(&buf).to_ascii_lowercase()
}

fn decode_checked(s: &str, domain: &[u8]) -> Result<[u8; 32], IdentityError> {
    let len = s.chars().count();
    if len != PEER_ID_TEXT_LEN {
        return Err(IdentityError::WrongLength { got: len, expected: PEER_ID_TEXT_LEN });
    }
    if let Some(c) = s.chars().find(|c| !matches!(c, 'a'..='z' | '2'..='7')) {
        return Err(IdentityError::BadAlphabet(c));
    }
    let raw =
        BASE32_NOPAD.decode(s.to_ascii_uppercase().as_bytes()).map_err(|_| IdentityError::BadChecksum)?;
    let (key, sum) = raw.split_at(32);
    let key: [u8; 32] = key.try_into().map_err(|_| IdentityError::BadChecksum)?;
    if sum != checksum(&key, domain) {
        return Err(IdentityError::BadChecksum);
    }
    Ok(key)
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_checked(&self.0, CHECKSUM_DOMAIN))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_public_key(decode_checked(s.trim(), CHECKSUM_DOMAIN)?)
    }
}

/// An Ed25519 key pair: the node's secret identity.
///
/// Cheap to clone (the key material is shared).
#[derive(Clone)]
pub struct Keypair {
    seed: Arc<[u8; 32]>,
    pair: Arc<Ed25519KeyPair>,
    id: PeerId,
}

impl Keypair {
    /// A fresh random key pair from the operating system's RNG.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        // The system RNG only fails when the OS has no entropy source at all, in which
        // case no key can be made safely: a panic is the only honest outcome.
        #[allow(clippy::expect_used)]
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .expect("operating system RNG unavailable");
        Self::from_seed(seed)
    }

    /// The key pair of a 32-byte secret seed (deterministic; tests use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        // `from_seed_unchecked` only fails for seeds of the wrong length, which the type
        // rules out.
        #[allow(clippy::expect_used)]
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).expect("32-byte seed");
        let mut pk = [0u8; 32];
        pk.copy_from_slice(pair.public_key().as_ref());
        Self { seed: Arc::new(seed), pair: Arc::new(pair), id: PeerId(pk) }
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.id
    }

    /// Signs `message` with the secret key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }

    /// The secret key in PKCS#8 v1 DER, as TLS certificate generation needs it.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        // RFC 8410 OneAsymmetricKey for Ed25519: fixed 16-byte prefix, then the seed.
        const PREFIX: [u8; 16] =
            [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.seed[..]);
        der
    }

    /// Loads a key file, checking its permissions and integrity.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let p = path.display().to_string();
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(match dangling_link_target(path) {
                    Some(target) => {
                        IdentityError::KeyFileDanglingLink { path: p, target: target.display().to_string() }
                    }
                    None => IdentityError::KeyFileMissing { path: p },
                });
            }
            Err(e) => return Err(IdentityError::KeyFileIo { path: p, source: e }),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::KeyFilePermissions { path: p, mode });
            }
        }
        if meta.len() > 4096 {
            return Err(IdentityError::KeyFileCorrupt { path: p, reason: "file too large".into() });
        }
        let text = fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                IdentityError::KeyFileCorrupt { path: p.clone(), reason: "not UTF-8 text".into() }
            }
            _ => IdentityError::KeyFileIo { path: p.clone(), source: e },
        })?;
        Self::parse_key_file(&text, &p)
    }

    fn parse_key_file(text: &str, p: &str) -> Result<Self, IdentityError> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        if header != KEY_FILE_HEADER {
            if KEY_FILE_HEADER.starts_with(header) {
                return Err(IdentityError::KeyFileTruncated { path: p.into() });
            }
            return Err(IdentityError::KeyFileCorrupt {
                path: p.into(),
                reason: format!("first line must be `{KEY_FILE_HEADER}`"),
            });
        }
        let body = lines.next().unwrap_or_default().trim();
        if body.len() < PEER_ID_TEXT_LEN {
            return Err(IdentityError::KeyFileTruncated { path: p.into() });
        }
        let seed = decode_checked(body, KEY_FILE_HEADER.as_bytes())
            .map_err(|e| IdentityError::KeyFileCorrupt { path: p.into(), reason: e.to_string() })?;
        Ok(Self::from_seed(seed))
    }

    /// Writes the key to `path` with mode 0600 (the file must not exist yet).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let p = path.display().to_string();
        let io = |source| IdentityError::KeyFileIo { path: p.clone(), source };
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        let body = encode_checked(&self.seed, KEY_FILE_HEADER.as_bytes());
        writeln!(f, "{KEY_FILE_HEADER}\n{body}").map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Loads `path` if it exists, otherwise creates it with a fresh key.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match Self::load(path) {
            Err(IdentityError::KeyFileMissing { .. }) => {
                let k = Self::generate();
                k.save(path)?;
                Ok(k)
            }
            other => other,
        }
    }
}

/// Where `path` ends up if it is a symbolic link (following a chain of links, each target
/// taken relative to its link's directory); `None` if `path` is not a link.
fn dangling_link_target(path: &Path) -> Option<PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..MAX_LINK_HOPS {
        let Ok(target) = fs::read_link(&at) else { break };
        at = at.parent().map_or_else(|| target.clone(), |dir| dir.join(&target));
    }
    (at != path).then_some(at)
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.id.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let k = Keypair::from_seed([7; 32]);
        let s = k.peer_id().to_string();
        assert_eq!(s.len(), PEER_ID_TEXT_LEN);
        assert_eq!(s.parse::<PeerId>().unwrap(), k.peer_id());
    }

    #[test]
    fn text_errors() {
        let s = Keypair::from_seed([7; 32]).peer_id().to_string();
        assert!(matches!(s[1..].parse::<PeerId>(), Err(IdentityError::WrongLength { .. })));
        let bad = format!("1{}", &s[1..]);
        assert!(matches!(bad.parse::<PeerId>(), Err(IdentityError::BadAlphabet('1'))));
        let c = if s.as_bytes()[0] == b'a' { 'b' } else { 'a' };
        let typo = format!("{c}{}", &s[1..]);
        assert!(matches!(typo.parse::<PeerId>(), Err(IdentityError::BadChecksum)));
    }

    #[test]
    fn signatures_verify() {
        let k = Keypair::from_seed([1; 32]);
        let sig = k.sign(b"hello");
        assert!(k.peer_id().verify(b"hello", &sig));
        assert!(!k.peer_id().verify(b"hellO", &sig));
    }

    #[test]
    fn key_file_round_trip_and_errors() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(matches!(Keypair::load(&path), Err(IdentityError::KeyFileMissing { .. })));
        let k = Keypair::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Keypair::load(&path).unwrap().peer_id(), k.peer_id());

        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, &text[..30]).unwrap();
        assert!(matches!(Keypair::load(&path), Err(IdentityError::KeyFileTruncated { .. })));
        fs::write(&path, text.replace('a', "b").replace("kizuna-secret-key-v1", KEY_FILE_HEADER)).unwrap();
        assert!(matches!(Keypair::load(&path), Err(IdentityError::KeyFileCorrupt { .. })));
        fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(Keypair::load(&path), Err(IdentityError::KeyFileCorrupt { .. })));
        fs::write(&path, &text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keypair::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::KeyFilePermissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn dangling_key_link_names_link_and_target_and_is_not_created_through() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("key");
        std::os::unix::fs::symlink("gone/real.key", &link).unwrap();
        let want = dir.path().join("gone/real.key").display().to_string();
        for err in [Keypair::load(&link).unwrap_err(), Keypair::load_or_create(&link).unwrap_err()] {
            let IdentityError::KeyFileDanglingLink { path, target } = &err else { panic!("{err:?}") };
            assert_eq!(
                (path.as_str(), target.as_str()),
                (link.display().to_string().as_str(), want.as_str())
            );
            let msg = err.to_string();
            assert!(msg.contains("symbolic link") && msg.contains("does not exist"), "{msg}");
            assert!(msg.contains(&format!("kizuna id --key {want}")), "{msg}");
        }
        assert!(!dir.path().join("gone").exists(), "nothing is created through the link");
        // A chain of links names its last, missing, target; an absolute target as written.
        let chain = dir.path().join("chain");
        std::os::unix::fs::symlink(&link, &chain).unwrap();
        assert!(matches!(Keypair::load(&chain),
            Err(IdentityError::KeyFileDanglingLink { target, .. }) if target == want));
        let abs = dir.path().join("abs");
        std::os::unix::fs::symlink("/nonexistent-kizuna/k", &abs).unwrap();
        assert!(matches!(Keypair::load(&abs),
            Err(IdentityError::KeyFileDanglingLink { target, .. }) if target == "/nonexistent-kizuna/k"));
        // Once the target exists, the link works.
        fs::create_dir(dir.path().join("gone")).unwrap();
        let k = Keypair::load_or_create(&dir.path().join("gone/real.key")).unwrap();
        assert_eq!(Keypair::load(&link).unwrap().peer_id(), k.peer_id());
    }
}
