//! [`UdpProxy`]: a UDP forwarder to put between two nodes' QUIC sockets, that can delay
//! or drop everything (a blackhole) on command — the harness's way to make a direct path
//! slow or die silently, and recover, without touching the kernel.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::net::UdpSocket;

use crate::runtime::io_runtime;

/// Largest datagram forwarded. 2048: QUIC keeps datagrams within the path MTU (1200–1500).
const MAX_DATAGRAM: usize = 2048;

/// A forwarder from its own address to `target` for one client (the first that sends):
/// the target sees the proxy's upstream socket as the client. See the module docs.
#[derive(Clone, Debug)]
pub struct UdpProxy {
    addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    delay_micros: Arc<AtomicU64>,
}

impl UdpProxy {
    /// Starts a forwarder to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let proxy =
            Self { addr: front.local_addr()?, blackhole: Arc::default(), delay_micros: Arc::default() };
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        // Client → target.
        let (f, b, p, c) = (front.clone(), back.clone(), proxy.clone(), client.clone());
        io_runtime().spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *c.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                p.forward(&b, buf[..n].to_vec(), target);
            }
        });
        // Target → client.
        let p = proxy.clone();
        io_runtime().spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let to = *client.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(to) = to {
                    p.forward(&front, buf[..n].to_vec(), to);
                }
            }
        });
        Ok(proxy)
    }

    fn forward(&self, sock: &Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr) {
        if self.blackhole.load(Ordering::Relaxed) {
            return;
        }
        let delay = Duration::from_micros(self.delay_micros.load(Ordering::Relaxed));
        if delay.is_zero() {
            let _ = sock.try_send_to(&data, to);
            return;
        }
        let sock = sock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = sock.send_to(&data, to).await;
        });
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every datagram both ways while `on`.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    /// Delays every datagram by `d` each way (zero: none).
    pub fn set_delay(&self, d: Duration) {
        self.delay_micros.store(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}
