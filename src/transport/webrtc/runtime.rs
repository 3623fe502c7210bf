//! [`BufferedRuntime`]: webrtc-rs's tokio runtime with enlarged UDP socket buffers.
//!
//! webrtc 0.21 leaves its UDP sockets at the kernel's default buffer sizes (208 KiB here).
//! SCTP sends in bursts; on loopback a burst overflows the receive buffer, the drops cost
//! SCTP retransmission timeouts (RTO_MIN is 1 s in rtc-sctp), and throughput collapses to
//! ≈ 60 Mbit/s. The runtime's `wrap_udp_socket` hook is where every socket the crate binds
//! passes through, so this wrapper sets `SO_RCVBUF`/`SO_SNDBUF` there (to the node's
//! `udp_buffer`, 4 MiB by default) and delegates everything else to [`TokioRuntime`].

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use socket2::SockRef;

use crate::transport::quic::config::tune_socket;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime, TokioRuntime,
};

/// A tokio runtime for webrtc-rs whose UDP sockets get `buffer`-byte send and receive
/// buffers (see the module docs).
#[derive(Debug)]
pub struct BufferedRuntime {
    inner: TokioRuntime,
    buffer: usize,
}

impl BufferedRuntime {
    /// Sockets get `buffer` bytes each way (best effort: the kernel caps it at
    /// `net.core.{r,w}mem_max`).
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self { inner: TokioRuntime, buffer })
    }
}

impl Runtime for BufferedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        tune_socket(SockRef::from(&socket), self.buffer);
        self.inner.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "kizuna-tokio"
    }
}
