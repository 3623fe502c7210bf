//! Headless Chromium driven through the DevTools protocol, for the browser interop tests.
//!
//! [`Chromium::launch`] starts Debian's `chromium` in its own process group with a fresh
//! profile directory and `--remote-debugging-port=0`, reads the port from the profile's
//! `DevToolsActivePort` file, and opens one page target over a tokio-tungstenite
//! WebSocket. Dropping the handle kills the whole process group and deletes the profile,
//! also when a test panics.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)] // Tests: a panic is the failure report.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{client_async, tungstenite::Message, WebSocketStream};

/// Bound on Chromium's start-up and on each DevTools round trip. Generous: a cold Chromium
/// start on a loaded 2-core machine takes several seconds.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A running headless Chromium with one page attached.
pub struct Chromium {
    child: Child,
    profile: Option<tempfile::TempDir>,
    ws: WebSocketStream<TcpStream>,
    session: String,
    next_id: u64,
    /// Console lines and exceptions of the page, for failure reports.
    pub console: Vec<String>,
}

impl Chromium {
    /// Starts Chromium and opens a blank page.
    pub async fn launch(binary: &Path) -> Chromium {
        let profile = tempfile::Builder::new().prefix("kizuna-chromium-").tempdir().unwrap();
        let mut cmd = Command::new(binary);
        cmd.args([
            "--headless=new",
            "--no-sandbox", // tests run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            // No traffic to anything but loopback: no updaters, sync, safe browsing, pings.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            // Real host candidates instead of mDNS `.local` names the node cannot resolve.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--remote-debugging-port=0",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so Drop kills every Chromium process and nothing else.
        .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut guard = Launching { child: Some(child), profile: Some(profile) };
        let port_file = guard.profile.as_ref().unwrap().path().join("DevToolsActivePort");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.trim().to_string(), path.trim().to_string());
                }
            }
            if let Some(status) = guard.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("chromium exited during start-up with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port within {STARTUP_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let url = format!("ws://127.0.0.1:{port}{path}");
        let tcp = TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
        let (ws, _) = client_async(url.as_str(), tcp).await.unwrap();
        let mut chromium = Chromium {
            child: guard.child.take().unwrap(),
            profile: guard.profile.take(),
            ws,
            session: String::new(),
            next_id: 1,
            console: Vec::new(),
        };
        let target = chromium.call("Target.createTarget", json!({ "url": "about:blank" })).await;
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
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            req["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::Text(req.to_string().into())).await.unwrap();
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("DevTools did not answer {method} within {CALL_TIMEOUT:?}"))
                .expect("DevTools connection open")
                .unwrap();
            let Message::Text(text) = msg else { continue };
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
