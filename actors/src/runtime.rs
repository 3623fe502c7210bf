//! The I/O runtime: a process-wide multi-threaded tokio runtime that carries the data
//! plane (sockets, TLS, QUIC, stream multiplexers), so actors on actix's single-threaded
//! arbiters only steer.
//!
//! Actors reach it through [`on_io`]; everything a transport spawns while connecting or
//! listening lives there. Sized by `KIZUNA_IO_THREADS` (default: the number of CPUs).

use std::{future::Future, sync::OnceLock};

use crate::api::NodeError;

static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The shared I/O runtime, created on first use.
pub fn io_runtime() -> &'static tokio::runtime::Runtime {
    IO.get_or_init(|| {
        let threads = std::env::var("KIZUNA_IO_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        // Building a runtime only fails if the OS refuses threads or an I/O driver; no
        // node can run then.
        #[allow(clippy::expect_used)]
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("kizuna-io")
            .enable_all()
            .build()
            .expect("cannot start the Kizuna I/O runtime")
    })
}

/// Runs `f` on the I/O runtime and waits for it. A panic inside `f` becomes an error.
pub async fn on_io<F>(f: F) -> Result<F::Output, NodeError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    io_runtime().spawn(f).await.map_err(|e| NodeError::ActorGone(format!("I/O task failed: {e}")))
}
