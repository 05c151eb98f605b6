// What a WebGPU implementation offers, as one JSON object: navigator.gpu, requestAdapter() with
// several option sets (each retried: Chromium's first requests right after launch fail now and
// then, facts.md), each adapter's info, features and limits, and a tiny compute dispatch on the
// first adapter found (with shader-f16 when offered) read back to prove the device works.
//
// Two users (no build step, no imports, plain ES module):
//   * scripts/browser_probe.py serves it with a page that calls `probe()` and reads the result
//     through the DevTools protocol;
//   * Deno runs it directly and prints the JSON (scripts/gpu_browser.sh deno-probe):
//       deno run --allow-read --allow-env scripts/webgpu_probe.js [TRIES]

const OPTION_SETS = [
  ["default", {}],
  ["high-performance", { powerPreference: "high-performance" }],
  ["low-power", { powerPreference: "low-power" }],
  ["fallback", { forceFallbackAdapter: true }],
  ["compatibility", { featureLevel: "compatibility" }],
];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A promise that rejects after ms: a GPU process in trouble can leave requestAdapter() pending
// for ever, and the probe must still report.
function within(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function describe(adapter) {
  const info = {};
  const src = adapter.info || {};
  for (const k of ["vendor", "architecture", "device", "description", "subgroupMinSize",
    "subgroupMaxSize", "isFallbackAdapter", "subgroupMatrixConfigs"]) {
    if (src[k] !== undefined) info[k] = src[k];
  }
  if (adapter.isFallbackAdapter !== undefined) info.adapterIsFallback = adapter.isFallbackAdapter;
  const limits = {};
  // WebIDL attributes are enumerable getters on the prototype: for..in sees them.
  for (const k in adapter.limits) {
    const v = adapter.limits[k];
    if (typeof v === "number") limits[k] = v;
  }
  return { info, features: [...adapter.features].sort(), limits };
}

// One dispatch: out[i] = in[i] * 2 + 1 (in f16 arithmetic when shader-f16 is on), read back.
async function computeCheck(adapter) {
  const f16 = adapter.features.has("shader-f16");
  const t0 = Date.now();
  const device = await adapter.requestDevice({ requiredFeatures: f16 ? ["shader-f16"] : [] });
  const lost = { value: null };
  device.lost.then((i) => { lost.value = `${i.reason}: ${i.message}`; });
  const n = 1024;
  const code = (f16 ? "enable f16;\n" : "") + `
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x < ${n}u) {
    ${f16 ? "dst[id.x] = f32(f16(src[id.x]) * 2.0h + 1.0h);"
    : "dst[id.x] = src[id.x] * 2.0 + 1.0;"}
  }
}`;
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ code });
  const pipeline = device.createComputePipeline({
    layout: "auto", compute: { module, entryPoint: "main" },
  });
  const input = new Float32Array(n).map((_, i) => i % 100);
  const U = GPUBufferUsage;
  const src = device.createBuffer({ size: n * 4, usage: U.STORAGE | U.COPY_DST });
  const dst = device.createBuffer({ size: n * 4, usage: U.STORAGE | U.COPY_SRC });
  const read = device.createBuffer({ size: n * 4, usage: U.MAP_READ | U.COPY_DST });
  device.queue.writeBuffer(src, 0, input);
  const bind = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: dst } }],
  });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bind);
  pass.dispatchWorkgroups(n / 64);
  pass.end();
  enc.copyBufferToBuffer(dst, 0, read, 0, n * 4);
  device.queue.submit([enc.finish()]);
  const err = await device.popErrorScope();
  await read.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(read.getMappedRange().slice(0));
  read.unmap();
  let bad = 0;
  for (let i = 0; i < n; i++) if (out[i] !== input[i] * 2 + 1) bad++;
  device.destroy();
  return { f16, ok: !err && bad === 0, mismatches: bad, validationError: err ? err.message : null,
    deviceLost: lost.value, ms: Date.now() - t0 };
}

// tries: requestAdapter() attempts per option set (500 ms apart); budgetMs: no new request
// after that long (the remaining option sets are marked skipped).
export async function probe(tries = 4, budgetMs = 45000) {
  const start = Date.now();
  const out = {
    userAgent: globalThis.navigator?.userAgent ?? null,
    isSecureContext: globalThis.isSecureContext ?? null,
    location: globalThis.location?.href ?? null,
    hasNavigatorGpu: !!globalThis.navigator?.gpu,
  };
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) return out;
  try { out.wgslLanguageFeatures = [...gpu.wgslLanguageFeatures].sort(); } catch (e) { /* Deno */ }
  try { out.preferredCanvasFormat = gpu.getPreferredCanvasFormat(); } catch (e) { /* Deno */ }
  out.requests = [];
  let first = null;
  let hung = false;
  for (const [name, options] of OPTION_SETS) {
    const r = { name, options, attempts: 0, adapter: null };
    for (let i = 0; i < tries && !r.adapter; i++) {
      if (Date.now() - start > budgetMs) { r.skipped = "time budget spent"; break; }
      if (hung) { r.skipped = "an earlier requestAdapter() hung"; break; }
      r.attempts++;
      const t0 = Date.now();
      try {
        const a = await within(gpu.requestAdapter(options), 10000, "requestAdapter");
        if (a) {
          r.adapter = describe(a);
          if (!first && !r.adapter.info.isFallbackAdapter) first = a;
        }
      } catch (e) {
        r.error = `${e.name}: ${e.message}`;
        if (Date.now() - t0 >= 10000) { hung = true; break; }  // the others would hang too
      }
      if (!r.adapter && i + 1 < tries) await sleep(500);
    }
    r.ms = Date.now() - start;
    out.requests.push(r);
  }
  if (!first) {  // only a fallback adapter (or none): check that one, if any
    try {
      first = await within(gpu.requestAdapter({ forceFallbackAdapter: true }), 10000, "fallback");
    } catch (e) { /* recorded above */ }
  }
  if (first) {
    try { out.compute = await within(computeCheck(first), 20000, "compute check"); } catch (e) {
      out.compute = { ok: false, error: `${e.name}: ${e.message}` };
    }
  }
  return out;
}

if (globalThis.Deno && import.meta.main) {
  const tries = Number(Deno.args[0] || 2);
  const result = await probe(tries);
  result.deno = Deno.version;
  result.env = {};
  for (const k of ["VK_DRIVER_FILES", "VK_ICD_FILENAMES", "LD_LIBRARY_PATH"]) {
    result.env[k] = Deno.env.get(k) ?? null;
  }
  console.log(JSON.stringify(result));
}
