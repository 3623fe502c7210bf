// A WebRTC session with a Kizuna node, signaled through the relay (docs/webrtc.md,
// "Signaling" and "Browser peers").
//
// Signaling payloads are 0x14 followed by one MessagePack map
//   {session: u64, kind: "offer"|"answer"|"candidate"|"close", sdp: str, mid: str|nil, sig: bin64|nil}
// Offers and answers are signed with the sender's Ed25519 key over
//   "kizuna-webrtc-v1" 0x00 || session (u64 BE) || recipient key (32) || kind 0x00 || sdp
// so the DTLS fingerprint inside the SDP is bound to the sender's PeerId: a relay (or
// anyone) who swaps the answer cannot make this page talk DTLS to someone else.
//
// The page is the offerer: it creates `kizuna-msg` (reliable, ordered: one Kizuna message
// per DataChannel message) and `kizuna-dgram` (unordered, maxRetransmits 0: one datagram
// per message) before the offer, trickles its candidates, and verifies the answer.
//
// Events: "open", "message" {detail: {channel: "msg"|"dgram", data: Uint8Array}},
// "failed" {detail: {kind: "auth"|"signaling"|"ice"|"closed"|"timeout", message}}, "closed".
//
// Classic script: defines `Kizuna.WebRtcSession` and `Kizuna.signaling`.
(function (K) {
  "use strict";

  const SIGNAL_TAG = 0x14;
  const SIG_DOMAIN = new TextEncoder().encode("kizuna-webrtc-v1");
  const KINDS = ["offer", "answer", "candidate", "close"];
  /** From the offer until both channels are open. Generous for a loaded CI machine. */
  const OPEN_TIMEOUT_MS = 30000;
  /** Candidates that arrive before the answer wait here; more than this is abuse. */
  const MAX_EARLY_CANDIDATES = 64;
  /** Reliable sends wait while more than this is buffered in the browser (bytes)... */
  const SEND_HIGH_WATER = 1024 * 1024;
  /** ...until the buffer drains below this (`bufferedAmountLowThreshold`). */
  const SEND_LOW_WATER = 256 * 1024;

  function u64be(v) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v));
    return b;
  }

  /** The bytes an offer or answer signature covers. */
  function transcript(session, recipientKey, kind, sdp) {
    const enc = new TextEncoder();
    return K.concat(SIG_DOMAIN, [0], u64be(session), recipientKey, enc.encode(kind), [0], enc.encode(sdp));
  }

  /** Encodes one signaling message as a relay `signal` payload. */
  function encodeSignal(m) {
    const map = K.msgpack.encode({ session: BigInt(m.session), kind: m.kind, sdp: m.sdp, mid: m.mid ?? null, sig: m.sig ?? null });
    return K.concat([SIGNAL_TAG], map);
  }

  /** Decodes a relay `signal` payload; null if it is not WebRTC signaling; throws if malformed. */
  function decodeSignal(payload) {
    if (payload.length === 0 || payload[0] !== SIGNAL_TAG) return null;
    const m = K.msgpack.decode(payload.subarray(1));
    if (m === null || typeof m !== "object" || Array.isArray(m) || m instanceof Uint8Array) throw new Error("signal is not a map");
    const session = typeof m.session === "number" || typeof m.session === "bigint" ? BigInt(m.session) : null;
    if (session === null || session <= 0n || session > 0xffffffffffffffffn) throw new Error("bad session id");
    if (!KINDS.includes(m.kind)) throw new Error("unknown signal kind " + JSON.stringify(m.kind));
    if (typeof m.sdp !== "string") throw new Error("sdp is not a string");
    const mid = m.mid ?? null;
    if (mid !== null && typeof mid !== "string") throw new Error("mid is not a string");
    const sig = m.sig ?? null;
    if (sig !== null && !(sig instanceof Uint8Array && sig.length === 64)) throw new Error("sig is not 64 bytes");
    return { session, kind: m.kind, sdp: m.sdp, mid, sig };
  }

  function randomSession() {
    const b = new Uint8Array(8);
    for (;;) {
      crypto.getRandomValues(b);
      const v = new DataView(b.buffer).getBigUint64(0);
      if (v !== 0n) return v;
    }
  }

  class WebRtcSession extends EventTarget {
    /**
     * `relay`: a connected RelayClient; `identity`: this page's Identity; `remoteKey`: the
     * node's raw 32-byte key; `config`: RTCConfiguration (iceServers, ...).
     */
    constructor(relay, identity, remoteKey, config = {}) {
      super();
      this.relay = relay;
      this.identity = identity;
      this.remoteKey = remoteKey;
      this.config = config;
      this.session = randomSession();
      this.pc = null;
      this.channels = {};
      this.answered = false;
      this.earlyCandidates = [];
      /** The candidate strings this page trickled (the first 64), for diagnostics. */
      this.localCandidates = [];
      this.done = false;
      // Signals are handled one at a time, in arrival order: a candidate that follows the
      // answer waits until the answer is verified and applied.
      this.inbox = Promise.resolve();
      this.onSignaled = (ev) => {
        this.inbox = this.inbox.then(() => this.handleSignaled(ev.detail)).catch((e) => this.fail("signaling", e.message));
      };
      this.onRelayClosed = () => this.fail("signaling", "relay connection closed before the session was up");
      // This page signals only its node, so a refused signal is about the node.
      this.onRelayError = (ev) => {
        const { code, message } = ev.detail;
        if (code === 5) this.fail("signaling", "the node holds no reservation at this relay (is it running with --relay pointing here?): " + message);
        else this.fail("signaling", "the relay refused a signal (error " + code + "): " + message);
      };
    }

    /** Creates the channels, sends the signed offer, trickles candidates. */
    async start() {
      this.relay.addEventListener("signaled", this.onSignaled);
      this.relay.addEventListener("closed", this.onRelayClosed);
      this.relay.addEventListener("relayerror", this.onRelayError);
      this.timer = setTimeout(() => this.fail("timeout", "data channels not open after " + OPEN_TIMEOUT_MS + " ms"), OPEN_TIMEOUT_MS);
      const pc = (this.pc = new RTCPeerConnection(this.config));
      this.addChannel("msg", pc.createDataChannel("kizuna-msg", { ordered: true }));
      this.addChannel("dgram", pc.createDataChannel("kizuna-dgram", { ordered: false, maxRetransmits: 0 }));
      // Streams (`kizuna-stream` channels the node opens) are not supported by this page:
      // closing them at once makes the node's OpenStream fail instead of hang.
      pc.ondatachannel = (ev) => {
        console.warn("closing data channel " + JSON.stringify(ev.channel.label) + ": this page takes no streams");
        ev.channel.close();
      };
      pc.onicecandidate = (ev) => {
        const c = ev.candidate;
        if (c && this.localCandidates.length < MAX_EARLY_CANDIDATES) this.localCandidates.push(c.candidate);
        // null (or an empty candidate string) = end of candidates
        this.sendSignal({ kind: "candidate", sdp: c ? c.candidate : "", mid: c ? c.sdpMid : null });
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "failed") this.fail("ice", "ICE/DTLS connection failed");
        if (pc.connectionState === "closed" || pc.connectionState === "disconnected") {
          if (this.openCount() === 2) this.fail("closed", "connection " + pc.connectionState);
        }
      };
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const sig = await this.identity.sign(transcript(this.session, this.remoteKey, "offer", offer.sdp));
      this.sendSignal({ kind: "offer", sdp: offer.sdp, sig });
      this.offerSentAt = performance.now();
    }

    addChannel(name, dc) {
      dc.binaryType = "arraybuffer";
      dc.bufferedAmountLowThreshold = SEND_LOW_WATER;
      this.channels[name] = dc;
      dc.onopen = () => {
        if (this.openCount() === 2 && !this.done) {
          clearTimeout(this.timer);
          /** Milliseconds from sending the offer to both channels open. */
          this.offerToOpenMs = Math.round(performance.now() - this.offerSentAt);
          this.dispatchEvent(new Event("open"));
        }
      };
      dc.onmessage = (ev) => {
        const data = typeof ev.data === "string" ? new TextEncoder().encode(ev.data) : new Uint8Array(ev.data);
        this.dispatchEvent(new CustomEvent("message", { detail: { channel: name, data } }));
      };
      dc.onclose = () => {
        if (!this.done) this.fail("closed", "data channel " + dc.label + " closed by the node");
      };
    }

    openCount() {
      return Object.values(this.channels).filter((c) => c.readyState === "open").length;
    }

    sendSignal(m) {
      if (this.done) return;
      try {
        this.relay.signal(this.remoteKey, encodeSignal({ session: this.session, ...m }));
      } catch (e) {
        this.fail("signaling", "cannot send " + m.kind + ": " + e.message);
      }
    }

    async handleSignaled({ from, payload }) {
      if (this.done || !K.peerId.equal(from, this.remoteKey)) return; // other peers: not ours
      let m;
      try {
        m = decodeSignal(payload);
      } catch (e) {
        throw new Error("malformed signal from the node: " + e.message);
      }
      if (m === null || m.session !== this.session) return; // other signaling / other session
      switch (m.kind) {
        case "answer": {
          if (this.answered) throw new Error("second answer for one session");
          this.answered = true;
          const ok = m.sig !== null && (await K.peerId.verify(this.remoteKey, transcript(m.session, this.identity.publicKey, "answer", m.sdp), m.sig));
          if (!ok) {
            this.fail("auth", "the answer's signature does not verify against the node's PeerId: refusing to connect");
            return;
          }
          try {
            await this.pc.setRemoteDescription({ type: "answer", sdp: m.sdp });
          } catch (e) {
            throw new Error("the node's answer was refused by the browser: " + e.message);
          }
          for (const c of this.earlyCandidates.splice(0)) await this.addCandidate(c);
          break;
        }
        case "candidate":
          if (!this.answered) {
            if (this.earlyCandidates.length >= MAX_EARLY_CANDIDATES) throw new Error("too many candidates before the answer");
            this.earlyCandidates.push(m);
          } else {
            await this.addCandidate(m);
          }
          break;
        case "close":
          this.fail("closed", "the node closed the session: " + m.sdp);
          break;
        case "offer":
          throw new Error("the node sent an offer to the offerer");
      }
    }

    async addCandidate(m) {
      try {
        // An empty candidate string is the end of candidates.
        await this.pc.addIceCandidate({ candidate: m.sdp, sdpMid: m.mid, sdpMLineIndex: m.mid === null ? 0 : null });
      } catch (e) {
        // One unusable candidate (e.g. an address family this browser lacks) is not fatal.
        console.warn("ignoring candidate " + JSON.stringify(m.sdp) + ": " + e.message);
      }
    }

    /** Sends `data` (Uint8Array or string) on "msg" (reliable) or "dgram" (unreliable). */
    send(channel, data) {
      const dc = this.channels[channel];
      if (!dc || dc.readyState !== "open") throw new Error("channel " + channel + " is not open");
      dc.send(typeof data === "string" ? new TextEncoder().encode(data) : data);
    }

    /**
     * Sends on `channel` with flow control: waits (for the `bufferedamountlow` event) while
     * more than SEND_HIGH_WATER bytes are buffered, so a fast sender never queues without
     * bound in the browser. Use it for bulk on the reliable channel.
     */
    async sendPaced(channel, data) {
      const dc = this.channels[channel];
      while (dc && dc.readyState === "open" && dc.bufferedAmount > SEND_HIGH_WATER) {
        await new Promise((resolve) => dc.addEventListener("bufferedamountlow", resolve, { once: true }));
      }
      this.send(channel, data);
    }

    fail(kind, message) {
      if (this.done) return;
      this.dispatchEvent(new CustomEvent("failed", { detail: { kind, message } }));
      this.close(kind + ": " + message);
    }

    /** Ends the session, telling the node why (`reason` goes into the close signal). */
    close(reason = "page closed the session") {
      if (this.done) return;
      this.done = true;
      try {
        if (!this.relay.closed) this.relay.signal(this.remoteKey, encodeSignal({ session: this.session, kind: "close", sdp: reason.slice(0, 1024) }));
      } catch (_) {
        // the relay connection is gone: the node times the session out
      }
      clearTimeout(this.timer);
      this.relay.removeEventListener("signaled", this.onSignaled);
      this.relay.removeEventListener("closed", this.onRelayClosed);
      this.relay.removeEventListener("relayerror", this.onRelayError);
      if (this.pc) this.pc.close();
      this.dispatchEvent(new Event("closed"));
    }
  }

  K.WebRtcSession = WebRtcSession;
  K.signaling = { encodeSignal, decodeSignal, transcript, SIGNAL_TAG };
})((globalThis.Kizuna = globalThis.Kizuna || {}));
