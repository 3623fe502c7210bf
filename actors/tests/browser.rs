//! Browser interop: the page in `examples/browser/` running in headless Chromium (Debian's
//! `chromium`, installed by `.ci/run`), driven through the DevTools protocol
//! (`chromium/`). The list of tests and what each shows is in `docs/webrtc.md` §9, "Browser
//! peers". In short:
//!
//! * the page's MessagePack, PeerId and signaling encodings agree byte for byte with the
//!   Rust ones, and its decoder is total;
//! * the page signs in at a real relay with a WebCrypto Ed25519 key and reserves;
//! * the page signs its offer for the node and refuses an answer whose signature does not
//!   verify against the node's PeerId;
//! * over WebRTC, with Chromium in a network namespace (it gathers no loopback candidates),
//!   a Kizuna node (a `Supervisor`, or the `kizuna node` command of the README) and the
//!   page exchange messages and datagrams both ways.
//!
//! Skipped, with a message, when `chromium` is not installed (and the WebRTC tests when no
//! network namespace can be made: they need root).

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod chromium;
mod relay_client;

use std::{net::SocketAddr, time::Duration};

use actix::Addr;
use bytes::Bytes;
use chromium::{enc, page_url, BrowserNet, Chromium};
use kizuna::{
    relay::{auth::Admission, client::RelayEndpoint, RelayMessage},
    transport::webrtc::{signal, IceServer, SignalKind, SignalMessage, WebRtcConfig},
    Keypair, PeerId, Protocol,
};
use kizuna_actors::{
    relay::{GetRelayMetrics, RelayHandle, RelayServerConfig},
    testing::{Coturn, TURN_PASS, TURN_USER},
    Event, OpenStream, Send, SendDatagram, Subscribe, Supervisor, SupervisorConfig,
};
use relay_client::*;
use serde_json::{json, Value};
use tokio::{io::AsyncReadExt, sync::mpsc};

/// Bound on the page's scripted checks (signing in, offering, connecting, echoes).
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium binary, or `None` after printing why the test is skipped.
fn chromium_or_skip() -> Option<std::path::PathBuf> {
    let bin = chromium::binary();
    if bin.is_none() {
        eprintln!("SKIP browser: `chromium` is not installed (apt-get install chromium; .ci/run does)");
    }
    bin
}

async fn browser() -> Option<Chromium> {
    Some(Chromium::launch(&chromium_or_skip()?, None).await)
}

fn js_bytes(b: &[u8]) -> String {
    format!("new Uint8Array({:?})", b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[actix_rt::test]
async fn page_encodings_match_rust() {
    let Some(mut page) = browser().await else { return };
    page.navigate(&page_url("")).await;
    page.eval(
        "globalThis.hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
         globalThis.unhex = (s) => new Uint8Array((s.match(/../g) || []).map((x) => parseInt(x, 16))); true",
    )
    .await;

    // PeerId text form both ways.
    for seed in [1u8, 2, 7, 255] {
        let id = key(seed).peer_id();
        let text = page.eval(&format!("Kizuna.peerId.toText({})", js_bytes(id.as_bytes()))).await;
        assert_eq!(text, json!(id.to_string()), "seed {seed}");
        let parsed = page.eval(&format!("Kizuna.peerId.parse('{id}').then(hex)")).await;
        assert_eq!(parsed, json!(hex(id.as_bytes())));
    }
    let id = key(1).peer_id().to_string();
    let c = if id.starts_with('a') { 'b' } else { 'a' };
    // The last character carries 2 bits of the checksum and 3 padding bits: flipping a
    // padding bit keeps the checksum but is not the canonical text.
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let last = ALPHABET.iter().position(|&x| x == *id.as_bytes().last().unwrap()).unwrap();
    let padded = format!("{}{}", &id[..id.len() - 1], ALPHABET[last ^ 1] as char);
    for bad in [format!("{c}{}", &id[1..]), id[1..].to_string(), format!("1{}", &id[1..]), padded] {
        assert!(bad.parse::<PeerId>().is_err());
        let r = page
            .eval(&format!("Kizuna.peerId.parse('{bad}').then(() => 'accepted', (e) => 'refused')"))
            .await;
        assert_eq!(r, json!("refused"), "{bad}");
    }

    // Relay messages the Rust side encodes decode and re-encode to the same bytes.
    let rust_msgs = [
        RelayMessage::Challenge { nonce: [0xab; 32], relay: "ws://127.0.0.1:7000".into() },
        RelayMessage::Reserved { expires_in_secs: 3600, observed: None, stun: vec![] },
        RelayMessage::Reserved {
            expires_in_secs: 60,
            observed: Some("198.51.100.7:40000".parse().unwrap()),
            stun: vec!["198.51.100.1:3478".parse().unwrap(), "198.51.100.2:3478".parse().unwrap()],
        },
        RelayMessage::Signaled { from: key(1).peer_id(), payload: vec![0x14, 1, 2, 3] },
        RelayMessage::error(kizuna::relay::ErrorCode::TargetNotReserved, "no such peer"),
        RelayMessage::Reserved { expires_in_secs: u64::MAX, observed: None, stun: vec![] },
    ];
    for m in rust_msgs {
        let bytes = m.encode().unwrap();
        let again = page
            .eval(&format!("hex(Kizuna.msgpack.encode(Kizuna.msgpack.decode(unhex('{}'))))", hex(&bytes)))
            .await;
        assert_eq!(again, json!(hex(&bytes)), "{m:?}");
    }
    // What the page sends decodes in Rust.
    let auth = page
        .eval(&format!(
            "hex(Kizuna.msgpack.encode({{type: 'auth', peer_id: {}, signature: new Uint8Array(64).fill(0x5a), token: null}}))",
            js_bytes(key(1).peer_id().as_bytes())
        ))
        .await;
    let auth = RelayMessage::decode(&unhex(auth.as_str().unwrap())).unwrap();
    assert_eq!(auth, RelayMessage::Auth { peer_id: key(1).peer_id(), signature: [0x5a; 64], token: None });

    // Garbage is refused with a MsgpackError, never a hang or another exception.
    let deep = "91".repeat(40);
    for bad in ["", "c1", "92", "dcffff", "c6ffffffff00", "8101", "820101a10101", "0000", &deep, "a2c3"] {
        let r = page
            .eval(&format!(
                "(() => {{ try {{ Kizuna.msgpack.decode(unhex('{bad}')); return 'accepted'; }} catch (e) {{ return e.name; }} }})()"
            ))
            .await;
        assert_eq!(r, json!("MsgpackError"), "input {bad:?}");
    }

    // Totality: random inputs and mutations of a real message (seeded, reproducible) only
    // ever decode or throw MsgpackError.
    let sample = RelayMessage::Signaled { from: key(1).peer_id(), payload: vec![7; 40] }.encode().unwrap();
    let other = page
        .eval(&format!(
            "(() => {{
                let x = 0x2545f491;
                const rnd = (n) => {{ x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) % n; }};
                const sample = unhex('{}');
                const other = new Set();
                let decoded = 0;
                for (let i = 0; i < 20000; i++) {{
                    let b;
                    if (i % 2) {{
                        b = sample.slice(0, rnd(sample.length + 1));
                        for (let k = rnd(4); k >= 0; k--) b[rnd(b.length || 1)] = rnd(256);
                    }} else {{
                        b = new Uint8Array(rnd(24)).map(() => rnd(256));
                    }}
                    try {{ Kizuna.msgpack.decode(b); decoded++; }} catch (e) {{ if (e.name !== 'MsgpackError') other.add(e.name + ': ' + e.message); }}
                }}
                return [decoded, [...other]];
            }})()",
            hex(&sample)
        ))
        .await;
    assert_eq!(other[1], json!([]), "exceptions other than MsgpackError: {other}");
    assert!(other[0].as_u64().unwrap() > 0, "some random inputs are valid MessagePack: {other}");

    // Signaling payloads: the page's encoding is the contract's map behind 0x14.
    let payload = page
        .eval(
            "hex(Kizuna.signaling.encodeSignal({session: 0xfedcba9876543210n, kind: 'candidate', sdp: 'candidate:1 1 udp 1 127.0.0.1 9 typ host', mid: '0'}))",
        )
        .await;
    let payload = unhex(payload.as_str().unwrap());
    let s = SignalMessage::decode(&payload).unwrap();
    let want = SignalMessage::unsigned(
        0xfedc_ba98_7654_3210,
        SignalKind::Candidate,
        "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
        Some("0".into()),
    );
    assert_eq!(s, want);
    assert_eq!(payload, want.encode().unwrap(), "byte for byte the Rust encoding");
    let back = page
        .eval(&format!("Kizuna.signaling.decodeSignal(unhex('{}')).session.toString()", hex(&payload)))
        .await;
    assert_eq!(back, json!(0xfedc_ba98_7654_3210u64.to_string()));

    // The signed-offer vector of docs/webrtc.md §2: peer 1 offers `v=0` to peer 2 in
    // session 1. The page builds the same transcript and payload, and its WebCrypto
    // verifies the Rust signature (and refuses it with one bit flipped).
    let (from, to) = (key(1), key(2).peer_id());
    let offer = SignalMessage::signed(&from, &to, 1, SignalKind::Offer, "v=0".into());
    let sig = offer.sig.unwrap();
    let transcript = signal::transcript(1, &to, SignalKind::Offer, "v=0");
    let js = page
        .eval(&format!(
            "(async () => {{
                const t = Kizuna.signaling.transcript(1n, {to}, 'offer', 'v=0');
                const sig = unhex('{sig}');
                const p = Kizuna.signaling.encodeSignal({{session: 1n, kind: 'offer', sdp: 'v=0', sig}});
                const ok = await Kizuna.peerId.verify({from}, t, sig);
                sig[0] ^= 1;
                const flipped = await Kizuna.peerId.verify({from}, t, sig);
                return [hex(t), hex(p), ok, flipped];
            }})()",
            to = js_bytes(to.as_bytes()),
            from = js_bytes(from.peer_id().as_bytes()),
            sig = hex(&sig),
        ))
        .await;
    assert_eq!(js, json!([hex(&transcript), hex(&offer.encode().unwrap()), true, false]));
}

#[actix_rt::test]
async fn page_signs_in_at_the_relay_and_receives_signals() {
    let Some(mut page) = browser().await else { return };
    let relay = start(config(Admission::open())).await;
    page.navigate(&page_url("")).await;
    let me = page
        .eval(&format!(
            "(async () => {{
                const id = await Kizuna.Identity.generate();
                globalThis.relay = await Kizuna.RelayClient.connect('{}', id);
                globalThis.signals = [];
                relay.addEventListener('signaled', (ev) => signals.push([Array.from(ev.detail.from), Array.from(ev.detail.payload)]));
                return id.peerId;
            }})()",
            relay.url
        ))
        .await;
    let me: PeerId = me.as_str().unwrap().parse().unwrap();
    let metrics = relay.addr.send(GetRelayMetrics).await.unwrap();
    let usage =
        metrics.peers.iter().find(|p| p.peer == me).expect("the page's peer id is known to the relay");
    assert!(usage.reserved, "the page holds a reservation");

    // A Rust peer signals the page through the relay, and the page signals back.
    let mut node = reserve(&relay.url, &key(2)).await;
    send(&mut node, &RelayMessage::Signal { to: me, payload: b"hello page".to_vec() }).await;
    let got = page.wait_for("signals.length ? signals[0] : null", PAGE_TIMEOUT).await;
    assert_eq!(got, json!([key(2).peer_id().as_bytes().to_vec(), b"hello page".to_vec()]));
    page.eval(&format!(
        "relay.signal({}, new TextEncoder().encode('hello node')), true",
        js_bytes(key(2).peer_id().as_bytes())
    ))
    .await;
    match next(&mut node).await {
        Got::Msg(RelayMessage::Signaled { from, payload }) => {
            assert_eq!(from, me);
            assert_eq!(payload, b"hello node");
        }
        other => panic!("expected the page's signal, got {other:?}"),
    }

    // A relay that names itself differently is refused before anything is signed.
    let wrong = relay.url.replace("127.0.0.1", "localhost");
    let r = page
        .eval(&format!(
            "Kizuna.Identity.generate().then((id) => Kizuna.RelayClient.connect('{wrong}', id)).then(() => 'signed in', (e) => e.message)"
        ))
        .await;
    assert!(r.as_str().unwrap().contains("challenge names relay"), "{r}");
}

#[actix_rt::test]
async fn page_reports_a_node_that_is_not_at_the_relay() {
    let Some(mut page) = browser().await else { return };
    let relay = start(config(Admission::open())).await;
    let absent = key(7).peer_id();
    page.navigate(&page_url(&format!("relay={}&peer={absent}&auto=1", enc(&relay.url)))).await;
    let r = page.wait_for("window.kizunaResult ?? null", PAGE_TIMEOUT).await;
    assert_eq!(r["error"]["kind"], json!("signaling"), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("no reservation at this relay"), "{r}");

    // A mistyped peer id is caught by its checksum before anything is sent.
    let typo = format!(
        "{}{}",
        if absent.to_string().starts_with('a') { 'b' } else { 'a' },
        &absent.to_string()[1..]
    );
    page.navigate(&page_url(&format!("relay={}&peer={typo}&auto=1", enc(&relay.url)))).await;
    let r = page.wait_for("window.kizunaResult ?? null", PAGE_TIMEOUT).await;
    assert_eq!(r["error"]["kind"], json!("config"), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("checksum"), "{r}");
}

/// Opens the page in scripted mode against a fake node (`node_key`'s reservation on
/// `control`), checks the page's signed offer, answers with `answer_sdp` signed by
/// `signer`, and returns the page's published result and the reason of its `close`.
async fn answer_offer(signer: &Keypair, answer_sdp: Option<&str>) -> (Value, String) {
    let mut page = browser().await.unwrap();
    let relay = start(config(Admission::open())).await;
    let node = key(2);
    let mut control = reserve(&relay.url, &node).await;
    page.navigate(&page_url(&format!("relay={}&peer={}&auto=1&count=3", enc(&relay.url), node.peer_id())))
        .await;

    let (from, offer) = loop {
        match next(&mut control).await {
            Got::Msg(RelayMessage::Signaled { from, payload }) => {
                let s = SignalMessage::decode(&payload).unwrap();
                if s.kind == SignalKind::Offer {
                    break (from, s);
                }
            }
            other => panic!("expected the page's offer, got {other:?}"),
        }
    };
    assert!(offer.sdp.contains("a=fingerprint:"), "{}", offer.sdp);
    assert!(offer.sdp.contains("webrtc-datachannel"), "{}", offer.sdp);
    offer.verify(&from, &node.peer_id()).expect("the page signs its offer for the node");
    assert!(offer.verify(&from, &key(9).peer_id()).is_err(), "the signature binds the recipient");

    let sdp = answer_sdp.unwrap_or(&offer.sdp).to_string();
    let answer = SignalMessage::signed(signer, &from, offer.session, SignalKind::Answer, sdp);
    send(&mut control, &RelayMessage::Signal { to: from, payload: answer.encode().unwrap() }).await;
    let result = page.wait_for("window.kizunaResult ?? null", PAGE_TIMEOUT).await;
    // The page ends the session with a `close` saying why (after its candidates).
    let close = loop {
        match next(&mut control).await {
            Got::Msg(RelayMessage::Signaled { payload, .. }) => {
                let s = SignalMessage::decode(&payload).unwrap();
                if s.kind == SignalKind::Close {
                    assert_eq!(s.session, offer.session);
                    break s.sdp;
                }
            }
            other => panic!("expected the page's close, got {other:?}"),
        }
    };
    (result, close)
}

#[actix_rt::test]
async fn page_refuses_an_answer_not_signed_by_the_node() {
    if chromium_or_skip().is_none() {
        return;
    }
    // Signed by someone else (a relay swapping the answer): an authentication error.
    let (r, close) = answer_offer(&key(3), Some("v=0\r\n")).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["kind"], json!("auth"), "{r}");
    assert!(close.starts_with("auth: "), "the close names the reason: {close}");

    // Control: the node's own signature passes the check, and the page gets as far as
    // handing the (here unusable) SDP to the browser, which refuses it for what it is.
    let (r, _) = answer_offer(&key(2), Some("v=0\r\n")).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["error"]["kind"], json!("signaling"), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("refused by the browser"), "{r}");
}

/// A Kizuna node (a [`Supervisor`] with WebRTC and a relay reservation) that greets every
/// WebRTC peer once and echoes every message and datagram, through the public API only.
struct EchoNode {
    peer: PeerId,
    supervisor: Addr<Supervisor>,
    /// Peers that connected over WebRTC.
    connected: mpsc::Receiver<PeerId>,
}

const GREETING: &str = "hello browser, from a kizuna node";

/// The node side's WebRTC settings: host candidates on this side of the test link.
fn node_webrtc(net: &BrowserNet) -> WebRtcConfig {
    // Loopback in the bind list as well: webrtc-rs then opens no mDNS socket (which would
    // join 224.0.0.251 on the default interface, outside the test's link). Chromium gets
    // the loopback candidate too and finds nothing there inside its namespace.
    let bind = vec![SocketAddr::new(net.host.into(), 0), SocketAddr::from(([127, 0, 0, 1], 0))];
    WebRtcConfig { bind, ..WebRtcConfig::default() }
}

async fn echo_node(relay: &RelayHandle, webrtc: WebRtcConfig) -> EchoNode {
    let keypair = key(2);
    let peer = keypair.peer_id();
    let mut config = SupervisorConfig::new(keypair);
    config.protocols = vec![Protocol::WebRtc];
    config.relays = vec![RelayEndpoint { url: relay.url.clone(), token: None }];
    config.webrtc = webrtc;
    let supervisor = Supervisor::start(config).unwrap();
    let mut events = supervisor.send(Subscribe::default()).await.unwrap();
    let (tx, connected) = mpsc::channel(8);
    let node = supervisor.clone();
    actix::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                Event::PeerConnected { info } if info.protocol == Protocol::WebRtc => {
                    let _ = tx.send(info.peer).await;
                    let greeting = Bytes::from_static(GREETING.as_bytes());
                    node.send(Send { peer: info.peer, data: greeting }).await.unwrap().unwrap();
                }
                Event::MessageReceived { peer, data } => {
                    let _ = node.send(Send { peer, data }).await;
                }
                Event::DatagramReceived { peer, data } => {
                    let _ = node.send(SendDatagram { peer, data }).await;
                }
                _ => {}
            }
        }
    });
    // The page can signal the node once the node holds its reservation.
    let deadline = std::time::Instant::now() + PAGE_TIMEOUT;
    loop {
        let m = relay.addr.send(GetRelayMetrics).await.unwrap();
        if m.peers.iter().any(|p| p.peer == peer && p.reserved) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the node never reserved at the relay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    EchoNode { peer, supervisor, connected }
}

#[actix_rt::test]
async fn page_and_node_exchange_messages_and_datagrams_over_webrtc() {
    let Some((net, relay, mut node, mut page)) = webrtc_setup().await else { return };
    let count = 20;
    // One message of 200 KiB too: many SCTP chunks, below the 256 KiB both ends advertise.
    let big = 200 * 1024;
    let query = format!("relay={}&peer={}&auto=1&count={count}&big={big}", enc(&relay.url), node.peer);
    page.navigate(&page_url(&query)).await;
    // Chromium's only candidate is its end of the test's link: nothing else was a target.
    let r = passed_with_candidates(&mut page, &format!(" {} ", net.browser)).await;
    eprintln!("page result: {r}");
    assert_eq!(r["reliable"]["echoed"], json!(count + 1), "{r}");
    assert!(r["unreliable"]["echoed"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["fromNode"], json!([GREETING]), "the node's own message reached the page: {r}");
    // The node's connection is authenticated to the page's WebCrypto identity.
    let page_peer: PeerId = r["peerId"].as_str().unwrap().parse().unwrap();
    let connected = tokio::time::timeout(PAGE_TIMEOUT, node.connected.recv()).await.unwrap().unwrap();
    assert_eq!(connected, page_peer);

    // The page takes no streams: one the node opens ends at once instead of hanging.
    let ended = async {
        let mut s =
            node.supervisor.send(OpenStream { peer: page_peer }).await.unwrap().map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        s.read(&mut buf).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(PAGE_TIMEOUT, ended).await.expect("the refused stream ended in time") {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes from a stream the page refused"),
    }
    // …and the connection still carries messages.
    let data = Bytes::from_static(b"after the stream");
    node.supervisor.send(Send { peer: page_peer, data }).await.unwrap().unwrap();
    let got = page
        .wait_for("kizunaResult.fromNode.find((t) => t === 'after the stream') ?? null", PAGE_TIMEOUT)
        .await;
    assert_eq!(got, json!("after the stream"));
}

/// The Chromium binary and a namespace for it; `None` (after printing why) when the
/// WebRTC tests cannot run here.
fn browser_and_net() -> Option<(std::path::PathBuf, BrowserNet)> {
    let bin = chromium_or_skip()?;
    match BrowserNet::create() {
        Ok(net) => Some((bin, net)),
        Err(e) => {
            eprintln!(
                "SKIP browser WebRTC: {e} (Chromium needs a namespace: it gathers no loopback candidates)"
            );
            None
        }
    }
}

/// Waits for the page's scripted result, asserts it passed and that every ICE candidate
/// the page gathered contains `pattern`; returns the result.
async fn passed_with_candidates(page: &mut Chromium, pattern: &str) -> Value {
    let r = page.wait_for("window.kizunaResult ?? null", PAGE_TIMEOUT).await;
    assert_eq!(r["ok"], json!(true), "{r}\nconsole:\n{}", page.console.join("\n"));
    let candidates = r["candidates"].as_array().unwrap();
    assert!(!candidates.is_empty(), "{r}");
    for c in candidates {
        assert!(c.as_str().unwrap().contains(pattern), "candidate {c} lacks {pattern:?}");
    }
    r
}

/// Chromium in its namespace, a relay and an echo node on this side of the link; `None`
/// (after printing why) when the test cannot run here.
async fn webrtc_setup() -> Option<(BrowserNet, RelayHandle, EchoNode, Chromium)> {
    webrtc_setup_with(false).await
}

/// [`webrtc_setup`], with Chromium hiding its addresses behind mDNS names or not.
async fn webrtc_setup_with(hide_local_ips: bool) -> Option<(BrowserNet, RelayHandle, EchoNode, Chromium)> {
    let (bin, net) = browser_and_net()?;
    let relay = start(RelayServerConfig::new(SocketAddr::new(net.host.into(), 0), Admission::open())).await;
    let node = echo_node(&relay, node_webrtc(&net)).await;
    let page = Chromium::launch_with(&bin, Some(&net), hide_local_ips).await;
    Some((net, relay, node, page))
}

/// Chromium as it ships: its host candidates are `<uuid>.local` names the node cannot
/// resolve (its mDNS is off here). The node ignores them and learns the browser's address
/// from its connectivity checks (a peer-reflexive candidate).
#[actix_rt::test]
async fn mdns_hidden_browser_addresses_still_connect() {
    let Some((_net, relay, node, mut page)) = webrtc_setup_with(true).await else { return };
    page.navigate(&page_url(&format!("relay={}&peer={}&auto=1&count=5", enc(&relay.url), node.peer))).await;
    // Every candidate is an mDNS name, not an address.
    passed_with_candidates(&mut page, ".local ").await;
}

#[actix_rt::test]
async fn a_person_uses_the_page_by_hand() {
    let Some((_net, relay, node, mut page)) = webrtc_setup().await else { return };
    page.navigate(&page_url(&format!("relay={}&peer={}", enc(&relay.url), node.peer))).await;
    page.eval("document.getElementById('connect').click(), true").await;
    let status = page
        .wait_for(
            "(() => { const s = document.getElementById('status'); return s.className ? [s.className, s.textContent] : null; })()",
            PAGE_TIMEOUT,
        )
        .await;
    assert_eq!(status[0], json!("ok"), "{status}\nconsole:\n{}", page.console.join("\n"));
    for (button, channel) in [("send-msg", "msg"), ("send-dgram", "dgram")] {
        let text = format!("typed into the page, sent with {button}");
        page.eval(&format!(
            "document.getElementById('text').value = '{text}', document.getElementById('{button}').click(), true"
        ))
        .await;
        let shown = format!("recv [{channel}] \"{text}\"");
        let seen = page
            .wait_for(
                &format!("document.getElementById('log').textContent.includes('{shown}') || null"),
                PAGE_TIMEOUT,
            )
            .await;
        assert_eq!(seen, json!(true));
    }
    page.eval("document.getElementById('disconnect').click(), true").await;
    assert_eq!(page.eval("document.getElementById('status').textContent").await, json!("disconnected"));
}

/// A `kizuna` process, killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kizuna ARGS` with `home` as its HOME and returns it with its first stdout line.
async fn kizuna(home: &std::path::Path, args: &[&str]) -> (Proc, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kizuna"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("KIZUNA_KEY")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let proc = Proc(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).map(|_| line)
    });
    let line =
        tokio::time::timeout(PAGE_TIMEOUT, line).await.expect("kizuna printed its first line").unwrap();
    (proc, line.unwrap().trim().to_string())
}

/// The README's commands, run as a person would (addresses adapted to the test's link):
/// `kizuna relay`, `kizuna node --relay … --listen webrtc=1`, then the page with the
/// relay URL and the node's ticket.
#[actix_rt::test]
async fn the_readme_commands_connect_the_page_to_kizuna_node() {
    let Some((bin, net)) = browser_and_net() else { return };
    let home = tempfile::tempdir().unwrap();
    let listen = format!("ws://{}:0", net.host);
    let (_relay, url) = kizuna(home.path(), &["relay", "--listen", &listen, "--open"]).await;
    let bind = format!("{}:0", net.host);
    // Loopback as well: see `node_webrtc`.
    let node_args = [
        "node",
        "--relay",
        &url,
        "--listen",
        "webrtc=1",
        "--webrtc-bind",
        &bind,
        "--webrtc-bind",
        "127.0.0.1:0",
    ];
    let (_node, ticket) = kizuna(home.path(), &node_args).await;
    assert!(ticket.contains('@'), "a ticket: {ticket}");

    let mut page = Chromium::launch(&bin, Some(&net)).await;
    page.navigate(&page_url(&format!("relay={}&peer={}&auto=1&count=10", enc(&url), enc(&ticket)))).await;
    let r = page.wait_for("window.kizunaResult ?? null", PAGE_TIMEOUT).await;
    assert_eq!(r["ok"], json!(true), "{r}\nconsole:\n{}", page.console.join("\n"));
    assert_eq!(r["reliable"]["echoed"], json!(10), "{r}");
    assert!(r["unreliable"]["echoed"].as_u64().unwrap() >= 1, "kizuna node echoes datagrams: {r}");
}

/// Browser and node both restricted to TURN relay candidates (`relayOnly=1` on the page,
/// `relay_only` on the node): everything goes through a real coturn, and neither side
/// learns the other's host address.
#[actix_rt::test]
async fn page_and_node_meet_through_turn_with_relay_only_ice() {
    let Some((bin, net)) = browser_and_net() else { return };
    if !Coturn::available() {
        eprintln!("SKIP browser TURN: `turnserver` not found (apt-get install coturn; .ci/run does)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let turn = Coturn::start(net.host, dir.path()).await;
    let turn_url = turn.url.clone();
    let relay = start(RelayServerConfig::new(SocketAddr::new(net.host.into(), 0), Admission::open())).await;
    let mut webrtc = node_webrtc(&net);
    webrtc.ice_servers = vec![IceServer::turn(&turn_url, TURN_USER, TURN_PASS)];
    webrtc.relay_only = true;
    let node = echo_node(&relay, webrtc).await;
    let mut page = Chromium::launch(&bin, Some(&net)).await;
    let query = format!(
        "relay={}&peer={}&turn={}&turnUser={TURN_USER}&turnPass={TURN_PASS}&relayOnly=1&auto=1&count=5",
        enc(&relay.url),
        node.peer,
        enc(&turn_url)
    );
    page.navigate(&page_url(&query)).await;
    passed_with_candidates(&mut page, " typ relay ").await;
}
