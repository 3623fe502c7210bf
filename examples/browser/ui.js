// The page: wires the form to a relay client and a WebRTC session.
//
// Query parameters: relay=ws://HOST:PORT (the relay's URL exactly as it prints it),
// peer=PEERID (the node; its whole ticket PEERID@… works too), optionally token=TOKEN (relay admission token),
// stun=stun:HOST:PORT (repeatable ICE server), turn=turn:HOST:PORT (repeatable) with
// turnUser=U and turnPass=P (long-term credentials), relayOnly=1 (TURN candidates only,
// the node never learns this machine's addresses), auto=1 (scripted check, see auto_check.js)
// count=N (messages per channel in the scripted check, default 20) and big=BYTES (one
// more reliable message of that size, default none).
(function (K) {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const q = new URLSearchParams(location.search);
  let relay = null;
  let session = null;

  function log(line) {
    const el = $("log");
    el.textContent += new Date().toISOString().slice(11, 23) + "  " + line + "\n";
    el.scrollTop = el.scrollHeight;
    console.log(line);
  }

  function status(text, cls = "") {
    $("status").textContent = text;
    $("status").className = cls;
  }

  function setConnected(up) {
    for (const id of ["text", "send-msg", "send-dgram"]) $(id).disabled = !up;
    $("disconnect").disabled = !(up || session);
  }

  function show(data) {
    const text = new TextDecoder("utf-8", { fatal: false }).decode(data);
    return JSON.stringify(text.length > 200 ? text.slice(0, 200) + "…" : text) + " (" + data.length + " B)";
  }

  /**
   * Connects to the node: identity, relay sign-in and reservation, signed offer, channels.
   * Resolves with the open session; rejects with an Error whose `kind` says which stage
   * failed ("config", "relay", "auth", "signaling", "ice", "timeout", "closed").
   */
  async function connect(relayUrl, peerText, opts = {}) {
    const stage = (kind, f) => f().catch((e) => { e.kind = e.kind || kind; throw e; });
    // A whole ticket (PEERID@addresses, what `kizuna node` prints) works too.
    const remoteKey = await stage("config", () => K.peerId.parse(peerText.split("@")[0]));
    const identity = await stage("config", () => K.Identity.generate());
    $("me").textContent = identity.peerId;
    status("signing in at the relay " + relayUrl);
    relay = await stage("relay", () => K.RelayClient.connect(relayUrl, identity, opts.token));
    log("relay: signed in and reserved as " + identity.peerId);
    relay.addEventListener("closed", (ev) => log("relay: closed (code " + ev.detail.code + ")"));
    relay.addEventListener("relayerror", (ev) => log("relay: error " + ev.detail.code + ": " + ev.detail.message));
    status("offering WebRTC to " + peerText.slice(0, 8) + "…");
    const iceServers = (opts.stun || []).map((urls) => ({ urls }));
    for (const urls of opts.turn || []) iceServers.push({ urls, username: opts.turnUser || "", credential: opts.turnPass || "" });
    const rtcConfig = { iceServers, iceTransportPolicy: opts.relayOnly ? "relay" : "all" };
    session = new K.WebRtcSession(relay, identity, remoteKey, rtcConfig);
    session.addEventListener("message", (ev) => log("recv [" + ev.detail.channel + "] " + show(ev.detail.data)));
    return new Promise((resolve, reject) => {
      session.addEventListener("open", () => resolve(session));
      session.addEventListener("failed", (ev) => {
        const e = new Error(ev.detail.message);
        e.kind = ev.detail.kind;
        log("session failed (" + e.kind + "): " + e.message);
        status((e.kind === "auth" ? "authentication error: " : "error: ") + e.message, "error");
        setConnected(false);
        reject(e);
      });
      session.start().catch((e) => session.fail("signaling", e.message));
    });
  }

  /** Relay token and ICE settings from the query. */
  function iceOptions() {
    return { token: q.get("token"), stun: q.getAll("stun"), turn: q.getAll("turn"), turnUser: q.get("turnUser"), turnPass: q.get("turnPass"), relayOnly: q.get("relayOnly") === "1" };
  }

  function disconnect() {
    if (session) session.close();
    if (relay) relay.close();
    session = null;
    relay = null;
    setConnected(false);
    status("disconnected");
  }

  function sendFromForm(channel) {
    const text = $("text").value;
    try {
      session.send(channel, text);
      log("sent [" + channel + "] " + show(new TextEncoder().encode(text)));
    } catch (e) {
      log("send failed: " + e.message);
    }
  }

  async function onConnectClicked() {
    $("connect").disabled = true;
    try {
      await connect($("relay").value.trim(), $("peer").value.trim(), iceOptions());
      status("connected: data channels kizuna-msg and kizuna-dgram are open", "ok");
      log("webrtc: channels open");
      setConnected(true);
    } catch (e) {
      log("connect failed (" + (e.kind || "error") + "): " + e.message);
      disconnect();
      status((e.kind === "auth" ? "authentication error: " : "error: ") + e.message, "error");
    } finally {
      $("connect").disabled = false;
    }
  }

  $("relay").value = q.get("relay") || "";
  $("peer").value = q.get("peer") || "";
  $("connect").onclick = onConnectClicked;
  $("disconnect").onclick = disconnect;
  $("send-msg").onclick = () => sendFromForm("msg");
  $("send-dgram").onclick = () => sendFromForm("dgram");

  K.ui = { connect, disconnect, log, status };

  if (q.get("auto") === "1") {
    K.autoCheck({ relay: q.get("relay") || "", peer: q.get("peer") || "", opts: iceOptions(), count: Number(q.get("count") || 20), big: Number(q.get("big") || 0) });
  }
})((globalThis.Kizuna = globalThis.Kizuna || {}));
