// Smoke test of the wasm runtime built by build.sh, under node with tvmjs
// (@mlc-ai/web-runtime 0.27.0-dev0, installed in web/node_modules by `npm ci` in web/).
//
//   node web/runtime/smoke.cjs MODULE.wasm [cpu|webgpu]
//
// MODULE.wasm comes from smoke_build.py: a Relax VM with `add` (N_ADD,) + (N_ADD,) and
// `matmul` (M,K) @ (K,N), float32; the webgpu module also `matmul_split` (split-K).  Prints one JSON line with the inputs it made and the
// outputs it got; the Python test recomputes them with numpy.
// The webgpu mode needs a WebGPU implementation: the browser's navigator.gpu, or under node
// the npm package `webgpu` (Dawn), which is tried if installed.
"use strict";
const fs = require("fs");
const path = require("path");
const tvmjs = require("@mlc-ai/web-runtime");

const N_ADD = 1000;
const [M, K, N] = [16, 32, 8];

// deterministic float32 inputs (small integers / 8 so sums are exact; matmul inputs vary)
function fill(n, seed) {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; ++i) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = ((s >>> 8) % 2001 - 1000) / 8;
  }
  return a;
}

async function webgpuDevice() {
  if (typeof navigator === "undefined" || !navigator.gpu) {
    let webgpu;
    try {
      webgpu = await import("webgpu"); // an ES module
    } catch (e) {
      throw new Error("no WebGPU: navigator.gpu missing and npm package `webgpu` not installed");
    }
    Object.assign(globalThis, webgpu.globals);
    globalThis.navigator = { gpu: webgpu.create([]) };
  }
  const out = await tvmjs.detectGPUDevice();
  if (!out) throw new Error("no WebGPU adapter");
  return out.device;
}

async function main() {
  const wasmPath = process.argv[2];
  const mode = process.argv[3] || "cpu";
  if (!wasmPath) throw new Error("usage: smoke.cjs MODULE.wasm [cpu|webgpu]");
  const t0 = Date.now();
  const tvm = await tvmjs.instantiate(
    new Uint8Array(fs.readFileSync(path.resolve(wasmPath))),
    tvmjs.createPolyfillWASI(),
    () => {}
  );
  let dev = tvm.cpu();
  if (mode === "webgpu") {
    tvm.initWebGPU(await webgpuDevice()); // before systemLib()/createVirtualMachine
    dev = tvm.webgpu();
  }
  const result = { mode };
  tvm.beginScope();
  const vm = tvm.createVirtualMachine(dev);
  async function run(fname, inputs) {
    const args = inputs.map(([data, shape]) =>
      tvm.empty(shape, "float32", dev).copyFrom(data)
    );
    const out = vm.getFunction(fname)(...args);
    const host = tvm.empty(out.shape, "float32", tvm.cpu()).copyFrom(out);
    if (mode === "webgpu") await tvm.webgpu().sync();
    return { shape: out.shape, out: Array.from(host.toArray()) };
  }
  const x = fill(N_ADD, 1), y = fill(N_ADD, 2);
  result.add = { x: Array.from(x), y: Array.from(y), ...(await run("add", [[x, [N_ADD]], [y, [N_ADD]]])) };
  const a = fill(M * K, 3), b = fill(K * N, 4);
  result.matmul = { a: Array.from(a), b: Array.from(b), M, K, N,
                    ...(await run("matmul", [[a, [M, K]], [b, [K, N]]])) };
  if (mode === "webgpu") {  // split-K: two kernels and a workspace (smoke_build.py)
    result.matmul_split = { a: Array.from(a), b: Array.from(b), M, K, N,
                            ...(await run("matmul_split", [[a, [M, K]], [b, [K, N]]])) };
  }
  tvm.endScope();
  result.ms = Date.now() - t0;
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(String(err && err.stack ? err.stack : err) + "\n");
    process.exit(1);
  }
);
