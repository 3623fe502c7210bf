//! The dialing side: [`ws_connect`] and the `ws://` / `wss://` URL it takes.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest,
    error::ProtocolError,
    http::{header::SEC_WEBSOCKET_PROTOCOL, HeaderValue, Uri},
    Error as WsError,
};

use super::{socket::configure_tcp, stream::ws_config, WsOptions, WsSocket, WsStream, SUBPROTOCOL};
use crate::error::{AddressError, Result, TransportError};

/// Longest part of an HTTP error body quoted in an error. 512 bytes: enough for any
/// human-readable reason, without letting a server fill our logs.
const MAX_QUOTED_BODY: usize = 512;

/// A parsed `ws://` or `wss://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct WsUrl {
    pub(super) secure: bool,
    /// Host name or IP literal, without the brackets of an IPv6 literal.
    pub(super) host: String,
    pub(super) port: u16,
    /// Path and query, at least `/`.
    pub(super) path: String,
}

impl WsUrl {
    pub(super) fn parse(url: &str) -> Result<Self> {
        let bad = || TransportError::Address(AddressError::BadUrl(url.to_string()));
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_string(),
            Some(p) => p.to_string(),
        };
        Ok(Self { secure, host, port, path })
    }

    pub(super) fn scheme(&self) -> &'static str {
        if self.secure {
            "wss"
        } else {
            "ws"
        }
    }
}

/// Dials `url` (`ws://HOST[:PORT][/PATH]` or `wss://...`) and completes the WebSocket
/// upgrade offering the `kizuna` subprotocol; the whole is bounded by
/// [`WsOptions::handshake_timeout`].
///
/// For `wss://` the server's certificate is verified against
/// [`WsOptions::client_tls`], which must be set (no system roots are bundled). Fails with
/// [`TransportError::UnsupportedProtocol`] when the server does not select `kizuna` (it
/// is not a Kizuna endpoint), [`TransportError::ConnectFailed`] when it answers the
/// upgrade with an HTTP error (the status and body are quoted) or cannot be reached, and
/// [`TransportError::Timeout`] when the bound elapses.
///
/// Cancel safe: dropping the future closes whatever socket was opened.
pub async fn ws_connect(url: &str, opts: &WsOptions) -> Result<WsStream<WsSocket>> {
    let parsed = WsUrl::parse(url)?;
    let bound = opts.handshake_timeout;
    tokio::time::timeout(bound, connect(url, &parsed, opts))
        .await
        .map_err(|_| TransportError::Timeout { what: format!("WebSocket connect to {url}"), after: bound })?
}

async fn connect(url: &str, parsed: &WsUrl, opts: &WsOptions) -> Result<WsStream<WsSocket>> {
    let tls = match (parsed.secure, &opts.client_tls) {
        (false, _) => None,
        (true, Some(cfg)) => Some(cfg.clone()),
        (true, None) => {
            return Err(TransportError::Config(format!(
                "cannot dial {url}: wss:// needs trusted roots (WsConfig::trust_root_pem / trust_root_der, \
                 or WsOptions::client_tls)"
            )))
        }
    };
    let tcp = TcpStream::connect((parsed.host.as_str(), parsed.port))
        .await
        .map_err(|e| TransportError::connect_failed(url, e))?;
    configure_tcp(&tcp).map_err(|e| TransportError::connect_failed(url, e))?;
    let socket = match tls {
        None => WsSocket::Plain(tcp),
        Some(cfg) => WsSocket::TlsClient(Box::new(tls_connect(url, parsed, cfg, tcp).await?)),
    };
    upgrade(url, socket, opts).await
}

async fn tls_connect(
    url: &str,
    parsed: &WsUrl,
    cfg: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(parsed.host.clone())
        .map_err(|e| TransportError::Config(format!("{url}: host is not a valid TLS server name: {e}")))?;
    TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| TransportError::Tls(format!("wss handshake with {url} failed: {e}")))
}

/// The client side of the HTTP upgrade over an open socket.
pub(super) async fn upgrade<S>(url: &str, socket: S, opts: &WsOptions) -> Result<WsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = url.into_client_request().map_err(|e| TransportError::Config(format!("{url}: {e}")))?;
    request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, socket, Some(ws_config(opts)))
        .await
        .map_err(|e| upgrade_error(url, e))?;
    // tungstenite already checks the answer is one we offered; say it once more here so
    // that the binding does not depend on that.
    let selected = response.headers().get(SEC_WEBSOCKET_PROTOCOL).map(|v| v.as_bytes());
    if selected != Some(SUBPROTOCOL.as_bytes()) {
        return Err(not_kizuna(url, "it selected another subprotocol"));
    }
    Ok(WsStream::new(ws, opts, None))
}

fn not_kizuna(url: &str, detail: &str) -> TransportError {
    TransportError::UnsupportedProtocol(format!(
        "the WebSocket server at {url} did not select the subprotocol \"{SUBPROTOCOL}\" ({detail}): \
         it is not a Kizuna endpoint"
    ))
}

fn upgrade_error(url: &str, e: WsError) -> TransportError {
    match e {
        WsError::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            let body = &body[..body.len().min(MAX_QUOTED_BODY)];
            let body = String::from_utf8_lossy(body);
            let reason = if body.trim().is_empty() {
                format!("WebSocket upgrade refused with HTTP {}", response.status())
            } else {
                format!("WebSocket upgrade refused with HTTP {}: {}", response.status(), body.trim())
            };
            TransportError::connect_failed(url, reason)
        }
        WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(sub)) => {
            not_kizuna(url, &sub.to_string())
        }
        WsError::Io(io) => TransportError::connect_failed(url, format!("during the WebSocket upgrade: {io}")),
        other => TransportError::connect_failed(url, format!("WebSocket upgrade failed: {other}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = WsUrl::parse("ws://127.0.0.1:4000").unwrap();
        assert_eq!((u.secure, u.host.as_str(), u.port, u.path.as_str()), (false, "127.0.0.1", 4000, "/"));
        let u = WsUrl::parse("wss://relay.example/relay?x=1").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.path.as_str()),
            (true, "relay.example", 443, "/relay?x=1")
        );
        let u = WsUrl::parse("ws://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        for bad in ["http://x", "ws://", "tcp=1.2.3.4:5", "", "ws:///path"] {
            assert!(WsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
