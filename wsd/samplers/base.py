"""What every sampler shares: config handling, the noise-schedule tables, the common interface,
and `kernel`, which turns a few lines of tensor math into a compiled Relax function.

Split of the work (the same split the browser uses, with the host half ported to JS):

* host (numpy): the schedule tables, the timesteps, and for each step a handful of float32
  coefficients that depend only on the step index (computed in float64, rounded once);
* device (compiled Relax functions): everything touching latents, model outputs and history.

The tables mirror diffusers' float32 torch code op by op: each float32 op is done here in
float64 and rounded to float32 at the same point, which gives the IEEE float32 result (for
+, -, *, /, sqrt). alphas_cumprod comes out bit for bit equal; sigma tables to one ulp, as
torch's CPU float32 sqrt is not correctly rounded (1 ulp off for ~16% of inputs, torch 2.13).
The per-step coefficients differ from diffusers' (float32 scalar tensor math) by an ulp or so;
given diffusers' own coefficients the compiled kernels reproduce diffusers' steps exactly.
"""

from __future__ import annotations

import math
from numbers import Number
from typing import Callable

import numpy as np
from tvm import relax, tirx

from wsd.settings import check_strength  # noqa: F401 (the samplers' strength check)

ANY = object()  # an option whose every value is supported


def f32(x) -> np.ndarray | np.float32:
    """Round to float32 (numpy scalar or array)."""
    return np.asarray(x, dtype=np.float32)[()]


# ---- noise schedule tables (bit-exact mirrors of diffusers' torch float32 code) ------------

def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=torch.float32) on CPU: a float32 step, then
    start + step * i (first half) or end - step * (steps - 1 - i) (second half), each formed
    exactly (an FMA in torch's vectorized kernel) and rounded once to float32."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = np.float32(np.float32(end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    low = np.float64(start32) + np.float64(step) * i
    high = np.float64(end32) - np.float64(step) * (steps - 1 - i)
    return np.where(i < steps // 2, low, high).astype(np.float32)


def betas_for_alpha_bar(num_diffusion_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """diffusers' "squaredcos_cap_v2" (Glide cosine) schedule: Python floats, then float32."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_diffusion_timesteps)
                 / alpha_bar(i / num_diffusion_timesteps), max_beta)
             for i in range(num_diffusion_timesteps)]
    return np.array(betas, dtype=np.float32)


def make_alphas_cumprod(config: dict) -> np.ndarray:
    """float32 alphas_cumprod, as diffusers' scheduler __init__ computes it."""
    n = config["num_train_timesteps"]
    if config["trained_betas"] is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64).astype(np.float32)
    elif config["beta_schedule"] == "linear":
        betas = torch_linspace_f32(config["beta_start"], config["beta_end"], n)
    elif config["beta_schedule"] == "scaled_linear":
        root = torch_linspace_f32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n)
        betas = f32(root.astype(np.float64) ** 2)
    elif config["beta_schedule"] == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(n)
    else:
        raise ValueError(f"beta_schedule={config['beta_schedule']!r} is not supported "
                         "(supported: 'linear', 'scaled_linear', 'squaredcos_cap_v2')")
    alphas = f32(1.0 - betas.astype(np.float64))
    # torch.cumprod on CPU accumulates float32 in float64 and rounds each output.
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def sigma_table(alphas_cumprod: np.ndarray) -> np.ndarray:
    """((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, each op in float32 (IEEE)."""
    a = alphas_cumprod.astype(np.float32)
    return np.sqrt((np.float32(1.0) - a) / a)


# ---- the common interface ----------------------------------------------------------------

class Scheduler:
    """One sampler: host logic in numpy, per-step tensor math in compiled Relax functions.

    Usage, as diffusers' StableDiffusionPipeline drives a scheduler:

        s = make_scheduler("euler", config); s.set_timesteps(25)
        latents = noise * np.float32(s.init_noise_sigma)
        for i, t in enumerate(s.timesteps):
            x = s.scale_model_input(run, latents, i)
            eps = <UNet(x, t)>
            latents = s.step(run, eps, i, latents, rng)

    Image-to-image, as diffusers' StableDiffusionImg2ImgPipeline drives it: after
    set_timesteps, `s.truncate(strength)` keeps the last int(n * strength) steps (its
    get_timesteps and set_begin_index), `latents = s.add_noise(run, image_latents, noise)`
    noises the image latents to the first kept timestep (`scheduler.add_noise`), and the loop
    above runs over the kept steps, numbered from 0.

    `run(name, *args)` calls a compiled function (see wsd.runtime.executor.Executor); tensors may be
    numpy arrays or device tensors and a device tensor comes back. `rng.randn(shape)` gives
    float32 standard normal numbers (only stochastic samplers use it). Steps must be taken in
    order 0, 1, 2, ...: multistep samplers keep their history (device tensors) here.
    """

    name: str = ""
    diffusers_class: str = ""
    # diffusers __init__ parameter -> (diffusers' default, supported values or ANY)
    OPTIONS: dict[str, tuple] = {}
    kernels: tuple = ()  # the Kernel objects this sampler calls

    def __init__(self, config: dict):
        self.config = resolve_config(self.name, self.OPTIONS, config)
        self.alphas_cumprod = make_alphas_cumprod(self.config)
        self.num_inference_steps: int | None = None
        self._timesteps: np.ndarray | None = None
        self._next_step = 0
        self.begin_index = 0  # index in the full schedule of step 0 (img2img: truncate())

    # -- schedule ------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int) -> None:
        """Plan `num_inference_steps` denoising steps (and forget any previous run)."""
        n = num_inference_steps
        limit = self.config["num_train_timesteps"]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an integer, got {n!r}")
        if not 1 <= n <= limit:
            raise ValueError(f"num_inference_steps must be between 1 and num_train_timesteps "
                             f"({limit}), got {n}")
        self.num_inference_steps, self._timesteps, self._next_step = None, None, 0
        self.begin_index = 0
        self._set_timesteps(int(n))
        self.num_inference_steps = int(n)

    def _set_timesteps(self, n: int) -> None:
        raise NotImplementedError

    @property
    def timesteps(self) -> np.ndarray:
        """float32 timestep the UNet receives at each step (one entry per step)."""
        if self._timesteps is None:
            raise ValueError(f"{self.name}: call set_timesteps() first")
        return self._timesteps

    @property
    def init_noise_sigma(self) -> float:
        """Scale of the initial noise (latents = randn * init_noise_sigma, in float32)."""
        return 1.0

    # -- image-to-image --------------------------------------------------------------------
    def truncate(self, strength: float) -> None:
        """Keep the steps image-to-image runs at this strength, as diffusers'
        StableDiffusionImg2ImgPipeline.get_timesteps: init = min(int(n * strength), n),
        t_start = n - init, timesteps[t_start * order:] (order 1 for all of ours) and
        set_begin_index(t_start). Strength must be in (0, 1]; one that keeps no step is
        refused (diffusers would fail on an empty schedule). Steps are then numbered from 0."""
        n = self.num_inference_steps
        if n is None:
            raise ValueError(f"{self.name}: call set_timesteps() first")
        if self.begin_index or self._next_step:
            raise ValueError(f"{self.name}: truncate() comes once, right after set_timesteps()")
        check_strength(strength)
        init = min(int(n * strength), n)
        begin = max(n - init, 0)
        if init == 0 or begin >= len(self._timesteps):
            raise ValueError(f"strength {strength:g} with {n} steps leaves no denoising step "
                             f"(int({n} * {strength:g}) = 0): raise the strength or the "
                             f"number of steps")
        self._truncate(begin)
        self._timesteps = self._timesteps[begin:].copy()
        self.begin_index = begin

    def _truncate(self, begin: int) -> None:
        """Drop the per-step state of the first `begin` steps (the sampler's arrays)."""
        raise NotImplementedError

    def add_noise(self, run, original, noise):
        """diffusers' `scheduler.add_noise(original, noise, timesteps[:1])` at the first step
        to run (after truncate()): a * original + b * noise on the device."""
        if self._timesteps is None:
            raise ValueError(f"{self.name}: call set_timesteps() first")
        if self._next_step:
            raise ValueError(f"{self.name}: add_noise() comes before the first step")
        return add_noise(run, original, noise, self.noise_coeffs())

    def noise_coeffs(self) -> np.ndarray:
        """(a, b) of add_noise. DDPM's forward process (PNDM, DDIM, LCM): sqrt(alpha_prod_t),
        sqrt(1 - alpha_prod_t) at the first timestep, each float32 op rounded as torch's."""
        alpha_prod = np.float32(self._alpha_prod(int(self.timesteps[0])))
        return f32([np.sqrt(np.float64(alpha_prod)),
                    np.sqrt(np.float64(f32(1.0 - np.float64(alpha_prod))))])

    # -- per step ------------------------------------------------------------------------
    def scale_model_input(self, run, sample, i: int):
        """The UNet's input at step i (most samplers: the sample itself)."""
        self._check_index(i)
        return sample

    def step(self, run, model_output, i: int, sample, rng=None):
        """The sample after step i, from the UNet's output at step i."""
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------
    def _check_index(self, i: int) -> None:
        count = len(self.timesteps)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < count:
            raise ValueError(f"{self.name}: step index must be an integer in [0, {count}), "
                             f"got {i!r}")

    def _begin_step(self, i: int) -> None:
        """Steps change host-side state (history, counters): they must come in order."""
        self._check_index(i)
        if i != self._next_step:
            raise ValueError(f"{self.name}: steps must be taken in order; expected step "
                             f"{self._next_step}, got {i} (call set_timesteps() to restart)")
        self._next_step = i + 1

    def _check_timesteps(self, timesteps: np.ndarray, n: int, distinct: str = "first") -> None:
        """Refuse the step counts for which diffusers' schedule is broken rather than copy it:
        timesteps outside the trained range (e.g. "trailing" with 61 steps, where numpy's
        arange overshoots and yields a last timestep -1), and repeated timesteps where they
        break the method (diffusers looks the first step up by its timestep; DPM-Solver
        divides by the log-SNR gap between steps). `distinct`: "first", "all" or "none"."""
        cfg, last = self.config, self.config["num_train_timesteps"] - 1
        where = (f"num_inference_steps={n} with timestep_spacing={cfg['timestep_spacing']!r}"
                 f" and steps_offset={cfg['steps_offset']}")
        outside = timesteps[(timesteps < 0) | (timesteps > last)]
        if outside.size:
            raise ValueError(f"{self.name}: {where} gives timestep {outside[0]:g}, outside the "
                             f"trained range [0, {last}]; choose another number of steps")
        if distinct == "all":
            repeated = len(np.unique(timesteps)) < len(timesteps)
        else:
            repeated = distinct == "first" and np.count_nonzero(timesteps == timesteps[0]) > 1
        if repeated:
            raise ValueError(f"{self.name}: {where} repeats a timestep; "
                             "choose fewer steps")

    def _alpha_prod(self, t: int) -> float:
        """alphas_cumprod[t] as a float (validated index)."""
        if not 0 <= t < len(self.alphas_cumprod):
            raise ValueError(f"{self.name}: timestep {t} is outside the trained range "
                             f"[0, {len(self.alphas_cumprod)}); check num_inference_steps "
                             "and steps_offset")
        return float(self.alphas_cumprod[t])

    @classmethod
    def relax_functions(cls) -> dict[str, relax.Function]:
        return {k.name: k.relax_function() for k in cls.kernels}


def resolve_config(name: str, options: dict, config: dict) -> dict:
    """The parameters `XScheduler.from_config(config)` would use: each known key from the
    config (unless listed in `_use_default_values`), diffusers' default otherwise; unknown keys
    are ignored as diffusers ignores them. Values we do not implement raise ValueError."""
    if not isinstance(config, dict):
        raise ValueError(f"{name}: scheduler config must be a dict, got {type(config).__name__}")
    use_defaults = set(config.get("_use_default_values", ()))
    resolved = {}
    for key, (default, allowed) in options.items():
        value = config[key] if key in config and key not in use_defaults else default
        if allowed is not ANY and value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ValueError(f"{name} scheduler: {key}={value!r} is not supported "
                             f"(supported: {choices})")
        resolved[key] = value
    if resolved.get("trained_betas") is not None:
        if len(resolved["trained_betas"]) != resolved["num_train_timesteps"]:
            raise ValueError(f"{name} scheduler: trained_betas has "
                             f"{len(resolved['trained_betas'])} entries, num_train_timesteps "
                             f"is {resolved['num_train_timesteps']}")
    n = resolved["num_train_timesteps"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"{name} scheduler: num_train_timesteps must be an integer >= 2, "
                         f"got {n!r}")
    return resolved


# Options every sampler shares, with diffusers' defaults (identical across the five classes).
COMMON_OPTIONS = {
    "num_train_timesteps": (1000, ANY),
    "beta_start": (0.0001, ANY),
    "beta_end": (0.02, ANY),
    "beta_schedule": ("linear", ("linear", "scaled_linear", "squaredcos_cap_v2")),
    "trained_betas": (None, ANY),
    "steps_offset": (0, ANY),
}


# ---- compiled tensor math ----------------------------------------------------------------

class TensorExpr:
    """A Relax expression with Python arithmetic, so that kernels read like diffusers' code.
    Every operator emits one elementwise Relax op in the order Python evaluates it, which
    keeps float32 rounding the same as torch's; Python numbers become float32 constants."""

    def __init__(self, bb: relax.BlockBuilder, expr: relax.Expr):
        self.bb, self.expr = bb, expr

    def _lift(self, other) -> relax.Expr:
        if isinstance(other, TensorExpr):
            return other.expr
        if isinstance(other, Number):
            return relax.const(float(other), "float32")
        raise TypeError(f"cannot combine a tensor with {type(other).__name__}")

    def _op(self, op, a, b) -> TensorExpr:
        return TensorExpr(self.bb, self.bb.emit(op(a, b)))

    def __add__(self, o): return self._op(relax.op.add, self.expr, self._lift(o))
    def __radd__(self, o): return self._op(relax.op.add, self._lift(o), self.expr)
    def __sub__(self, o): return self._op(relax.op.subtract, self.expr, self._lift(o))
    def __rsub__(self, o): return self._op(relax.op.subtract, self._lift(o), self.expr)
    def __mul__(self, o): return self._op(relax.op.multiply, self.expr, self._lift(o))
    def __rmul__(self, o): return self._op(relax.op.multiply, self._lift(o), self.expr)
    def __truediv__(self, o): return self._op(relax.op.divide, self.expr, self._lift(o))
    def __rtruediv__(self, o): return self._op(relax.op.divide, self._lift(o), self.expr)


class Kernel:
    """A compiled function `name(*tensors[, coeffs])`: latent-shaped float32 tensors of
    symbolic shape (n, c, h, w), then (if num_coeffs) a float32 vector of per-step scalars.
    `body(*tensors[, coeffs])` gets TensorExpr objects (coeffs: a list of scalar ones) and
    returns the result. Calling the Kernel runs it: `kernel(run, *tensors[, coeffs])`."""

    def __init__(self, name: str, tensors: tuple[str, ...], num_coeffs: int, body: Callable):
        self.name, self.tensors, self.num_coeffs, self.body = name, tensors, num_coeffs, body

    def __call__(self, run, *args):
        if len(args) != len(self.tensors) + (1 if self.num_coeffs else 0):
            raise TypeError(f"{self.name} takes {self.tensors}"
                            + (" and coeffs" if self.num_coeffs else ""))
        if self.num_coeffs:
            coeffs = np.asarray(args[-1], dtype=np.float32)
            if coeffs.shape != (self.num_coeffs,):
                raise ValueError(f"{self.name} takes {self.num_coeffs} coefficients, "
                                 f"got shape {coeffs.shape}")
            args = (*args[:-1], coeffs)
        return run(self.name, *args)

    def relax_function(self) -> relax.Function:
        shape = [tirx.Var(d, "int64") for d in ("n", "c", "h", "w")]
        params = [relax.Var(t, relax.TensorType(shape, "float32")) for t in self.tensors]
        if self.num_coeffs:
            coeffs = relax.Var("coeffs", relax.TensorType([self.num_coeffs], "float32"))
            params.append(coeffs)
        bb = relax.BlockBuilder()
        with bb.function(self.name, params):
            with bb.dataflow():
                args = [TensorExpr(bb, p) for p in params[:len(self.tensors)]]
                if self.num_coeffs:
                    args.append([
                        TensorExpr(bb, bb.emit(relax.op.strided_slice(
                            coeffs, axes=[0], begin=[k], end=[k + 1])))
                        for k in range(self.num_coeffs)])
                out = bb.emit_output(self.body(*args).expr)
            bb.emit_func_output(out)
        return bb.get()[self.name]


def kernel(name: str, *tensors: str, coeffs: int = 0):
    """Decorator: `@kernel("ddim_step", "sample", "model_output", coeffs=4)`."""
    def wrap(body: Callable) -> Kernel:
        return Kernel(name, tensors, coeffs, body)
    return wrap


# Kernels every sampler uses (not prefixed: one copy in the library).

@kernel("add_noise", "original", "noise", coeffs=2)
def add_noise(original, noise, coeffs):
    """diffusers' scheduler.add_noise: sqrt(alpha_prod) * x + sqrt(1 - alpha_prod) * noise
    (DDPM-style), alpha_t * x + sigma_t * noise (DPM-Solver), or x + noise * sigma (Euler;
    a = 1: the same float32 result)."""
    a, b = coeffs
    return a * original + b * noise


@kernel("latent_sample", "mean", "std", "noise", coeffs=1)
def latent_sample(mean, std, noise, coeffs):
    """The image's latents: scaling_factor * (mean + std * randn), as diffusers'
    DiagonalGaussianDistribution.sample and the img2img pipeline's prepare_latents."""
    (scaling_factor,) = coeffs
    return scaling_factor * (mean + std * noise)


COMMON_KERNELS = (add_noise, latent_sample)
