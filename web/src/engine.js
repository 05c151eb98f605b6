// The text-to-image pipeline in the browser: the loop of wsd/runtime/pipeline.py (and diffusers'
// StableDiffusionPipeline), driving the bundle's compiled functions through tvmjs' Relax VM
// on WebGPU. Same weights, settings and seed give the same image as `wsd generate`:
//
//   tokens -> encode_text (prompt, and negative prompt when guidance > 1)
//   latents = randn(seed) * initNoiseSigma        (rng.js: torch.randn, bit for bit)
//   for each timestep: scaleModelInput -> unet_guided / unet -> scheduler step
//   decode -> RGB in [0, 1] -> RGBA with numpy's rounding -> PNG
//
// Loading (Engine.load) reports progress per stage: "config", "device", "runtime" (the wasm),
// "weights" (bytes, from the network or the cache), "shaders" (pipeline compilation),
// "tokenizer"; generation reports "encode", "denoise" (step i of n, time left), "preview"
// (optional intermediate images) and "decode".

import * as tvmjs from "@mlc-ai/web-runtime";
import { Tokenizer, clipIds } from "./tokenizers.js";

import { openDevice } from "./gpu.js";
import { pngDataURL, toRGBA } from "./image.js";
import { TorchGenerator } from "./rng.js";
import { SCHEDULERS, makeScheduler } from "./schedulers/index.js";
import { fetchOk, loadWeights } from "./weights.js";

export const CONFIG_NAME = "wsd-config.json";
export const FORMAT_VERSION = 2; // 2: the config carries "settings"

// The settings' defaults and bounds: the bundle's wsd-config.json "settings", written from
// wsd/settings.py (the record `wsd generate` uses too); filled in by Engine.load.
export const DEFAULTS = {};
const BOUNDS = {};

function useSettings({ defaults, bounds }) {
  Object.assign(DEFAULTS, {
    prompt: defaults.prompt, negativePrompt: defaults.negative_prompt, steps: defaults.steps,
    guidanceScale: defaults.guidance_scale, scheduler: defaults.scheduler, seed: defaults.seed,
  });
  Object.assign(BOUNDS, { steps: bounds.steps, guidanceScale: bounds.guidance_scale });
}

/** Settings checked as wsd/settings.py's check does; returns them normalized. */
export function checkSettings(options) {
  const known = new Set([...Object.keys(DEFAULTS), "onProgress", "preview", "previewEvery"]);
  for (const key of Object.keys(options || {})) {
    if (!known.has(key)) {
      throw new Error(`unknown option '${key}'; known: ${[...known].join(", ")}`);
    }
  }
  const s = { ...DEFAULTS, ...options };
  if (typeof s.prompt !== "string" || typeof s.negativePrompt !== "string") {
    throw new Error("prompt and negativePrompt must be strings");
  }
  const [minSteps, maxSteps] = BOUNDS.steps;
  if (!Number.isInteger(s.steps) || s.steps < minSteps || s.steps > maxSteps) {
    throw new Error(`steps must be an integer from ${minSteps} to ${maxSteps}, got ${s.steps}`);
  }
  const [minGuidance, maxGuidance] = BOUNDS.guidanceScale;
  if (typeof s.guidanceScale !== "number" || !Number.isFinite(s.guidanceScale) ||
      s.guidanceScale < minGuidance || s.guidanceScale > maxGuidance) {
    throw new Error(`guidance scale must be between ${minGuidance} and ${maxGuidance}, ` +
                    `got ${s.guidanceScale}`);
  }
  if (!Object.prototype.hasOwnProperty.call(SCHEDULERS, s.scheduler)) {
    throw new Error(`unknown scheduler '${s.scheduler}'; choose one of: ` +
                    Object.keys(SCHEDULERS).join(", "));
  }
  s.seed = parseSeed(s.seed);
  return s;
}

/** A seed as BigInt in [0, 2**64): from an integer Number, a BigInt or a decimal string. */
export function parseSeed(seed) {
  let value;
  if (typeof seed === "bigint") value = seed;
  else if (typeof seed === "number" && Number.isSafeInteger(seed)) value = BigInt(seed);
  else if (typeof seed === "string" && /^\s*\d+\s*$/.test(seed)) value = BigInt(seed.trim());
  if (value === undefined || value < 0n || value >= (1n << 64n)) {
    throw new Error(`seed must be an integer from 0 to 2**64-1, got ${String(seed)}`);
  }
  return value;
}

async function fetchBytes(url, what) {
  return (await fetchOk(url, what)).arrayBuffer();
}

export class Engine {
  /** Load the bundle at `baseUrl` (the folder holding wsd-config.json). */
  static async load(baseUrl, onProgress = () => {}) {
    const engine = new Engine();
    await engine._load(new URL(baseUrl, globalThis.location?.href).href, onProgress);
    return engine;
  }

  async _load(baseUrl, onProgress) {
    const t0 = performance.now();
    onProgress({ stage: "config" });
    const config = JSON.parse(new TextDecoder().decode(
      await fetchBytes(new URL(CONFIG_NAME, baseUrl).href, "the bundle config")));
    if (config.format !== "wsd-web-bundle" || config.format_version !== FORMAT_VERSION) {
      throw new Error(`${CONFIG_NAME} is not a wsd web bundle of format version ` +
                      `${FORMAT_VERSION} (rebuild it with this version of wsd)`);
    }
    this.config = config;
    useSettings(config.settings);

    onProgress({ stage: "device" });
    const { device, description } = await openDevice(config.requirements);
    this.adapterDescription = description;

    onProgress({ stage: "runtime" });
    const wasm = await fetchBytes(new URL(config.files.wasm, baseUrl).href, "the model library");
    const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(),
                                        (msg) => console.log(`tvmjs: ${msg}`));
    tvm.initWebGPU(device);
    this.tvm = tvm;
    this.dev = tvm.webgpu();
    this.device = device;
    device.lost.then((info) => {
      this.lost = `the GPU device was lost (${info.reason}): ${info.message}`;
    });

    const weights = await loadWeights(tvm, this.dev, baseUrl,
                                      (p) => onProgress({ stage: "weights", ...p }));
    this.weightStats = { fetchedBytes: weights.fetchedBytes, cachedBytes: weights.cachedBytes,
                         cacheStorage: weights.cached };

    tvm.beginScope();
    this.vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(this.dev));
    this.functions = {};
    this.weights = {};
    for (const [name, info] of Object.entries(config.functions)) {
      this.functions[name] = tvm.detachFromCurrentScope(this.vm.getFunction(name));
      this.weights[name] = (info.weights || []).map((w) => {
        const tensor = weights.tensors.get(w);
        if (!tensor) throw new Error(`weight ${w} of ${name} is not in params/`);
        return tensor;
      });
    }
    tvm.endScope();

    tvm.registerInitProgressCallback((report) =>
      onProgress({ stage: "shaders", progress: report.progress, text: report.text }));
    onProgress({ stage: "shaders", progress: 0 });
    await tvm.asyncLoadWebGPUPipelines(this.vm.getInternalModule());

    onProgress({ stage: "tokenizer" });
    this.tokenizer = await Tokenizer.fromJSON(
      await fetchBytes(new URL(config.files.tokenizer, baseUrl).href, "the tokenizer"));
    this.loadMs = performance.now() - t0;
    this._queue = Promise.resolve();
  }

  /** One generation at a time: calls queue up behind each other. */
  generate(options) {
    const run = this._queue.then(() => this._generate(options));
    this._queue = run.catch(() => {});
    return run;
  }

  /** CLIP's fixed-length ids of `text` (see clipIds); {ids, dropped}. */
  tokenize(text) {
    return clipIds(Array.from(this.tokenizer.encode(text)), this.config.max_tokens,
                   this.config.tokens);
  }

  _upload(array, shape, dtype = "float32") {
    return this.tvm.empty(shape, dtype, this.dev).copyFrom(array);
  }

  _call(name, ...inputs) {
    const fn = this.functions[name];
    if (!fn) throw new Error(`the bundle has no function ${name}`);
    return fn(...inputs, ...this.weights[name]);
  }

  /** `run(kernel, ...args)` for the samplers: Float32Array args (coefficients, noise) are
   * uploaded with the shape the function declares (symbolic: latent-shaped). */
  _runner() {
    const latentShape = this.config.latent_shape;
    return (name, ...args) => {
      const inputs = this.config.functions[name]?.inputs || [];
      const tensors = args.map((a, i) => {
        if (!(a instanceof Float32Array)) return a;
        const declared = inputs[i]?.shape || [a.length];
        const shape = declared.every(Number.isInteger) ? declared
          : (a.length === latentShape.reduce((x, y) => x * y, 1) ? latentShape : [a.length]);
        return this._upload(a, shape);
      });
      return this._call(name, ...tensors);
    };
  }

  async _toPixels(latents) {
    const image = this._call("decode", latents);
    const host = this.tvm.empty(image.shape, "float32", this.tvm.cpu()).copyFrom(image);
    await this.dev.sync();
    const [, h, w] = image.shape;
    return { rgba: toRGBA(host.toArray(), h, w), height: h, width: w };
  }

  async _generate(options) {
    if (this.lost) throw new Error(this.lost);
    const s = checkSettings(options);
    const onProgress = typeof s.onProgress === "function" ? s.onProgress : () => {};
    const tvm = this.tvm;
    const t0 = performance.now();
    const sampler = makeScheduler(s.scheduler, this.config.scheduler_config);
    sampler.setTimesteps(s.steps);
    const timesteps = sampler.timesteps;
    const guided = s.guidanceScale > 1.0; // as diffusers: no guidance at or below 1
    const warnings = [];

    tvm.beginScope();
    try {
      onProgress({ stage: "encode" });
      const n = this.config.max_tokens;
      const encode = (text) => {
        const { ids, dropped } = this.tokenize(text);
        if (dropped) {
          warnings.push(`prompt truncated: its last ${dropped} tokens are beyond CLIP's ` +
                        `${n}-token window`);
        }
        return this._call("encode_text", this._upload(ids, [1, n], "int32"));
      };
      const cond = encode(s.prompt);
      const uncond = guided ? encode(s.negativePrompt) : null;
      const scale = this._upload(Float32Array.of(s.guidanceScale), [1]);

      const rng = new TorchGenerator(s.seed);
      const shape = this.config.latent_shape;
      const sigma = Math.fround(sampler.initNoiseSigma);
      const noise = rng.randn(shape);
      for (let i = 0; i < noise.length; i++) noise[i] = Math.fround(noise[i] * sigma);
      let latents = this._upload(noise, shape);

      const run = this._runner();
      const tLoop = performance.now();
      for (let i = 0; i < timesteps.length; i++) {
        const sample = sampler.scaleModelInput(run, latents, i);
        const t = this._upload(Float32Array.of(timesteps[i]), [1]);
        const eps = guided ? this._call("unet_guided", sample, t, cond, uncond, scale)
          : this._call("unet", sample, t, cond);
        latents = sampler.step(run, eps, i, latents, rng);
        await this.dev.sync();
        if (this.lost) throw new Error(this.lost);
        const elapsedMs = performance.now() - tLoop;
        const done = i + 1;
        onProgress({ stage: "denoise", step: done, steps: timesteps.length, elapsedMs,
                     remainingMs: elapsedMs / done * (timesteps.length - done) });
        const every = s.previewEvery || 5;
        if (s.preview && done < timesteps.length && done % every === 0) {
          const p = await this._toPixels(latents);
          onProgress({ stage: "preview", step: done, steps: timesteps.length,
                       image: await pngDataURL(p.rgba, p.height, p.width) });
        }
      }
      onProgress({ stage: "decode" });
      const { rgba, height, width } = await this._toPixels(latents);
      const dataURL = await pngDataURL(rgba, height, width);
      this.last = { ms: performance.now() - t0, warnings, settings: { ...s, seed: String(s.seed),
                    onProgress: undefined }, height, width };
      onProgress({ stage: "done", ms: this.last.ms });
      return dataURL;
    } finally {
      tvm.endScope();
    }
  }
}
