// The page's behaviour: picking a model, the controls, streaming the
// worker's bytes into the output, and the self-test (index.html?selftest=1)
// that tests/web/run.sh runs in headless Chromium. All model work happens in
// worker.js; this file only talks to it.

const $ = (id) => document.getElementById(id);
const worker = new Worker("worker.js", { type: "module" });
const pending = new Map(); // request id -> { resolve, reject, onByte }
let nextId = 1;

worker.onmessage = ({ data: msg }) => {
  const p = pending.get(msg.id);
  if (!p) return;
  if (msg.type === "byte") return p.onByte?.(msg);
  pending.delete(msg.id);
  if (msg.type === "error") p.reject(new Error(msg.message));
  else p.resolve(msg);
};

function ask(msg, onByte) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onByte });
    worker.postMessage({ ...msg, id });
  });
}

const utf8 = (s) => Array.from(new TextEncoder().encode(s));
const number = (n) => n.toLocaleString("en");
const status = (text, error = false) => {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
};

let loaded = null;

async function loadModel(name, bytes) {
  const info = await ask({ type: "load", bytes });
  loaded = info;
  $("model-name").textContent = name;
  $("model-family").textContent = info.family === "megabyte" ? "MEGABYTE" : `BiGS (${info.labels.join(", ") || "no labels"})`;
  $("model-bytes").textContent = `${number(info.fileBytes)} bytes`;
  $("arena-bytes").textContent = `${number(info.arenaBytes)} bytes`;
  $("model-maxlen").textContent = `${number(info.maxLen)} bytes`;
  await setSimd($("simd").checked);
  $("generate-panel").classList.toggle("hidden", info.family !== "megabyte");
  $("bigs-panel").classList.toggle("hidden", info.family !== "bigs");
  status(`Loaded ${name}.`);
  return info;
}

async function setSimd(on) {
  const { simd } = await ask({ type: "simd", on });
  $("simd").checked = simd;
  $("kernels").textContent = simd ? "(in use)" : "(scalar kernels)";
  return simd;
}

async function fetchModel(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: ${r.status} ${r.statusText} (web/serve.sh makes the demo models)`);
  return new Uint8Array(await r.arrayBuffer());
}

/** Streams a generation into #output; resolves with the bytes and speed. */
async function generate(prompt, bytes, settings) {
  const out = [];
  const decoder = new TextDecoder();
  $("output").textContent = "";
  $("generate").disabled = true;
  $("stop").disabled = false;
  try {
    const done = await ask({ type: "generate", prompt, bytes, settings }, (msg) => {
      out.push(msg.byte);
      $("output").textContent += decoder.decode(new Uint8Array([msg.byte]), { stream: true });
      $("rate").textContent = msg.rate.toFixed(0);
    });
    const rate = done.produced / done.seconds;
    $("rate").textContent = rate.toFixed(0);
    $("arena-bytes").textContent = `${number(done.arenaBytes)} bytes`;
    return { bytes: out, rate };
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function classify(text) {
  const r = await ask({ type: "classify", text: utf8(text) });
  $("probs").replaceChildren(
    ...r.probs.map(({ label, p }) => {
      const row = document.createElement("div");
      row.className = "bar";
      row.innerHTML = `<span></span><meter min="0" max="1"></meter><span></span>`;
      row.children[0].textContent = label;
      row.children[1].value = p;
      row.children[2].textContent = p.toFixed(4);
      return row;
    }),
  );
  $("arena-bytes").textContent = `${number(r.arenaBytes)} bytes`;
  return r;
}

async function fill(text) {
  const r = await ask({ type: "fill", text: utf8(text) });
  const filled = new TextDecoder().decode(new Uint8Array(r.filled));
  $("filled").textContent = filled;
  return { bytes: Array.from(r.filled), text: filled };
}

const guard = (fn) => async (...args) => {
  try {
    await fn(...args);
  } catch (e) {
    status(e.message, true);
  }
};

function settingsFromControls() {
  return {
    temperature: Number($("temperature").value),
    topK: Number($("top-k").value),
    topP: Number($("top-p").value),
    seed: Number($("seed").value),
  };
}

$("file").onchange = guard(async (e) => {
  const f = e.target.files[0];
  if (f) await loadModel(f.name, new Uint8Array(await f.arrayBuffer()));
});
$("drop").ondragover = (e) => {
  e.preventDefault();
  $("drop").classList.add("over");
};
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = guard(async (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) await loadModel(f.name, new Uint8Array(await f.arrayBuffer()));
});
$("demo-megabyte").onclick = guard(async () => loadModel("models/demo-megabyte.kbm", await fetchModel("models/demo-megabyte.kbm")));
$("demo-bigs").onclick = guard(async () => loadModel("models/demo-bigs.kbm", await fetchModel("models/demo-bigs.kbm")));
$("simd").onchange = guard(() => setSimd($("simd").checked));
$("generate").onclick = guard(async () => {
  const context = Math.min(loaded.maxLen, utf8($("prompt").value).length + Number($("bytes").value));
  await generate(utf8($("prompt").value), Number($("bytes").value), { ...settingsFromControls(), context: Math.max(context, 1) });
});
$("stop").onclick = () => worker.postMessage({ type: "stop" });
$("classify").onclick = guard(() => classify($("classify-text").value));
$("fill").onclick = guard(() => fill($("fill-text").value));

// The self-test: fixed models, seed and prompt with the scalar kernels (the
// bytes `kilobyte generate` prints with KILOBYTE_KERNELS=scalar), then the
// speed with SIMD128. The request travels with the result, so the checker
// runs the CLI with exactly these settings.
const SELFTEST = {
  generate: { prompt: "Once upon a time", bytes: 40, temperature: 0.8, topK: 40, topP: 0.95, seed: 3, context: 64 },
  classify: ["a fine film", "dull and long", "x"],
  fill: "The qu__k brown fox",
  speedBytes: 256,
};

const hex = (bytes) => bytes.map((b) => b.toString(16).padStart(2, "0")).join("");

async function selftest() {
  $("selftest-panel").classList.remove("hidden");
  const result = { request: SELFTEST, userAgent: navigator.userAgent };
  try {
    const g = SELFTEST.generate;
    await loadModel("models/selftest-megabyte.kbm", await fetchModel("models/selftest-megabyte.kbm"));
    $("prompt").value = g.prompt;
    await setSimd(false);
    const { prompt, bytes, ...settings } = g;
    const scalar = await generate(utf8(prompt), bytes, settings);
    result.generateHex = hex(scalar.bytes);
    result.simd = await setSimd(true);
    const ctx = Math.min(loaded.maxLen, 16 + SELFTEST.speedBytes);
    const fast = await generate(utf8(prompt), SELFTEST.speedBytes, { temperature: 0, context: ctx });
    result.bytesPerSecond = fast.rate;
    result.modelBytes = loaded.fileBytes;
    result.arenaBytes = loaded.arenaBytes;

    await loadModel("models/selftest-bigs.kbm", await fetchModel("models/selftest-bigs.kbm"));
    await setSimd(false);
    result.classify = [];
    for (const text of SELFTEST.classify) {
      const c = await classify(text);
      result.classify.push(`${c.label}\t${c.probs[c.index].p.toFixed(4)}`);
    }
    $("fill-text").value = SELFTEST.fill;
    result.fillHex = hex((await fill(SELFTEST.fill)).bytes);
    await setSimd(true);
    $("classify-text").value = SELFTEST.classify[0];
    await classify(SELFTEST.classify[0]);
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = String(e.message || e);
    status(result.error, true);
  }
  $("selftest").textContent = JSON.stringify(result, null, 1);
  await fetch("selftest-result", { method: "POST", body: JSON.stringify(result) }).catch(() => {});
}

const params = new URLSearchParams(location.search);
status("Drop a model or pick a demo.");
if (params.has("selftest")) selftest();
else if (params.has("demo")) {
  // ?demo=megabyte|bigs loads a demo model; &run=1 also generates or classifies.
  const family = params.get("demo");
  guard(async () => {
    await loadModel(`models/demo-${family}.kbm`, await fetchModel(`models/demo-${family}.kbm`));
    if (params.has("run")) await (family === "megabyte" ? $("generate") : $("classify")).onclick();
  })();
}
