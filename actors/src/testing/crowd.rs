//! A crowd of raw, unauthenticated TCP connections (admission tests and benchmarks).

/// Opens `n` TCP connections to `to` from the local address `from` (e.g. `127.0.0.2`,
/// another host on loopback), writes `first` on each (nothing if empty) and keeps them
/// open: a crowd of unauthenticated clients, for tests and benchmarks of admission.
/// Connections the server refuses (reset, possibly before `connect` returns) are skipped.
pub async fn crowd(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    n: usize,
    first: &[u8],
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let socket =
            if from.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let Ok(s) = socket else { continue };
        if s.bind(std::net::SocketAddr::new(from, 0)).is_err() {
            continue;
        }
        let Ok(mut c) = s.connect(to).await else { continue };
        if !first.is_empty() {
            let _ = c.write_all(first).await;
        }
        v.push(c);
    }
    v
}
