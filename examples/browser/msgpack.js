// A small, bounded MessagePack encoder/decoder: exactly what Kizuna's relay protocol and
// WebRTC signaling need (docs/protocol.md §3.1 and §10.2), nothing more.
//
// Decoding is total: any input yields a value or throws a MsgpackError, never loops or
// allocates more than the input justifies (every declared length is checked against the
// bytes that remain before anything is allocated). Rules, the same as the Rust side:
// one value and no trailing bytes, nesting at most 16, no 0xc1, map keys are strings and
// unique. Maps decode to null-prototype objects; `bin` to Uint8Array; integers outside
// the safe range to BigInt; ext types are refused (Kizuna never sends them).
//
// Classic script (file:// pages cannot load ES modules): defines `Kizuna.msgpack`.
(function (K) {
  "use strict";

  const MAX_DEPTH = 16;

  class MsgpackError extends Error {
    constructor(message) {
      super(message);
      this.name = "MsgpackError";
    }
  }

  // ---- encoding ----

  class Writer {
    constructor() {
      this.buf = new Uint8Array(256);
      this.len = 0;
    }
    reserve(n) {
      if (this.len + n <= this.buf.length) return;
      let size = this.buf.length * 2;
      while (size < this.len + n) size *= 2;
      const next = new Uint8Array(size);
      next.set(this.buf.subarray(0, this.len));
      this.buf = next;
    }
    byte(b) {
      this.reserve(1);
      this.buf[this.len++] = b;
    }
    bytes(bs) {
      this.reserve(bs.length);
      this.buf.set(bs, this.len);
      this.len += bs.length;
    }
    uint(v, n) {
      // Big-endian, n bytes, from a BigInt.
      this.reserve(n);
      for (let i = n - 1; i >= 0; i--) {
        this.buf[this.len + i] = Number(v & 0xffn);
        v >>= 8n;
      }
      this.len += n;
    }
  }

  function encodeInt(w, v) {
    // v: BigInt. Shortest encoding, as the Rust side writes.
    if (v >= 0n) {
      if (v < 0x80n) w.byte(Number(v));
      else if (v <= 0xffn) { w.byte(0xcc); w.uint(v, 1); }
      else if (v <= 0xffffn) { w.byte(0xcd); w.uint(v, 2); }
      else if (v <= 0xffffffffn) { w.byte(0xce); w.uint(v, 4); }
      else if (v <= 0xffffffffffffffffn) { w.byte(0xcf); w.uint(v, 8); }
      else throw new MsgpackError("integer too large for MessagePack: " + v);
    } else {
      if (v >= -32n) w.byte(Number(v & 0xffn));
      else if (v >= -0x80n) { w.byte(0xd0); w.uint(BigInt.asUintN(8, v), 1); }
      else if (v >= -0x8000n) { w.byte(0xd1); w.uint(BigInt.asUintN(16, v), 2); }
      else if (v >= -0x80000000n) { w.byte(0xd2); w.uint(BigInt.asUintN(32, v), 4); }
      else if (v >= -0x8000000000000000n) { w.byte(0xd3); w.uint(BigInt.asUintN(64, v), 8); }
      else throw new MsgpackError("integer too small for MessagePack: " + v);
    }
  }

  function header(w, len, fix, fixMax, c8, c16, c32) {
    if (len <= fixMax && fix !== null) w.byte(fix | len);
    else if (len <= 0xff && c8 !== null) { w.byte(c8); w.uint(BigInt(len), 1); }
    else if (len <= 0xffff) { w.byte(c16); w.uint(BigInt(len), 2); }
    else if (len <= 0xffffffff) { w.byte(c32); w.uint(BigInt(len), 4); }
    else throw new MsgpackError("length too large: " + len);
  }

  const utf8Encoder = new TextEncoder();

  function encodeValue(w, v, depth) {
    if (depth > MAX_DEPTH) throw new MsgpackError("nesting deeper than " + MAX_DEPTH);
    if (v === null || v === undefined) w.byte(0xc0);
    else if (v === false) w.byte(0xc2);
    else if (v === true) w.byte(0xc3);
    else if (typeof v === "bigint") encodeInt(w, v);
    else if (typeof v === "number") {
      if (Number.isSafeInteger(v)) encodeInt(w, BigInt(v));
      else if (Number.isInteger(v)) throw new MsgpackError("unsafe integer, pass a BigInt: " + v);
      else {
        w.byte(0xcb);
        const b = new Uint8Array(8);
        new DataView(b.buffer).setFloat64(0, v);
        w.bytes(b);
      }
    } else if (typeof v === "string") {
      const b = utf8Encoder.encode(v);
      header(w, b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
      w.bytes(b);
    } else if (v instanceof Uint8Array) {
      header(w, v.length, null, -1, 0xc4, 0xc5, 0xc6);
      w.bytes(v);
    } else if (Array.isArray(v)) {
      header(w, v.length, 0x90, 15, null, 0xdc, 0xdd);
      for (const x of v) encodeValue(w, x, depth + 1);
    } else if (typeof v === "object") {
      const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
      header(w, entries.length, 0x80, 15, null, 0xde, 0xdf);
      for (const [k, x] of entries) {
        if (typeof k !== "string") throw new MsgpackError("map keys must be strings");
        encodeValue(w, k, depth + 1);
        encodeValue(w, x, depth + 1);
      }
    } else {
      throw new MsgpackError("cannot encode a " + typeof v);
    }
  }

  /** Encodes `value` (object = map in insertion order) as one MessagePack value. */
  function encode(value) {
    const w = new Writer();
    encodeValue(w, value, 1);
    return w.buf.slice(0, w.len);
  }

  // ---- decoding ----

  const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

  class Reader {
    constructor(bytes) {
      this.b = bytes;
      this.pos = 0;
      this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    remaining() {
      return this.b.length - this.pos;
    }
    need(n, what) {
      if (n > this.remaining()) {
        throw new MsgpackError(what + " declares " + n + " bytes, only " + this.remaining() + " remain");
      }
    }
    u8() {
      this.need(1, "value");
      return this.b[this.pos++];
    }
    uint(n) {
      this.need(n, "integer");
      let v = 0n;
      for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(this.b[this.pos + i]);
      this.pos += n;
      return v;
    }
    take(n, what) {
      this.need(n, what);
      const out = this.b.slice(this.pos, this.pos + n);
      this.pos += n;
      return out;
    }
  }

  function intValue(v) {
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }

  function signed(v, bits) {
    return BigInt.asIntN(bits, v);
  }

  function decodeValue(r, depth) {
    if (depth > MAX_DEPTH) throw new MsgpackError("nesting deeper than " + MAX_DEPTH);
    const t = r.u8();
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 0x100;
    if (t >= 0x80 && t <= 0x8f) return decodeMap(r, t & 0x0f, depth);
    if (t >= 0x90 && t <= 0x9f) return decodeArray(r, t & 0x0f, depth);
    if (t >= 0xa0 && t <= 0xbf) return decodeStr(r, t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return r.take(Number(r.uint(1)), "bin");
      case 0xc5: return r.take(Number(r.uint(2)), "bin");
      case 0xc6: return r.take(Number(r.uint(4)), "bin");
      case 0xca: { r.need(4, "float"); const f = r.view.getFloat32(r.pos); r.pos += 4; return f; }
      case 0xcb: { r.need(8, "float"); const f = r.view.getFloat64(r.pos); r.pos += 8; return f; }
      case 0xcc: return intValue(r.uint(1));
      case 0xcd: return intValue(r.uint(2));
      case 0xce: return intValue(r.uint(4));
      case 0xcf: return intValue(r.uint(8));
      case 0xd0: return intValue(signed(r.uint(1), 8));
      case 0xd1: return intValue(signed(r.uint(2), 16));
      case 0xd2: return intValue(signed(r.uint(4), 32));
      case 0xd3: return intValue(signed(r.uint(8), 64));
      case 0xd9: return decodeStr(r, Number(r.uint(1)));
      case 0xda: return decodeStr(r, Number(r.uint(2)));
      case 0xdb: return decodeStr(r, Number(r.uint(4)));
      case 0xdc: return decodeArray(r, Number(r.uint(2)), depth);
      case 0xdd: return decodeArray(r, Number(r.uint(4)), depth);
      case 0xde: return decodeMap(r, Number(r.uint(2)), depth);
      case 0xdf: return decodeMap(r, Number(r.uint(4)), depth);
      case 0xc1: throw new MsgpackError("byte 0xc1 is never used");
      default: throw new MsgpackError("unsupported type byte 0x" + t.toString(16));
    }
  }

  function decodeStr(r, n) {
    const bytes = r.take(n, "str");
    try {
      return utf8Decoder.decode(bytes);
    } catch (_) {
      throw new MsgpackError("str is not valid UTF-8");
    }
  }

  function decodeArray(r, n, depth) {
    // Every element takes at least one byte: a count beyond that is a lie.
    r.need(n, "array");
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = decodeValue(r, depth + 1);
    return out;
  }

  function decodeMap(r, n, depth) {
    r.need(2 * n, "map");
    const out = Object.create(null);
    for (let i = 0; i < n; i++) {
      const k = decodeValue(r, depth + 1);
      if (typeof k !== "string") throw new MsgpackError("map key is not a string");
      if (Object.prototype.hasOwnProperty.call(out, k)) throw new MsgpackError("duplicate map key " + JSON.stringify(k));
      out[k] = decodeValue(r, depth + 1);
    }
    return out;
  }

  /** Decodes exactly one MessagePack value from `bytes` (Uint8Array or ArrayBuffer). */
  function decode(bytes) {
    if (bytes instanceof ArrayBuffer) bytes = new Uint8Array(bytes);
    if (!(bytes instanceof Uint8Array)) throw new MsgpackError("decode needs bytes");
    const r = new Reader(bytes);
    const v = decodeValue(r, 1);
    if (r.remaining() !== 0) throw new MsgpackError(r.remaining() + " trailing bytes");
    return v;
  }

  K.msgpack = { encode, decode, MsgpackError, MAX_DEPTH };
})((globalThis.Kizuna = globalThis.Kizuna || {}));
