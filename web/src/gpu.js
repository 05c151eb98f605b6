// WebGPU: find an adapter that offers what the bundle needs (wsd-config.json
// `requirements`, written by wsd build) and open a device that asks for exactly that.
// Every way this can fail has its own message, naming what is missing and what to do.

const MIB = 1 << 20;

export class WebGPUError extends Error {
  constructor(message, problems = []) {
    super(message);
    this.name = "WebGPUError";
    this.problems = problems;
  }
}

const fmtMiB = (bytes) => `${(bytes / MIB).toFixed(bytes % MIB ? 1 : 0)} MiB`;

// requirement key -> [adapter limit, how to print]
const LIMITS = [
  ["max_buffer_bytes", "maxBufferSize", fmtMiB],
  ["max_storage_binding_bytes", "maxStorageBufferBindingSize", fmtMiB],
  ["max_workgroup_storage_bytes", "maxComputeWorkgroupStorageSize", (n) => `${n} bytes`],
  ["max_invocations_per_workgroup", "maxComputeInvocationsPerWorkgroup", String],
  ["max_storage_buffers_per_shader_stage", "maxStorageBuffersPerShaderStage", String],
];

/**
 * What the adapter lacks for these requirements: a list of sentences (empty when it has
 * everything). Pure: `adapter` only needs `features` (a Set-like) and `limits`.
 */
export function adapterProblems(adapter, requirements) {
  const problems = [];
  if (requirements.shader_f16 && !adapter.features.has("shader-f16")) {
    problems.push("this model is float16 and needs the WebGPU feature 'shader-f16', which this " +
                  "GPU/browser does not offer (build the model with --dtype float32, or use a " +
                  "browser that exposes shader-f16)");
  }
  for (const [key, limit, fmt] of LIMITS) {
    const need = requirements[key];
    if (need && adapter.limits[limit] < need) {
      problems.push(`needs ${limit} >= ${fmt(need)}, the adapter offers ${fmt(adapter.limits[limit])}`);
    }
  }
  return problems;
}

/** The features and limits to request: the bundle's feature, and the adapter's full limits
 * for buffers and workgroups (its needs were checked above; asking for all the adapter has
 * keeps kernels whose sizes the build could not see, e.g. symbolic ones, within limits). */
export function deviceDescriptor(adapter, requirements) {
  const requiredFeatures = requirements.shader_f16 ? ["shader-f16"] : [];
  const requiredLimits = {};
  for (const [, limit] of LIMITS) requiredLimits[limit] = adapter.limits[limit];
  return { requiredFeatures, requiredLimits };
}

/** An adapter, retried: right after start some browsers fail the first request. */
async function requestAdapter(gpu, attempts = 5) {
  for (let i = 0; i < attempts; i++) {
    let adapter;
    try {
      adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    } catch (err) { // e.g. Firefox release builds: WebGPU present but switched off
      throw new WebGPUError(`this browser refuses to give a WebGPU adapter: ${err.message} ` +
                            "(see the README's browser section)");
    }
    if (adapter) return adapter;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  return null;
}

/** What the adapter is and offers, as plain data (for window.wsd.ready and run records). */
export function describeAdapter(adapter) {
  const info = adapter.info || {};
  const limits = {};
  for (const name in adapter.limits) limits[name] = adapter.limits[name];
  return { vendor: info.vendor || "", architecture: info.architecture || "",
           device: info.device || "", description: info.description || "",
           features: Array.from(adapter.features).sort(), limits };
}

/** A shader the browser's WGSL compiler rejected: names the kernel and the compiler's words. */
export class ShaderError extends Error {
  constructor(kernel, details) {
    super(`the browser cannot compile the GPU shader of kernel '${kernel}': ${details} ` +
          "(please report it with your browser's version and GPU)");
    this.name = "ShaderError";
    this.kernel = kernel;
  }
}

/**
 * Make pipeline creation on `device` fail with a ShaderError naming the kernel (tvmjs
 * compiles every kernel through createComputePipelineAsync, with the kernel's name as the
 * entry point, and would pass on an anonymous GPUPipelineError).
 */
export function nameShaderErrors(device) {
  const create = device.createComputePipelineAsync.bind(device);
  device.createComputePipelineAsync = async (descriptor) => {
    try {
      return await create(descriptor);
    } catch (err) {
      const kernel = descriptor?.compute?.entryPoint || "(unnamed)";
      let details = err && err.message ? err.message : String(err);
      try {
        const info = await descriptor.compute.module.getCompilationInfo();
        const errors = info.messages.filter((m) => m.type === "error")
          .map((m) => `line ${m.lineNum}:${m.linePos}: ${m.message}`);
        if (errors.length) details = errors.join("; ");
      } catch { /* no compilation info: keep the pipeline error's message */ }
      throw new ShaderError(kernel, details);
    }
  };
  return device;
}

/** Open a GPUDevice for the bundle, or throw WebGPUError with the reason. */
export async function openDevice(requirements, nav = globalThis.navigator) {
  if (!nav || !nav.gpu) {
    const secure = globalThis.isSecureContext === false
      ? " This page is not a secure context: open it as http://127.0.0.1 or http://localhost " +
        "(or over https); WebGPU is only offered there."
      : "";
    throw new WebGPUError("WebGPU is not available in this browser (navigator.gpu is missing). " +
                          "Use a recent Chrome/Edge, or Firefox with dom.webgpu.enabled; see the " +
                          "README's browser section." + secure);
  }
  const adapter = await requestAdapter(nav.gpu);
  if (!adapter) {
    throw new WebGPUError("WebGPU is present but no GPU adapter was found (the GPU may be " +
                          "blocklisted or disabled; see the README's troubleshooting).");
  }
  const problems = adapterProblems(adapter, requirements);
  if (problems.length) {
    throw new WebGPUError(`this GPU adapter cannot run the model: ${problems.join("; ")}.`,
                          problems);
  }
  const device = await adapter.requestDevice(deviceDescriptor(adapter, requirements));
  const info = describeAdapter(adapter);
  return { adapter, device: nameShaderErrors(device), info,
           description: [info.vendor, info.architecture, info.description]
             .filter(Boolean).join(" ") || "WebGPU adapter" };
}
