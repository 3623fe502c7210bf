//! The relay's metrics endpoint (`--stats-addr`): a tiny, bounded HTTP/1.1 responder.
//!
//! `GET /` or `GET /stats` answers `200` with the [`RelayMetrics`] snapshot as
//! `application/json`; any other path is `404`, any other method `405`. One request per
//! connection (`Connection: close`). Everything is bounded: at most
//! [`MAX_STATS_CONNECTIONS`] at once and [`MAX_STATS_PER_ADDRESS`] from one address
//! (admitted like the relay's WebSocket clients: a newcomer replaces the oldest silent
//! connection, so idle sockets cannot keep a monitor out), [`STATS_FIRST_BYTE`] to send
//! the first byte, a request head of at most [`MAX_REQUEST_HEAD`] bytes (else `431`), and
//! [`STATS_TIMEOUT`] per connection. Not a general web server: put it on a private address
//! or behind a proxy if it must be reachable from afar.
//!
//! [`RelayMetrics`]: kizuna::relay::metrics::RelayMetrics

use std::{sync::Arc, time::Duration};

use actix::Addr;
use kizuna::transport::{
    accept::AdmittingAccept,
    admission::{AdmissionLimits, HandshakeCounters},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::server::{GetRelayMetrics, RelayServerActor};

/// Stats requests served at once. 16: the endpoint is for a monitoring system and an
/// operator, not for the public.
pub(crate) const MAX_STATS_CONNECTIONS: usize = 16;

/// Stats connections at once from one address. 4: a monitor sends one request at a time;
/// a few more cover an operator's curl beside it.
pub(crate) const MAX_STATS_PER_ADDRESS: usize = 4;

/// Time a stats connection has to send its first byte. 1 s: an HTTP client sends its
/// request right after connecting; on the private network this endpoint belongs on, a
/// second is many round trips.
pub(crate) const STATS_FIRST_BYTE: Duration = Duration::from_secs(1);

/// Largest request head read (request line and headers). 8 KiB, the common default of
/// HTTP servers; a `GET /stats` from curl or Prometheus is under 200 bytes.
pub(crate) const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Time one stats connection may take, from accept to the last byte written. 5 s.
pub(crate) const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Stats,
    NotFound,
    MethodNotAllowed,
    Bad,
}

/// Routes a request head (bytes up to the blank line).
fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else { return Route::Bad };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    if method != "GET" && method != "HEAD" {
        return Route::MethodNotAllowed;
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/" | "/stats" => Route::Stats,
        _ => Route::NotFound,
    }
}

/// Serves stats requests on `listener` until aborted, counting admissions into `counters`.
pub(crate) async fn serve(
    listener: TcpListener,
    server: Addr<RelayServerActor>,
    counters: Arc<HandshakeCounters>,
) {
    let limits = AdmissionLimits {
        max_pending: MAX_STATS_CONNECTIONS,
        max_pending_per_address: MAX_STATS_PER_ADDRESS,
        first_byte_timeout: STATS_FIRST_BYTE,
    };
    // Never stopped by a signal: the relay aborts this task.
    let (_keep, shutdown) = watch::channel(false);
    let mut accept = AdmittingAccept::new(listener, limits, counters, shutdown, "stats endpoint");
    while let Some((stream, remote, permit)) = accept.next().await {
        let server = server.clone();
        let ticket = permit.ticket();
        let task = tokio::spawn(async move {
            let served = async {
                permit.first_byte(&stream, &remote.to_string()).await.map_err(std::io::Error::other)?;
                answer(stream, server).await
            };
            match tokio::time::timeout(STATS_TIMEOUT, served).await {
                Ok(Err(e)) => tracing::debug!(%remote, "stats request failed: {e}"),
                Err(_) => tracing::debug!(%remote, "stats request timed out"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
        accept.track(ticket, task.abort_handle());
    }
}

async fn answer(mut stream: TcpStream, server: Addr<RelayServerActor>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_HEAD {
            break false;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let head_only = head.starts_with(b"HEAD ");
    let (status, ctype, body) = if !complete {
        ("431 Request Header Fields Too Large", "text/plain", "request head too large\n".to_string())
    } else {
        match route(&head) {
            Route::Stats => match server.send(GetRelayMetrics).await {
                Ok(m) => ("200 OK", "application/json", serde_json::to_string(&m).unwrap_or_default()),
                Err(_) => ("503 Service Unavailable", "text/plain", "the relay is stopping\n".into()),
            },
            Route::NotFound => ("404 Not Found", "text/plain", "not found: try GET /stats\n".into()),
            Route::MethodNotAllowed => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
            Route::Bad => ("400 Bad Request", "text/plain", "bad request\n".into()),
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") { "Allow: GET\r\n" } else { "" },
    );
    if !head_only {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Stats);
        assert_eq!(route(b"GET /stats?pretty HTTP/1.0\r\n\r\n"), Route::Stats);
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /stats HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(route(b"garbage\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"\xff\xfe / HTTP/1.1\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"GET / SPDY/3\r\n\r\n"), Route::Bad);
    }
}
