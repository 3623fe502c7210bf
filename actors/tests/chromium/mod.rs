//! Headless Chromium driven through the DevTools protocol, for the browser interop tests.
//!
//! [`Chromium::launch`] starts Debian's `chromium` in its own process group with a fresh
//! profile directory and `--remote-debugging-pipe` (DevTools JSON messages, NUL-terminated,
//! on file descriptors 3 and 4), optionally inside a network namespace ([`BrowserNet`]),
//! and attaches to one page. Dropping the handle kills the whole process group, deletes
//! the profile and (for [`BrowserNet`]) the namespace, also when a test panics.
//!
//! Why a namespace for WebRTC: Chromium never gathers loopback ICE candidates, only the
//! host's interface addresses. In a namespace whose only link is a veth pair on a
//! 198.51.100.0/30, Chromium's one candidate is its end of that link and every packet of
//! the test stays on it.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)] // Tests: a panic is the failure report.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Bound on Chromium's start-up and on each DevTools round trip. Generous: a cold Chromium
/// start on a loaded 2-core machine takes several seconds.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// DevTools messages buffered between the pipe reader thread and the test.
const EVENT_QUEUE: usize = 1024;

/// The Chromium binary, if installed (Debian's package installs `/usr/bin/chromium`).
pub fn binary() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
    })
}

/// A network namespace holding only a veth link to the test's namespace:
/// `host` (this side) and `browser` (inside) on one 198.51.100.0/30.
pub struct BrowserNet {
    name: String,
    host_if: String,
    /// This side's address: bind the relay and the node here.
    pub host: Ipv4Addr,
    /// Chromium's address inside the namespace.
    pub browser: Ipv4Addr,
}

impl BrowserNet {
    /// Creates the namespace, or explains why it cannot (not root, no `ip`).
    pub fn create() -> Result<BrowserNet, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("creating a network namespace needs root".into());
        }
        let used = ip(&["-4", "-o", "addr", "show"])?;
        // One /30 per concurrent test; the interface name reserves it (creation is atomic).
        for k in (1..64u8).rev() {
            let host = Ipv4Addr::new(198, 51, 100, 4 * k + 1);
            let browser = Ipv4Addr::new(198, 51, 100, 4 * k + 2);
            if used.contains(&format!("{host}/")) || used.contains(&format!("{browser}/")) {
                continue;
            }
            let host_if = format!("kzbrw{k}h");
            let ns_if = format!("kzbrw{k}n");
            if ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]).is_err() {
                continue; // taken by a concurrent test
            }
            let net = BrowserNet { name: format!("kzbrw{k}-{}", std::process::id()), host_if, host, browser };
            net.setup(&ns_if).map_err(|e| format!("setting up {}: {e}", net.name))?;
            return Ok(net);
        }
        Err("no free 198.51.100.0/30 for a browser namespace".into())
    }

    fn setup(&self, ns_if: &str) -> Result<(), String> {
        let ns = self.name.as_str();
        ip(&["netns", "add", ns])?;
        ip(&["link", "set", ns_if, "netns", ns])?;
        ip(&["addr", "add", &format!("{}/30", self.host), "dev", &self.host_if])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{}/30", self.browser), "dev", ns_if])?;
        ip(&["-n", ns, "link", "set", ns_if, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // Chromium gathers no candidates at all without a default route (it asks the
        // routing table for its "default local address"). The test's namespace does not
        // forward, so nothing can leave through it.
        ip(&["-n", ns, "route", "add", "default", "via", &self.host.to_string()])?;
        Ok(())
    }
}

impl Drop for BrowserNet {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running headless Chromium with one page attached.
pub struct Chromium {
    child: Child,
    profile: Option<tempfile::TempDir>,
    to_browser: File,
    from_browser: mpsc::Receiver<String>,
    session: String,
    next_id: u64,
    /// Console lines and exceptions of the page, for failure reports.
    pub console: Vec<String>,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Chromium {
    /// Starts Chromium (inside `net`'s namespace if given) and opens a blank page. Its ICE
    /// host candidates carry real addresses (see [`Chromium::launch_with`]).
    pub async fn launch(binary: &Path, net: Option<&BrowserNet>) -> Chromium {
        Self::launch_with(binary, net, false).await
    }

    /// [`Chromium::launch`]; with `hide_local_ips`, Chromium's default for pages without
    /// media permissions: host candidates are mDNS names (`<uuid>.local`), not addresses.
    pub async fn launch_with(binary: &Path, net: Option<&BrowserNet>, hide_local_ips: bool) -> Chromium {
        let profile = tempfile::Builder::new().prefix("kizuna-chromium-").tempdir().unwrap();
        let mut cmd = match net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.name]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.args([
            "--headless=new",
            "--no-sandbox", // tests run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            // No traffic to anything but the test's own addresses: no updaters, sync, pings.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            "--remote-debugging-pipe",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Real host candidates instead of mDNS `.local` names, unless asked for those.
        .args((!hide_local_ips).then_some("--disable-features=WebRtcHideLocalIpsWithMdns"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so Drop kills every Chromium process and nothing else.
        .process_group(0);
        let (browser_reads, we_write) = pipe();
        let (we_read, browser_writes) = pipe();
        let (r, w) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        // SAFETY: only async-signal-safe dup2 calls between fork and exec; dup2 clears
        // O_CLOEXEC on the new descriptors 3 and 4, the DevTools pipe Chromium expects.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        drop((browser_reads, browser_writes));
        let mut guard = Launching { child: Some(child), profile: Some(profile) };

        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(File::from(we_read));
            let mut buf = Vec::new();
            // Ends at EOF, when Chromium exits.
            while matches!(reader.read_until(0, &mut buf), Ok(n) if n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if tx.blocking_send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                    break;
                }
                buf.clear();
            }
        });
        let mut chromium = Chromium {
            child: guard.child.take().unwrap(),
            profile: guard.profile.take(),
            to_browser: File::from(we_write),
            from_browser: rx,
            session: String::new(),
            next_id: 1,
            console: Vec::new(),
        };
        let target = chromium
            .call_within("Target.createTarget", json!({ "url": "about:blank" }), STARTUP_TIMEOUT)
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached =
            chromium.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await;
        chromium.session = attached["sessionId"].as_str().unwrap().to_string();
        chromium.call("Runtime.enable", json!({})).await;
        chromium.call("Page.enable", json!({})).await;
        chromium
    }

    /// Sends one DevTools command (to the page once attached) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.call_within(method, params, CALL_TIMEOUT).await
    }

    async fn call_within(&mut self, method: &str, params: Value, timeout: Duration) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            req["sessionId"] = json!(self.session);
        }
        let mut bytes = req.to_string().into_bytes();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("DevTools pipe closed sending {method}: {e}"));
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let text = tokio::time::timeout(left, self.from_browser.recv())
                .await
                .unwrap_or_else(|_| panic!("DevTools did not answer {method} within {timeout:?}"))
                .unwrap_or_else(|| panic!("chromium exited while answering {method}"));
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == json!(id) {
                if let Some(err) = v.get("error") {
                    panic!("DevTools {method} failed: {err}");
                }
                return v["result"].clone();
            }
            self.record_event(&v);
        }
    }

    fn record_event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args = v["params"]["args"].as_array().cloned().unwrap_or_default();
                let text: Vec<String> = args
                    .iter()
                    .map(|a| {
                        a["value"].as_str().map(str::to_string).unwrap_or_else(|| a["value"].to_string())
                    })
                    .collect();
                self.console.push(format!(
                    "console.{}: {}",
                    v["params"]["type"].as_str().unwrap_or("?"),
                    text.join(" ")
                ));
            }
            Some("Runtime.exceptionThrown") => {
                self.console.push(format!("exception: {}", v["params"]["exceptionDetails"]));
            }
            _ => {}
        }
    }

    /// Loads `url` in the page and waits until its scripts have run.
    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(r.get("errorText").is_none(), "navigating to {url} failed: {r}");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while self.eval("document.readyState").await != json!("complete") {
            assert!(Instant::now() < deadline, "{url} did not finish loading");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Evaluates `expr` in the page (awaiting it if it is a promise) and returns its JSON
    /// value; panics with the page's exception if it throws.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page threw evaluating {expr}: {ex}\nconsole:\n{}", self.console.join("\n"));
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it yields something other than null/undefined, within `timeout`.
    pub async fn wait_for(&mut self, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expr).await;
            if !v.is_null() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "`{expr}` still null after {timeout:?}\nconsole:\n{}",
                self.console.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        remove_profile(self.profile.take());
    }
}

/// Cleans up when start-up fails half way.
struct Launching {
    child: Option<Child>,
    profile: Option<tempfile::TempDir>,
}

impl Drop for Launching {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        remove_profile(self.profile.take());
    }
}

fn kill_group(child: &mut Child) {
    // The child leads its own process group (`process_group(0)`), so its id is the group id.
    if let Ok(pgid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals exactly that process group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

fn remove_profile(profile: Option<tempfile::TempDir>) {
    if let Some(dir) = profile {
        let path = dir.path().to_path_buf();
        // Killed renderers may still be exiting: retry briefly, then report.
        for _ in 0..50 {
            if std::fs::remove_dir_all(&path).is_ok() || !path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the Chromium profile {}", path.display());
    }
}

/// The `file://` URL of the page in `examples/browser/`, with a query.
pub fn page_url(query: &str) -> String {
    let page =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/browser/index.html").canonicalize().unwrap();
    format!("file://{}?{query}", page.display())
}

/// Percent-encodes a query value.
pub fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
