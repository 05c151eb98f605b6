// Euler (diffusers' EulerDiscreteScheduler, s_churn = 0): host half of wsd/samplers/euler.py.

import { ANY, COMMON_OPTIONS, Scheduler, fr, kernel, npArange, npInterpArange, npLinspace,
         npRound, sigmaTable } from "./base.js";

export const eulerScaleModelInput = kernel("euler_scale_model_input", ["sample"], 1);
export const eulerStep = kernel("euler_step", ["sample", "model_output"], 2);
export const eulerStepV = kernel("euler_step_v", ["sample", "model_output"], 4);

/** Training sigmas interpolated at the timesteps, then the final sigma; Float32Array. */
export function interpolatedSigmas(alphasCumprod, timesteps, finalSigma) {
  const table = Array.from(sigmaTable(alphasCumprod));
  return Float32Array.from([...npInterpArange(Array.from(timesteps), table), finalSigma]);
}

/** Float32Array timesteps of EulerDiscreteScheduler / EulerAncestralDiscreteScheduler. */
export function eulerTimesteps(spacing, n, numTrain, stepsOffset) {
  if (spacing === "linspace") return Float32Array.from(npLinspace(0, numTrain - 1, n)).reverse();
  if (spacing === "leading") {
    const stepRatio = Math.floor(numTrain / n);
    const t = Float32Array.from(npArange(0, n, 1).map((i) => i * stepRatio).reverse());
    return t.map((x) => x + stepsOffset); // float32 += int
  }
  const stepRatio = numTrain / n; // trailing
  return Float32Array.from(npArange(numTrain, 0, -stepRatio).map(npRound)).map((x) => x - 1);
}

export function initNoiseSigmaOf(sigmas, spacing) {
  let max = -Infinity;
  for (const s of sigmas) if (s > max || Number.isNaN(s)) max = s;
  if (spacing === "linspace" || spacing === "trailing") return max;
  return fr(Math.sqrt(fr(fr(max * max) + 1.0)));
}

export class Euler extends Scheduler {
  static schedulerName = "euler";
  static diffusersClass = "EulerDiscreteScheduler";
  static OPTIONS = {
    ...COMMON_OPTIONS,
    prediction_type: ["epsilon", ["epsilon", "v_prediction"]],
    interpolation_type: ["linear", ["linear"]],
    use_karras_sigmas: [false, [false, null]],
    use_exponential_sigmas: [false, [false, null]],
    use_beta_sigmas: [false, [false, null]],
    sigma_min: [null, ANY],
    sigma_max: [null, ANY],
    timestep_spacing: ["linspace", ["linspace", "leading", "trailing"]],
    timestep_type: ["discrete", ["discrete", "continuous"]],
    rescale_betas_zero_snr: [false, [false]],
    final_sigmas_type: ["zero", ["zero", "sigma_min"]],
  };
  static kernels = [eulerScaleModelInput, eulerStep, eulerStepV];

  constructor(config) {
    super(config);
    if (new.target === Euler && this.config.timestep_type === "continuous" &&
        this.config.prediction_type === "v_prediction") {
      throw new Error("euler scheduler: timestep_type='continuous' with " +
                      "prediction_type='v_prediction' is not supported");
    }
  }

  _setTimesteps(n) {
    const cfg = this.config;
    const timesteps = eulerTimesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps,
                                     cfg.steps_offset);
    this._checkTimesteps(Array.from(timesteps), n);
    const final = cfg.final_sigmas_type === "zero" ? 0 : sigmaTable(this.alphasCumprod)[0];
    const sigmas = interpolatedSigmas(this.alphasCumprod, timesteps, final);
    this._timesteps = timesteps;
    this.sigmas = sigmas;
    this._scale = [];
    this._coeffs = [];
    for (let i = 0; i + 1 < sigmas.length; i++) {
      const sigma = sigmas[i], next = sigmas[i + 1];
      const sq1 = sigma * sigma + 1;
      this._scale.push(Float32Array.of(Math.sqrt(sq1)));
      // s_churn = 0: sigma_hat = sigma
      this._coeffs.push(Float32Array.of(sigma, next - sigma, -sigma / Math.sqrt(sq1), sq1));
    }
  }

  get initNoiseSigma() {
    // before setTimesteps, as diffusers: the largest training sigma
    const sigmas = this._timesteps === null ? sigmaTable(this.alphasCumprod) : this.sigmas;
    return initNoiseSigmaOf(sigmas, this.config.timestep_spacing);
  }

  _truncate(begin) {
    this._scale = this._scale.slice(begin);
    this._coeffs = this._coeffs.slice(begin);
  }

  /** diffusers' add_noise: x + noise * sigmas[beginIndex]. */
  noiseCoeffs() {
    return Float32Array.of(1.0, this.sigmas[this.beginIndex]);
  }

  scaleModelInput(run, sample, i) {
    this._checkIndex(i);
    return eulerScaleModelInput(run, sample, this._scale[i]);
  }

  step(run, modelOutput, i, sample, _rng) {
    this._beginStep(i);
    if (this.config.prediction_type === "v_prediction") {
      return eulerStepV(run, sample, modelOutput, this._coeffs[i]);
    }
    return eulerStep(run, sample, modelOutput, this._coeffs[i].subarray(0, 2));
  }
}
