// What every sampler shares: config handling, the noise-schedule tables, numpy helpers and
// the common interface. JavaScript port of the host half of wsd/samplers/base.py.
//
// Split of the work (as in Python): the host (this code) computes the timesteps and, for
// each step, a few float32 coefficients (float64 math, rounded once with Math.fround, as the
// numpy code rounds with astype(float32)); the device runs the compiled kernels:
// `run(kernelName, ...tensors, coeffs)`, tensors being opaque objects (with a `.shape` array
// where a sampler needs the shape) and coeffs a Float32Array.
//
// numpy specifics the Python code relies on are mirrored by small helpers: np.round (half to
// even), np.arange with a float step (length and fill rule), np.linspace, np.interp.
//
// Plain ES module, no dependencies (browsers and node >= 20).

export const ANY = Symbol("any"); // an option whose every value is supported

export const fr = Math.fround;

// ---- Python-like formatting (error messages mirror the Python ones) -------------------

export function pyRepr(v) {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "nan";
    if (v === Infinity) return "inf";
    if (v === -Infinity) return "-inf";
    return String(v);
  }
  if (typeof v === "string") {
    if (v.includes("'") && !v.includes('"')) return `"${v}"`;
    return `'${v.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
  }
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(", ")}]`;
  return String(v);
}

// Python's format(x, "g") for the numbers in our messages (timesteps).
export function formatG(x) {
  if (Number.isInteger(x) && Math.abs(x) < 1e6) return String(x);
  let s = x.toPrecision(6);
  if (s.includes("e")) {
    let [m, e] = s.split("e");
    if (m.includes(".")) m = m.replace(/0+$/, "").replace(/\.$/, "");
    const sign = e[0] === "-" ? "-" : "+";
    e = e.replace(/^[+-]/, "");
    return `${m}e${sign}${e.padStart(2, "0")}`;
  }
  if (s.includes(".")) s = s.replace(/0+$/, "").replace(/\.$/, "");
  return s;
}

// Python's == for the option values we see (numbers, booleans, strings, null).
function pyEq(a, b) {
  const num = (x) => typeof x === "number" || typeof x === "boolean";
  if (num(a) && num(b)) return Number(a) === Number(b);
  if ((a === null || a === undefined) && (b === null || b === undefined)) return true;
  return a === b;
}

const isInt = (n) => typeof n === "number" && Number.isInteger(n);

// ---- numpy mirrors --------------------------------------------------------------------

/** np.round / np.rint for float64: round half to even. */
export function npRound(x) {
  if (!Number.isFinite(x)) return x;
  const r = Math.round(x); // half up
  if (r - x === 0.5 && r % 2 !== 0) return r - 1;
  return r;
}

/** np.arange(start, stop, step) with float64 values: numpy's length and fill rule
 * (length ceil((stop - start) / step); a[1] = start + step; a[i] = start + i * (a[1] - start)). */
export function npArange(start, stop, step) {
  const len = Math.max(0, Math.ceil((stop - start) / step));
  const out = new Array(len);
  if (len > 0) out[0] = start;
  if (len > 1) out[1] = start + step;
  const delta = len > 1 ? out[1] - start : 0;
  for (let i = 2; i < len; i++) out[i] = start + i * delta;
  return out;
}

/** np.linspace(start, stop, num) (endpoint=True) in float64. */
export function npLinspace(start, stop, num) {
  const div = num - 1;
  const delta = stop - start;
  const out = new Array(num);
  if (div > 0) {
    const step = delta / div;
    for (let i = 0; i < num; i++) out[i] = step === 0 ? (i / div) * delta + start : i * step + start;
    out[num - 1] = stop;
  } else {
    for (let i = 0; i < num; i++) out[i] = i * delta + start;
  }
  return out;
}

/** np.interp(x, arange(len(fp)), fp) for each x (fp: float64 values). */
export function npInterpArange(xs, fp) {
  const n = fp.length;
  return xs.map((x) => {
    if (Number.isNaN(x)) return x;
    if (x < 0) return fp[0];
    if (x >= n - 1) return fp[n - 1];
    const j = Math.floor(x); // xp[j] <= x < xp[j + 1]
    if (x === j) return fp[j];
    const slope = (fp[j + 1] - fp[j]) / (j + 1 - j);
    let y = slope * (x - j) + fp[j];
    if (Number.isNaN(y)) {
      y = slope * (x - (j + 1)) + fp[j + 1];
      if (Number.isNaN(y) && fp[j] === fp[j + 1]) y = fp[j];
    }
    return y;
  });
}

// ---- noise schedule tables (mirrors of base.py, hence of diffusers' torch float32 code) ----

/** torch.linspace(start, end, steps, dtype=float32) on CPU (see base.py). */
export function torchLinspaceF32(start, end, steps) {
  const s32 = fr(start), e32 = fr(end);
  if (steps === 1) return Float32Array.of(s32);
  const step = fr(fr(e32 - s32) / fr(steps - 1));
  const out = new Float32Array(steps);
  const half = Math.floor(steps / 2);
  for (let i = 0; i < steps; i++) {
    out[i] = i < half ? s32 + step * i : e32 - step * (steps - 1 - i);
  }
  return out;
}

/** diffusers' "squaredcos_cap_v2" (Glide cosine) schedule. */
export function betasForAlphaBar(n, maxBeta = 0.999) {
  const alphaBar = (t) => { const c = Math.cos(((t + 0.008) / 1.008) * Math.PI / 2); return c * c; };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), maxBeta);
  return out;
}

/** float32 alphas_cumprod, as diffusers' scheduler __init__ computes it. */
export function makeAlphasCumprod(config) {
  const n = config.num_train_timesteps;
  let betas;
  if (config.trained_betas !== null && config.trained_betas !== undefined) {
    betas = Float32Array.from(config.trained_betas, Number);
  } else if (config.beta_schedule === "linear") {
    betas = torchLinspaceF32(config.beta_start, config.beta_end, n);
  } else if (config.beta_schedule === "scaled_linear") {
    const root = torchLinspaceF32(Math.sqrt(config.beta_start), Math.sqrt(config.beta_end), n);
    betas = root.map((r) => r * r); // exact in float64, rounded once to float32
  } else if (config.beta_schedule === "squaredcos_cap_v2") {
    betas = betasForAlphaBar(n);
  } else {
    throw new Error(`beta_schedule=${pyRepr(config.beta_schedule)} is not supported ` +
                    "(supported: 'linear', 'scaled_linear', 'squaredcos_cap_v2')");
  }
  const out = new Float32Array(betas.length);
  let p = 1;
  for (let i = 0; i < betas.length; i++) {
    p = i === 0 ? fr(1 - betas[i]) : p * fr(1 - betas[i]); // torch.cumprod: float64 accumulator
    out[i] = p;
  }
  return out;
}

/** ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, each op in float32. */
export function sigmaTable(alphasCumprod) {
  return alphasCumprod.map((a) => Math.sqrt(fr(fr(1 - a) / a)));
}

// ---- config ------------------------------------------------------------------------------

/** The parameters `XScheduler.from_config(config)` would use (see base.py resolve_config). */
export function resolveConfig(name, options, config) {
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    const type = config === null ? "NoneType" : Array.isArray(config) ? "list" : typeof config;
    throw new Error(`${name}: scheduler config must be a dict, got ${type}`);
  }
  const has = (k) => Object.prototype.hasOwnProperty.call(config, k);
  const useDefaults = new Set(has("_use_default_values") && config._use_default_values
    ? config._use_default_values : []);
  const resolved = {};
  for (const [key, [def, allowed]] of Object.entries(options)) {
    const value = has(key) && !useDefaults.has(key) ? config[key] : def;
    if (allowed !== ANY && !allowed.some((a) => pyEq(value, a))) {
      const choices = allowed.map(pyRepr).join(", ");
      throw new Error(`${name} scheduler: ${key}=${pyRepr(value)} is not supported ` +
                      `(supported: ${choices})`);
    }
    resolved[key] = value;
  }
  const tb = resolved.trained_betas;
  if (tb !== null && tb !== undefined) {
    if (tb.length !== resolved.num_train_timesteps) {
      throw new Error(`${name} scheduler: trained_betas has ${tb.length} entries, ` +
                      `num_train_timesteps is ${resolved.num_train_timesteps}`);
    }
  }
  const n = resolved.num_train_timesteps;
  if (!isInt(n) || n < 2) {
    throw new Error(`${name} scheduler: num_train_timesteps must be an integer >= 2, ` +
                    `got ${pyRepr(n)}`);
  }
  return resolved;
}

// Options every sampler shares, with diffusers' defaults.
export const COMMON_OPTIONS = Object.freeze({
  num_train_timesteps: [1000, ANY],
  beta_start: [0.0001, ANY],
  beta_end: [0.02, ANY],
  beta_schedule: ["linear", ["linear", "scaled_linear", "squaredcos_cap_v2"]],
  trained_betas: [null, ANY],
  steps_offset: [0, ANY],
});

// ---- kernels -----------------------------------------------------------------------------

/** A compiled function `name(*tensors[, coeffs])` (see base.py Kernel): calling it runs
 * `run(name, ...tensors, coeffs)` with coeffs a fresh Float32Array. */
export function kernel(name, tensors, numCoeffs = 0) {
  const call = (run, ...args) => {
    if (args.length !== tensors.length + (numCoeffs ? 1 : 0)) {
      throw new TypeError(`${name} takes (${tensors.join(", ")})` + (numCoeffs ? " and coeffs" : ""));
    }
    if (numCoeffs) {
      const coeffs = Float32Array.from(args[args.length - 1]);
      if (coeffs.length !== numCoeffs) {
        throw new Error(`${name} takes ${numCoeffs} coefficients, got shape (${coeffs.length},)`);
      }
      args[args.length - 1] = coeffs;
    }
    return run(name, ...args);
  };
  Object.defineProperties(call, {
    kernelName: { value: name }, tensors: { value: tensors }, numCoeffs: { value: numCoeffs },
  });
  return call;
}

// Kernels every sampler uses (not prefixed: one copy in the library); see base.py.
// add_noise: a * original + b * noise (diffusers' scheduler.add_noise);
// latent_sample: scaling_factor * (mean + std * noise) (the image's latents).
export const addNoise = kernel("add_noise", ["original", "noise"], 2);
export const latentSample = kernel("latent_sample", ["mean", "std", "noise"], 1);
export const COMMON_KERNELS = Object.freeze([addNoise, latentSample]);

/** Image-to-image strength: a number in (0, 1] (wsd/settings.py check_strength). */
export function checkStrength(strength) {
  if (typeof strength !== "number" || !(strength > 0 && strength <= 1)) {
    throw new Error(`strength must be a number in (0, 1], got ${pyRepr(strength)}`);
  }
}

// ---- the common interface ----------------------------------------------------------------

/**
 * One sampler (see base.py Scheduler). Usage, as diffusers' pipeline drives a scheduler:
 *
 *   const s = makeScheduler("euler", config); s.setTimesteps(25);
 *   latents = noise * initNoiseSigma (float32)
 *   for (let i = 0; i < s.timesteps.length; i++) {
 *     const x = s.scaleModelInput(run, latents, i);
 *     const eps = unet(x, s.timesteps[i]);
 *     latents = s.step(run, eps, i, latents, rng);
 *   }
 *
 * Image-to-image (StableDiffusionImg2ImgPipeline): after setTimesteps, s.truncate(strength)
 * keeps the last int(n * strength) steps, then latents = s.addNoise(run, imageLatents, noise)
 * and the loop runs over the kept steps, numbered from 0.
 */
export class Scheduler {
  static schedulerName = "";
  static diffusersClass = "";
  static OPTIONS = {};
  static kernels = [];

  constructor(config) {
    this.name = this.constructor.schedulerName;
    this.config = resolveConfig(this.name, this.constructor.OPTIONS, config);
    this.alphasCumprod = makeAlphasCumprod(this.config);
    this.numInferenceSteps = null;
    this._timesteps = null;
    this._nextStep = 0;
    this.beginIndex = 0; // index in the full schedule of step 0 (img2img: truncate())
  }

  /** Plan `n` denoising steps (and forget any previous run). */
  setTimesteps(n) {
    const limit = this.config.num_train_timesteps;
    if (!isInt(n)) {
      throw new Error(`num_inference_steps must be an integer, got ${pyRepr(n)}`);
    }
    if (!(n >= 1 && n <= limit)) {
      throw new Error("num_inference_steps must be between 1 and num_train_timesteps " +
                      `(${limit}), got ${n}`);
    }
    this.numInferenceSteps = null;
    this._timesteps = null;
    this._nextStep = 0;
    this.beginIndex = 0;
    this._setTimesteps(n);
    this.numInferenceSteps = n;
  }

  _setTimesteps(_n) {
    throw new Error("not implemented");
  }

  /** Float32Array: the timestep the UNet receives at each step. */
  get timesteps() {
    if (this._timesteps === null) throw new Error(`${this.name}: call set_timesteps() first`);
    return this._timesteps;
  }

  /** Scale of the initial noise (latents = randn * initNoiseSigma, in float32). */
  get initNoiseSigma() {
    return 1.0;
  }

  /** Keep the steps img2img runs at this strength (see base.py truncate). */
  truncate(strength) {
    const n = this.numInferenceSteps;
    if (n === null) throw new Error(`${this.name}: call set_timesteps() first`);
    if (this.beginIndex || this._nextStep) {
      throw new Error(`${this.name}: truncate() comes once, right after set_timesteps()`);
    }
    checkStrength(strength);
    const init = Math.min(Math.trunc(n * strength), n);
    const begin = Math.max(n - init, 0);
    if (init === 0 || begin >= this._timesteps.length) {
      throw new Error(`strength ${formatG(strength)} with ${n} steps leaves no denoising step ` +
                      `(int(${n} * ${formatG(strength)}) = 0): raise the strength or the ` +
                      "number of steps");
    }
    this._truncate(begin);
    this._timesteps = this._timesteps.slice(begin);
    this.beginIndex = begin;
  }

  _truncate(_begin) {
    throw new Error("not implemented");
  }

  /** diffusers' scheduler.add_noise at the first step to run: a * original + b * noise. */
  addNoise(run, original, noise) {
    if (this._timesteps === null) throw new Error(`${this.name}: call set_timesteps() first`);
    if (this._nextStep) throw new Error(`${this.name}: add_noise() comes before the first step`);
    return addNoise(run, original, noise, this.noiseCoeffs());
  }

  /** [a, b] of addNoise; DDPM (PNDM, DDIM, LCM): sqrt(alpha_prod_t), sqrt(1 - alpha_prod_t). */
  noiseCoeffs() {
    const alphaProd = this._alphaProd(this.timesteps[0]);
    return Float32Array.of(Math.sqrt(alphaProd), Math.sqrt(fr(1 - alphaProd)));
  }

  scaleModelInput(run, sample, i) {
    this._checkIndex(i);
    return sample;
  }

  step(_run, _modelOutput, _i, _sample, _rng) {
    throw new Error("not implemented");
  }

  _checkIndex(i) {
    const count = this.timesteps.length;
    if (!isInt(i) || !(i >= 0 && i < count)) {
      throw new Error(`${this.name}: step index must be an integer in [0, ${count}), ` +
                      `got ${pyRepr(i)}`);
    }
  }

  _beginStep(i) {
    this._checkIndex(i);
    if (i !== this._nextStep) {
      throw new Error(`${this.name}: steps must be taken in order; expected step ` +
                      `${this._nextStep}, got ${i} (call set_timesteps() to restart)`);
    }
    this._nextStep = i + 1;
  }

  /** See base.py _check_timesteps. `timesteps`: plain numbers. */
  _checkTimesteps(timesteps, n, distinct = "first") {
    const cfg = this.config, last = cfg.num_train_timesteps - 1;
    const where = `num_inference_steps=${n} with timestep_spacing=${pyRepr(cfg.timestep_spacing)}` +
                  ` and steps_offset=${pyRepr(cfg.steps_offset)}`;
    const outside = timesteps.filter((t) => t < 0 || t > last);
    if (outside.length) {
      throw new Error(`${this.name}: ${where} gives timestep ${formatG(outside[0])}, outside the ` +
                      `trained range [0, ${last}]; choose another number of steps`);
    }
    let repeated;
    if (distinct === "all") repeated = new Set(timesteps).size < timesteps.length;
    else repeated = distinct === "first" && timesteps.filter((t) => t === timesteps[0]).length > 1;
    if (repeated) {
      throw new Error(`${this.name}: ${where} repeats a timestep; choose fewer steps`);
    }
  }

  /** alphas_cumprod[t] as a number (validated index). */
  _alphaProd(t) {
    const len = this.alphasCumprod.length;
    if (!(t >= 0 && t < len)) {
      throw new Error(`${this.name}: timestep ${t} is outside the trained range [0, ${len}); ` +
                      "check num_inference_steps and steps_offset");
    }
    return this.alphasCumprod[t];
  }
}
