"""The samplers against diffusers' schedulers, step by step.

The per-step math runs compiled (llvm) through wsd.runtime.executor.Executor; the reference is the
diffusers scheduler built from the same config, driven as StableDiffusionPipeline drives it
(scale_model_input, then step), fed the same random "model outputs" at every step.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
import tvm

import diffusers
from tests.cases import (LCM_SCHEDULER, REAL_SCHEDULER_CONFIGS, SCHEDULER_VARIANTS, SD15,
                         SD21_SCHEDULER)
from wsd.runtime.executor import Executor
from wsd.samplers import (SCHEDULERS, diffusers_scheduler, make_scheduler,
                            relax_functions)

diffusers.utils.logging.set_verbosity_error()  # from_config's "unexpected keys" notes

NAMES = list(SCHEDULERS)
STOCHASTIC = ("euler-a", "lcm")  # step() draws noise from the pipeline's generator
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
                 noise_seeds=(7, 7), strength: float | None = None,
                 lcm_pipeline: bool = False) -> float:
    """Denoise side by side; assert every step's model input and latents; return the worst
    relative error. Model outputs are random (fixed seed, new each step), uploaded to the
    device as the UNet's would be; our latents stay on the device between steps.

    With a strength: image-to-image, as StableDiffusionImg2ImgPipeline drives the scheduler
    (get_timesteps: the last int(steps * strength) timesteps, set_begin_index, then add_noise
    of random "image latents" at the first of them), or with `lcm_pipeline` as
    LatentConsistencyModelImg2ImgPipeline does (set_timesteps(..., strength=strength))."""
    ours, ref = make_scheduler(name, config), diffusers_scheduler(name, config)
    rs = np.random.RandomState(seed)
    if strength is None:
        ours.set_timesteps(steps)
        ref.set_timesteps(steps)
        timesteps = ref.timesteps
        ref_latents = torch.from_numpy(rs.randn(*shape).astype(np.float32)) * ref.init_noise_sigma
        latents = run.upload(ref_latents.numpy())
    else:
        if lcm_pipeline:
            ours.set_timesteps(steps, strength=strength)
            ref.set_timesteps(steps, strength=strength)
            timesteps = ref.timesteps
        else:
            ours.set_timesteps(steps)
            ref.set_timesteps(steps)
            t_start = max(steps - min(int(steps * strength), steps), 0)
            timesteps = ref.timesteps[t_start * ref.order:]
            if hasattr(ref, "set_begin_index"):
                ref.set_begin_index(t_start * ref.order)
            ours.truncate(strength)
        image = rs.randn(*shape).astype(np.float32)
        noise = rs.randn(*shape).astype(np.float32)
        ref_latents = ref.add_noise(torch.from_numpy(image), torch.from_numpy(noise),
                                    timesteps[:1])
        latents = ours.add_noise(run, image, noise)
        err = relative_error(latents, ref_latents)
        assert err <= TOL, f"{name} {steps} steps: add_noise off by {err:.2e}"
    assert len(ours.timesteps) == len(timesteps)
    np.testing.assert_array_equal(ours.timesteps, timesteps.numpy().astype(np.float32))
    rng, generator = TorchRng(noise_seeds[0]), torch.Generator("cpu").manual_seed(noise_seeds[1])
    worst = 0.0
    for i, t in enumerate(timesteps):
        ref_input = ref.scale_model_input(ref_latents, t)
        err = relative_error(ours.scale_model_input(run, latents, i), ref_input)
        assert err <= TOL, f"{name} {steps} steps: model input of step {i} off by {err:.2e}"
        model_output = (rs.randn(*shape) * 0.8 + 0.1).astype(np.float32)
        kwargs = {"generator": generator} if name in STOCHASTIC else {}
        out = ref.step(torch.from_numpy(model_output), t, ref_latents, **kwargs)
        ref_latents = out.prev_sample
        if name == "lcm" and i == len(timesteps) - 1:
            # what LatentConsistencyModelPipeline decodes (`denoised`) is what
            # StableDiffusionPipeline decodes (prev_sample) after the last step
            assert torch.equal(out.denoised, out.prev_sample)
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
        if name == "lcm" and steps > ours.config["original_inference_steps"]:
            with pytest.raises(ValueError):  # diffusers refuses these too
                ref.set_timesteps(steps)
            with pytest.raises(ValueError, match="more than original_inference_steps"):
                ours.set_timesteps(steps)
            continue
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


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_follow_the_generator(run, name):
    """A different generator seed must break the match (the noise really is used)."""
    with pytest.raises(AssertionError, match="off by"):
        compare_loop(run, name, SD15, 5, noise_seeds=(7, 8))


# ---- image-to-image ------------------------------------------------------------------------

LCM_CONFIGS = {"dreamshaper": LCM_SCHEDULER, "lora-sd15": SD15, "sd21-v": SD21_SCHEDULER}

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", (1, 2, 3, 4, 7, 10, 25))
@pytest.mark.parametrize("strength", (0.1, 0.3, 0.5, 0.6, 0.75, 0.8, 0.99, 1.0))
def test_img2img_matches_diffusers(run, name, steps, strength):
    """get_timesteps' truncation, set_begin_index, add_noise at the first kept timestep,
    then the kept steps (PNDM's warm-up and DPM-Solver's first order restart there)."""
    if int(steps * strength) == 0:
        with pytest.raises(ValueError, match=f"strength {strength:g} with {steps} steps "
                                             "leaves no denoising step"):
            scheduler = make_scheduler(name, SD15)
            scheduler.set_timesteps(steps)
            scheduler.truncate(strength)
        return
    compare_loop(run, name, SD15, steps, strength=strength)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_img2img_spacings_and_v_prediction(run, name, spacing):
    for config in ({**SD15, "timestep_spacing": spacing},
                   {**SD15, "timestep_spacing": spacing, "prediction_type": "v_prediction"}):
        compare_loop(run, name, config, 10, strength=0.6)


@pytest.mark.parametrize("config", list(LCM_CONFIGS.values()), ids=list(LCM_CONFIGS))
@pytest.mark.parametrize("steps", (1, 2, 4, 8))
@pytest.mark.parametrize("strength", (0.2, 0.5, 0.8, 1.0))
def test_lcm_img2img_pipeline_matches_diffusers(run, config, steps, strength):
    """LatentConsistencyModelImg2ImgPipeline: strength shortens LCM's original schedule."""
    if int(50 * strength) < steps:
        ref = diffusers_scheduler("lcm", config)
        with pytest.raises(ValueError):
            ref.set_timesteps(steps, strength=strength)
        with pytest.raises(ValueError, match="raise the strength or lower the number of steps"):
            make_scheduler("lcm", config).set_timesteps(steps, strength=strength)
        return
    compare_loop(run, "lcm", config, steps, strength=strength, lcm_pipeline=True)


@pytest.mark.parametrize("strength", (0, -0.5, 1.5, float("nan"), "0.5", None, True))
def test_bad_strengths(strength):
    for name in NAMES:
        scheduler = make_scheduler(name, SD15)
        scheduler.set_timesteps(10)
        with pytest.raises(ValueError, match="strength must be a number in \\(0, 1\\]"):
            scheduler.truncate(strength)
    with pytest.raises(ValueError, match="strength must be a number in \\(0, 1\\]"):
        make_scheduler("lcm", SD15).set_timesteps(4, strength=strength)


def test_truncate_order(run):
    scheduler = make_scheduler("ddim", SD15)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.truncate(0.5)
    scheduler.set_timesteps(10)
    scheduler.truncate(0.5)
    assert scheduler.begin_index == 5 and len(scheduler.timesteps) == 5
    with pytest.raises(ValueError, match="once"):
        scheduler.truncate(0.5)
    x = np.zeros(SHAPE, np.float32)
    scheduler.step(run, x, 0, x)
    with pytest.raises(ValueError, match="before the first step"):
        scheduler.add_noise(run, x, x)
    scheduler.set_timesteps(10)  # starts over
    assert scheduler.begin_index == 0 and len(scheduler.timesteps) == 10


def test_latent_sample(run):
    """scaling_factor * (mean + std * noise), as diffusers' DiagonalGaussianDistribution."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from wsd.samplers.base import latent_sample

    rs = np.random.RandomState(0)
    mean = rs.randn(*SHAPE).astype(np.float32)
    logvar = (rs.randn(*SHAPE) * 3).astype(np.float32)
    dist = DiagonalGaussianDistribution(torch.cat([torch.from_numpy(mean),
                                                   torch.from_numpy(logvar)], dim=1))
    expected = 0.18215 * dist.sample(torch.Generator("cpu").manual_seed(5))
    noise = TorchRng(5).randn(SHAPE)
    ours = latent_sample(run, mean, dist.std.numpy(), noise, [0.18215])
    assert relative_error(ours, expected) <= 1e-6


# ---- LCM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(LCM_CONFIGS.values()), ids=list(LCM_CONFIGS))
@pytest.mark.parametrize("original", (None, 1, 4, 8, 15, 25, 50, 64, 100, 333, 1000))
def test_lcm_timesteps(config, original):
    """Every step count up to original_inference_steps (from the config, or set_timesteps'
    argument), as diffusers; more steps are refused by both."""
    limit = 50 if original is None else original
    cfg = config if original is None else {**config, "original_inference_steps": original}
    for how in ("config", "argument"):
        ours, ref = make_scheduler("lcm", cfg if how == "config" else config), \
            diffusers_scheduler("lcm", cfg if how == "config" else config)
        kwargs = {"original_inference_steps": original} if how == "argument" else {}
        counts = sorted({1, 2, 4, 8, limit, limit + 1, *range(1, min(limit, 60) + 1)})
        for steps in counts:
            if steps > limit:
                with pytest.raises(ValueError):
                    ref.set_timesteps(steps, **kwargs)
                with pytest.raises(ValueError, match=f"num_inference_steps={steps} is more "
                                   f"than original_inference_steps \\({limit}\\)|between 1 "
                                   "and num_train_timesteps"):
                    ours.set_timesteps(steps, **kwargs)
                continue
            ours.set_timesteps(steps, **kwargs)
            ref.set_timesteps(steps, **kwargs)
            expected = ref.timesteps.numpy().astype(np.float32)
            np.testing.assert_array_equal(ours.timesteps, expected,
                                          err_msg=f"{how} {steps} steps")


def test_lcm_timesteps_ignore_spacing_and_offset():
    """diffusers' LCMScheduler reads neither timestep_spacing nor steps_offset."""
    ours = make_scheduler("lcm", {**LCM_SCHEDULER, "steps_offset": 0,
                                  "timestep_spacing": "trailing"})
    ours.set_timesteps(4)
    np.testing.assert_array_equal(ours.timesteps, [999, 759, 499, 259])


def test_lcm_boundary_scalings():
    """c_skip bit for bit; c_out to 2 ulps (torch's float32 sqrt is 1 ulp off at times)."""
    from wsd.samplers.lcm import boundary_scalings

    ref = diffusers_scheduler("lcm", LCM_SCHEDULER)
    for scaling in (10.0, 3.7, 0.1, 123.456):
        ref.register_to_config(timestep_scaling=scaling)
        for t in range(0, 1000, 7):
            c_skip, c_out = ref.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
            ours = boundary_scalings(t, scaling)
            assert np.float32(ours[0]) == np.float32(c_skip.item()), (scaling, t)
            assert_close_f32(ours[1], c_out.item())


@pytest.mark.parametrize("config", list(LCM_CONFIGS.values()), ids=list(LCM_CONFIGS))
@pytest.mark.parametrize("steps", (1, 2, 4, 8))
def test_lcm_denoising_matches_diffusers(run, config, steps):
    compare_loop(run, "lcm", config, steps)
    compare_loop(run, "lcm", config, steps, shape=(2, 4, 6, 10), seed=3, noise_seeds=(11, 11))


def test_lcm_one_step_draws_no_noise(run):
    """Noise is drawn between steps only (none for one step), in diffusers' order."""
    class Counting(TorchRng):
        shapes = []

        def randn(self, shape):
            self.shapes.append(tuple(shape))
            return super().randn(shape)

    for steps in (1, 4):
        scheduler, rng = make_scheduler("lcm", LCM_SCHEDULER), Counting(0)
        rng.shapes.clear()
        scheduler.set_timesteps(steps)
        x = run.upload(np.ones(SHAPE, np.float32))
        for i in range(steps):
            x = scheduler.step(run, run.upload(np.zeros(SHAPE, np.float32)), i, x, rng)
        assert rng.shapes == [SHAPE] * (steps - 1)
    compare_loop(run, "lcm", LCM_SCHEDULER, 1, noise_seeds=(7, 8))  # no noise: any seed


# ---- real configs across samplers ------------------------------------------------------------

def _from_config_inputs(source: dict) -> dict:
    """A real config as a pipeline hands it to from_config: the raw file's dict, and the
    `.config` of diffusers' own scheduler loaded from it (with _use_default_values)."""
    loaded = getattr(diffusers, source["_class_name"]).from_config(source)
    return {"raw": source, "loaded": dict(loaded.config)}


REAL_PAIRS = [(src, name) for src in REAL_SCHEDULER_CONFIGS for name in NAMES]


@pytest.mark.parametrize("source,name", REAL_PAIRS, ids=[f"{s}-{n}" for s, n in REAL_PAIRS])
def test_from_real_configs_like_diffusers(run, source, name):
    """`XScheduler.from_config(config)` of each real config (and of its loaded scheduler's
    .config, which lists _use_default_values): the options we resolve are diffusers' ones, or
    we refuse the option value diffusers' scheduler gets; then a few denoising steps agree."""
    for how, config in _from_config_inputs(REAL_SCHEDULER_CONFIGS[source]).items():
        ref = diffusers_scheduler(name, config)
        try:
            ours = make_scheduler(name, config)
        except ValueError as e:
            refused = re.search(r"scheduler: (\w+)=(.*) is not supported", str(e))
            assert refused, str(e)
            key, value = refused.groups()
            assert repr(ref.config[key]) == value, (how, key)
            continue
        for key in ours.config:
            assert ours.config[key] == ref.config[key], (how, key)
        for steps in (1, 2, 4):
            compare_loop(run, name, config, steps)


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
    if name == "lcm":  # spacing is unused; more steps than original_inference_steps: refused
        with pytest.raises(ValueError, match="cannot be larger|smaller than"):
            reference.set_timesteps(61)
        for steps in (51, 61, 1000):
            with pytest.raises(ValueError, match=f"num_inference_steps={steps} is more than "
                                                 "original_inference_steps \\(50\\)"):
                make_scheduler(name, trailing).set_timesteps(steps)
        return
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
                                         "euler, euler-a, ddim, lcm"):
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
    ("lcm", {"thresholding": True}, "thresholding"),
    ("lcm", {"clip_sample": True}, "clip_sample"),
    ("lcm", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ("lcm", {"prediction_type": "x0"}, "prediction_type"),
    ("lcm", {"beta_schedule": "sigmoid"}, "beta_schedule"),
    ("lcm", {"original_inference_steps": 0}, "original_inference_steps"),
    ("lcm", {"original_inference_steps": 1001}, "original_inference_steps"),
    ("lcm", {"original_inference_steps": 2.5}, "original_inference_steps"),
    ("lcm", {"timestep_scaling": None}, "timestep_scaling"),
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
    lcm = make_scheduler("lcm", SD15)
    lcm.set_timesteps(2)
    with pytest.raises(ValueError, match="rng"):
        lcm.step(run, x, 0, x)
    lcm.step(run, x, 0, x, TorchRng(0))  # the refused call took no step
    lcm.step(run, x, 1, x)  # the last step draws no noise: no rng needed


# ---- compiled functions ----------------------------------------------------------------

def test_relax_functions(run):
    functions = relax_functions()
    prefixes = {"pndm": "pndm_", "dpm-solver++": "dpmpp_", "euler": "euler_",
                "euler-a": "euler_a_", "ddim": "ddim_", "lcm": "lcm_"}
    for name, cls in SCHEDULERS.items():
        assert cls.kernels
        for k in cls.kernels:
            assert k.name.startswith(prefixes[name]) and k.name in functions
            assert run.has(k.name)
    for shared in ("add_noise", "latent_sample"):
        assert shared in functions and run.has(shared)
    assert len(functions) == sum(len(c.kernels) for c in SCHEDULERS.values()) + 2
    for name, func in functions.items():
        assert func.attrs["global_symbol"] == name
        latent = func.params[0].ty
        assert latent.dtype == "float32" and latent.ndim == 4
        assert all(isinstance(d, tvm.tirx.Var) for d in latent.shape), name
