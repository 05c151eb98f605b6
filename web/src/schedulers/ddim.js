// DDIM (diffusers' DDIMScheduler) with eta = 0: host half of wsd/samplers/ddim.py.

import { ANY, COMMON_OPTIONS, Scheduler, kernel, npArange, npLinspace, npRound } from "./base.js";

export const ddimStep = kernel("ddim_step", ["sample", "model_output"], 4);
export const ddimStepV = kernel("ddim_step_v", ["sample", "model_output"], 4);

export class DDIM extends Scheduler {
  static schedulerName = "ddim";
  static diffusersClass = "DDIMScheduler";
  static OPTIONS = {
    ...COMMON_OPTIONS,
    clip_sample: [true, [false]],
    set_alpha_to_one: [true, ANY],
    prediction_type: ["epsilon", ["epsilon", "v_prediction"]],
    thresholding: [false, [false]],
    dynamic_thresholding_ratio: [0.995, ANY],
    clip_sample_range: [1.0, ANY],
    sample_max_value: [1.0, ANY],
    timestep_spacing: ["leading", ["leading", "trailing", "linspace"]],
    rescale_betas_zero_snr: [false, [false]],
  };
  static kernels = [ddimStep, ddimStepV];

  constructor(config) {
    super(config);
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1.0 : this.alphasCumprod[0];
  }

  _setTimesteps(n) {
    const cfg = this.config;
    const numTrain = cfg.num_train_timesteps;
    let timesteps;
    if (cfg.timestep_spacing === "linspace") {
      timesteps = npLinspace(0, numTrain - 1, n).map(npRound).reverse();
    } else if (cfg.timestep_spacing === "leading") {
      const stepRatio = Math.floor(numTrain / n);
      timesteps = npArange(0, n, 1).map((i) => i * stepRatio).reverse()
        .map((t) => t + cfg.steps_offset);
    } else { // trailing
      const stepRatio = numTrain / n;
      timesteps = npArange(numTrain, 0, -stepRatio).map((t) => npRound(t) - 1);
    }
    this._checkTimesteps(timesteps, n);
    this._timesteps = Float32Array.from(timesteps);

    // diffusers' previous timestep is t - num_train // n whatever the spacing.
    const ratio = Math.floor(numTrain / n);
    this._coeffs = timesteps.map((t) => {
      const prevT = t - ratio;
      const alphaProdT = this._alphaProd(t);
      const alphaProdTPrev = prevT >= 0 ? this._alphaProd(prevT) : this.finalAlphaCumprod;
      const betaProdT = 1 - alphaProdT;
      return Float32Array.of(Math.sqrt(betaProdT), Math.sqrt(alphaProdT),
                             Math.sqrt(alphaProdTPrev), Math.sqrt(1 - alphaProdTPrev));
    });
  }

  _truncate(begin) {
    this._coeffs = this._coeffs.slice(begin);
  }

  step(run, modelOutput, i, sample, _rng) {
    this._beginStep(i);
    const fn = this.config.prediction_type === "v_prediction" ? ddimStepV : ddimStep;
    return fn(run, sample, modelOutput, this._coeffs[i]);
  }
}
