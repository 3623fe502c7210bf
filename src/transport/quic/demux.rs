//! One UDP socket shared by QUIC, STUN and hole punching.
//!
//! [`DemuxSocket`] sits between quinn and the real socket. Every datagram whose first byte
//! has both top bits clear is not QUIC (RFC 9000 packets set the fixed bit 0x40, and Kizuna
//! endpoints never negotiate RFC 9287 greasing of it;
//! RFC 9443 multiplexing uses the same rule): STUN (RFC 8489, first byte 0x00/0x01) and
//! Kizuna's hole-punch packets are diverted to a bounded side channel ([`SideChannel`])
//! instead of reaching quinn. Datagrams sent through the side channel leave from the very
//! same socket, so the mapping STUN observed and the hole a punch opened are the ones QUIC
//! then uses.

use std::{
    fmt,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use quinn::{
    udp::{RecvMeta, Transmit},
    AsyncUdpSocket, Runtime, UdpPoller,
};
use tokio::sync::mpsc;

/// Side-channel datagrams buffered for the consumer before new ones are dropped. 256:
/// STUN and punch traffic is a few packets per second; a consumer that stalls must not
/// grow memory (UDP is lossy anyway, and both protocols retransmit).
const SIDE_QUEUE: usize = 256;

/// Whether `first` (a datagram's first byte) starts a QUIC packet.
pub fn is_quic(first: u8) -> bool {
    first & 0xC0 != 0
}

/// The non-QUIC half of a shared UDP socket: receive the diverted datagrams, send raw
/// datagrams from the same socket.
pub struct SideChannel {
    socket: Arc<dyn AsyncUdpSocket>,
    rx: tokio::sync::Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
}

impl fmt::Debug for SideChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideChannel").field("local_addr", &self.socket.local_addr().ok()).finish()
    }
}

impl SideChannel {
    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends one raw datagram to `to` from the shared socket.
    pub async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        let mut poller = self.socket.clone().create_io_poller();
        loop {
            let t = Transmit { destination: to, ecn: None, contents: data, segment_size: None, src_ip: None };
            match self.socket.try_send(&t) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
                }
                other => return other,
            }
        }
    }

    /// The next diverted (non-QUIC) datagram and its source. Cancel safe.
    pub async fn recv_from(&self) -> Option<(SocketAddr, Bytes)> {
        self.rx.lock().await.recv().await
    }
}

/// The socket quinn is given: QUIC datagrams pass, the others go to the side channel.
pub struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    side: mpsc::Sender<(SocketAddr, Bytes)>,
    dropped: Mutex<u64>,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket").field("inner", &self.inner).finish()
    }
}

impl DemuxSocket {
    /// Wraps `socket` (with quinn's tokio runtime); returns the socket for quinn and the
    /// side channel.
    pub fn wrap(socket: std::net::UdpSocket) -> io::Result<(Arc<DemuxSocket>, Arc<SideChannel>)> {
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        let (tx, rx) = mpsc::channel(SIDE_QUEUE);
        let demux = Arc::new(DemuxSocket { inner: inner.clone(), side: tx, dropped: Mutex::new(0) });
        Ok((demux, Arc::new(SideChannel { socket: inner, rx: tokio::sync::Mutex::new(rx) })))
    }

    /// Side-channel datagrams dropped because the consumer was not keeping up.
    pub fn dropped(&self) -> u64 {
        *self.dropped.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            // Keep QUIC datagrams, compacted to the front; divert the others.
            let mut kept = 0;
            for i in 0..n {
                let len = meta[i].len;
                let first = bufs[i].first().copied().unwrap_or(0);
                if len == 0 || is_quic(first) {
                    if kept != i {
                        let (dst, src) = bufs.split_at_mut(i);
                        dst[kept][..len].copy_from_slice(&src[0][..len]);
                        meta[kept] = meta[i];
                    }
                    kept += 1;
                    continue;
                }
                // A coalesced (GRO) batch shares one source: divert each segment.
                let stride = meta[i].stride.max(1);
                let mut off = 0;
                while off < len {
                    let end = (off + stride).min(len);
                    let datagram = Bytes::copy_from_slice(&bufs[i][off..end]);
                    if self.side.try_send((meta[i].addr, datagram)).is_err() {
                        *self.dropped.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    }
                    off = end;
                }
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was diverted: poll again (registers the waker if nothing is left).
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        // STUN requests/responses start 0x00 or 0x01.
        assert!(!is_quic(0x00) && !is_quic(0x01));
        // QUIC long header (0xC0..) and short header (0x40..) always set the fixed bit.
        assert!(is_quic(0xC3) && is_quic(0x41) && is_quic(0x7f));
    }
}
