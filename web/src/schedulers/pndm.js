// PNDM (diffusers' PNDMScheduler) with skip_prk_steps=True: host half of wsd/samplers/pndm.py.
// With n inference steps the UNet runs n + 1 times (the second timestep is repeated).

import { ANY, COMMON_OPTIONS, Scheduler, kernel, npArange, npLinspace, npRound } from "./base.js";

export const pndmWarmup = kernel("pndm_warmup", ["model_output", "ets_1"]);
export const pndmPlms2 = kernel("pndm_plms2", ["ets_1", "ets_2"]);
export const pndmPlms3 = kernel("pndm_plms3", ["ets_1", "ets_2", "ets_3"]);
export const pndmPlms4 = kernel("pndm_plms4", ["ets_1", "ets_2", "ets_3", "ets_4"]);
export const pndmPrevSample = kernel("pndm_prev_sample", ["sample", "model_output"], 3);
export const pndmPrevSampleV = kernel("pndm_prev_sample_v", ["sample", "model_output"], 5);

export class PNDM extends Scheduler {
  static schedulerName = "pndm";
  static diffusersClass = "PNDMScheduler";
  static OPTIONS = {
    ...COMMON_OPTIONS,
    skip_prk_steps: [false, [true]],
    set_alpha_to_one: [false, ANY],
    prediction_type: ["epsilon", ["epsilon", "v_prediction"]],
    timestep_spacing: ["leading", ["linspace", "leading", "trailing"]],
  };
  static kernels = [pndmWarmup, pndmPlms2, pndmPlms3, pndmPlms4, pndmPrevSample, pndmPrevSampleV];

  constructor(config) {
    super(config);
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1.0 : this.alphasCumprod[0];
    this.ets = []; // previous model outputs (device tensors), oldest first
    this.curSample = null;
  }

  _setTimesteps(n) {
    const cfg = this.config;
    const numTrain = cfg.num_train_timesteps;
    let base;
    if (cfg.timestep_spacing === "linspace") {
      base = npLinspace(0, numTrain - 1, n).map(npRound);
    } else if (cfg.timestep_spacing === "leading") {
      const stepRatio = Math.floor(numTrain / n);
      base = npArange(0, n, 1).map((i) => i * stepRatio + cfg.steps_offset);
    } else { // trailing
      const stepRatio = numTrain / n;
      base = npArange(numTrain, 0, -stepRatio).map(npRound).reverse().map((t) => t - 1);
    }
    // skip_prk_steps: the second-to-last base timestep appears twice.
    const len = base.length;
    const timesteps = [...base.slice(0, -1), ...base.slice(Math.max(0, len - 2), len - 1),
                       ...base.slice(-1)].reverse();
    this._checkTimesteps(timesteps, n, "none"); // step 1 repeats by design
    this._timesteps = Float32Array.from(timesteps);

    this._coeffs = this._plmsCoeffs(timesteps, n);
    this.ets = [];
    this.curSample = null;
  }

  /** Each step's coefficients (see pndm.py _plms_coeffs); the warm-up's second step is
   * the second one run. */
  _plmsCoeffs(timesteps, n) {
    const ratio = Math.floor(this.config.num_train_timesteps / n);
    return timesteps.map((ts, i) => {
      const [t, prevT] = i === 1 ? [ts + ratio, ts] : [ts, ts - ratio];
      const alphaProdT = this._alphaProd(t);
      const alphaProdTPrev = prevT >= 0 ? this._alphaProd(prevT) : this.finalAlphaCumprod;
      const betaProdT = 1 - alphaProdT;
      const betaProdTPrev = 1 - alphaProdTPrev;
      const sampleCoeff = Math.sqrt(alphaProdTPrev / alphaProdT);
      const denom = alphaProdT * Math.sqrt(betaProdTPrev) +
        Math.sqrt(alphaProdT * betaProdT * alphaProdTPrev);
      return Float32Array.of(sampleCoeff, alphaProdTPrev - alphaProdT, denom,
                             Math.sqrt(alphaProdT), Math.sqrt(betaProdT));
    });
  }

  _truncate(begin) {
    this._coeffs = this._plmsCoeffs(Array.from(this._timesteps.slice(begin)),
                                    this.numInferenceSteps);
  }

  step(run, modelOutput, i, sample, _rng) {
    this._beginStep(i);
    if (i !== 1) this.ets = [...this.ets.slice(-3), modelOutput];
    const ets = this.ets, k = ets.length;
    if (i === 0) {
      this.curSample = sample;
    } else if (i === 1) {
      modelOutput = pndmWarmup(run, modelOutput, ets[k - 1]);
      sample = this.curSample;
      this.curSample = null;
    } else if (k === 2) {
      modelOutput = pndmPlms2(run, ets[k - 1], ets[k - 2]);
    } else if (k === 3) {
      modelOutput = pndmPlms3(run, ets[k - 1], ets[k - 2], ets[k - 3]);
    } else {
      modelOutput = pndmPlms4(run, ets[k - 1], ets[k - 2], ets[k - 3], ets[k - 4]);
    }
    if (this.config.prediction_type === "v_prediction") {
      return pndmPrevSampleV(run, sample, modelOutput, this._coeffs[i]);
    }
    return pndmPrevSample(run, sample, modelOutput, this._coeffs[i].subarray(0, 3));
  }
}
