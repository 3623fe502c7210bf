//! Output helpers: JSON lines on stdout and human formatting.

use std::{io::Write, time::Duration};

/// Prints one JSON object as a line on stdout and flushes, so a reader of a pipe sees it
/// at once.
pub(crate) fn json_line(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (reader gone) is not worth failing a command for.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Prints one line on stdout and flushes.
pub(crate) fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Milliseconds with microsecond precision, for JSON.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Rounds to two decimals, for JSON throughput figures.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A byte count for humans: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A plain-text table with left-aligned columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = fmt_row(header.to_vec());
    out.push('\n');
    out.push_str(&fmt_row(
        widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(|s| s.as_str()).collect(),
    ));
    for r in rows {
        out.push('\n');
        out.push_str(&fmt_row(r.iter().map(|s| s.as_str()).collect()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(ms(Duration::from_micros(1234)), 1.234);
        assert_eq!(round2(1.23456), 1.23);
        let t = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\n---  --\nxyz  1");
    }
}
