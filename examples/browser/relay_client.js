// A Kizuna relay client for the browser: the control connection of docs/protocol.md §10.
//
// One WebSocket offering the `kizuna` subprotocol; every relay message is one binary
// message holding one MessagePack map. The client answers the challenge (Ed25519 over
// "kizuna-relay-auth-v1" || nonce || relay name, after checking that the relay names the
// URL we dialed), declares `control`, takes a reservation (so peers can signal it) and
// renews it at half its lifetime. It then sends `signal`s and reports `signaled`s.
//
// Events (EventTarget): "signaled" {detail: {from: Uint8Array, payload: Uint8Array}},
// "relayerror" {detail: {code, message}}, "closed" {detail: {code, reason}}.
//
// Classic script: defines `Kizuna.RelayClient`.
(function (K) {
  "use strict";

  const MAX_RELAY_MESSAGE_LEN = 65536; // src/relay/mod.rs MAX_RELAY_MESSAGE_LEN
  const MAX_SIGNAL_LEN = 16384; // src/relay/mod.rs MAX_SIGNAL_LEN
  const AUTH_DOMAIN = new TextEncoder().encode("kizuna-relay-auth-v1");
  /** Requested reservation lifetime; 10 minutes, renewed at half. */
  const RESERVATION_TTL_SECS = 600;
  /** How long connecting, authenticating and reserving may take. */
  const CONNECT_TIMEOUT_MS = 10000;

  const ERROR_NAMES = {
    1: "Unauthenticated", 2: "NotAllowed", 3: "BadToken", 4: "ExpiredToken",
    5: "TargetNotReserved", 6: "TargetRefused", 9: "ReservationLimit",
    12: "ProtocolViolation", 14: "NotReserved", 16: "Replaced", 17: "Shutdown",
  };

  class RelayError extends Error {
    constructor(code, message) {
      super("relay error " + code + " (" + (ERROR_NAMES[code] || "unknown") + "): " + message);
      this.name = "RelayError";
      this.code = code;
    }
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  class RelayClient extends EventTarget {
    constructor(url, identity, ws) {
      super();
      this.url = url;
      this.identity = identity;
      this.ws = ws;
      this.renewTimer = null;
      this.closed = false;
    }

    /**
     * Connects to the relay at `url` (exactly the URL the relay calls itself, e.g.
     * ws://127.0.0.1:7000), authenticates as `identity`, reserves. Resolves with the client
     * once the relay has granted the reservation.
     */
    static connect(url, identity, token = null) {
      return new Promise((resolve, reject) => {
        let ws;
        try {
          ws = new WebSocket(url, ["kizuna"]);
        } catch (e) {
          reject(new Error("cannot open a WebSocket to " + url + ": " + e.message));
          return;
        }
        ws.binaryType = "arraybuffer";
        const client = new RelayClient(url, identity, ws);
        let stage = "challenge";
        const timer = setTimeout(() => fail(new Error("relay " + url + " did not grant a reservation within " + CONNECT_TIMEOUT_MS + " ms")), CONNECT_TIMEOUT_MS);
        const fail = (e) => {
          clearTimeout(timer);
          client.close();
          reject(e);
        };
        ws.onerror = () => {}; // the close event follows and carries the code
        ws.onclose = (ev) => {
          client.onClose(ev);
          if (stage !== "ready") {
            fail(new Error("relay closed the connection while " + stage + " (code " + ev.code + (ev.reason ? ": " + ev.reason : "") + ")"));
          }
        };
        ws.onmessage = async (ev) => {
          let msg;
          try {
            msg = client.decode(ev.data);
          } catch (e) {
            if (stage !== "ready") fail(e);
            else {
              console.warn("closing the relay connection: " + e.message);
              client.close();
            }
            return;
          }
          if (msg === null) return;
          try {
            if (stage === "challenge") {
              if (msg.type !== "challenge") throw new Error("expected a challenge, got " + msg.type);
              stage = "authenticating";
              await client.answerChallenge(msg, token);
            } else if (msg.type === "reserved" && stage !== "ready") {
              stage = "ready";
              clearTimeout(timer);
              client.scheduleRenewal(msg.expires_in_secs);
              resolve(client);
            } else if (msg.type === "error" && stage !== "ready") {
              throw new RelayError(msg.code, msg.message);
            } else {
              client.onMessage(msg);
            }
          } catch (e) {
            fail(e);
          }
        };
      });
    }

    /** Decodes one relay message; null for messages to ignore. Throws on garbage. */
    decode(data) {
      if (!(data instanceof ArrayBuffer)) throw new Error("relay sent a text message");
      if (data.byteLength > MAX_RELAY_MESSAGE_LEN) throw new Error("relay message of " + data.byteLength + " bytes exceeds " + MAX_RELAY_MESSAGE_LEN);
      const msg = K.msgpack.decode(data);
      if (msg === null || typeof msg !== "object" || Array.isArray(msg) || msg instanceof Uint8Array || typeof msg.type !== "string") {
        throw new Error("relay message is not a map with a string type");
      }
      return msg;
    }

    send(msg) {
      const bytes = K.msgpack.encode(msg);
      if (bytes.length > MAX_RELAY_MESSAGE_LEN) throw new Error("relay message too large");
      this.ws.send(bytes);
    }

    async answerChallenge(msg, token) {
      if (!(msg.nonce instanceof Uint8Array) || msg.nonce.length !== 32 || typeof msg.relay !== "string") {
        throw new Error("malformed challenge");
      }
      // Never sign a challenge naming another relay (docs/protocol.md §10.4).
      if (msg.relay !== this.url) {
        throw new Error("challenge names relay " + JSON.stringify(msg.relay) + " but this page dialed " + JSON.stringify(this.url));
      }
      const transcript = concat(AUTH_DOMAIN, msg.nonce, new TextEncoder().encode(msg.relay));
      const signature = await this.identity.sign(transcript);
      this.send({ type: "auth", peer_id: this.identity.publicKey, signature, token: token || null });
      this.send({ type: "control" });
      this.send({ type: "reserve", ttl_secs: RESERVATION_TTL_SECS });
    }

    scheduleRenewal(grantedSecs) {
      clearTimeout(this.renewTimer);
      const secs = Number(grantedSecs);
      if (!(secs > 0)) return;
      this.renewTimer = setTimeout(() => {
        if (!this.closed) this.send({ type: "reserve", ttl_secs: RESERVATION_TTL_SECS });
      }, (secs * 1000) / 2);
    }

    onMessage(msg) {
      switch (msg.type) {
        case "reserved":
          this.scheduleRenewal(msg.expires_in_secs);
          break;
        case "signaled":
          if (msg.from instanceof Uint8Array && msg.from.length === 32 && msg.payload instanceof Uint8Array) {
            this.dispatchEvent(new CustomEvent("signaled", { detail: { from: msg.from, payload: msg.payload } }));
          }
          break;
        case "error":
          this.dispatchEvent(new CustomEvent("relayerror", { detail: { code: msg.code, message: String(msg.message) } }));
          break;
        default:
          // incoming circuits are refused: this page only uses signaling
          if (msg.type === "incoming" && msg.circuit !== undefined) {
            this.send({ type: "refuse", circuit: msg.circuit, reason: "browser peer: WebRTC only" });
          }
      }
    }

    onClose(ev) {
      if (this.closed) return;
      this.closed = true;
      clearTimeout(this.renewTimer);
      this.dispatchEvent(new CustomEvent("closed", { detail: { code: ev.code, reason: ev.reason } }));
    }

    /** Forwards `payload` (Uint8Array, ≤ 16 KiB) to the reserved peer with raw key `to`. */
    signal(to, payload) {
      if (payload.length > MAX_SIGNAL_LEN) throw new Error("signal of " + payload.length + " bytes exceeds " + MAX_SIGNAL_LEN);
      if (this.closed) throw new Error("relay connection is closed");
      this.send({ type: "signal", to, payload });
    }

    close() {
      clearTimeout(this.renewTimer);
      if (this.ws.readyState <= 1) this.ws.close(1000);
    }
  }

  K.RelayClient = RelayClient;
  K.RelayError = RelayError;
  K.concat = concat;
})((globalThis.Kizuna = globalThis.Kizuna || {}));
