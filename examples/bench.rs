//! Kizuna benchmarks: each Kizuna path measured side by side with the raw library it is
//! built on, in the same run, on loopback, with ratios.
//!
//! ```text
//! cargo run --release --example bench -- core     # TLS/TCP, QUIC, handshakes
//! cargo run --release --example bench -- actors   # the actor API vs core vs raw
//! cargo run --release --example bench -- webrtc   # WebRTC vs raw webrtc-rs data channels
//! cargo run --release --example bench -- crowd    # connect times beside a hostile crowd
//! cargo run --release --example bench -- all
//! ```
//!
//! Options: `--bytes N` (throughput transfer size, default 256 MiB), `--runs N` (repeats;
//! the median is reported, default 3), `--filter NAME` (only the benches whose result line
//! contains NAME, case-insensitive, e.g. `--filter "TCP stream"` to profile one), `--json`
//! (one JSON object per result line).
//! Figures and how they were taken are recorded in `docs/benchmarks.md`.

#[path = "bench/actors.rs"]
mod actors;
#[path = "bench/core.rs"]
mod core_bench;
#[path = "bench/crowd.rs"]
mod crowd;
#[path = "bench/relay.rs"]
mod relay;
#[path = "bench/util.rs"]
mod util;
#[path = "bench/webrtc.rs"]
mod webrtc_bench;

use util::Opts;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let opts = Opts::parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if opts.suite == "core" || opts.suite == "all" {
        rt.block_on(core_bench::run(&opts))?;
    }
    if opts.suite == "webrtc" || opts.suite == "all" {
        rt.block_on(webrtc_bench::run(&opts))?;
    }
    if opts.suite == "actors" || opts.suite == "all" {
        drop(rt);
        actors::run(&opts)?;
    }
    if opts.suite == "relay" || opts.suite == "all" {
        relay::run(&opts)?;
    }
    if opts.suite == "crowd" || opts.suite == "all" {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(crowd::run(&opts))?;
    }
    Ok(())
}
