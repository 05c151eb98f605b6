// LCM (diffusers' LCMScheduler): host half of wsd/samplers/lcm.py. Each step computes the
// consistency model's denoised latents; every step but the last then draws one
// rng.randn(modelOutput.shape) and noises them to the next timestep. The last step returns
// the denoised latents themselves.

import { ANY, COMMON_OPTIONS, Scheduler, checkStrength, formatG, fr, kernel,
         pyRepr } from "./base.js";

export const lcmDenoise = kernel("lcm_denoise", ["sample", "model_output"], 4);
export const lcmDenoiseV = kernel("lcm_denoise_v", ["sample", "model_output"], 4);
export const lcmDenoiseSample = kernel("lcm_denoise_sample", ["sample", "model_output"], 2);
export const lcmRenoise = kernel("lcm_renoise", ["denoised", "noise"], 2);

const SIGMA_DATA = 0.5;

/** Timesteps of LCMScheduler.set_timesteps: n evenly spaced entries of the descending
 * schedule k - 1, 2k - 1, ... (k = numTrain // originalSteps), shortened to its
 * int(originalSteps * strength) least noisy entries (LCM img2img's strength). */
export function lcmTimesteps(numTrain, originalSteps, n, strength = 1.0) {
  const k = Math.floor(numTrain / originalSteps);
  const kept = Math.trunc(originalSteps * strength);
  if (Math.floor(kept / n) < 1) {
    throw new Error(`lcm: strength ${formatG(strength)} keeps int(${originalSteps} * ` +
                    `${formatG(strength)}) = ${kept} of the original_inference_steps schedule, ` +
                    `fewer than num_inference_steps=${n}: raise the strength or lower the ` +
                    "number of steps");
  }
  const origin = [];
  for (let i = kept; i >= 1; i--) origin.push(i * k - 1);
  const step = origin.length / n; // np.linspace(0, len, n, endpoint=False), then floor
  return Array.from({ length: n }, (_, i) => origin[Math.floor(i * step + 0)]);
}

/** [c_skip, c_out] at timestep t, rounded op by op as diffusers' float32 tensor code. */
export function boundaryScalings(t, timestepScaling) {
  const scaled = fr(t * fr(timestepScaling));
  const denominator = fr(fr(scaled * scaled) + SIGMA_DATA ** 2);
  return [fr(SIGMA_DATA ** 2 / denominator), fr(scaled / fr(Math.sqrt(denominator)))];
}

export class LCM extends Scheduler {
  static schedulerName = "lcm";
  static diffusersClass = "LCMScheduler";
  static OPTIONS = {
    ...COMMON_OPTIONS,
    beta_start: [0.00085, ANY],
    beta_end: [0.012, ANY],
    beta_schedule: ["scaled_linear", ["linear", "scaled_linear", "squaredcos_cap_v2"]],
    original_inference_steps: [50, ANY],
    clip_sample: [false, [false]],
    clip_sample_range: [1.0, ANY],
    set_alpha_to_one: [true, ANY],
    prediction_type: ["epsilon", ["epsilon", "v_prediction", "sample"]],
    thresholding: [false, [false]],
    dynamic_thresholding_ratio: [0.995, ANY],
    sample_max_value: [1.0, ANY],
    timestep_spacing: ["leading", ANY],
    timestep_scaling: [10.0, ANY],
    rescale_betas_zero_snr: [false, [false]],
  };
  static kernels = [lcmDenoise, lcmDenoiseV, lcmDenoiseSample, lcmRenoise];

  constructor(config) {
    super(config);
    this._checkOriginalSteps(this.config.original_inference_steps);
    const scaling = this.config.timestep_scaling;
    if (typeof scaling !== "number" || !Number.isFinite(scaling)) {
      throw new Error("lcm scheduler: timestep_scaling must be a finite number, " +
                      `got ${pyRepr(scaling)}`);
    }
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1.0 : this.alphasCumprod[0];
    this.originalInferenceSteps = this.config.original_inference_steps;
    this._strength = 1.0;
  }

  _checkOriginalSteps(original) {
    const limit = this.config.num_train_timesteps;
    if (!Number.isInteger(original) || !(original >= 1 && original <= limit)) {
      throw new Error("lcm scheduler: original_inference_steps must be an integer from 1 to " +
                      `num_train_timesteps (${limit}), got ${pyRepr(original)}`);
    }
  }

  /** As the base class; `originalInferenceSteps` overrides the config's for this run, and
   * `strength` < 1 shortens the original schedule (LatentConsistencyModelImg2ImgPipeline). */
  setTimesteps(n, originalInferenceSteps = null, strength = 1.0) {
    const original = originalInferenceSteps === null || originalInferenceSteps === undefined
      ? this.config.original_inference_steps : originalInferenceSteps;
    this._checkOriginalSteps(original);
    checkStrength(strength);
    this.originalInferenceSteps = original;
    this._strength = strength;
    super.setTimesteps(n);
  }

  _truncate(begin) {
    this._coeffs = this._coeffs.slice(begin);
  }

  _setTimesteps(n) {
    const cfg = this.config, original = this.originalInferenceSteps;
    if (n > original) {
      throw new Error(`lcm: num_inference_steps=${n} is more than original_inference_steps ` +
                      `(${original}); LCM takes its timesteps from that schedule, so choose at ` +
                      `most ${original} steps`);
    }
    const timesteps = lcmTimesteps(cfg.num_train_timesteps, original, n, this._strength);
    this._timesteps = Float32Array.from(timesteps);
    // Per step: sqrt(beta_t), sqrt(alpha_t), c_out, c_skip, sqrt(alpha_prev), sqrt(beta_prev).
    this._coeffs = timesteps.map((t, i) => {
      const alphaProdT = this._alphaProd(t);
      let alphaProdTPrev = alphaProdT;
      if (i + 1 < timesteps.length) {
        const prevT = timesteps[i + 1];
        alphaProdTPrev = prevT >= 0 ? this._alphaProd(prevT) : this.finalAlphaCumprod;
      }
      const [cSkip, cOut] = boundaryScalings(t, cfg.timestep_scaling);
      return Float32Array.of(fr(Math.sqrt(fr(1 - alphaProdT))), fr(Math.sqrt(alphaProdT)),
                             cOut, cSkip,
                             fr(Math.sqrt(alphaProdTPrev)), fr(Math.sqrt(fr(1 - alphaProdTPrev))));
    });
  }

  step(run, modelOutput, i, sample, rng) {
    this._checkIndex(i);
    const last = i === this.timesteps.length - 1;
    if ((rng === null || rng === undefined) && !last) {
      throw new Error("lcm: step() needs rng (an object with .randn(shape))");
    }
    this._beginStep(i);
    const coeffs = this._coeffs[i], prediction = this.config.prediction_type;
    let denoised;
    if (prediction === "v_prediction") {
      denoised = lcmDenoiseV(run, sample, modelOutput, coeffs.subarray(0, 4));
    } else if (prediction === "sample") {
      denoised = lcmDenoiseSample(run, sample, modelOutput, coeffs.subarray(2, 4));
    } else {
      denoised = lcmDenoise(run, sample, modelOutput, coeffs.subarray(0, 4));
    }
    if (last) return denoised;
    const noise = rng.randn(Array.from(modelOutput.shape, Number));
    return lcmRenoise(run, denoised, noise, coeffs.subarray(4));
  }
}
