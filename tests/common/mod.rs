//! Helpers shared by the transport tests (`tcp.rs`, `ws.rs`): nodes, bounded waits,
//! listener outcomes, and a checked byte pattern for bulk transfers.
//!
//! Each test binary uses a different subset, hence `dead_code` is allowed here.
#![allow(dead_code, clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use kizuna::{Connection, Incoming, Keypair, Listener, LocalNode, NodeConfig, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node with a fresh identity and `f` applied to its default configuration.
pub(crate) fn node_with(f: impl FnOnce(&mut NodeConfig)) -> Arc<LocalNode> {
    let mut c = NodeConfig::new(Keypair::generate());
    f(&mut c);
    LocalNode::new(c).unwrap()
}

/// A node with a fresh identity and the default configuration.
pub(crate) fn node() -> Arc<LocalNode> {
    node_with(|_| {})
}

/// Runs `f`, failing the test if it takes more than 30 s (a hang is a failure, and the
/// bound is far above any step's time on a loaded machine).
pub(crate) async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("test step timed out")
}

/// The listener's next connection (a rejection fails the test).
pub(crate) async fn next_connection(l: &mut Box<dyn Listener>) -> Connection {
    match within(l.accept()).await {
        Some(Incoming::Connection(c)) => c,
        other => panic!("expected a connection, got {other:?}"),
    }
}

/// The listener's next rejection (a connection fails the test).
pub(crate) async fn next_rejection(l: &mut Box<dyn Listener>) -> TransportError {
    match within(l.accept()).await {
        Some(Incoming::Rejected { error, .. }) => error,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Bytes each way in the bulk tests.
pub(crate) const BULK: u64 = 64 * 1024 * 1024;

/// Byte `i` of the pattern with `seed`: position-dependent, so a lost, duplicated or
/// reordered chunk shows.
pub(crate) fn byte_at(i: u64, seed: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) as u8
}

/// Writes `total` pattern bytes with `seed`, then shuts the writer down.
pub(crate) async fn send_pattern(s: &mut (impl AsyncWriteExt + Unpin), seed: u64, total: u64) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < total {
        let n = buf.len().min((total - off) as usize);
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = byte_at(off + k as u64, seed);
        }
        s.write_all(&buf[..n]).await.unwrap();
        off += n as u64;
    }
    s.shutdown().await.unwrap();
}

/// Reads to the end, checking every byte against the pattern with `seed` and that
/// exactly `total` arrived.
pub(crate) async fn check_pattern(s: &mut (impl AsyncReadExt + Unpin), seed: u64, total: u64) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, byte_at(off + k as u64, seed), "corrupt byte at offset {}", off + k as u64);
        }
        off += n as u64;
    }
    assert_eq!(off, total);
}
