// The WebAssembly module under Node, driven through web/kilobyte.js (the
// page's own wrapper), printing what the `kilobyte` CLI prints for the same
// request so tests/wasm/run.sh can compare the two byte for byte:
//   node parity.mjs WASM generate M.kbm PROMPT N TEMPERATURE TOP_K TOP_P SEED CONTEXT
//   node parity.mjs WASM classify B.kbm TEXT...   (label<TAB>probability lines)
//   node parity.mjs WASM fill B.kbm TEXT          (gaps are '_')
//   node parity.mjs WASM bench M.kbm|B.kbm N      (bytes/s after a 16-byte prompt, or
//                                                  sentences/s of 256 bytes; SIMD and scalar)
// KILOBYTE_KERNELS=scalar selects the scalar kernels, as for the CLI.
import { readFile } from "node:fs/promises";
import { env, argv, stdout } from "node:process";
import { Kilobyte } from "../../web/kilobyte.js";

const [wasmPath, command, modelPath, ...rest] = argv.slice(2);
const kb = await Kilobyte.instantiate(await readFile(wasmPath));
kb.setSimd(env.KILOBYTE_KERNELS !== "scalar");
const model = kb.loadModel(new Uint8Array(await readFile(modelPath)));
const utf8 = (s) => new TextEncoder().encode(s);

if (command === "generate") {
  const [prompt, n, temperature, topK, topP, seed, context] = rest;
  const g = model.generator({
    context: Number(context),
    temperature: Number(temperature),
    topK: Number(topK),
    topP: Number(topP),
    seed: BigInt(seed),
  });
  g.prompt(utf8(prompt));
  const out = new Uint8Array(Number(n));
  for (let i = 0; i < out.length; i++) out[i] = g.next();
  stdout.write(out);
} else if (command === "classify") {
  const enc = model.encoder();
  for (const text of rest) {
    const c = enc.classify(utf8(text));
    stdout.write(`${c.label}\t${c.probs[c.index].p.toFixed(4)}\n`);
  }
} else if (command === "fill") {
  stdout.write(model.encoder().fill(utf8(rest[0])));
  stdout.write("\n");
} else if (command === "bench") {
  // The same work as `kilobyte bench runtime`: generation after a short
  // prompt for MEGABYTE, whole sentences for BiGS; best of three runs.
  const n = Number(rest[0]);
  for (const simd of [true, false]) {
    if (kb.setSimd(simd) !== simd) continue;
    let best = 0;
    for (let run = 0; run < 3; run++) {
      const mark = kb.top;
      let rate;
      if (model.family === "megabyte") {
        const g = model.generator({ context: Math.min(model.maxLen, n + 16), temperature: 0 });
        g.prompt(utf8("The quick brown "));
        const t0 = performance.now();
        for (let i = 0; i < n; i++) g.next();
        rate = n / ((performance.now() - t0) / 1e3);
      } else {
        // 256 bytes, as `kilobyte bench runtime --model bigs` scores.
        const enc = model.encoder(256);
        const sentence = utf8("a gripping, funny and quietly moving film about two brothers. ".repeat(5)).slice(0, 256);
        const t0 = performance.now();
        for (let i = 0; i < n; i++) enc.classify(sentence);
        rate = n / ((performance.now() - t0) / 1e3);
      }
      kb.release(mark);
      best = Math.max(best, rate);
    }
    const unit = model.family === "megabyte" ? "bytes/s" : "sentences/s";
    stdout.write(`${simd ? "simd128" : "scalar"}\t${best.toFixed(1)} ${unit}\n`);
  }
} else {
  throw new Error(`unknown command ${command}`);
}
