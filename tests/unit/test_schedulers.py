"""The five samplers against diffusers' schedulers, step by step.

The per-step math runs compiled (llvm) through wsd.runtime.executor.Executor; the reference is the
diffusers scheduler built from the same config, driven as StableDiffusionPipeline drives it
(scale_model_input, then step), fed the same random "model outputs" at every step.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import tvm

import diffusers
from tests.cases import SCHEDULER_VARIANTS, SD15
from wsd.runtime.executor import Executor
from wsd.samplers import (SCHEDULERS, diffusers_scheduler, make_scheduler,
                            relax_functions)

diffusers.utils.logging.set_verbosity_error()  # from_config's "unexpected keys" notes

NAMES = list(SCHEDULERS)
STEPS = (1, 2, 3, 10, 25, 50)
SPACINGS = ("leading", "trailing", "linspace")
SHAPE = (1, 4, 8, 8)
# Max abs difference allowed, relative to max(1, max |reference|). What we reach is ~1e-6:
# float32 rounding, from coefficients computed in float64 here and in float32 by torch.
TOL = 1e-5


@pytest.fixture(scope="module")
def run():
    lib = tvm.compile(tvm.IRModule(relax_functions()), "llvm")
    return Executor(lib, tvm.cpu())


class TorchRng:
    """Same interface as wsd.runtime.rng.TorchGenerator: torch.randn on a CPU torch.Generator."""

    def __init__(self, seed: int):
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def randn(self, shape) -> np.ndarray:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32).numpy()


def relative_error(ours, reference: torch.Tensor) -> float:
    ours = ours if isinstance(ours, np.ndarray) else ours.numpy()
    ref = reference.numpy()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def compare_loop(run, name: str, config: dict, steps: int, shape=SHAPE, seed: int = 0,
                 noise_seeds=(7, 7)) -> float:
    """Denoise side by side; assert every step's model input and latents; return the worst
    relative error. Model outputs are random (fixed seed, new each step), uploaded to the
    device as the UNet's would be; our latents stay on the device between steps."""
    ours, ref = make_scheduler(name, config), diffusers_scheduler(name, config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert len(ours.timesteps) == len(ref.timesteps)
    rs = np.random.RandomState(seed)
    ref_latents = torch.from_numpy(rs.randn(*shape).astype(np.float32)) * ref.init_noise_sigma
    latents = run.upload(ref_latents.numpy())
    rng, generator = TorchRng(noise_seeds[0]), torch.Generator("cpu").manual_seed(noise_seeds[1])
    worst = 0.0
    for i, t in enumerate(ref.timesteps):
        ref_input = ref.scale_model_input(ref_latents, t)
        err = relative_error(ours.scale_model_input(run, latents, i), ref_input)
        assert err <= TOL, f"{name} {steps} steps: model input of step {i} off by {err:.2e}"
        model_output = (rs.randn(*shape) * 0.8 + 0.1).astype(np.float32)
        kwargs = {"generator": generator} if name == "euler-a" else {}
        ref_latents = ref.step(torch.from_numpy(model_output), t, ref_latents,
                               **kwargs).prev_sample
        latents = ours.step(run, run.upload(model_output), i, latents, rng)
        err = relative_error(latents, ref_latents)
        assert err <= TOL, f"{name} {steps} steps: latents after step {i} off by {err:.2e}"
        worst = max(worst, err)
    assert np.isfinite(latents.numpy()).all()
    return worst


# ---- schedule ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spacing", (None,) + SPACINGS)
def test_timesteps_and_init_noise_sigma(name, spacing):
    config = SD15 if spacing is None else {**SD15, "timestep_spacing": spacing}
    ours, ref = make_scheduler(name, config), diffusers_scheduler(name, config)
    # before set_timesteps too (euler's depends on its sigmas)
    assert_close_f32(ours.init_noise_sigma, ref.init_noise_sigma)
    for steps in STEPS + (7, 100, 500):
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        assert ours.timesteps.dtype == np.float32
        expected = ref.timesteps.numpy().astype(np.float32)
        np.testing.assert_array_equal(ours.timesteps, expected, err_msg=f"{steps} steps")
        assert isinstance(ours.init_noise_sigma, float)
        assert_close_f32(ours.init_noise_sigma, ref.init_noise_sigma)


def assert_close_f32(ours: float, reference) -> None:
    """Equal to 2 float32 ulps. torch's CPU float32 sqrt is not correctly rounded (1 ulp off
    for ~16% of inputs, torch 2.13); ours is, so a sigma can be 1 ulp off, and euler's
    init_noise_sigma = sqrt(sigma_max^2 + 1) ("leading" spacing) 2 ulps."""
    reference = np.float32(reference)
    assert abs(np.float32(ours) - reference) <= 2 * np.spacing(reference), (ours, reference)


@pytest.mark.parametrize("config", [
    SD15, {}, {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "linear", "beta_start": 0.0002, "beta_end": 0.03, "num_train_timesteps": 500},
    {"trained_betas": list(np.linspace(1e-4, 0.02, 1000) ** 1.1)},
], ids=["sd15", "default", "cosine", "linear500", "trained"])
def test_tables_mirror_diffusers(config):
    """alphas_cumprod bit for bit; sigmas (sqrt) to one ulp."""
    for name in NAMES:
        config = {**config, "skip_prk_steps": True, "clip_sample": False}
        ours, ref = make_scheduler(name, config), diffusers_scheduler(name, config)
        np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
    for name in ("euler", "euler-a", "dpm-solver++"):
        ours, ref = make_scheduler(name, config), diffusers_scheduler(name, config)
        ours.set_timesteps(30)
        ref.set_timesteps(30)
        ref_sigmas = ref.sigmas.numpy()
        assert (np.abs(ours.sigmas - ref_sigmas) <= np.spacing(ref_sigmas)).all()


def test_config_options_are_diffusers_init_parameters():
    """Our table of options and defaults is exactly diffusers' __init__ signature."""
    for name, cls in SCHEDULERS.items():
        params = inspect.signature(getattr(diffusers, cls.diffusers_class).__init__).parameters
        ours = {k: default for k, (default, _) in cls.OPTIONS.items()}
        theirs = {k: p.default for k, p in params.items() if k != "self"}
        assert ours == theirs, name


# ---- denoising loops ---------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_denoising_matches_diffusers(run, name, spacing, steps):
    compare_loop(run, name, {**SD15, "timestep_spacing": spacing}, steps)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", (2, 10, 25))
def test_v_prediction_matches_diffusers(run, name, steps):
    compare_loop(run, name, {**SD15, "prediction_type": "v_prediction"}, steps)


VARIANTS = SCHEDULER_VARIANTS


@pytest.mark.parametrize("name,config", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in
                                                         enumerate(VARIANTS)])
@pytest.mark.parametrize("steps", (3, 10, 20))
def test_option_variants_match_diffusers(run, name, config, steps):
    compare_loop(run, name, config, steps)


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_latent_shape(run, name):
    compare_loop(run, name, SD15, 4, shape=(2, 3, 5, 7))


def test_euler_a_follows_the_generator(run):
    """A different generator seed must break the match (the noise really is used)."""
    with pytest.raises(AssertionError, match="off by"):
        compare_loop(run, "euler-a", SD15, 5, noise_seeds=(7, 8))


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", (0, -1, 10000, 1001, 2.5, True, "10", None))
def test_bad_step_counts(name, steps):
    scheduler = make_scheduler(name, SD15)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(steps)


@pytest.mark.parametrize("name", NAMES)
def test_step_counts_where_diffusers_breaks_are_refused(name):
    """"trailing" with 61 steps: numpy's arange overshoots and diffusers gets an extra last
    timestep -1 (alphas_cumprod[-1] silently wraps around); "leading" with 1000 steps and
    steps_offset 1 goes past the last trained timestep (DPM: every timestep is 1). We refuse
    these with a clear message instead of copying them."""
    trailing = {**SD15, "timestep_spacing": "trailing"}
    reference = diffusers_scheduler(name, trailing)
    reference.set_timesteps(61)
    assert reference.timesteps[-1] == -1  # what we refuse to copy
    with pytest.raises(ValueError, match="61 .* gives timestep -1, outside the trained range"):
        make_scheduler(name, trailing).set_timesteps(61)
    with pytest.raises(ValueError, match="outside the trained range|repeats a timestep"):
        make_scheduler(name, {**SD15, "timestep_spacing": "leading"}).set_timesteps(1000)
    if name == "dpm-solver++":  # linspace, 1000 steps: repeated timesteps, 1/0 in the solver
        with pytest.raises(ValueError, match="repeats a timestep"):
            make_scheduler(name, {**SD15, "timestep_spacing": "linspace"}).set_timesteps(1000)


@pytest.mark.parametrize("function", [make_scheduler, diffusers_scheduler])
def test_unknown_name(function):
    with pytest.raises(ValueError, match="unknown scheduler 'lms'.*pndm, dpm-solver\\+\\+, "
                                         "euler, euler-a, ddim"):
        function("lms", SD15)


UNSUPPORTED = [
    ("pndm", {"skip_prk_steps": False}, "skip_prk_steps"),
    ("pndm", {"prediction_type": "sample"}, "prediction_type"),
    ("ddim", {"clip_sample": True}, "clip_sample"),
    ("ddim", {"thresholding": True}, "thresholding"),
    ("ddim", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ("dpm-solver++", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ("dpm-solver++", {"solver_order": 3}, "solver_order"),
    ("dpm-solver++", {"use_karras_sigmas": True}, "use_karras_sigmas"),
    ("dpm-solver++", {"variance_type": "learned_range"}, "variance_type"),
    ("euler", {"use_karras_sigmas": True}, "use_karras_sigmas"),
    ("euler", {"interpolation_type": "log_linear"}, "interpolation_type"),
    ("euler", {"timestep_type": "continuous", "prediction_type": "v_prediction"},
     "timestep_type"),
    ("euler-a", {"prediction_type": "sample"}, "prediction_type"),
    ("euler-a", {"timestep_spacing": "quadratic"}, "timestep_spacing"),
    ("euler-a", {"beta_schedule": "sigmoid"}, "beta_schedule"),
]


@pytest.mark.parametrize("name,options,key", UNSUPPORTED, ids=[f"{n}-{k}" for n, _, k in
                                                                UNSUPPORTED])
def test_unsupported_options(name, options, key):
    with pytest.raises(ValueError, match=f"{name}.*{key}"):
        make_scheduler(name, {**SD15, **options})


def test_options_of_other_schedulers_are_ignored_like_diffusers():
    """SD1.5's PNDM config carries skip_prk_steps and clip_sample: not DPM/Euler options."""
    assert "skip_prk_steps" not in make_scheduler("euler", SD15).config
    assert make_scheduler("euler", {**SD15, "_use_default_values": ["beta_start"]}
                          ).config["beta_start"] == 0.0001


def test_steps_in_order_and_in_range(run):
    scheduler = make_scheduler("dpm-solver++", SD15)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(run, x, 0, x)
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="expected step 0, got 1"):
        scheduler.step(run, x, 1, x)
    scheduler.step(run, x, 0, x)
    with pytest.raises(ValueError, match="step index"):
        scheduler.step(run, x, 5, x)
    with pytest.raises(ValueError, match="step index"):
        scheduler.scale_model_input(run, x, -1)
    euler_a = make_scheduler("euler-a", SD15)
    euler_a.set_timesteps(5)
    with pytest.raises(ValueError, match="rng"):
        euler_a.step(run, x, 0, x)


# ---- compiled functions ----------------------------------------------------------------

def test_relax_functions(run):
    functions = relax_functions()
    prefixes = {"pndm": "pndm_", "dpm-solver++": "dpmpp_", "euler": "euler_",
                "euler-a": "euler_a_", "ddim": "ddim_"}
    for name, cls in SCHEDULERS.items():
        assert cls.kernels
        for k in cls.kernels:
            assert k.name.startswith(prefixes[name]) and k.name in functions
            assert run.has(k.name)
    assert len(functions) == sum(len(c.kernels) for c in SCHEDULERS.values())
    for name, func in functions.items():
        assert func.attrs["global_symbol"] == name
        latent = func.params[0].ty
        assert latent.dtype == "float32" and latent.ndim == 4
        assert all(isinstance(d, tvm.tirx.Var) for d in latent.shape), name
