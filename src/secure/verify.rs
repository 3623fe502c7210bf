//! rustls certificate verifiers that authenticate peers by key, not by CA.
//!
//! * [`ExpectedPeerVerifier`] (client side): accepts only the certificate of the peer that
//!   was dialed, and remembers who else answered so the failure can name them.
//! * [`AnyPeerVerifier`] (server side): requires a client certificate (mutual
//!   authentication) and accepts any well-formed Ed25519 one; the server then reads the
//!   client's identity out of it.
//!
//! Both verify handshake signatures with rustls's `verify_tls13_signature` over the *ring*
//! provider's algorithms, and offer and accept only the Ed25519 signature scheme.

use std::sync::{Arc, Mutex};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};

use super::cert::{peer_id_from_cert, CertError};
use crate::identity::PeerId;

/// The error a client-side verifier reports when the remote is somebody else; carried
/// inside `rustls::Error` so the secure channel can map it back to
/// `TransportError::AuthenticationFailed`.
#[derive(Debug, thiserror::Error)]
#[error("expected peer {expected}, remote presented {presented}")]
pub(crate) struct WrongPeer {
    /// Who was dialed.
    pub(crate) expected: PeerId,
    /// Who answered.
    pub(crate) presented: PeerId,
}

fn cert_error(e: CertError) -> Error {
    match e {
        CertError::Malformed(_) => Error::InvalidCertificate(CertificateError::BadEncoding),
        other => Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(other)))),
    }
}

fn check_single(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PeerId, Error> {
    if !intermediates.is_empty() {
        return Err(cert_error(CertError::ChainLength(intermediates.len() + 1)));
    }
    peer_id_from_cert(end_entity).map_err(cert_error)
}

fn verify_ed25519(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme));
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

fn no_tls12() -> Error {
    // Unreachable in practice: every config here enables TLS 1.3 only.
    Error::General("TLS 1.2 is not supported".into())
}

/// Client-side verifier: the server must present exactly the expected peer's key.
///
/// One instance per expected peer is kept for the life of the node, because rustls only
/// resumes a session with the very verifier that approved it.
#[derive(Debug)]
pub(crate) struct ExpectedPeerVerifier {
    expected: PeerId,
    algs: WebPkiSupportedAlgorithms,
    /// The last identity rejected, so a failed handshake can say who answered (QUIC turns
    /// rustls errors into strings; this keeps the identity). Concurrent failing dials to
    /// the same expected peer may see each other's value: both are wrong peers anyway.
    rejected: Mutex<Option<PeerId>>,
}

impl ExpectedPeerVerifier {
    pub(crate) fn new(expected: PeerId, algs: WebPkiSupportedAlgorithms) -> Self {
        Self { expected, algs, rejected: Mutex::new(None) }
    }

    /// The identity of the last remote rejected as not `expected`, if any (taken).
    pub(crate) fn take_rejected(&self) -> Option<PeerId> {
        self.rejected.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The signature methods both verifiers share (the traits require them on each): TLS 1.2
/// refused, TLS 1.3 handshake signatures checked as Ed25519 with `self.algs`, Ed25519 the
/// only scheme offered.
macro_rules! ed25519_tls13_only {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(no_tls12())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_ed25519(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

impl ServerCertVerifier for ExpectedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented = check_single(end_entity, intermediates)?;
        if presented != self.expected {
            *self.rejected.lock().unwrap_or_else(|e| e.into_inner()) = Some(presented);
            let wrong = WrongPeer { expected: self.expected, presented };
            return Err(Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(wrong)))));
        }
        Ok(ServerCertVerified::assertion())
    }

    ed25519_tls13_only!();
}

/// Server-side verifier: a client certificate is mandatory and must carry an Ed25519 key.
#[derive(Debug)]
pub(crate) struct AnyPeerVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl AnyPeerVerifier {
    pub(crate) fn new(algs: WebPkiSupportedAlgorithms) -> Self {
        Self { algs }
    }
}

impl ClientCertVerifier for AnyPeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        check_single(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    ed25519_tls13_only!();
}
