//! Processes run inside lab namespaces: stdout read line by line with arrival times,
//! stderr kept in a log file, killed on drop.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The `kizuna` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_kizuna");

/// A running process, killed and reaped on drop.
pub(crate) struct Proc {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    /// Where its stderr goes.
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout piped and stderr to `log`.
    pub(crate) fn spawn(mut cmd: Command, what: &str, log: &Path) -> Proc {
        let err = std::fs::File::create(log).expect("log file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines: rx, log: log.to_path_buf() }
    }

    /// The next stdout line within `timeout` (`None`: timed out or the process ended).
    pub(crate) fn line(&self, timeout: Duration) -> Option<(Instant, String)> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next stdout line parsed as JSON (non-JSON lines are skipped).
    pub(crate) fn json(&self, timeout: Duration) -> Option<(Instant, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (t, l) = self.line(left)?;
            if let Ok(v) = serde_json::from_str(&l) {
                return Some((t, v));
            }
        }
    }

    /// Waits for a JSON line whose `event` is `event`, collecting the others.
    pub(crate) fn wait_event(
        &self,
        event: &str,
        timeout: Duration,
        seen: &mut Vec<(Instant, Value)>,
    ) -> Option<(Instant, Value)> {
        self.wait_line(|v| v["event"] == event, timeout, seen)
    }

    /// Waits for a JSON line `pred` accepts; the lines before it go to `seen`.
    pub(crate) fn wait_line(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
        seen: &mut Vec<(Instant, Value)>,
    ) -> Option<(Instant, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let (t, v) = self.json(deadline.saturating_duration_since(Instant::now()))?;
            if pred(&v) {
                return Some((t, v));
            }
            seen.push((t, v));
        }
    }

    /// The first line from `seen[since..]` that `pred` accepts, else (waiting up to
    /// `timeout`) the next one that arrives; every line read goes to `seen`, the match
    /// too, so that waits for several lines in any order each find theirs.
    pub(crate) fn wait_seen(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
        seen: &mut Vec<(Instant, Value)>,
        since: usize,
    ) -> Option<(Instant, Value)> {
        if let Some(hit) = seen.get(since..).unwrap_or_default().iter().find(|(_, v)| pred(v)) {
            return Some(hit.clone());
        }
        let hit = self.wait_line(&pred, timeout, seen)?;
        seen.push(hit.clone());
        Some(hit)
    }

    /// The last `n` lines of its stderr log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        self.log_lines(n, |_| true)
    }

    /// The last `n` lines of its stderr log that `keep` accepts.
    pub(crate) fn log_lines(&self, n: usize, keep: impl Fn(&str) -> bool) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Default `RUST_LOG` of lab processes: what a failed pair's report needs (the punch
/// actor and the supervisor's punch decisions), little else. `KIZUNA_LAB_LOG` overrides.
/// The targets are module paths: the node runtime lives in `kizuna_actors::node`.
const LOG: &str = "warn,kizuna_actors::node::hole_punch=debug,kizuna_actors::node::supervisor=debug,\
                   kizuna_actors::node::peer=info,kizuna_actors::services=info";

/// `kizuna ARGS` inside namespace `ns` with its own HOME and `RUST_LOG`.
pub(crate) fn kizuna(ns: &str, home: &Path) -> Command {
    let mut c = super::netns::in_ns(ns, "env");
    c.arg(format!("HOME={}", home.display()))
        .arg(format!("RUST_LOG={}", std::env::var("KIZUNA_LAB_LOG").unwrap_or_else(|_| LOG.into())))
        .arg(BIN);
    c.env_remove("KIZUNA_KEY").env_remove("XDG_CONFIG_HOME");
    c
}
