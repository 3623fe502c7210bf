//! Shared helpers of the benchmark: options, timing, result lines.

use std::time::Duration;

pub(crate) struct Opts {
    pub(crate) suite: String,
    pub(crate) bytes: u64,
    pub(crate) runs: usize,
    pub(crate) json: bool,
    /// Only benches whose result line contains this text (case-insensitive) run.
    pub(crate) filter: Option<String>,
}

impl Opts {
    pub(crate) fn parse() -> Result<Self, String> {
        let mut o = Opts { suite: "all".into(), bytes: 256 << 20, runs: 3, json: false, filter: None };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "core" | "actors" | "relay" | "webrtc" | "crowd" | "all" => o.suite = a,
                "--json" => o.json = true,
                "--bytes" => {
                    o.bytes = args.next().and_then(|v| v.parse().ok()).ok_or("--bytes needs a number")?
                }
                "--filter" => o.filter = Some(args.next().ok_or("--filter needs a name")?.to_lowercase()),
                "--runs" => {
                    o.runs = args.next().and_then(|v| v.parse().ok()).ok_or("--runs needs a number")?
                }
                other => {
                    return Err(format!(
                        "unknown argument {other:?} (use core|actors|relay|webrtc|crowd|all, --bytes N, --runs N, --filter NAME, --json)"
                    ))
                }
            }
        }
        Ok(o)
    }
}

impl Opts {
    /// Whether the bench reported as `what` is selected by `--filter`.
    pub(crate) fn wants(&self, what: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| what.to_lowercase().contains(f.as_str()))
    }
}

/// Median of the samples (sorted copy).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

pub(crate) fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

/// Prints one comparison: Kizuna's figure against the raw library's, with the ratio.
pub(crate) fn report(opts: &Opts, what: &str, unit: &str, kizuna: f64, raw: f64, higher_is_better: bool) {
    let ratio = if higher_is_better { kizuna / raw } else { raw / kizuna };
    if opts.json {
        println!(
            "{{\"bench\":\"{what}\",\"unit\":\"{unit}\",\"kizuna\":{kizuna:.4},\"raw\":{raw:.4},\"ratio\":{ratio:.3}}}"
        );
    } else {
        println!("{what:<46} kizuna {kizuna:>10.3} {unit:<6} raw {raw:>10.3} {unit:<6} ratio {ratio:>5.2}x");
    }
}

/// Prints one single figure.
pub(crate) fn figure(opts: &Opts, what: &str, unit: &str, value: f64) {
    if opts.json {
        println!("{{\"bench\":\"{what}\",\"unit\":\"{unit}\",\"value\":{value:.4}}}");
    } else {
        println!("{what:<46} {value:>10.3} {unit}");
    }
}

/// Resident set size of this process in bytes (Linux).
pub(crate) fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}
