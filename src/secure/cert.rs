//! The node certificate: a self-signed X.509 certificate whose SubjectPublicKeyInfo is the
//! node's Ed25519 key, and the inverse mapping from a presented certificate to a [`PeerId`].
//!
//! There is no certificate authority. The identity *is* the key in the certificate, and the
//! TLS 1.3 `CertificateVerify` message proves that the remote holds the matching secret
//! key over this very handshake. The certificate's own self-signature, its names and its
//! validity period therefore add nothing: they are not checked, so clock skew or a
//! long-lived node can never break a connection.

use std::sync::Arc;

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};

use crate::{
    error::{Result, TransportError},
    identity::{Keypair, PeerId},
};

/// DER prefix of an RFC 8410 Ed25519 SubjectPublicKeyInfo: SEQUENCE(44) { SEQUENCE(5) {
/// OID 1.3.101.112 }, BIT STRING(33) { 0 unused bits, ... } } followed by the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a presented certificate does not name a Kizuna peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The certificate is not well-formed X.509 DER.
    #[error("certificate is not valid X.509: {0}")]
    Malformed(String),
    /// The certificate's key is not an Ed25519 key.
    #[error("certificate key is not Ed25519")]
    NotEd25519,
    /// The certificate's Ed25519 key is not a valid peer key.
    #[error("certificate key is not a valid peer key")]
    InvalidKey,
    /// The remote presented no certificate, or a chain instead of one self-signed one.
    #[error("expected exactly one self-signed certificate, got {0}")]
    ChainLength(usize),
}

/// The [`PeerId`] a certificate proves: its Ed25519 SubjectPublicKeyInfo.
///
/// Only the key is read; see the module documentation for why nothing else is checked.
pub fn peer_id_from_cert(cert: &CertificateDer<'_>) -> Result<PeerId, CertError> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| CertError::Malformed(format!("{e:?}")))?;
    let spki = parsed.subject_public_key_info();
    let spki = spki.as_ref();
    if spki.len() != ED25519_SPKI_PREFIX.len() + 32
        || spki[..ED25519_SPKI_PREFIX.len()] != ED25519_SPKI_PREFIX
    {
        return Err(CertError::NotEd25519);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&spki[ED25519_SPKI_PREFIX.len()..]);
    PeerId::from_public_key(key).map_err(|_| CertError::InvalidKey)
}

/// The [`PeerId`] proved by a presented chain, which must be exactly one certificate.
pub fn peer_id_from_certs(certs: &[CertificateDer<'_>]) -> Result<PeerId, CertError> {
    match certs {
        [one] => peer_id_from_cert(one),
        other => Err(CertError::ChainLength(other.len())),
    }
}

/// The node's certificate and signing key, ready for rustls.
pub(crate) struct NodeCert {
    /// The certified key every config presents.
    pub(crate) certified: Arc<CertifiedKey>,
}

impl NodeCert {
    /// Generates the self-signed certificate of `keypair` (rcgen, PKCS_ED25519).
    pub(crate) fn generate(keypair: &Keypair, provider: &rustls::crypto::CryptoProvider) -> Result<Self> {
        let tls = |what: &str, e: &dyn std::fmt::Display| TransportError::Tls(format!("{what}: {e}"));
        let pkcs8 = PrivatePkcs8KeyDer::from(keypair.to_pkcs8_der());
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(|e| tls("loading the node key into rcgen", &e))?;
        // The peer id text (55 lowercase base32 characters) is a valid DNS label, so the
        // certificate names the node the way clients address it. Nobody checks it.
        let mut params = rcgen::CertificateParams::new(vec![keypair.peer_id().to_string()])
            .map_err(|e| tls("certificate parameters", &e))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "kizuna node");
        let cert = params.self_signed(&key).map_err(|e| tls("self-signing the node certificate", &e))?;
        let der: CertificateDer<'static> = cert.der().clone();

        let signing = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(pkcs8))
            .map_err(|e| tls("loading the node key into rustls", &e))?;
        let certified = CertifiedKey::new(vec![der], signing);
        // Catch a certificate/key mismatch now rather than at the first handshake.
        certified.keys_match().map_err(|e| tls("node certificate does not match its key", &e))?;
        Ok(Self { certified: Arc::new(certified) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_node_key() {
        let kp = Keypair::from_seed([9; 32]);
        let provider = rustls::crypto::ring::default_provider();
        let cert = NodeCert::generate(&kp, &provider).unwrap();
        let id = peer_id_from_certs(&cert.certified.cert).unwrap();
        assert_eq!(id, kp.peer_id());
    }

    #[test]
    fn garbage_and_chains_are_refused() {
        assert!(matches!(
            peer_id_from_cert(&CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03])),
            Err(CertError::Malformed(_))
        ));
        assert_eq!(peer_id_from_certs(&[]), Err(CertError::ChainLength(0)));
    }

    #[test]
    fn non_ed25519_keys_are_refused() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(peer_id_from_cert(cert.der()), Err(CertError::NotEd25519));
    }
}
