"""LCM (diffusers' LCMScheduler): multistep sampling of a latent consistency model.

Each step maps the sample at timestep t to the model's estimate of the clean latents,
`denoised = c_out * x0 + c_skip * sample` (x0 from the model output as in DDIM; c_skip and
c_out the consistency model's boundary-condition scalings at t * timestep_scaling), then,
except at the last step, noises it afresh to the next timestep:
`prev = sqrt(alpha_prev) * denoised + sqrt(1 - alpha_prev) * noise`, with one
randn(model_output.shape) from the generator per step (none at the last step). The last
step returns `denoised` itself, which is also what LatentConsistencyModelPipeline decodes.

Timesteps come from an `original_inference_steps`-step schedule (k = num_train_timesteps //
original_inference_steps; timesteps k - 1, 2k - 1, ..., descending) from which
`num_inference_steps` evenly spaced entries are taken. diffusers ignores timestep_spacing and
steps_offset here, and so do we; more steps than original_inference_steps is refused (diffusers
raises too).
"""

from __future__ import annotations

import math

import numpy as np

from wsd.samplers.base import ANY, COMMON_OPTIONS, Scheduler, check_strength, f32, kernel

SIGMA_DATA = 0.5  # diffusers' fixed sigma_data of the boundary condition


@kernel("lcm_denoise", "sample", "model_output", coeffs=4)
def lcm_denoise(sample, model_output, coeffs):
    """Epsilon prediction: x0 = (x - sqrt(beta) eps) / sqrt(alpha)."""
    sqrt_beta_prod_t, sqrt_alpha_prod_t, c_out, c_skip = coeffs
    predicted_original_sample = (sample - sqrt_beta_prod_t * model_output) / sqrt_alpha_prod_t
    return c_out * predicted_original_sample + c_skip * sample


@kernel("lcm_denoise_v", "sample", "model_output", coeffs=4)
def lcm_denoise_v(sample, model_output, coeffs):
    """V-prediction: x0 = sqrt(alpha) x - sqrt(beta) v."""
    sqrt_beta_prod_t, sqrt_alpha_prod_t, c_out, c_skip = coeffs
    predicted_original_sample = sqrt_alpha_prod_t * sample - sqrt_beta_prod_t * model_output
    return c_out * predicted_original_sample + c_skip * sample


@kernel("lcm_denoise_sample", "sample", "model_output", coeffs=2)
def lcm_denoise_sample(sample, model_output, coeffs):
    """Sample prediction: x0 is the model output."""
    c_out, c_skip = coeffs
    return c_out * model_output + c_skip * sample


@kernel("lcm_renoise", "denoised", "noise", coeffs=2)
def lcm_renoise(denoised, noise, coeffs):
    """Noise the denoised latents to the next timestep."""
    sqrt_alpha_prod_t_prev, sqrt_beta_prod_t_prev = coeffs
    return sqrt_alpha_prod_t_prev * denoised + sqrt_beta_prod_t_prev * noise


def lcm_timesteps(num_train: int, original_steps: int, n: int,
                  strength: float = 1.0) -> np.ndarray:
    """int64 timesteps of LCMScheduler.set_timesteps: the original schedule, shortened to its
    int(original_steps * strength) least noisy entries (LatentConsistencyModelImg2ImgPipeline's
    strength), then n of them evenly spaced."""
    k = num_train // original_steps
    kept = int(original_steps * strength)
    if kept // n < 1:  # diffusers: skipping_step < 1
        raise ValueError(f"lcm: strength {strength:g} keeps int({original_steps} * "
                         f"{strength:g}) = {kept} of the original_inference_steps schedule, "
                         f"fewer than num_inference_steps={n}: raise the strength or lower "
                         f"the number of steps")
    origin = (np.arange(1, kept + 1) * k - 1)[::-1]
    indices = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
    return origin[indices].astype(np.int64)


def boundary_scalings(t: int, timestep_scaling: float) -> tuple[float, float]:
    """(c_skip, c_out) at timestep t, each float32 op of diffusers' tensor code rounded as
    torch rounds it (t is an int64 tensor there, so the math is float32)."""
    scaled = f32(t * float(f32(timestep_scaling)))
    denominator = f32(f32(float(scaled) * float(scaled)) + SIGMA_DATA ** 2)
    c_skip = f32(SIGMA_DATA ** 2 / float(denominator))
    c_out = f32(float(scaled) / float(f32(math.sqrt(float(denominator)))))
    return float(c_skip), float(c_out)


class LCM(Scheduler):
    name = "lcm"
    diffusers_class = "LCMScheduler"
    OPTIONS = {
        **COMMON_OPTIONS,
        # LCMScheduler's own defaults: SD's schedule
        "beta_start": (0.00085, ANY),
        "beta_end": (0.012, ANY),
        "beta_schedule": ("scaled_linear", ("linear", "scaled_linear", "squaredcos_cap_v2")),
        "original_inference_steps": (50, ANY),  # checked in __init__
        "clip_sample": (False, (False,)),
        "clip_sample_range": (1.0, ANY),  # only used with clip_sample
        "set_alpha_to_one": (True, ANY),
        "prediction_type": ("epsilon", ("epsilon", "v_prediction", "sample")),
        "thresholding": (False, (False,)),
        "dynamic_thresholding_ratio": (0.995, ANY),  # only used with thresholding
        "sample_max_value": (1.0, ANY),  # only used with thresholding
        "timestep_spacing": ("leading", ANY),  # not used by LCMScheduler
        "timestep_scaling": (10.0, ANY),  # checked in __init__
        "rescale_betas_zero_snr": (False, (False,)),
    }
    kernels = (lcm_denoise, lcm_denoise_v, lcm_denoise_sample, lcm_renoise)

    def __init__(self, config: dict):
        super().__init__(config)
        self._check_original_steps(self.config["original_inference_steps"])
        scaling = self.config["timestep_scaling"]
        if (isinstance(scaling, bool) or not isinstance(scaling, (int, float))
                or not math.isfinite(scaling)):
            raise ValueError(f"lcm scheduler: timestep_scaling must be a finite number, "
                             f"got {scaling!r}")
        # The alpha before the clean image (unused with LCM's own timesteps, which never
        # step below timestep 0; kept as diffusers keeps it).
        self.final_alpha_cumprod = (1.0 if self.config["set_alpha_to_one"]
                                    else float(self.alphas_cumprod[0]))
        self.original_inference_steps = self.config["original_inference_steps"]
        self._strength = 1.0

    def _check_original_steps(self, original_steps) -> None:
        limit = self.config["num_train_timesteps"]
        if (isinstance(original_steps, bool) or not isinstance(original_steps, (int, np.integer))
                or not 1 <= original_steps <= limit):
            raise ValueError(f"lcm scheduler: original_inference_steps must be an integer from 1 "
                             f"to num_train_timesteps ({limit}), got {original_steps!r}")

    def set_timesteps(self, num_inference_steps: int,
                      original_inference_steps: int | None = None,
                      strength: float = 1.0) -> None:
        """As the base class; `original_inference_steps` overrides the config's for this run
        (diffusers' set_timesteps argument, which LatentConsistencyModelPipeline passes), and
        `strength` < 1 shortens the original schedule as LatentConsistencyModelImg2ImgPipeline
        has it do (StableDiffusionImg2ImgPipeline instead truncates: `truncate`)."""
        original = (self.config["original_inference_steps"] if original_inference_steps is None
                    else original_inference_steps)
        self._check_original_steps(original)
        check_strength(strength)
        self.original_inference_steps = int(original)
        self._strength = strength
        super().set_timesteps(num_inference_steps)

    def _set_timesteps(self, n: int) -> None:
        cfg, original = self.config, self.original_inference_steps
        if n > original:
            raise ValueError(f"lcm: num_inference_steps={n} is more than original_inference_steps"
                             f" ({original}); LCM takes its timesteps from that schedule, so "
                             f"choose at most {original} steps")
        timesteps = lcm_timesteps(cfg["num_train_timesteps"], original, n,
                                  self._strength)
        self._timesteps = timesteps.astype(np.float32)

        # Per step: sqrt(beta_t), sqrt(alpha_t), c_out, c_skip, sqrt(alpha_prev),
        # sqrt(beta_prev). The previous timestep is the next one of the schedule (the last
        # step has none and adds no noise: its two last coefficients are unused).
        coeffs = []
        for i, t in enumerate(timesteps):
            alpha_prod_t = self._alpha_prod(int(t))
            if i + 1 < len(timesteps):
                prev_t = int(timesteps[i + 1])
                alpha_prod_t_prev = (self._alpha_prod(prev_t) if prev_t >= 0
                                     else self.final_alpha_cumprod)
            else:
                alpha_prod_t_prev = alpha_prod_t
            c_skip, c_out = boundary_scalings(int(t), cfg["timestep_scaling"])
            coeffs.append([
                f32(math.sqrt(f32(1.0 - alpha_prod_t))), f32(math.sqrt(alpha_prod_t)),
                c_out, c_skip,
                f32(math.sqrt(alpha_prod_t_prev)), f32(math.sqrt(f32(1.0 - alpha_prod_t_prev))),
            ])
        self._coeffs = np.array(coeffs, np.float64).astype(np.float32)

    def _truncate(self, begin: int) -> None:
        # set_begin_index: the previous timestep of each kept step is still the next one
        self._coeffs = self._coeffs[begin:]

    def step(self, run, model_output, i: int, sample, rng=None):
        self._check_index(i)
        last = i == len(self.timesteps) - 1
        if rng is None and not last:
            raise ValueError("lcm: step() needs rng (an object with .randn(shape))")
        self._begin_step(i)
        coeffs, prediction = self._coeffs[i], self.config["prediction_type"]
        if prediction == "v_prediction":
            denoised = lcm_denoise_v(run, sample, model_output, coeffs[:4])
        elif prediction == "sample":
            denoised = lcm_denoise_sample(run, sample, model_output, coeffs[2:4])
        else:
            denoised = lcm_denoise(run, sample, model_output, coeffs[:4])
        if last:
            return denoised
        noise = np.asarray(rng.randn(tuple(int(d) for d in model_output.shape)), np.float32)
        return lcm_renoise(run, denoised, noise, coeffs[4:])
