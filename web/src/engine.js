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
// "tokenizer", and "warning" (e.g. the weights could not be cached); each stage's time is in
// `engine.loadStats`. Generation reports "encode", "denoise" (step i of n, time left),
// "preview" (optional intermediate images: through the bundle's `decode_preview`, a tiny
// autoencoder, where it has one) and "decode"; its times are in `engine.last`.
// A generation given an AbortSignal (`signal`) stops at the next step boundary (or before
// decoding) once it is aborted: the call rejects with an "AbortError" (cancelledError), after
// the GPU has finished the steps already submitted, and the engine stays ready.
//
// The denoising loop does not wait for the GPU after each step: it encodes step i+1 while
// the GPU computes step i (at most STEPS_IN_FLIGHT steps queued), and reports a step when
// the GPU has finished it (queue.onSubmittedWorkDone).
//
// A lost GPU device (driver reset, out of memory, another tab) makes every later call fail
// with a message naming it (`engine.lost`); the page then loads a new Engine, with the
// weights from the browser's cache, without reloading the page.

import * as tvmjs from "@mlc-ai/web-runtime";
import { Tokenizer, clipIds } from "./tokenizers.js";

import { openDevice } from "./gpu.js";
import { pngDataURL, toRGBA } from "./image.js";
import { prepareImage } from "./image_input.js";
import { TorchGenerator } from "./rng.js";
import { SCHEDULERS, checkStrength, latentSample, makeScheduler } from "./schedulers/index.js";
import { fetchOk, loadWeights } from "./weights.js";

export const CONFIG_NAME = "wsd-config.json";
export const FORMAT_VERSION = 2; // 2: the config carries "settings"
// Steps the host may encode ahead of the GPU: 2 lets step i+1's encoding overlap step i's
// GPU time; more would only queue work (and delay noticing a lost device).
const STEPS_IN_FLIGHT = 2;
// Image-to-image: the default strength (wsd/settings.py STRENGTH, diffusers' default) and the
// VAE's scaling factor where a bundle's config does not record it (SD 1.x/2.x's).
export const STRENGTH = 0.8;
const SCALING_FACTOR = 0.18215;

// The settings' defaults and bounds: the bundle's wsd-config.json "settings", written from
// wsd/settings.py (the record `wsd generate` uses too); filled in by Engine.load.
// The model family's defaults and the samplers that apply to it (wsd/models/families.py).
export const DEFAULTS = {};
const BOUNDS = {};
export const SAMPLERS = []; // names, in the order the app offers them

function useSettings({ defaults, bounds, schedulers }) {
  Object.assign(DEFAULTS, {
    prompt: defaults.prompt, negativePrompt: defaults.negative_prompt, steps: defaults.steps,
    guidanceScale: defaults.guidance_scale, scheduler: defaults.scheduler, seed: defaults.seed,
  });
  Object.assign(BOUNDS, { steps: bounds.steps, guidanceScale: bounds.guidance_scale });
  SAMPLERS.splice(0, SAMPLERS.length,
                  ...schedulers.filter((name) => Object.hasOwn(SCHEDULERS, name)));
}

/** Settings checked as wsd/settings.py's check does; returns them normalized. */
export function checkSettings(options) {
  const known = new Set([...Object.keys(DEFAULTS), "onProgress", "preview", "previewEvery",
                         "image", "strength", "signal"]);
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
  if (SAMPLERS.length && !SAMPLERS.includes(s.scheduler)) {
    throw new Error(`scheduler '${s.scheduler}' does not apply to this model; choose one ` +
                    `of: ${SAMPLERS.join(", ")}`);
  }
  if (s.signal !== undefined && !(typeof s.signal === "object" && s.signal !== null &&
                                   typeof s.signal.aborted === "boolean")) {
    throw new Error("signal must be an AbortSignal");
  }
  s.seed = parseSeed(s.seed);
  // image-to-image (wsd/runtime/pipeline.py's generate(image=, strength=))
  if (s.image === undefined || s.image === null) {
    if (s.strength !== undefined && s.strength !== null) {
      throw new Error("strength is for image-to-image: give an image too");
    }
    delete s.image;
    delete s.strength;
  } else {
    if (s.strength === undefined || s.strength === null) s.strength = STRENGTH;
    checkStrength(s.strength);
  }
  return s;
}

/** The rejection of a cancelled generation: name "AbortError", as fetch's. */
export function cancelledError() {
  const err = new Error("the generation was cancelled");
  err.name = "AbortError";
  return err;
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
    const stagesMs = {};
    let stage = null;
    let stageStart = t0;
    const enter = (name, report = {}) => { // times each stage from its start to the next's
      const now = performance.now();
      if (stage) stagesMs[stage] = now - stageStart;
      stage = name;
      stageStart = now;
      if (name) onProgress({ stage: name, ...report });
    };

    enter("config");
    const config = JSON.parse(new TextDecoder().decode(
      await fetchBytes(new URL(CONFIG_NAME, baseUrl).href, "the bundle config")));
    if (config.format !== "wsd-web-bundle" || config.format_version !== FORMAT_VERSION) {
      throw new Error(`${CONFIG_NAME} is not a wsd web bundle of format version ` +
                      `${FORMAT_VERSION} (rebuild it with this version of wsd)`);
    }
    this.config = config;
    useSettings(config.settings);

    enter("device");
    const { device, description, info } = await openDevice(config.requirements);
    this.adapterDescription = description;
    this.adapterInfo = info;
    this.device = device;
    this.lost = null;
    this._disposed = false;
    // `whenLost` resolves with the message when the device is lost other than by dispose();
    // waits on the GPU race against it, since work on a lost device may never complete.
    this.whenLost = device.lost.then((why) => {
      if (this._disposed) return new Promise(() => {});
      this.lost = lostMessage(why, this);
      return this.lost;
    });

    enter("runtime");
    const wasm = await fetchBytes(new URL(config.files.wasm, baseUrl).href, "the model library");
    const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(),
                                        (msg) => console.log(`tvmjs: ${msg}`));
    tvm.initWebGPU(device);
    this.tvm = tvm;
    this.dev = tvm.webgpu();

    enter("weights");
    const weights = await loadWeights(tvm, this.dev, baseUrl, (p) => {
      onProgress({ stage: "weights", ...p });
      if (p.cacheWarning && p.cacheWarning !== this._cacheWarning) {
        this._cacheWarning = p.cacheWarning;
        onProgress({ stage: "warning", message: p.cacheWarning });
      }
    });

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
    enter("shaders", { progress: 0 });
    await this._untilLost(tvm.asyncLoadWebGPUPipelines(this.vm.getInternalModule()));

    enter("tokenizer");
    this.tokenizer = await Tokenizer.fromJSON(
      await fetchBytes(new URL(config.files.tokenizer, baseUrl).href, "the tokenizer"));
    enter(null);
    this.loadMs = performance.now() - t0;
    const { tensors, manifest, timings, ...counts } = weights;
    this.weightStats = { ...counts, fetchMs: timings.fetchMs, hashMs: timings.hashMs,
                         cacheReadMs: timings.cacheReadMs, cacheWriteMs: timings.cacheWriteMs,
                         uploadMs: timings.shardMs };
    this.loadStats = { readyMs: this.loadMs, stagesMs, weights: this.weightStats };
    this.kernelSet = "portable"; // the only set bundles carry today (see wsd/bundle.py)
    this._queue = Promise.resolve();
  }

  /** What window.wsd.ready resolves to: the model, the adapter, and how loading went. */
  info() {
    const c = this.config;
    return { model: c.model, dtype: c.dtype, height: c.height, width: c.width,
             adapter: this.adapterDescription, adapterInfo: this.adapterInfo,
             kernelSet: this.kernelSet, loadMs: this.loadMs, load: this.loadStats,
             weights: this.weightStats, gpuMemory: this.gpuMemory() };
  }

  /** GPU memory tvmjs holds now and at most so far (weights, activations, workspaces). */
  gpuMemory() {
    const context = this.tvm?.lib?.webGPUContext;
    return context ? { allocatedBytes: context.currAllocatedBytes,
                       peakBytes: context.peakAllocatedBytes } : null;
  }

  /** `promise`, or a rejection naming the loss if the device is lost first. */
  _untilLost(promise) {
    return Promise.race([promise, this.whenLost.then((m) => { throw new Error(m); })]);
  }

  /** Free the GPU device and the runtime (e.g. before loading a new Engine after a loss). */
  dispose() {
    this._disposed = true;
    try {
      this.tvm?.dispose();
    } catch (err) {
      console.warn(`wsd: disposing the runtime: ${err.message}`);
    }
    this.device?.destroy();
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

  async _toPixels(latents, decoder = "decode") {
    const image = this._call(decoder, latents);
    const host = this.tvm.empty(image.shape, "float32", this.tvm.cpu()).copyFrom(image);
    await this._untilLost(this.dev.sync());
    const [, h, w] = image.shape;
    return { rgba: toRGBA(host.toArray(), h, w), height: h, width: w };
  }

  /** Submit what tvmjs has encoded so far; resolves when the GPU has finished it. */
  _submitted() {
    this.tvm.lib.webGPUContext.flushCommands();
    return this._untilLost(this.device.queue.onSubmittedWorkDone());
  }

  /** The image input as encode_image takes it (image_input.js: wsd/runtime/image.py's
   * prepare_image); {pixels, record}. */
  _imageInput(image) {
    if (!this.functions.encode_image) {
      throw new Error("this bundle has no encode_image (image-to-image): rebuild it with " +
                      "this version of wsd");
    }
    const c = this.config;
    return prepareImage(image, c.width, c.height, c.vae_scale_factor || 8);
  }

  /** diffusers' retrieve_latents(vae.encode(image), generator) * scaling_factor: encode_image
   * -> (mean, std), then latent_sample with the generator's next draw (Pipeline.image_latents). */
  _imageLatents(run, pixels, rng) {
    const c = this.config;
    const input = c.functions.encode_image.inputs?.[0];
    const out = this._call("encode_image",
                           this._upload(pixels, [1, c.height, c.width, 3], input?.dtype));
    // a tuple output: tvmjs gives an ffi.Array (TVMArray: size(), get(i))
    const [mean, std] = Array.isArray(out) ? out : [out.get(0), out.get(1)];
    const eps = rng.randn(mean.shape.map(Number));
    return latentSample(run, mean, std, eps, [c.scaling_factor ?? SCALING_FACTOR]);
  }

  async _generate(options) {
    if (this.lost) throw new Error(this.lost);
    const s = checkSettings(options);
    const onProgress = typeof s.onProgress === "function" ? s.onProgress : () => {};
    const tvm = this.tvm;
    const t0 = performance.now();
    // As diffusers: no guidance at or below 1; a UNet with a guidance embedding (LCM) takes
    // the scale as an input instead and runs on the prompt alone.
    const embedded = Boolean(this.config.guidance_embedded);
    const input = s.image === undefined ? null : await this._imageInput(s.image);
    const sampler = makeScheduler(s.scheduler, this.config.scheduler_config);
    if (input && embedded) { // LatentConsistencyModelImg2ImgPipeline: a shorter LCM schedule
      if (s.scheduler !== "lcm") {
        throw new Error(`image-to-image with ${this.config.model} (guidance embedded in the ` +
                        `UNet) needs the lcm sampler, got '${s.scheduler}'`);
      }
      sampler.setTimesteps(s.steps, null, s.strength);
    } else {
      sampler.setTimesteps(s.steps);
      if (input) sampler.truncate(s.strength); // StableDiffusionImg2ImgPipeline.get_timesteps
    }
    const timesteps = sampler.timesteps;
    const guided = s.guidanceScale > 1.0 && !embedded;
    const warnings = [];
    const timings = { encodeMs: 0, stepMs: [], stepHostMs: [], decodeMs: 0, totalMs: 0 };
    const finished = []; // per step: resolves when the GPU has finished it
    const stopIfCancelled = async () => { // between steps: let submitted GPU work finish
      if (!s.signal?.aborted) return;
      await Promise.allSettled(finished);
      throw cancelledError();
    };
    if (s.signal?.aborted) throw cancelledError(); // cancelled while queued

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
      const run = this._runner();
      let latents;
      if (input) { // the image's latents, noised at the first kept step
        latents = sampler.addNoise(run, this._imageLatents(run, input.pixels, rng),
                                   rng.randn(shape));
      } else {
        const sigma = Math.fround(sampler.initNoiseSigma);
        const noise = rng.randn(shape);
        for (let i = 0; i < noise.length; i++) noise[i] = Math.fround(noise[i] * sigma);
        latents = this._upload(noise, shape);
      }
      await this._submitted();
      timings.encodeMs = performance.now() - t0;

      const tLoop = performance.now();
      let lastDone = tLoop;
      // Previews decode through the bundle's preview VAE (wsd build --preview-vae: a tiny
      // autoencoder, `decode_preview`), every step by default; without one, through the full
      // `decode`, every 5th. previewMs: host ms from submitting a preview to its pixels.
      const previewFn = this.functions.decode_preview ? "decode_preview" : "decode";
      const every = s.previewEvery || (previewFn === "decode_preview" ? 1 : 5);
      timings.previewMs = [];
      for (let i = 0; i < timesteps.length; i++) {
        if (i >= STEPS_IN_FLIGHT) await finished[i - STEPS_IN_FLIGHT];
        await stopIfCancelled();
        const tHost = performance.now();
        const sample = sampler.scaleModelInput(run, latents, i);
        const t = this._upload(Float32Array.of(timesteps[i]), [1]);
        const eps = guided ? this._call("unet_guided", sample, t, cond, uncond, scale)
          : embedded ? this._call("unet", sample, t, cond, scale)
            : this._call("unet", sample, t, cond);
        latents = sampler.step(run, eps, i, latents, rng);
        const done = i + 1;
        const stepDone = this._submitted().then(() => {
          const now = performance.now();
          timings.stepMs.push(now - lastDone);
          lastDone = now;
          const elapsedMs = now - tLoop;
          onProgress({ stage: "denoise", step: done, steps: timesteps.length, elapsedMs,
                       remainingMs: elapsedMs / done * (timesteps.length - done) });
        });
        stepDone.catch(() => {}); // awaited below; a loss must not also be "unhandled"
        finished.push(stepDone);
        timings.stepHostMs.push(performance.now() - tHost);
        if (s.preview && done < timesteps.length && done % every === 0) {
          await finished[i];
          const tPreview = performance.now();
          const p = await this._toPixels(latents, previewFn);
          timings.previewMs.push(performance.now() - tPreview);
          onProgress({ stage: "preview", step: done, steps: timesteps.length,
                       decoder: previewFn, image: await pngDataURL(p.rgba, p.height, p.width) });
        }
      }
      await Promise.all(finished);
      await stopIfCancelled();
      onProgress({ stage: "decode" });
      const tDecode = performance.now();
      const { rgba, height, width } = await this._toPixels(latents);
      timings.decodeMs = performance.now() - tDecode;
      const dataURL = await pngDataURL(rgba, height, width);
      timings.totalMs = performance.now() - t0;
      this.last = { ms: timings.totalMs, warnings, timings, gpuMemory: this.gpuMemory(),
                    settings: { ...s, seed: String(s.seed), onProgress: undefined,
                                signal: undefined,
                                ...(input ? { image: input.record } : {}) },
                    height, width };
      onProgress({ stage: "done", ms: this.last.ms });
      return dataURL;
    } finally {
      tvm.endScope();
    }
  }
}

/** The message for a lost device: what the browser says, and what to do. */
function lostMessage(why, engine) {
  const memory = engine.gpuMemory();
  const held = memory ? ` with ${(memory.allocatedBytes / (1 << 20)).toFixed(0)} MiB of GPU ` +
    "buffers allocated" : "";
  // tvmjs destroys the device itself when a buffer cannot be created (out of memory)
  const cause = why.reason === "destroyed"
    ? " (the GPU probably ran out of memory: close other GPU-heavy tabs or use a float16 bundle)"
    : "";
  return `the GPU device was lost (${why.reason || "unknown"}: ${why.message || "no details"})` +
    `${held}${cause}; reload the model to continue`;
}
