//! TCP simultaneous open for hole punching, in parallel with the UDP punch.
//!
//! Each side reserves a fresh TCP port for the session ([`TcpPunch::bind`]): one socket
//! listening on it and, once the peer's TCP candidates are known, connect attempts *from*
//! it to each of them, retried until a deadline (all with `SO_REUSEADDR` and
//! `SO_REUSEPORT`, so they share the port). The outgoing SYNs open this side's NAT
//! mapping; the peer's SYNs then pass it and reach either the listener or a connecting
//! socket (a true simultaneous open when the two SYNs cross). Whichever stream is
//! established first is the result; a connection refused (the peer not listening yet)
//! or a SYN lost to a NAT that had no mapping yet just means another attempt.
//!
//! Nothing but this session uses the port, so roles never come from who connected: the
//! punch initiator is the TLS client and the responder the TLS server
//! ([`punched_connection`](super::tcp::punched_connection)), and the secure channel
//! authenticates the peer as on any TCP connection.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
    task::JoinSet,
    time::Instant,
};

/// Pause between connect attempts to one candidate after a failure (refused,
/// unreachable): short, so a peer that starts a little later is met quickly.
const RETRY: Duration = Duration::from_millis(100);

/// Longest single connect attempt: the kernel retransmits a SYN after 1 s, so an attempt
/// covers one retransmission; then a fresh attempt starts.
const ATTEMPT: Duration = Duration::from_millis(2500);

/// A reserved TCP port listening for the peer, from which connect attempts are made.
#[derive(Debug)]
pub struct TcpPunch {
    listener: TcpListener,
    local: SocketAddr,
}

fn shared_socket(local: SocketAddr) -> io::Result<TcpSocket> {
    let s = if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(local)?;
    Ok(s)
}

impl TcpPunch {
    /// Reserves a free port on `ip` (a wildcard IP: all interfaces) and listens on it.
    /// Must be called within a tokio runtime.
    pub fn bind(ip: IpAddr) -> io::Result<Self> {
        let s = shared_socket(SocketAddr::new(ip, 0))?;
        let local = s.local_addr()?;
        let listener = s.listen(8)?;
        Ok(Self { listener, local })
    }

    /// The reserved address (its port is what the TCP candidates carry).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Connects to the peer: accepts on the reserved port while connecting from it to
    /// each of `remotes` (retrying), and sends every established stream (with the peer's
    /// address) to `found`, until `within` has passed or `found` is closed. Usually one
    /// stream results; odd topologies (several candidate addresses reaching the peer by
    /// different routes) can yield more, and which one to use is the caller's choice —
    /// the punch initiator takes the first, the responder tries its handshake on each.
    /// Returns how many streams were found.
    ///
    /// Cancel-safe: dropping the future stops every attempt.
    pub async fn open(
        self,
        remotes: &[SocketAddr],
        within: Duration,
        found: mpsc::Sender<(TcpStream, SocketAddr)>,
    ) -> usize {
        let deadline = Instant::now() + within;
        let mut attempts = JoinSet::new();
        for &remote in remotes.iter().filter(|r| r.is_ipv4() == self.local.is_ipv4()) {
            attempts.spawn(connect_until(self.local, remote, deadline));
        }
        let mut count = 0;
        let timeout = tokio::time::sleep_until(deadline);
        tokio::pin!(timeout);
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("TCP punch accept failed: {e}");
                        continue;
                    }
                },
                Some(done) = attempts.join_next(), if !attempts.is_empty() => match done {
                    Ok(Some(s)) => s,
                    _ => continue,
                },
                _ = found.closed() => return count,
                _ = &mut timeout => return count,
            };
            count += 1;
            if found.send(stream).await.is_err() {
                return count;
            }
        }
    }
}

/// Connects from `local` to `remote` until it works or `deadline` passes.
async fn connect_until(
    local: SocketAddr,
    remote: SocketAddr,
    deadline: Instant,
) -> Option<(TcpStream, SocketAddr)> {
    while Instant::now() < deadline {
        let attempt = async {
            let s = shared_socket(local)?;
            s.connect(remote).await
        };
        let until = (Instant::now() + ATTEMPT).min(deadline);
        match tokio::time::timeout_at(until, attempt).await {
            Ok(Ok(stream)) => return Some((stream, remote)),
            Ok(Err(e)) => tracing::trace!(%remote, "TCP punch attempt failed: {e}"),
            Err(_) => tracing::trace!(%remote, "TCP punch attempt timed out"),
        }
        tokio::time::sleep(RETRY).await;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The first stream `open` finds within `within`.
    async fn first(p: TcpPunch, remote: SocketAddr, within: Duration) -> Option<(TcpStream, SocketAddr)> {
        let (tx, mut rx) = mpsc::channel(4);
        let remotes = [remote];
        let run = p.open(&remotes, within, tx);
        tokio::pin!(run);
        tokio::select! {
            s = rx.recv() => s,
            _ = &mut run => rx.recv().await,
        }
    }

    /// Both sides connect to each other from their reserved ports; one TCP connection
    /// results, seen from both ends.
    #[tokio::test]
    async fn two_sides_meet() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let (a, b) = (TcpPunch::bind(lo).unwrap(), TcpPunch::bind(lo).unwrap());
        let (aa, ba) = (a.local_addr(), b.local_addr());
        let within = Duration::from_secs(5);
        let (ra, rb) = tokio::join!(first(a, ba, within), first(b, aa, within));
        let ((sa, _), (sb, _)) = (ra.unwrap(), rb.unwrap());
        assert_eq!(sa.local_addr().unwrap(), sb.peer_addr().unwrap());
        assert_eq!(sb.local_addr().unwrap(), sa.peer_addr().unwrap());
        assert_eq!(sa.local_addr().unwrap(), aa);
    }

    #[tokio::test]
    async fn nobody_there_finds_nothing() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let a = TcpPunch::bind(lo).unwrap();
        // A port reserved and then released: nothing listens there.
        let gone = TcpPunch::bind(lo).unwrap().local_addr();
        assert!(first(a, gone, Duration::from_millis(400)).await.is_none());
    }
}
