// The samplers' host logic in JavaScript (port of wsd/samplers): timesteps, per-step
// float32 coefficients and multistep history; the tensor math runs as compiled kernels via
// `run(kernelName, ...tensors, coeffs)`.
//
//   SCHEDULERS                     name -> class: "pndm", "dpm-solver++", "euler", "euler-a", "ddim", "lcm"
//   makeScheduler(name, config)    our scheduler for a diffusers scheduler config object
//   kernelNames()                  every kernel name the samplers call
//
// Plain ES modules, no dependencies (browsers and node >= 20).

import { COMMON_KERNELS } from "./base.js";
import { DDIM } from "./ddim.js";
import { DPMSolverPP } from "./dpm_solver.js";
import { Euler } from "./euler.js";
import { EulerAncestral } from "./euler_ancestral.js";
import { LCM } from "./lcm.js";
import { PNDM } from "./pndm.js";

export { Scheduler, addNoise, checkStrength, latentSample } from "./base.js";
export { DDIM, DPMSolverPP, Euler, EulerAncestral, LCM, PNDM };

export const SCHEDULERS = Object.freeze({
  "pndm": PNDM,
  "dpm-solver++": DPMSolverPP,
  "euler": Euler,
  "euler-a": EulerAncestral,
  "ddim": DDIM,
  "lcm": LCM,
});

function checkName(name) {
  if (!Object.prototype.hasOwnProperty.call(SCHEDULERS, name)) {
    const shown = typeof name === "string" ? `'${name}'` : String(name);
    throw new Error(`unknown scheduler ${shown}; choose one of: ${Object.keys(SCHEDULERS).join(", ")}`);
  }
  return SCHEDULERS[name];
}

/** Our `name` sampler configured as diffusers would configure it from `config`. */
export function makeScheduler(name, config) {
  return new (checkName(name))(config);
}

/** Every kernel name the samplers call (each is prefixed by its sampler), and the shared
 * add_noise and latent_sample (image-to-image). */
export function kernelNames() {
  return [...COMMON_KERNELS.map((k) => k.kernelName),
          ...Object.values(SCHEDULERS).flatMap((cls) => cls.kernels.map((k) => k.kernelName))];
}
