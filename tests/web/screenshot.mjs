// Takes docs/web-page.png: opens a URL of the page in a running headless
// Chromium (--remote-debugging-port=PORT) over the DevTools protocol, waits
// until the page says its work is done (#stop disabled again after a
// generation, or probabilities shown), and saves a PNG. Needs Node's
// WebSocket (node --experimental-websocket on Node 20).
// Usage: node --experimental-websocket screenshot.mjs PORT URL OUT.png
import { writeFile } from "node:fs/promises";
import { argv } from "node:process";

const [port, url, out] = argv.slice(2);
const target = await (await fetch(`http://127.0.0.1:${port}/json/new?about:blank`, { method: "PUT" })).json();
const ws = new WebSocket(target.webSocketDebuggerUrl);
await new Promise((resolve) => ws.addEventListener("open", resolve));
let nextId = 1;
const waiting = new Map();
ws.addEventListener("message", ({ data }) => {
  const msg = JSON.parse(data);
  waiting.get(msg.id)?.(msg.result);
});
const send = (method, params = {}) =>
  new Promise((resolve) => {
    const id = nextId++;
    waiting.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });
const evaluate = async (expression) => (await send("Runtime.evaluate", { expression, returnByValue: true })).result.value;

await send("Emulation.setDeviceMetricsOverride", { width: 1000, height: 900, deviceScaleFactor: 1, mobile: false });
await send("Page.navigate", { url });
const done = `(document.getElementById("output")?.textContent.length > 0 && document.getElementById("stop").disabled)
  || document.getElementById("probs")?.children.length > 0`;
for (let i = 0; i < 600 && !(await evaluate(done)); i++) await new Promise((r) => setTimeout(r, 100));
const { data } = await send("Page.captureScreenshot", { format: "png" });
await writeFile(out, Buffer.from(data, "base64"));
ws.close();
