//! [`TcpProxy`]: a TCP forwarder to put in front of a node's TCP listener, that can hold
//! every byte (a blackhole: the path goes silent, the sockets stay open, as when a router
//! drops a flow) and release it again, or delay every chunk.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::runtime::io_runtime;

/// Bytes moved per read. 64 KiB: enough for bulk tests, small enough that a blackhole
/// holds little.
const CHUNK: usize = 64 * 1024;

/// A forwarder from its own address to `target`. See the module docs.
#[derive(Clone, Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    blackhole: Arc<watch::Sender<bool>>,
    delay: Arc<watch::Sender<Duration>>,
}

impl TcpProxy {
    /// Starts a forwarder to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Self {
            addr: listener.local_addr()?,
            blackhole: Arc::new(watch::channel(false).0),
            delay: Arc::new(watch::channel(Duration::ZERO).0),
        };
        let p = proxy.clone();
        io_runtime().spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                io_runtime().spawn(pump(cr, sw, p.clone()));
                io_runtime().spawn(pump(sr, cw, p.clone()));
            }
        });
        Ok(proxy)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds every byte both ways while `on`; releases what was held when turned off.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.send_replace(on);
    }

    /// Delays every chunk by `d` each way (zero: none).
    pub fn set_delay(&self, d: Duration) {
        self.delay.send_replace(d);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    p: TcpProxy,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut hole = p.blackhole.subscribe();
    loop {
        // Held: nothing is read (nor written) until the blackhole is lifted.
        if hole.wait_for(|on| !*on).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let d = *p.delay.borrow();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        // A chunk read just before the blackhole began waits for its end, too.
        if hole.wait_for(|on| !*on).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
