//! The accepting side: [`ws_accept`] (the HTTP upgrade with the subprotocol check) and
//! the listener of [`WsTransport`](super::WsTransport).

use std::sync::Arc;

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    http::{
        header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, SEC_WEBSOCKET_PROTOCOL},
        HeaderValue, StatusCode,
    },
    Error as WsError,
};

use super::{build_connection, stream::ws_config, WsOptions, WsSocket, WsStream, SUBPROTOCOL};
use crate::transport::accept::{admitted_handshake, AdmittingAccept, ChannelListener};
use crate::{
    address::TransportAddr,
    error::{Result, TransportError, WireError},
    node::LocalNode,
    transport::Incoming,
    wire::exchange_hello,
};

/// Handshaken connections waiting for [`Listener::accept`]. 64, as for TCP: with
/// `max_pending_handshakes` it bounds everything a listener holds when the application
/// stops accepting.
const INCOMING_QUEUE: usize = 64;

/// Most offered subprotocol names quoted back in a refusal. 8 names of at most 32
/// characters: enough to show a confused client what it sent.
const MAX_QUOTED_PROTOCOLS: usize = 8;
const MAX_QUOTED_NAME: usize = 32;

/// Accepts a WebSocket on an open socket (plain TCP or TLS already accepted by the
/// caller): reads the upgrade request, requires the `kizuna` subprotocol, answers.
/// Bounded by [`WsOptions::handshake_timeout`].
///
/// Any request path is accepted and recorded ([`WsStream::request_path`]): one listener
/// can serve `/`, `/relay` or anything else, and the caller decides what a path means.
///
/// A client that offers no subprotocol or only others receives `400 Bad Request` with a
/// plain-text body saying `Kizuna requires the WebSocket subprotocol "kizuna"` and what it
/// offered, and this fails with [`TransportError::UnsupportedProtocol`]; a request that is
/// not a WebSocket upgrade fails with [`TransportError::ProtocolViolation`].
pub async fn ws_accept<S>(socket: S, opts: &WsOptions) -> Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bound = opts.handshake_timeout;
    let mut path = None;
    let mut refused = None;
    // The callback's signature is tungstenite's `Callback`; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| check_request(req, resp, &mut path, &mut refused);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(socket, callback, Some(ws_config(opts)));
    let outcome = tokio::time::timeout(bound, handshake)
        .await
        .map_err(|_| TransportError::Timeout { what: "WebSocket upgrade".into(), after: bound })?;
    match (outcome, refused) {
        (Ok(ws), _) => Ok(WsStream::new(ws, opts, path)),
        (Err(_), Some(reason)) => Err(TransportError::UnsupportedProtocol(reason)),
        (Err(WsError::Io(e)), None) => Err(TransportError::Io(e)),
        (Err(e), None) => Err(TransportError::violation(
            "WebSocket client",
            WireError::Malformed { what: "WebSocket upgrade request", reason: e.to_string() },
        )),
    }
}

/// The upgrade callback: records the path, selects `kizuna` or refuses.
#[allow(clippy::result_large_err)] // tungstenite's `Callback` signature
fn check_request(
    req: &Request,
    mut resp: Response,
    path: &mut Option<String>,
    refused: &mut Option<String>,
) -> std::result::Result<Response, ErrorResponse> {
    *path = Some(req.uri().path().to_string());
    let offered: Vec<&str> = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    // Subprotocol names are case-sensitive (RFC 6455 §4.1).
    if offered.contains(&SUBPROTOCOL) {
        resp.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
        return Ok(resp);
    }
    let what = if offered.is_empty() {
        "the client offered none".to_string()
    } else {
        let names: Vec<String> = offered
            .iter()
            .take(MAX_QUOTED_PROTOCOLS)
            .map(|p| format!("{:?}", p.chars().take(MAX_QUOTED_NAME).collect::<String>()))
            .collect();
        format!("the client offered {}", names.join(", "))
    };
    let reason = format!(
        "Kizuna requires the WebSocket subprotocol \"{SUBPROTOCOL}\" (Sec-WebSocket-Protocol: {SUBPROTOCOL}); {what}"
    );
    let body = format!("{reason}\n");
    let mut err = ErrorResponse::new(Some(body.clone()));
    *err.status_mut() = StatusCode::BAD_REQUEST;
    let headers = err.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    *refused = Some(reason);
    Err(err)
}

/// What a listener task needs.
pub(super) struct ListenCtx {
    pub(super) node: Arc<LocalNode>,
    pub(super) opts: WsOptions,
    /// Set for `wss://`.
    pub(super) tls: Option<TlsAcceptor>,
}

/// Starts the accept loop on `listener`, reporting as `local_addr`.
pub(super) fn start(
    ctx: ListenCtx,
    listener: tokio::net::TcpListener,
    local_addr: TransportAddr,
) -> ChannelListener {
    let node = ctx.node.clone();
    node.add_listen_addr(local_addr.clone());
    let (tx, rx) = mpsc::channel(INCOMING_QUEUE);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(Arc::new(ctx), listener, tx, shutdown_rx));
    ChannelListener::new(node, local_addr, rx, shutdown, task)
}

async fn accept_loop(
    ctx: Arc<ListenCtx>,
    listener: tokio::net::TcpListener,
    tx: mpsc::Sender<Incoming>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = ctx.node.config().admission_limits();
    let counters = ctx.node.handshake_counters().clone();
    let mut accept = AdmittingAccept::new(listener, limits, counters, shutdown, "WebSocket listener");
    let mut handshakes = JoinSet::new();
    while let Some((stream, remote, permit)) = accept.next().await {
        // Reap finished handshakes so the set stays bounded by the slots.
        while handshakes.try_join_next().is_some() {}
        let ctx = ctx.clone();
        let tx = tx.clone();
        let ticket = permit.ticket();
        let task = handshakes.spawn(async move {
            let scheme = if ctx.tls.is_some() { "wss" } else { "ws" };
            let label = format!("{scheme}://{remote}");
            let bound = ctx.node.config().handshake_timeout;
            let run = |stream| handshake(&ctx, stream, &label);
            if let Some(incoming) = admitted_handshake(&permit, stream, &label, bound, run).await {
                let _ = tx.send(incoming).await;
            }
            drop(permit);
        });
        accept.track(ticket, task);
    }
    // Dropping the set aborts pending handshakes.
    handshakes.abort_all();
}

/// TCP → (TLS) → WebSocket upgrade → Kizuna secure channel → hello → connection.
async fn handshake(ctx: &ListenCtx, stream: TcpStream, label: &str) -> Result<crate::transport::Connection> {
    let node = &ctx.node;
    let bound = node.config().handshake_timeout;
    crate::transport::accept::configure_tcp(&stream)?;
    let local = stream.local_addr().ok();
    let socket = match &ctx.tls {
        None => WsSocket::Plain(stream),
        Some(acceptor) => WsSocket::TlsServer(Box::new(
            acceptor
                .accept(stream)
                .await
                .map_err(|e| TransportError::Tls(format!("wss handshake with {label} failed: {e}")))?,
        )),
    };
    let ws = ws_accept(socket, &ctx.opts).await.map_err(|e| label_error(e, label))?;
    let (mut tls, peer) = node.secure().accept_labeled(ws, label, bound).await?;
    let observed = TransportAddr::Ws(label.to_string());
    let ours = node.hello(Some(observed.clone()));
    match exchange_hello(&mut tls, &ours, peer, label, bound).await {
        Ok(theirs) => Ok(build_connection(
            node,
            tls,
            crate::transport::muxed::StreamEnd {
                peer,
                remote_addr: observed,
                label: label.to_string(),
                local,
                dialer: false,
                path: crate::address::PathKind::Direct,
            },
            theirs,
        )),
        Err(e) => Err(crate::transport::accept::reject(&mut tls, e).await),
    }
}

/// Names the client in errors `ws_accept` could only describe generically.
fn label_error(e: TransportError, label: &str) -> TransportError {
    match e {
        TransportError::UnsupportedProtocol(reason) => {
            TransportError::UnsupportedProtocol(format!("{label} refused: {reason}"))
        }
        TransportError::ProtocolViolation { source, .. } => TransportError::violation(label, source),
        TransportError::Timeout { what, after } => {
            TransportError::Timeout { what: format!("{what} with {label}"), after }
        }
        other => other,
    }
}
