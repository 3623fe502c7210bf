//! The secure channel: TLS 1.3 (rustls) with self-signed certificates bound to the node's
//! Ed25519 key, mutually authenticated against the expected [`PeerId`].
//!
//! Works over any `AsyncRead + AsyncWrite` (TCP, WebSocket, relayed circuits) and supplies
//! QUIC's crypto configuration.

use std::{sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsStream;

use crate::{
    error::{Result, TransportError},
    identity::{Keypair, PeerId},
};

/// The node's TLS material and the configs derived from it.
#[derive(Debug)]
pub struct SecureConfig {
    keypair: Keypair,
}

impl SecureConfig {
    /// Generates the node's self-signed certificate from `keypair`.
    pub fn new(keypair: &Keypair) -> Result<Self> {
        Ok(Self { keypair: keypair.clone() })
    }

    /// rustls client config that accepts only `expected` (and presents our certificate).
    pub fn client_config(&self, _expected: PeerId) -> Result<Arc<rustls::ClientConfig>> {
        Err(TransportError::Tls("secure channel not built yet".into()))
    }

    /// rustls server config that requires and authenticates a client certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        unreachable_placeholder()
    }

    /// quinn client config for dialing `expected`.
    pub fn quic_client_config(&self, _expected: PeerId) -> Result<quinn::ClientConfig> {
        Err(TransportError::Tls("secure channel not built yet".into()))
    }

    /// quinn server config.
    pub fn quic_server_config(&self) -> Result<quinn::ServerConfig> {
        Err(TransportError::Tls("secure channel not built yet".into()))
    }

    /// Runs the client side of the secure channel over `io`, within `timeout`.
    pub async fn connect<IO>(
        &self,
        _io: IO,
        _expected: PeerId,
        _timeout: Duration,
    ) -> Result<(TlsStream<IO>, PeerId)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        Err(TransportError::Tls("secure channel not built yet".into()))
    }

    /// Runs the server side over `io`, returning the authenticated client identity.
    pub async fn accept<IO>(&self, _io: IO, _timeout: Duration) -> Result<(TlsStream<IO>, PeerId)>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        Err(TransportError::Tls("secure channel not built yet".into()))
    }

    /// The key pair behind the certificate.
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

fn unreachable_placeholder() -> Arc<rustls::ServerConfig> {
    panic!("placeholder until the secure channel lands")
}
