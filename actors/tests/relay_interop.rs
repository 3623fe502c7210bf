//! A third-party WebSocket client (Python `websockets`, `tests/interop/ws_client.py`)
//! against the relay: refused without the subprotocol, dropped for garbage, while the
//! relay keeps serving a Rust client. Skipped (with a message) when Python or the
//! `websockets` package is missing; `.ci/run` installs it.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod relay_client;

use std::{path::Path, process::Command};

use kizuna::relay::{auth::Admission, Purpose};
use relay_client::*;

fn python_websockets_available() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[actix_rt::test]
async fn python_websockets_client_is_refused_and_dropped_while_the_relay_serves() {
    if !python_websockets_available() {
        eprintln!(
            "SKIP relay_interop: `python3 -c 'import websockets'` failed; install it with `pip install websockets`"
        );
        return;
    }
    let relay = start(config(Admission::open())).await;
    let mut control = reserve(&relay.url, &key(2)).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/ws_client.py");
    let url = relay.url.clone();
    let out = tokio::task::spawn_blocking(move || Command::new("python3").arg(script).arg(url).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ws_client.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("4 passed, 0 failed"), "{stdout}");

    // The relay kept serving: the reservation made before still works for a new circuit.
    let _a = login(&relay.url, &key(1), None, Purpose::Dial { target: key(2).peer_id() }).await;
    expect_incoming(&mut control).await;
}
