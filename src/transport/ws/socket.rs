//! [`WsSocket`]: the connection under a WebSocket — plain TCP (`ws://`) or TLS over TCP
//! (`wss://`), client or server side — as one type.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{client, server};

pub(super) use crate::transport::accept::configure_tcp;

/// The byte stream a WebSocket runs on: TCP, or TLS over TCP for `wss://`.
///
/// The TLS here is the *outer* TLS of `wss://` (a web PKI certificate, for firewalls and
/// proxies); Kizuna's own secure channel runs end to end inside the WebSocket either way.
#[derive(Debug)]
#[non_exhaustive]
pub enum WsSocket {
    /// `ws://`: plain TCP.
    Plain(TcpStream),
    /// `wss://`, the dialing side.
    TlsClient(Box<client::TlsStream<TcpStream>>),
    /// `wss://`, the accepting side.
    TlsServer(Box<server::TlsStream<TcpStream>>),
}

impl WsSocket {
    fn tcp(&self) -> &TcpStream {
        match self {
            WsSocket::Plain(s) => s,
            WsSocket::TlsClient(s) => s.get_ref().0,
            WsSocket::TlsServer(s) => s.get_ref().0,
        }
    }

    /// The local socket address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// The remote socket address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Whether this is `wss://` (TLS under the WebSocket).
    pub fn is_tls(&self) -> bool {
        !matches!(self, WsSocket::Plain(_))
    }
}

impl AsyncRead for WsSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsSocket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            WsSocket::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            WsSocket::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WsSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WsSocket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WsSocket::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            WsSocket::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WsSocket::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WsSocket::TlsClient(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            WsSocket::TlsServer(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WsSocket::Plain(s) => s.is_write_vectored(),
            WsSocket::TlsClient(s) => s.is_write_vectored(),
            WsSocket::TlsServer(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsSocket::Plain(s) => Pin::new(s).poll_flush(cx),
            WsSocket::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            WsSocket::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WsSocket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WsSocket::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            WsSocket::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
