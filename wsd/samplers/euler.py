"""Euler (diffusers' EulerDiscreteScheduler, Karras et al. 2022 Algorithm 2 with s_churn = 0).

Timesteps are spaced in [0, num_train_timesteps - 1] and, with "linspace" spacing, fractional;
sigma at each is linearly interpolated in the training sigma table; a final sigma (0, or the
smallest training sigma) is appended. The UNet sees sample / sqrt(sigma^2 + 1).
"""

from __future__ import annotations

import numpy as np

from wsd.samplers.base import ANY, COMMON_OPTIONS, Scheduler, f32, kernel, sigma_table


@kernel("euler_scale_model_input", "sample", coeffs=1)
def euler_scale_model_input(sample, coeffs):
    (sqrt_sigma_sq_plus_1,) = coeffs  # (sigma ** 2 + 1) ** 0.5
    return sample / sqrt_sigma_sq_plus_1


@kernel("euler_step", "sample", "model_output", coeffs=2)
def euler_step(sample, model_output, coeffs):
    """Epsilon prediction."""
    sigma_hat, dt = coeffs  # sigma_hat = sigma (no churn); dt = sigma_next - sigma_hat
    pred_original_sample = sample - sigma_hat * model_output
    derivative = (sample - pred_original_sample) / sigma_hat
    return sample + derivative * dt


@kernel("euler_step_v", "sample", "model_output", coeffs=4)
def euler_step_v(sample, model_output, coeffs):
    """V-prediction: x0 = v * c_out + x * c_skip."""
    sigma_hat, dt, c_out, sigma_sq_plus_1 = coeffs  # c_out = -sigma / (sigma**2 + 1) ** 0.5
    pred_original_sample = model_output * c_out + (sample / sigma_sq_plus_1)
    derivative = (sample - pred_original_sample) / sigma_hat
    return sample + derivative * dt


def interpolated_sigmas(alphas_cumprod: np.ndarray, timesteps: np.ndarray,
                        final_sigma) -> np.ndarray:
    """Training sigmas interpolated at the timesteps, then the final sigma; float32."""
    table = sigma_table(alphas_cumprod)
    sigmas = np.interp(timesteps, np.arange(0, len(table)), table)
    return np.concatenate([sigmas, [final_sigma]]).astype(np.float32)


def euler_timesteps(spacing: str, n: int, num_train: int, steps_offset: int) -> np.ndarray:
    """float32 timesteps of EulerDiscreteScheduler / EulerAncestralDiscreteScheduler."""
    if spacing == "linspace":
        return np.linspace(0, num_train - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        step_ratio = num_train // n
        timesteps = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.float32)
        timesteps += steps_offset
        return timesteps
    step_ratio = num_train / n  # trailing
    timesteps = np.arange(num_train, 0, -step_ratio).round().copy().astype(np.float32)
    timesteps -= 1
    return timesteps


def init_noise_sigma(sigmas: np.ndarray, spacing: str) -> float:
    max_sigma = np.float32(sigmas.max())
    if spacing in ("linspace", "trailing"):
        return float(max_sigma)
    # (max_sigma ** 2 + 1) ** 0.5 with float32 torch scalars: round after each op
    return float(f32(np.sqrt(f32(f32(np.float64(max_sigma) ** 2) + 1.0))))


class Euler(Scheduler):
    name = "euler"
    diffusers_class = "EulerDiscreteScheduler"
    OPTIONS = {
        **COMMON_OPTIONS,
        "prediction_type": ("epsilon", ("epsilon", "v_prediction")),
        "interpolation_type": ("linear", ("linear",)),
        "use_karras_sigmas": (False, (False, None)),
        "use_exponential_sigmas": (False, (False, None)),
        "use_beta_sigmas": (False, (False, None)),
        "sigma_min": (None, ANY),  # only used by karras/exponential/beta sigmas
        "sigma_max": (None, ANY),
        "timestep_spacing": ("linspace", ("linspace", "leading", "trailing")),
        "timestep_type": ("discrete", ("discrete", "continuous")),
        "rescale_betas_zero_snr": (False, (False,)),
        "final_sigmas_type": ("zero", ("zero", "sigma_min")),
    }
    kernels = (euler_scale_model_input, euler_step, euler_step_v)

    def __init__(self, config: dict):
        super().__init__(config)
        if (self.config["timestep_type"] == "continuous"
                and self.config["prediction_type"] == "v_prediction"):
            raise ValueError("euler scheduler: timestep_type='continuous' with "
                             "prediction_type='v_prediction' is not supported")

    def _set_timesteps(self, n: int) -> None:
        cfg = self.config
        timesteps = euler_timesteps(cfg["timestep_spacing"], n, cfg["num_train_timesteps"],
                                    cfg["steps_offset"])
        self._check_timesteps(timesteps, n)
        final = 0 if cfg["final_sigmas_type"] == "zero" else sigma_table(self.alphas_cumprod)[0]
        sigmas = interpolated_sigmas(self.alphas_cumprod, timesteps, final)
        self._timesteps, self.sigmas = timesteps.astype(np.float32), sigmas

        s = sigmas.astype(np.float64)
        sigma, sigma_next = s[:-1], s[1:]
        self._scale = f32((sigma ** 2 + 1) ** 0.5)[:, None]
        # s_churn = 0: gamma = 0, sigma_hat = sigma * (gamma + 1) = sigma
        self._coeffs = f32(np.stack([sigma, sigma_next - sigma,
                                     -sigma / (sigma ** 2 + 1) ** 0.5, sigma ** 2 + 1], axis=1))

    @property
    def init_noise_sigma(self) -> float:
        # before set_timesteps, as diffusers: the largest training sigma
        sigmas = sigma_table(self.alphas_cumprod) if self._timesteps is None else self.sigmas
        return init_noise_sigma(sigmas, self.config["timestep_spacing"])

    def _truncate(self, begin: int) -> None:
        self._scale, self._coeffs = self._scale[begin:], self._coeffs[begin:]

    def noise_coeffs(self) -> np.ndarray:
        """diffusers' add_noise: x + noise * sigmas[begin_index]."""
        return f32([1.0, self.sigmas[self.begin_index]])

    def scale_model_input(self, run, sample, i: int):
        self._check_index(i)
        return euler_scale_model_input(run, sample, self._scale[i])

    def step(self, run, model_output, i: int, sample, rng=None):
        self._begin_step(i)
        if self.config["prediction_type"] == "v_prediction":
            return euler_step_v(run, sample, model_output, self._coeffs[i])
        return euler_step(run, sample, model_output, self._coeffs[i, :2])
