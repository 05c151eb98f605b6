"""PNDM (diffusers' PNDMScheduler) with skip_prk_steps=True: linear multistep (PLMS) only.

With n inference steps the UNet runs n + 1 times: the second timestep is repeated. Step 0 is an
Euler-like step from the first model output; step 1 re-evaluates from the *same* sample
(`cur_sample`) with the average of the two outputs; from step 2 on, the Adams-Bashforth
combinations of order 2, 3, then 4 of the stored outputs (`ets`).
"""

from __future__ import annotations

import numpy as np

from wsd.samplers.base import ANY, COMMON_OPTIONS, Scheduler, kernel


@kernel("pndm_warmup", "model_output", "ets_1")
def pndm_warmup(model_output, ets_1):
    return (model_output + ets_1) / 2


@kernel("pndm_plms2", "ets_1", "ets_2")
def pndm_plms2(ets_1, ets_2):
    return (3 * ets_1 - ets_2) / 2


@kernel("pndm_plms3", "ets_1", "ets_2", "ets_3")
def pndm_plms3(ets_1, ets_2, ets_3):
    return (23 * ets_1 - 16 * ets_2 + 5 * ets_3) / 12


@kernel("pndm_plms4", "ets_1", "ets_2", "ets_3", "ets_4")
def pndm_plms4(ets_1, ets_2, ets_3, ets_4):
    return (1 / 24) * (55 * ets_1 - 59 * ets_2 + 37 * ets_3 - 9 * ets_4)


@kernel("pndm_prev_sample", "sample", "model_output", coeffs=3)
def pndm_prev_sample(sample, model_output, coeffs):
    """PNDM paper eq. (9) (diffusers' `_get_prev_sample`), epsilon prediction."""
    sample_coeff, alpha_diff, model_output_denom_coeff = coeffs
    return sample_coeff * sample - alpha_diff * model_output / model_output_denom_coeff


@kernel("pndm_prev_sample_v", "sample", "model_output", coeffs=5)
def pndm_prev_sample_v(sample, model_output, coeffs):
    """The same with v-prediction (converted to epsilon first)."""
    sample_coeff, alpha_diff, model_output_denom_coeff, sqrt_alpha_prod_t, sqrt_beta_prod_t = coeffs
    model_output = sqrt_alpha_prod_t * model_output + sqrt_beta_prod_t * sample
    return sample_coeff * sample - alpha_diff * model_output / model_output_denom_coeff


class PNDM(Scheduler):
    name = "pndm"
    diffusers_class = "PNDMScheduler"
    OPTIONS = {
        **COMMON_OPTIONS,
        "skip_prk_steps": (False, (True,)),
        "set_alpha_to_one": (False, ANY),
        "prediction_type": ("epsilon", ("epsilon", "v_prediction")),
        "timestep_spacing": ("leading", ("linspace", "leading", "trailing")),
    }
    kernels = (pndm_warmup, pndm_plms2, pndm_plms3, pndm_plms4, pndm_prev_sample,
               pndm_prev_sample_v)

    def __init__(self, config: dict):
        super().__init__(config)
        self.final_alpha_cumprod = (1.0 if self.config["set_alpha_to_one"]
                                    else float(self.alphas_cumprod[0]))
        self.ets: list = []  # previous model outputs (device tensors), oldest first
        self.cur_sample = None

    def _set_timesteps(self, n: int) -> None:
        cfg = self.config
        num_train = cfg["num_train_timesteps"]
        if cfg["timestep_spacing"] == "linspace":
            base = np.linspace(0, num_train - 1, n).round().astype(np.int64)
        elif cfg["timestep_spacing"] == "leading":
            step_ratio = num_train // n
            base = (np.arange(0, n) * step_ratio).round().astype(np.int64)
            base += cfg["steps_offset"]
        else:  # trailing
            step_ratio = num_train / n
            base = np.round(np.arange(num_train, 0, -step_ratio))[::-1].astype(np.int64)
            base -= 1
        # skip_prk_steps: the second-to-last base timestep appears twice.
        timesteps = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1].copy()
        self._check_timesteps(timesteps, n, distinct="none")  # step 1 repeats by design
        self._timesteps = timesteps.astype(np.float32)

        self._coeffs = self._plms_coeffs(timesteps, n)
        self.ets = []
        self.cur_sample = None

    def _plms_coeffs(self, timesteps: np.ndarray, n: int) -> np.ndarray:
        """Each step's coefficients. diffusers' step_plms: the previous timestep is
        t - num_train // n, except at the second step run (its counter 1), which goes from
        t + num_train // n to t. With img2img the counter starts at the first kept step."""
        ratio = self.config["num_train_timesteps"] // n
        coeffs = []
        for i, t in enumerate(timesteps):
            t, prev_t = (int(t) + ratio, int(t)) if i == 1 else (int(t), int(t) - ratio)
            alpha_prod_t = self._alpha_prod(t)
            alpha_prod_t_prev = (self._alpha_prod(prev_t) if prev_t >= 0
                                 else self.final_alpha_cumprod)
            beta_prod_t = 1 - alpha_prod_t
            beta_prod_t_prev = 1 - alpha_prod_t_prev
            sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
            model_output_denom_coeff = alpha_prod_t * beta_prod_t_prev ** 0.5 + (
                alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
            coeffs.append([sample_coeff, alpha_prod_t_prev - alpha_prod_t,
                           model_output_denom_coeff, alpha_prod_t ** 0.5, beta_prod_t ** 0.5])
        return np.array(coeffs, np.float64).astype(np.float32)

    def _truncate(self, begin: int) -> None:
        # PNDMScheduler has no begin index: its counter (warm-up, then PLMS) restarts at
        # the first kept timestep, which may be either copy of the repeated one.
        self._coeffs = self._plms_coeffs(self._timesteps[begin:], self.num_inference_steps)

    def step(self, run, model_output, i: int, sample, rng=None):
        self._begin_step(i)
        if i != 1:
            self.ets = self.ets[-3:] + [model_output]
        if i == 0:
            self.cur_sample = sample
        elif i == 1:
            model_output = pndm_warmup(run, model_output, self.ets[-1])
            sample, self.cur_sample = self.cur_sample, None
        elif len(self.ets) == 2:
            model_output = pndm_plms2(run, self.ets[-1], self.ets[-2])
        elif len(self.ets) == 3:
            model_output = pndm_plms3(run, self.ets[-1], self.ets[-2], self.ets[-3])
        else:
            model_output = pndm_plms4(run, self.ets[-1], self.ets[-2], self.ets[-3],
                                      self.ets[-4])
        if self.config["prediction_type"] == "v_prediction":
            return pndm_prev_sample_v(run, sample, model_output, self._coeffs[i])
        return pndm_prev_sample(run, sample, model_output, self._coeffs[i, :3])
