"""DPM-Solver++ (diffusers' DPMSolverMultistepScheduler, algorithm_type "dpmsolver++"),
multistep, order 1 or 2 (midpoint or heun). Each step converts the model output to a
data prediction x0 (kept as history), then takes a first- or second-order step.

Orders, as diffusers picks them: step 0 is first order (no history yet); the last step is
first order when lower_order_final applies (always with final_sigmas_type "zero": the final
sigma is 0 and lambda = +inf there); all others are second order.
"""

from __future__ import annotations

import numpy as np

from wsd.samplers.base import ANY, COMMON_OPTIONS, Scheduler, f32, kernel, sigma_table


@kernel("dpmpp_convert", "sample", "model_output", coeffs=2)
def dpmpp_convert(sample, model_output, coeffs):
    """convert_model_output, epsilon prediction: x0 = (x - sigma_t * eps) / alpha_t."""
    sigma_t, alpha_t = coeffs
    return (sample - sigma_t * model_output) / alpha_t


@kernel("dpmpp_convert_v", "sample", "model_output", coeffs=2)
def dpmpp_convert_v(sample, model_output, coeffs):
    """convert_model_output, v-prediction: x0 = alpha_t * x - sigma_t * v."""
    sigma_t, alpha_t = coeffs
    return alpha_t * sample - sigma_t * model_output


@kernel("dpmpp_first_order", "sample", "m0", coeffs=2)
def dpmpp_first_order(sample, m0, coeffs):
    """dpm_solver_first_order_update: x_t = (sigma_t / sigma_s) x - alpha_t (e^-h - 1) m0."""
    sigma_ratio, alpha_expm1 = coeffs
    return sigma_ratio * sample - alpha_expm1 * m0


@kernel("dpmpp_second_order", "sample", "m0", "m1", coeffs=4)
def dpmpp_second_order(sample, m0, m1, coeffs):
    """multistep_dpm_solver_second_order_update. d1_coeff is 0.5 alpha_t (e^-h - 1)
    (midpoint) or -alpha_t ((e^-h - 1) / h + 1) (heun: diffusers adds it, we subtract its
    negation: the same float32 result)."""
    sigma_ratio, alpha_expm1, d1_coeff, inv_r0 = coeffs
    D0, D1 = m0, inv_r0 * (m0 - m1)
    return sigma_ratio * sample - alpha_expm1 * D0 - d1_coeff * D1


class DPMSolverPP(Scheduler):
    name = "dpm-solver++"
    diffusers_class = "DPMSolverMultistepScheduler"
    OPTIONS = {
        **COMMON_OPTIONS,
        "solver_order": (2, (1, 2)),
        "prediction_type": ("epsilon", ("epsilon", "v_prediction")),
        "thresholding": (False, (False,)),
        "dynamic_thresholding_ratio": (0.995, ANY),  # only used with thresholding
        "sample_max_value": (1.0, ANY),  # only used with thresholding
        # diffusers maps the deprecated "deis" to dpmsolver++ ("logrho"/"bh1"/"bh2": midpoint)
        "algorithm_type": ("dpmsolver++", ("dpmsolver++", "deis")),
        "solver_type": ("midpoint", ("midpoint", "heun", "logrho", "bh1", "bh2")),
        "lower_order_final": (True, (True, False)),
        "euler_at_final": (False, (True, False)),
        "use_karras_sigmas": (False, (False,)),
        "use_exponential_sigmas": (False, (False,)),
        "use_beta_sigmas": (False, (False,)),
        "use_lu_lambdas": (False, (False,)),
        "use_flow_sigmas": (False, (False,)),
        "flow_shift": (1.0, ANY),  # only used with flow sigmas
        "final_sigmas_type": ("zero", ("zero", "sigma_min")),
        "lambda_min_clipped": (-float("inf"), (-float("inf"),)),
        "variance_type": (None, (None,)),
        "timestep_spacing": ("linspace", ("linspace", "leading", "trailing")),
        "rescale_betas_zero_snr": (False, (False,)),
        "use_dynamic_shifting": (False, (False,)),
        "time_shift_type": ("exponential", ANY),  # only used with dynamic shifting
    }
    kernels = (dpmpp_convert, dpmpp_convert_v, dpmpp_first_order, dpmpp_second_order)

    def __init__(self, config: dict):
        super().__init__(config)
        self.heun = self.config["solver_type"] == "heun"
        self.model_outputs: list = []  # data predictions x0 (device tensors), oldest first

    def _set_timesteps(self, n: int) -> None:
        cfg = self.config
        num_train = cfg["num_train_timesteps"]
        last_timestep = num_train  # lambda_min_clipped = -inf clips nothing
        if cfg["timestep_spacing"] == "linspace":
            timesteps = (np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1]
                         .astype(np.int64))
        elif cfg["timestep_spacing"] == "leading":
            step_ratio = last_timestep // (n + 1)
            timesteps = (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].astype(np.int64)
            timesteps += cfg["steps_offset"]
        else:  # trailing
            step_ratio = num_train / n
            timesteps = np.arange(last_timestep, 0, -step_ratio).round().astype(np.int64)
            timesteps -= 1
        self._check_timesteps(timesteps, n, distinct="all")
        self._timesteps = timesteps.astype(np.float32)

        table = sigma_table(self.alphas_cumprod)
        sigmas = np.interp(timesteps, np.arange(0, len(table)), table)
        if cfg["final_sigmas_type"] == "sigma_min":
            sigma_last = table[0]
        else:
            sigma_last = 0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.sigmas = sigmas

        count = len(timesteps)
        self._orders, self._convert_coeffs, self._update_coeffs = [], [], []
        for i in range(count):
            lower_order_final = i == count - 1 and (
                cfg["euler_at_final"] or (cfg["lower_order_final"] and count < 15)
                or cfg["final_sigmas_type"] == "zero")
            order = 1 if cfg["solver_order"] == 1 or i == 0 or lower_order_final else 2
            self._orders.append(order)
            alpha_s0, sigma_s0 = self._alpha_sigma(sigmas[i])
            self._convert_coeffs.append([sigma_s0, alpha_s0])
            self._update_coeffs.append(self._update(order, i))
        self._convert_coeffs = np.array(self._convert_coeffs, np.float64).astype(np.float32)
        self._update_coeffs = np.array(self._update_coeffs, np.float64).astype(np.float32)
        self.model_outputs = []

    @staticmethod
    def _alpha_sigma(sigma) -> tuple[float, float]:
        """diffusers' _sigma_to_alpha_sigma_t (VP schedule), in float64."""
        sigma = float(sigma)
        alpha_t = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _update(self, order: int, i: int) -> list[float]:
        """Coefficients of step i's update, from sigmas[i + 1] (target), [i], [i - 1]."""
        with np.errstate(divide="ignore"):  # sigma_t = 0 at the end: lambda_t = +inf
            alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
            alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
            lambda_t = np.log(alpha_t) - np.log(sigma_t)
            lambda_s0 = np.log(alpha_s0) - np.log(sigma_s0)
            h = lambda_t - lambda_s0
            sigma_ratio = sigma_t / sigma_s0
            alpha_expm1 = alpha_t * (np.exp(-h) - 1.0)
            if order == 1:
                return [sigma_ratio, alpha_expm1, 0.0, 0.0]
            alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
            lambda_s1 = np.log(alpha_s1) - np.log(sigma_s1)
            h_0 = lambda_s0 - lambda_s1
            r0 = h_0 / h
            if self.heun:
                d1_coeff = -(alpha_t * ((np.exp(-h) - 1.0) / h + 1.0))
            else:
                d1_coeff = 0.5 * (alpha_t * (np.exp(-h) - 1.0))
            return [sigma_ratio, alpha_expm1, d1_coeff, 1.0 / r0]

    def _truncate(self, begin: int) -> None:
        # set_begin_index: the step index starts at `begin` with no history (lower_order_nums
        # 0), so the first kept step is first order; lower_order_final still looks at the
        # full schedule's last step.
        self._orders[begin] = 1
        self._update_coeffs[begin] = self._update(1, begin)
        self._orders = self._orders[begin:]
        self._convert_coeffs = self._convert_coeffs[begin:]
        self._update_coeffs = self._update_coeffs[begin:]

    def noise_coeffs(self) -> np.ndarray:
        """diffusers' add_noise: alpha_t * x + sigma_t * noise at sigmas[begin_index], with
        _sigma_to_alpha_sigma_t's float32 ops: 1 / (sigma ** 2 + 1) ** 0.5, sigma * alpha_t."""
        sigma = np.float64(self.sigmas[self.begin_index])
        alpha_t = f32(1.0 / np.float64(f32(np.sqrt(np.float64(f32(f32(sigma * sigma) + 1.0))))))
        return f32([alpha_t, sigma * np.float64(alpha_t)])

    def step(self, run, model_output, i: int, sample, rng=None):
        self._begin_step(i)
        convert = (dpmpp_convert_v if self.config["prediction_type"] == "v_prediction"
                   else dpmpp_convert)
        x0 = convert(run, sample, model_output, self._convert_coeffs[i])
        self.model_outputs = self.model_outputs[-1:] + [x0]
        coeffs = self._update_coeffs[i]
        if self._orders[i] == 1:
            return dpmpp_first_order(run, sample, x0, coeffs[:2])
        return dpmpp_second_order(run, sample, self.model_outputs[-1], self.model_outputs[-2],
                                  coeffs)
