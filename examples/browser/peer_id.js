// Kizuna identities in the browser: an Ed25519 key made with WebCrypto and the PeerId text
// form, exactly as src/identity.rs encodes it: 55 characters of lowercase RFC 4648 base32
// (no padding) over the 32-byte public key followed by the first two bytes of
// SHA-256("kizuna-peer-id" || key).
//
// Classic script: defines `Kizuna.peerId` and `Kizuna.Identity`.
(function (K) {
  "use strict";

  const ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";
  const TEXT_LEN = 55;
  const DOMAIN = new TextEncoder().encode("kizuna-peer-id");

  function base32(bytes) {
    let out = "";
    let acc = 0;
    let bits = 0;
    for (const b of bytes) {
      acc = (acc << 8) | b;
      bits += 8;
      while (bits >= 5) {
        out += ALPHABET[(acc >>> (bits - 5)) & 31];
        bits -= 5;
      }
      acc &= (1 << bits) - 1;
    }
    if (bits > 0) out += ALPHABET[(acc << (5 - bits)) & 31];
    return out;
  }

  function unbase32(text) {
    const out = [];
    let acc = 0;
    let bits = 0;
    for (const c of text) {
      const v = ALPHABET.indexOf(c);
      if (v < 0) throw new Error("peer id contains " + JSON.stringify(c) + " (allowed: a-z, 2-7)");
      acc = (acc << 5) | v;
      bits += 5;
      if (bits >= 8) {
        out.push((acc >>> (bits - 8)) & 0xff);
        bits -= 8;
      }
      acc &= (1 << bits) - 1;
    }
    // Non-canonical trailing bits would give two texts for one key: refuse them.
    if (acc !== 0) throw new Error("peer id has non-zero padding bits");
    return new Uint8Array(out);
  }

  async function checksum(key) {
    const data = new Uint8Array(DOMAIN.length + key.length);
    data.set(DOMAIN);
    data.set(key, DOMAIN.length);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
    return digest.slice(0, 2);
  }

  function checkKey(key) {
    if (!(key instanceof Uint8Array) || key.length !== 32) throw new Error("a peer id is a 32-byte Ed25519 key");
    if (key.every((b) => b === 0)) throw new Error("the all-zero key is not a peer id");
  }

  /** The text form of a 32-byte Ed25519 public key. */
  async function toText(key) {
    checkKey(key);
    const buf = new Uint8Array(34);
    buf.set(key);
    buf.set(await checksum(key), 32);
    return base32(buf);
  }

  /** The 32-byte key of a peer id text (length, alphabet and checksum checked). */
  async function parse(text) {
    text = String(text).trim();
    if (text.length !== TEXT_LEN) throw new Error("a peer id has " + TEXT_LEN + " characters, got " + text.length);
    const raw = unbase32(text);
    const key = raw.slice(0, 32);
    const sum = await checksum(key);
    if (raw[32] !== sum[0] || raw[33] !== sum[1]) throw new Error("peer id checksum does not match (typo?)");
    checkKey(key);
    return key;
  }

  function equal(a, b) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }

  /** Verifies an Ed25519 `signature` of `message` by the peer whose raw key is `key`. */
  async function verify(key, message, signature) {
    try {
      const pub = await crypto.subtle.importKey("raw", key, { name: "Ed25519" }, false, ["verify"]);
      return await crypto.subtle.verify({ name: "Ed25519" }, pub, signature, message);
    } catch (_) {
      return false; // not a valid point, or a malformed signature
    }
  }

  /** This page's node identity: a fresh, non-extractable Ed25519 key. */
  class Identity {
    constructor(keyPair, publicKey, text) {
      this.keyPair = keyPair;
      /** Raw 32-byte public key. */
      this.publicKey = publicKey;
      /** PeerId text form. */
      this.peerId = text;
    }

    static async generate() {
      if (!globalThis.crypto || !crypto.subtle) {
        throw new Error("WebCrypto is unavailable: open the page from file:// or https://");
      }
      let keyPair;
      try {
        keyPair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
      } catch (e) {
        throw new Error("this browser has no WebCrypto Ed25519 (" + e.message + "); use a recent Chromium or Firefox");
      }
      const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", keyPair.publicKey));
      return new Identity(keyPair, publicKey, await toText(publicKey));
    }

    async sign(message) {
      return new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, this.keyPair.privateKey, message));
    }
  }

  K.peerId = { toText, parse, equal, verify, TEXT_LEN };
  K.Identity = Identity;
})((globalThis.Kizuna = globalThis.Kizuna || {}));
