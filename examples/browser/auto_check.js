// The scripted check (`?auto=1`), what actors/tests/browser.rs drives in headless Chromium:
// connect, send `count` messages on the reliable channel (then one of `big` bytes, if
// given: it crosses many SCTP chunks) and `count` datagrams on the unreliable one to a
// node that echoes them, and publish the outcome as JSON on
// `window.kizunaResult` (and the title "kizuna:done").
//
// Result: {ok, peerId, error: {kind, message}|null,
//          reliable: {sent, echoed, inOrder, intact}, unreliable: {sent, echoed, intact},
//          fromNode: [texts the node sent that were not echoes; keeps growing after publishing],
//          connectMs: page start to both channels open (relay sign-in, offer/answer, ICE, DTLS, SCTP),
//          offerToOpenMs: offer sent to both channels open, echoMs: first reliable send to its last echo, candidates: the page's ICE candidates}
// ok = every reliable message came back, in order and unchanged, and at least one datagram
// came back unchanged (the unreliable channel may lose some; on loopback it rarely does).
(function (K) {
  "use strict";

  /** How long to wait for echoes after the last send. */
  const ECHO_WAIT_MS = 10000;
  /** Pause between datagrams, so a burst does not overflow a receive buffer. */
  const DGRAM_GAP_MS = 5;

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const text = (d) => new TextDecoder().decode(d);

  function publish(result) {
    window.kizunaResult = result;
    document.title = "kizuna:done";
    K.ui.log("result: " + JSON.stringify(result));
  }

  async function autoCheck({ relay, peer, opts, count, big }) {
    const result = {
      ok: false, peerId: null, error: null,
      reliable: { sent: 0, echoed: 0, inOrder: true, intact: true },
      unreliable: { sent: 0, echoed: 0, intact: true },
      fromNode: [], connectMs: null, offerToOpenMs: null, echoMs: null, candidates: [],
    };
    const t0 = performance.now();
    try {
      const tag = Math.random().toString(36).slice(2, 10);
      const msgs = Array.from({ length: count }, (_, i) => "msg " + tag + " " + i + " " + "x".repeat(i * 37));
      if (big > 0) msgs.push("msg " + tag + " big " + "y".repeat(big));
      const dgrams = new Set(Array.from({ length: count }, (_, i) => "dgram " + tag + " " + i));
      const session = await K.ui.connect(relay, peer, opts);
      result.connectMs = Math.round(performance.now() - t0);
      result.candidates = session.localCandidates;
      result.offerToOpenMs = session.offerToOpenMs;
      let t1;
      result.peerId = document.getElementById("me").textContent;
      let allEchoed;
      const done = new Promise((r) => (allEchoed = r));
      session.addEventListener("message", (ev) => {
        const t = text(ev.detail.data);
        if (ev.detail.channel === "msg") {
          if (t.startsWith("msg " + tag + " ")) {
            if (t !== msgs[result.reliable.echoed]) {
              if (msgs.includes(t)) result.reliable.inOrder = false;
              else result.reliable.intact = false;
            }
            result.reliable.echoed++;
            if (result.reliable.echoed === msgs.length) result.echoMs = Math.round(performance.now() - t1);
          } else {
            result.fromNode.push(t);
          }
        } else if (t.startsWith("dgram " + tag + " ")) {
          if (dgrams.has(t)) result.unreliable.echoed++;
          else result.unreliable.intact = false;
        } else {
          result.fromNode.push(t);
        }
        if (result.reliable.echoed === msgs.length && result.unreliable.echoed === count) allEchoed();
      });
      let failure = null;
      session.addEventListener("failed", (ev) => (failure = ev.detail));
      t1 = performance.now();
      for (const m of msgs) {
        await session.sendPaced("msg", m);
        result.reliable.sent++;
      }
      for (const d of dgrams) {
        session.send("dgram", d);
        result.unreliable.sent++;
        await sleep(DGRAM_GAP_MS);
      }
      await Promise.race([done, sleep(ECHO_WAIT_MS)]);
      if (failure) result.error = failure;
      const r = result.reliable;
      const u = result.unreliable;
      result.ok = !failure && r.echoed === msgs.length && r.inOrder && r.intact && u.echoed >= 1 && u.intact;
    } catch (e) {
      result.error = { kind: e.kind || "error", message: e.message };
    }
    publish(result);
  }

  K.autoCheck = autoCheck;
})((globalThis.Kizuna = globalThis.Kizuna || {}));
