"""DDIM (diffusers' DDIMScheduler) with eta = 0, as StableDiffusionPipeline runs it."""

from __future__ import annotations

import numpy as np

from wsd.samplers.base import ANY, COMMON_OPTIONS, Scheduler, kernel


@kernel("ddim_step", "sample", "model_output", coeffs=4)
def ddim_step(sample, model_output, coeffs):
    """DDIM paper eq. (12), epsilon prediction, eta = 0."""
    sqrt_beta_prod_t, sqrt_alpha_prod_t, sqrt_alpha_prod_t_prev, direction_coeff = coeffs
    pred_original_sample = (sample - sqrt_beta_prod_t * model_output) / sqrt_alpha_prod_t
    pred_epsilon = model_output
    pred_sample_direction = direction_coeff * pred_epsilon
    return sqrt_alpha_prod_t_prev * pred_original_sample + pred_sample_direction


@kernel("ddim_step_v", "sample", "model_output", coeffs=4)
def ddim_step_v(sample, model_output, coeffs):
    """The same with v-prediction."""
    sqrt_beta_prod_t, sqrt_alpha_prod_t, sqrt_alpha_prod_t_prev, direction_coeff = coeffs
    pred_original_sample = sqrt_alpha_prod_t * sample - sqrt_beta_prod_t * model_output
    pred_epsilon = sqrt_alpha_prod_t * model_output + sqrt_beta_prod_t * sample
    pred_sample_direction = direction_coeff * pred_epsilon
    return sqrt_alpha_prod_t_prev * pred_original_sample + pred_sample_direction


class DDIM(Scheduler):
    name = "ddim"
    diffusers_class = "DDIMScheduler"
    OPTIONS = {
        **COMMON_OPTIONS,
        "clip_sample": (True, (False,)),
        "set_alpha_to_one": (True, ANY),
        "prediction_type": ("epsilon", ("epsilon", "v_prediction")),
        "thresholding": (False, (False,)),
        "dynamic_thresholding_ratio": (0.995, ANY),  # only used with thresholding
        "clip_sample_range": (1.0, ANY),  # only used with clip_sample
        "sample_max_value": (1.0, ANY),  # only used with thresholding
        "timestep_spacing": ("leading", ("leading", "trailing", "linspace")),
        "rescale_betas_zero_snr": (False, (False,)),
    }
    kernels = (ddim_step, ddim_step_v)

    def __init__(self, config: dict):
        super().__init__(config)
        # The step into the clean image has no "previous" alpha: 1, or alphas_cumprod[0].
        self.final_alpha_cumprod = (1.0 if self.config["set_alpha_to_one"]
                                    else float(self.alphas_cumprod[0]))

    def _set_timesteps(self, n: int) -> None:
        cfg = self.config
        num_train = cfg["num_train_timesteps"]
        if cfg["timestep_spacing"] == "linspace":
            timesteps = np.linspace(0, num_train - 1, n).round()[::-1].astype(np.int64)
        elif cfg["timestep_spacing"] == "leading":
            step_ratio = num_train // n
            timesteps = (np.arange(0, n) * step_ratio).round()[::-1].astype(np.int64)
            timesteps += cfg["steps_offset"]
        else:  # trailing
            step_ratio = num_train / n
            timesteps = np.round(np.arange(num_train, 0, -step_ratio)).astype(np.int64)
            timesteps -= 1
        self._check_timesteps(timesteps, n)
        self._timesteps = timesteps.astype(np.float32)

        # Per-step coefficients. diffusers' previous timestep is t - num_train // n whatever
        # the spacing (so with "trailing"/"linspace" it need not be the next timestep).
        coeffs = []
        for t in timesteps:
            prev_t = t - num_train // n
            alpha_prod_t = self._alpha_prod(int(t))
            alpha_prod_t_prev = (self._alpha_prod(int(prev_t)) if prev_t >= 0
                                 else self.final_alpha_cumprod)
            beta_prod_t = 1 - alpha_prod_t
            coeffs.append([beta_prod_t ** 0.5, alpha_prod_t ** 0.5, alpha_prod_t_prev ** 0.5,
                           (1 - alpha_prod_t_prev) ** 0.5])  # std_dev_t = eta * ... = 0
        self._coeffs = np.array(coeffs, np.float64).astype(np.float32)

    def _truncate(self, begin: int) -> None:
        self._coeffs = self._coeffs[begin:]

    def step(self, run, model_output, i: int, sample, rng=None):
        self._begin_step(i)
        fn = ddim_step_v if self.config["prediction_type"] == "v_prediction" else ddim_step
        return fn(run, sample, model_output, self._coeffs[i])
