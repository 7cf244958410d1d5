// Runs a wasm32-wasip1 program (a `cargo test` binary) under Node's WASI:
// cargo's runner for that target (CARGO_TARGET_WASM32_WASIP1_RUNNER), so
// the runtime's own tests run as WebAssembly. The program sees its
// arguments and the environment but no files; the exit code is passed on.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [program, ...args] = argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [program, ...args], env, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(program));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
