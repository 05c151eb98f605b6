"""Euler ancestral (diffusers' EulerAncestralDiscreteScheduler): an Euler step down to
sigma_down, then fresh noise of scale sigma_up. Every step (the last one included, where
sigma_up = 0) draws one randn(model_output.shape) from the generator, as diffusers does.
"""

from __future__ import annotations

import numpy as np

from wsd.samplers.base import COMMON_OPTIONS, Scheduler, f32, kernel
from wsd.samplers.euler import Euler, euler_timesteps, interpolated_sigmas


@kernel("euler_a_step", "sample", "model_output", "noise", coeffs=3)
def euler_a_step(sample, model_output, noise, coeffs):
    """Epsilon prediction."""
    sigma, dt, sigma_up = coeffs  # dt = sigma_down - sigma
    pred_original_sample = sample - sigma * model_output
    derivative = (sample - pred_original_sample) / sigma
    prev_sample = sample + derivative * dt
    return prev_sample + noise * sigma_up


@kernel("euler_a_step_v", "sample", "model_output", "noise", coeffs=5)
def euler_a_step_v(sample, model_output, noise, coeffs):
    """V-prediction: x0 = v * c_out + x * c_skip."""
    sigma, dt, sigma_up, c_out, sigma_sq_plus_1 = coeffs  # c_out = -sigma / (sigma**2+1)**0.5
    pred_original_sample = model_output * c_out + (sample / sigma_sq_plus_1)
    derivative = (sample - pred_original_sample) / sigma
    prev_sample = sample + derivative * dt
    return prev_sample + noise * sigma_up


class EulerAncestral(Euler):
    """Shares Euler's timesteps, sigmas, init_noise_sigma and scale_model_input."""

    name = "euler-a"
    diffusers_class = "EulerAncestralDiscreteScheduler"
    OPTIONS = {
        **COMMON_OPTIONS,
        "prediction_type": ("epsilon", ("epsilon", "v_prediction")),
        "timestep_spacing": ("linspace", ("linspace", "leading", "trailing")),
        "rescale_betas_zero_snr": (False, (False,)),
    }
    kernels = (euler_a_step, euler_a_step_v)

    def __init__(self, config: dict):
        Scheduler.__init__(self, config)  # Euler's own checks are about options it alone has

    def _set_timesteps(self, n: int) -> None:
        cfg = self.config
        timesteps = euler_timesteps(cfg["timestep_spacing"], n, cfg["num_train_timesteps"],
                                    cfg["steps_offset"])
        self._check_timesteps(timesteps, n)
        sigmas = interpolated_sigmas(self.alphas_cumprod, timesteps, 0.0)
        self._timesteps, self.sigmas = timesteps.astype(np.float32), sigmas

        s = sigmas.astype(np.float64)
        sigma_from, sigma_to = s[:-1], s[1:]
        sigma_up = (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5
        sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
        sigma = sigma_from
        self._scale = f32((sigma ** 2 + 1) ** 0.5)[:, None]
        self._coeffs = f32(np.stack([sigma, sigma_down - sigma, sigma_up,
                                     -sigma / (sigma ** 2 + 1) ** 0.5, sigma ** 2 + 1], axis=1))

    def step(self, run, model_output, i: int, sample, rng=None):
        if rng is None:
            raise ValueError("euler-a: step() needs rng (an object with .randn(shape))")
        self._begin_step(i)
        noise = np.asarray(rng.randn(tuple(int(d) for d in model_output.shape)), np.float32)
        if self.config["prediction_type"] == "v_prediction":
            return euler_a_step_v(run, sample, model_output, noise, self._coeffs[i])
        return euler_a_step(run, sample, model_output, noise, self._coeffs[i, :3])
