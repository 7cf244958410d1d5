// kilobyte.js: the JavaScript side of the runtime's WebAssembly module
// (kilobyte_runtime.wasm, built with the C API's exports; see
// runtime/src/capi.rs). It owns the module's memory above what Rust uses:
// the runtime never allocates, so every object, model and arena lives in
// pages this file adds with memory.grow and hands out from a bump pointer.
// Used by the page's worker (web/worker.js) and the Node parity test
// (tests/wasm/parity.mjs); no browser or Node API is needed here.

const PAGE = 65536;
const MODEL_ALIGN = 64; // tensors are 64-byte aligned inside a .kbm

export const FAMILY = { 1: "megabyte", 2: "bigs" };

export class Kilobyte {
  /** Instantiates the module from its bytes (or a compiled module). */
  static async instantiate(source) {
    const module = source instanceof WebAssembly.Module ? source : await WebAssembly.compile(source);
    return new Kilobyte(await WebAssembly.instantiate(module, {}));
  }

  constructor(instance) {
    this.x = instance.exports;
    this.memory = this.x.memory;
    this.base = this.memory.buffer.byteLength;
    this.top = this.base;
    // Out-parameters (pointers, sizes, labels) are written here.
    this.out = this.alloc(64, 16);
    this.floor = this.top;
  }

  /** `bytes` of zeroed wasm memory aligned to `align`; returns its address. */
  alloc(bytes, align = 16) {
    const start = Math.ceil(this.top / align) * align;
    const end = start + bytes;
    const have = this.memory.buffer.byteLength;
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE));
    this.top = end;
    this.u8().fill(0, start, end);
    return start;
  }

  /** Frees everything allocated since `mark` (a previous `this.top`). */
  release(mark) {
    this.top = mark;
  }

  /** Frees every model and object: the memory is reused by the next ones. */
  reset() {
    this.top = this.floor;
  }

  // Views are made per use: growing the memory detaches the old buffer.
  u8() {
    return new Uint8Array(this.memory.buffer);
  }
  u32(ptr) {
    return new DataView(this.memory.buffer).getUint32(ptr, true);
  }
  f32(ptr) {
    return new DataView(this.memory.buffer).getFloat32(ptr, true);
  }

  check(status, what) {
    if (status !== 0) {
      const msg = this.x.kb_status_message(status);
      const bytes = this.u8();
      let end = msg;
      while (bytes[end] !== 0) end++;
      throw new Error(`${what}: ${new TextDecoder().decode(bytes.subarray(msg, end))}`);
    }
  }

  /** SIMD128 kernels on (true) or the scalar reference; returns what is in use. */
  setSimd(on) {
    return this.x.kb_set_simd(on ? 1 : 0) === 1;
  }

  /** Copies a .kbm into wasm memory and loads it; see `Model`. */
  loadModel(bytes) {
    const data = this.alloc(bytes.length, MODEL_ALIGN);
    this.u8().set(bytes, data);
    const storage = this.alloc(this.x.kb_model_size());
    this.check(this.x.kb_model_load(storage, this.x.kb_model_size(), data, bytes.length, this.out), "load");
    return new Model(this, this.u32(this.out), bytes.length);
  }

  bytesIn(bytes) {
    const p = this.alloc(Math.max(bytes.length, 1), 1);
    this.u8().set(bytes, p);
    return p;
  }
}

export class Model {
  constructor(kb, ptr, fileBytes) {
    this.kb = kb;
    this.ptr = ptr;
    this.fileBytes = fileBytes;
    this.family = FAMILY[kb.x.kb_model_family(ptr)];
    this.maxLen = kb.x.kb_model_max_len(ptr);
    this.labels = [];
    if (this.family === "bigs") {
      for (let i = 0; ; i++) {
        if (kb.x.kb_label_name(ptr, i, kb.out, kb.out + 4) !== 0) break;
        const [p, n] = [kb.u32(kb.out), kb.u32(kb.out + 4)];
        this.labels.push(new TextDecoder().decode(kb.u8().slice(p, p + n)));
      }
    }
  }

  /** Arena bytes for a session of `maxLen` bytes of context, or an encoder. */
  arenaBytes(maxLen = this.maxLen) {
    this.kb.check(this.kb.x.kb_arena_bytes(this.ptr, maxLen, this.kb.out), "arena size");
    return this.kb.u32(this.kb.out);
  }

  /** A MEGABYTE session with a seeded sampler (the CLI's defaults). */
  generator({ context = this.maxLen, temperature = 0.8, topK = 0, topP = 0.95, seed = 0 } = {}) {
    const { kb } = this;
    const arenaBytes = this.arenaBytes(context);
    const arena = kb.alloc(arenaBytes);
    const storage = kb.alloc(kb.x.kb_session_size());
    kb.check(kb.x.kb_session_new(storage, kb.x.kb_session_size(), this.ptr, arena, arenaBytes, context, kb.out), "session");
    const session = kb.u32(kb.out);
    const sstore = kb.alloc(kb.x.kb_sampler_size());
    kb.check(
      kb.x.kb_sampler_new(sstore, kb.x.kb_sampler_size(), temperature, topK, topP, BigInt(seed), kb.out),
      "sampler settings",
    );
    const sampler = kb.u32(kb.out);
    return {
      arenaBytes,
      prompt(bytes) {
        const mark = kb.top;
        kb.check(kb.x.kb_session_prompt(session, kb.bytesIn(bytes), bytes.length), "prompt");
        kb.release(mark);
      },
      /** The next byte, already appended to the context. */
      next() {
        kb.check(kb.x.kb_session_sample(session, sampler, kb.out), "generate");
        return kb.u8()[kb.out];
      },
    };
  }

  /** A BiGS encoder for inputs of up to `maxLen` bytes. */
  encoder(maxLen = this.maxLen) {
    const { kb, labels } = this;
    const arenaBytes = this.arenaBytes(maxLen);
    const arena = kb.alloc(arenaBytes);
    const storage = kb.alloc(kb.x.kb_encoder_size());
    kb.check(kb.x.kb_encoder_new(storage, kb.x.kb_encoder_size(), this.ptr, arena, arenaBytes, maxLen, kb.out), "encoder");
    const enc = kb.u32(kb.out);
    return {
      arenaBytes,
      /** { label, index, probs: [{ label, p }] } */
      classify(bytes) {
        const mark = kb.top;
        const probs = kb.alloc(4 * labels.length, 4);
        const text = kb.bytesIn(bytes);
        kb.check(kb.x.kb_classify(enc, text, bytes.length, kb.out, probs, labels.length), "classify");
        const index = kb.u32(kb.out);
        const result = {
          index,
          label: labels[index],
          probs: labels.map((label, i) => ({ label, p: kb.f32(probs + 4 * i) })),
        };
        kb.release(mark);
        return result;
      },
      /** `bytes` with each byte equal to `gap` replaced by the model's guess. */
      fill(bytes, gap = 0x5f) {
        const mark = kb.top;
        const text = kb.bytesIn(bytes);
        const gaps = kb.bytesIn(bytes.map((b) => (b === gap ? 1 : 0)));
        const out = kb.alloc(Math.max(bytes.length, 1), 1);
        kb.check(kb.x.kb_fill(enc, text, gaps, bytes.length, out), "fill");
        const result = kb.u8().slice(out, out + bytes.length);
        kb.release(mark);
        return result;
      },
    };
  }
}
