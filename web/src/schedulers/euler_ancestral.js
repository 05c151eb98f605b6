// Euler ancestral (diffusers' EulerAncestralDiscreteScheduler): host half of
// wsd/samplers/euler_ancestral.py. Every step (the last included) draws one
// rng.randn(modelOutput.shape), as diffusers does.

import { COMMON_OPTIONS, kernel } from "./base.js";
import { Euler, eulerTimesteps, interpolatedSigmas } from "./euler.js";

export const eulerAStep = kernel("euler_a_step", ["sample", "model_output", "noise"], 3);
export const eulerAStepV = kernel("euler_a_step_v", ["sample", "model_output", "noise"], 5);

/** Shares Euler's timesteps, sigmas, initNoiseSigma and scaleModelInput. */
export class EulerAncestral extends Euler {
  static schedulerName = "euler-a";
  static diffusersClass = "EulerAncestralDiscreteScheduler";
  static OPTIONS = {
    ...COMMON_OPTIONS,
    prediction_type: ["epsilon", ["epsilon", "v_prediction"]],
    timestep_spacing: ["linspace", ["linspace", "leading", "trailing"]],
    rescale_betas_zero_snr: [false, [false]],
  };
  static kernels = [eulerAStep, eulerAStepV];

  _setTimesteps(n) {
    const cfg = this.config;
    const timesteps = eulerTimesteps(cfg.timestep_spacing, n, cfg.num_train_timesteps,
                                     cfg.steps_offset);
    this._checkTimesteps(Array.from(timesteps), n);
    const sigmas = interpolatedSigmas(this.alphasCumprod, timesteps, 0.0);
    this._timesteps = timesteps;
    this.sigmas = sigmas;
    this._scale = [];
    this._coeffs = [];
    for (let i = 0; i + 1 < sigmas.length; i++) {
      const from = sigmas[i], to = sigmas[i + 1];
      const up = Math.sqrt((to * to * (from * from - to * to)) / (from * from));
      const down = Math.sqrt(to * to - up * up);
      const sq1 = from * from + 1;
      this._scale.push(Float32Array.of(Math.sqrt(sq1)));
      this._coeffs.push(Float32Array.of(from, down - from, up, -from / Math.sqrt(sq1), sq1));
    }
  }

  step(run, modelOutput, i, sample, rng) {
    if (rng === null || rng === undefined) {
      throw new Error("euler-a: step() needs rng (an object with .randn(shape))");
    }
    this._beginStep(i);
    const noise = rng.randn(Array.from(modelOutput.shape, Number));
    if (this.config.prediction_type === "v_prediction") {
      return eulerAStepV(run, sample, modelOutput, noise, this._coeffs[i]);
    }
    return eulerAStep(run, sample, modelOutput, noise, this._coeffs[i].subarray(0, 3));
  }
}
