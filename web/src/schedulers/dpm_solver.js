// DPM-Solver++ (diffusers' DPMSolverMultistepScheduler, algorithm_type "dpmsolver++"),
// multistep, order 1 or 2: host half of wsd/samplers/dpm_solver.py.

import { ANY, COMMON_OPTIONS, Scheduler, fr, kernel, npArange, npInterpArange, npLinspace, npRound,
         sigmaTable } from "./base.js";

export const dpmppConvert = kernel("dpmpp_convert", ["sample", "model_output"], 2);
export const dpmppConvertV = kernel("dpmpp_convert_v", ["sample", "model_output"], 2);
export const dpmppFirstOrder = kernel("dpmpp_first_order", ["sample", "m0"], 2);
export const dpmppSecondOrder = kernel("dpmpp_second_order", ["sample", "m0", "m1"], 4);

/** diffusers' _sigma_to_alpha_sigma_t (VP schedule), in float64. */
function alphaSigma(sigma) {
  const alphaT = 1 / Math.sqrt(sigma * sigma + 1);
  return [alphaT, sigma * alphaT];
}

export class DPMSolverPP extends Scheduler {
  static schedulerName = "dpm-solver++";
  static diffusersClass = "DPMSolverMultistepScheduler";
  static OPTIONS = {
    ...COMMON_OPTIONS,
    solver_order: [2, [1, 2]],
    prediction_type: ["epsilon", ["epsilon", "v_prediction"]],
    thresholding: [false, [false]],
    dynamic_thresholding_ratio: [0.995, ANY],
    sample_max_value: [1.0, ANY],
    algorithm_type: ["dpmsolver++", ["dpmsolver++", "deis"]],
    solver_type: ["midpoint", ["midpoint", "heun", "logrho", "bh1", "bh2"]],
    lower_order_final: [true, [true, false]],
    euler_at_final: [false, [true, false]],
    use_karras_sigmas: [false, [false]],
    use_exponential_sigmas: [false, [false]],
    use_beta_sigmas: [false, [false]],
    use_lu_lambdas: [false, [false]],
    use_flow_sigmas: [false, [false]],
    flow_shift: [1.0, ANY],
    final_sigmas_type: ["zero", ["zero", "sigma_min"]],
    lambda_min_clipped: [-Infinity, [-Infinity]],
    variance_type: [null, [null]],
    timestep_spacing: ["linspace", ["linspace", "leading", "trailing"]],
    rescale_betas_zero_snr: [false, [false]],
    use_dynamic_shifting: [false, [false]],
    time_shift_type: ["exponential", ANY],
  };
  static kernels = [dpmppConvert, dpmppConvertV, dpmppFirstOrder, dpmppSecondOrder];

  constructor(config) {
    super(config);
    this.heun = this.config.solver_type === "heun";
    this.modelOutputs = []; // data predictions x0 (device tensors), oldest first
  }

  _setTimesteps(n) {
    const cfg = this.config;
    const numTrain = cfg.num_train_timesteps;
    const lastTimestep = numTrain; // lambda_min_clipped = -inf clips nothing
    let timesteps;
    if (cfg.timestep_spacing === "linspace") {
      timesteps = npLinspace(0, lastTimestep - 1, n + 1).map(npRound).reverse().slice(0, -1);
    } else if (cfg.timestep_spacing === "leading") {
      const stepRatio = Math.floor(lastTimestep / (n + 1));
      timesteps = npArange(0, n + 1, 1).map((i) => i * stepRatio).reverse().slice(0, -1)
        .map((t) => t + cfg.steps_offset);
    } else { // trailing
      const stepRatio = numTrain / n;
      timesteps = npArange(lastTimestep, 0, -stepRatio).map((t) => npRound(t) - 1);
    }
    this._checkTimesteps(timesteps, n, "all");
    this._timesteps = Float32Array.from(timesteps);

    const table = sigmaTable(this.alphasCumprod);
    const sigmaLast = cfg.final_sigmas_type === "sigma_min" ? table[0] : 0;
    const sigmas = Float32Array.from([...npInterpArange(timesteps, Array.from(table)), sigmaLast]);
    this.sigmas = sigmas;

    const count = timesteps.length;
    this._orders = [];
    this._convertCoeffs = [];
    this._updateCoeffs = [];
    for (let i = 0; i < count; i++) {
      const lowerOrderFinal = i === count - 1 && (
        cfg.euler_at_final || (cfg.lower_order_final && count < 15) ||
        cfg.final_sigmas_type === "zero");
      const order = cfg.solver_order === 1 || i === 0 || lowerOrderFinal ? 1 : 2;
      this._orders.push(order);
      const [alphaS0, sigmaS0] = alphaSigma(sigmas[i]);
      this._convertCoeffs.push(Float32Array.of(sigmaS0, alphaS0));
      this._updateCoeffs.push(Float32Array.from(this._update(order, i)));
    }
    this.modelOutputs = [];
  }

  /** Coefficients of step i's update, from sigmas[i + 1] (target), [i], [i - 1]. */
  _update(order, i) {
    const [alphaT, sigmaT] = alphaSigma(this.sigmas[i + 1]);
    const [alphaS0, sigmaS0] = alphaSigma(this.sigmas[i]);
    const lambdaT = Math.log(alphaT) - Math.log(sigmaT); // +inf where sigma_t = 0
    const lambdaS0 = Math.log(alphaS0) - Math.log(sigmaS0);
    const h = lambdaT - lambdaS0;
    const sigmaRatio = sigmaT / sigmaS0;
    const alphaExpm1 = alphaT * (Math.exp(-h) - 1.0);
    if (order === 1) return [sigmaRatio, alphaExpm1, 0.0, 0.0];
    const [alphaS1, sigmaS1] = alphaSigma(this.sigmas[i - 1]);
    const lambdaS1 = Math.log(alphaS1) - Math.log(sigmaS1);
    const h0 = lambdaS0 - lambdaS1;
    const r0 = h0 / h;
    const d1Coeff = this.heun ? -(alphaT * ((Math.exp(-h) - 1.0) / h + 1.0))
                              : 0.5 * (alphaT * (Math.exp(-h) - 1.0));
    return [sigmaRatio, alphaExpm1, d1Coeff, 1.0 / r0];
  }

  _truncate(begin) {
    // the first kept step has no history: first order (lower_order_nums 0)
    this._orders[begin] = 1;
    this._updateCoeffs[begin] = Float32Array.from(this._update(1, begin));
    this._orders = this._orders.slice(begin);
    this._convertCoeffs = this._convertCoeffs.slice(begin);
    this._updateCoeffs = this._updateCoeffs.slice(begin);
  }

  /** diffusers' add_noise: alpha_t * x + sigma_t * noise at sigmas[beginIndex] (float32 ops). */
  noiseCoeffs() {
    const sigma = this.sigmas[this.beginIndex];
    const alphaT = fr(1 / fr(Math.sqrt(fr(fr(sigma * sigma) + 1))));
    return Float32Array.of(alphaT, sigma * alphaT);
  }

  step(run, modelOutput, i, sample, _rng) {
    this._beginStep(i);
    const convert = this.config.prediction_type === "v_prediction" ? dpmppConvertV : dpmppConvert;
    const x0 = convert(run, sample, modelOutput, this._convertCoeffs[i]);
    this.modelOutputs = [...this.modelOutputs.slice(-1), x0];
    const coeffs = this._updateCoeffs[i];
    if (this._orders[i] === 1) return dpmppFirstOrder(run, sample, x0, coeffs.subarray(0, 2));
    const m = this.modelOutputs;
    return dpmppSecondOrder(run, sample, m[m.length - 1], m[m.length - 2], coeffs);
  }
}
