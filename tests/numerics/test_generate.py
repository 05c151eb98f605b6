"""End to end: `wsd` images against diffusers' StableDiffusionPipeline and the goldens.

SSIM (scikit-image, on uint8 RGB) >= 0.99 for the same weights, scheduler, steps, guidance,
prompts and seed. On CPU this runs the tiny model; with a CUDA GPU the same checks run on
the CUDA build, and full-size SD v1.5 (random weights) too.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from wsd.checks.reference import Reference, Settings
from wsd.runtime.library import build
from wsd.models import load_model
from wsd.runtime.pipeline import Pipeline

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
SCHEDULERS = ("pndm", "dpm-solver++", "euler", "euler-a", "ddim", "lcm")
SSIM_BAR = 0.99
FP16_SSIM_BAR = 0.98  # half-precision build vs the fp32 reference
PROMPT = "a lighthouse at dusk, oil painting"


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return structural_similarity(a, b, channel_axis=2, data_range=255)


class Setup:
    """A compiled model and its diffusers reference, built once per (model, target)."""

    def __init__(self, model_name: str, target: str):
        self.model = load_model(model_name)
        self.height, self.width = self.model.default_size
        self.pipe = Pipeline(self.model, build(self.model, target, "float32"))
        self.reference = Reference(self.model, "cpu" if target == "llvm" else "cuda")

    def pair(self, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
        ours = self.pipe.generate(**settings.as_dict())
        theirs = self.reference.image(settings, self.height, self.width)
        return ours, theirs


_SETUPS = {}


def setup_for(model_name: str, target: str) -> Setup:
    if (model_name, target) not in _SETUPS:
        _SETUPS[model_name, target] = Setup(model_name, target)
    return _SETUPS[model_name, target]


TARGETS = ["llvm", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("guidance", [7.5, 3.0])
@pytest.mark.parametrize("negative", ["", "blurry, low contrast"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_matches_diffusers(scheduler, negative, guidance, target):
    setup = setup_for("tiny", target)
    settings = Settings(PROMPT, negative, scheduler, steps=12, guidance_scale=guidance, seed=3)
    ours, theirs = setup.pair(settings)
    assert ssim(ours, theirs) >= SSIM_BAR


@pytest.mark.parametrize("target", TARGETS)
def test_without_guidance_matches_diffusers(target):
    """Guidance <= 1 takes the plain (batch 1) UNet function, as diffusers does."""
    setup = setup_for("tiny", target)
    ours, theirs = setup.pair(Settings(PROMPT, scheduler="euler", steps=12, guidance_scale=1.0))
    assert ssim(ours, theirs) >= SSIM_BAR


def test_ssim_can_fail():
    """Another seed or another prompt must fall well below the bar: the check discriminates."""
    setup = setup_for("tiny", "llvm")
    base = Settings(PROMPT, scheduler="ddim", steps=12, seed=3)
    image = setup.pipe.generate(**base.as_dict())
    other_seed = setup.pipe.generate(**{**base.as_dict(), "seed": 4})
    other_prompt = setup.pipe.generate(**{**base.as_dict(), "prompt": "a red bicycle"})
    assert ssim(image, other_seed) < 0.9
    assert ssim(image, other_prompt) < SSIM_BAR


def _goldens():
    return sorted(p.stem for p in GOLDEN.glob("*.json"))


@pytest.mark.parametrize("name", _goldens())
@pytest.mark.parametrize("target", TARGETS)
def test_golden(name, target):
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    setup = setup_for(meta["model"], target)
    assert meta["model_config_hash"] == setup.model.config_hash(), (
        "the tiny model changed since the goldens were made: run python golden/make_golden.py")
    golden = np.asarray(Image.open(GOLDEN / f"{name}.png").convert("RGB"))
    settings = Settings(**meta["settings"])
    ours, theirs = setup.pair(settings)
    assert ssim(ours, golden) >= SSIM_BAR
    assert ssim(ours, theirs) >= SSIM_BAR


def test_goldens_present():
    assert len(_goldens()) >= 6


@pytest.mark.gpu
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_sd15_matches_diffusers_cuda(scheduler):
    setup = setup_for("sd15", "cuda")
    ours, theirs = setup.pair(Settings(PROMPT, "blurry", scheduler, steps=20, seed=11))
    assert ssim(ours, theirs) >= SSIM_BAR


@pytest.mark.slow  # a library of its own: ~35 s
def test_model_folder(tmp_path):
    """A diffusers-format folder (the tiny weights saved by diffusers) generates, through
    its own configs and tokenizer files, the image diffusers makes from that folder."""
    folder = tmp_path / "tiny-sd"
    setup_for("tiny", "llvm").reference.save(folder)
    model = load_model(folder)
    pipe = Pipeline(model, build(model, "llvm", "float32"))
    settings = Settings(PROMPT, "blurry", "dpm-solver++", steps=8, seed=5)
    ours = pipe.generate(**settings.as_dict())
    theirs = Reference(model).image(settings, *model.default_size)
    assert ssim(ours, theirs) >= SSIM_BAR
    builtin = setup_for("tiny", "llvm").pipe.generate(**settings.as_dict())
    assert ssim(ours, builtin) >= SSIM_BAR


def test_cli_generate(tmp_path):
    """`wsd generate` writes the pipeline's image, with its settings in the PNG."""
    from wsd.cli import main

    out = tmp_path / "out.png"
    code = main(["generate", "--prompt", PROMPT, "--scheduler", "euler-a", "--steps", "6",
                 "--seed", "9", "--guidance-scale", "5", "--out", str(out)])
    assert code == 0
    png = Image.open(out)
    assert json.loads(png.info["parameters"])["seed"] == 9
    expected = setup_for("tiny", "llvm").pipe.generate(
        **Settings(PROMPT, "", "euler-a", steps=6, guidance_scale=5.0, seed=9).as_dict())
    assert np.array_equal(np.asarray(png.convert("RGB")), expected)


@pytest.mark.parametrize("target", TARGETS)
def test_float16_close_to_float32(target):
    """The fp16 build (float32 accumulation) against diffusers in fp32."""
    setup = setup_for("tiny", target)
    pipe16 = Pipeline(setup.model, build(setup.model, target, "float16"))
    settings = Settings(PROMPT, "blurry", "ddim", steps=4, seed=21)
    ours = pipe16.generate(**settings.as_dict())
    theirs = setup.reference.image(settings, setup.height, setup.width)
    assert ssim(ours, theirs) >= FP16_SSIM_BAR


@pytest.mark.slow  # a library of its own: ~30 s
def test_non_square_resolution():
    """Resolution is a build option: a 96x160 library matches diffusers at 96x160."""
    setup = setup_for("tiny", "llvm")
    pipe = Pipeline(setup.model, build(setup.model, "llvm", "float32", height=96, width=160))
    settings = Settings(PROMPT, "", "euler", steps=6, seed=8)
    ours = pipe.generate(**settings.as_dict())
    assert ours.shape == (96, 160, 3)
    assert ssim(ours, setup.reference.image(settings, 96, 160)) >= SSIM_BAR


def test_long_prompt_is_truncated_with_a_warning():
    pipe = setup_for("tiny", "llvm").pipe
    with pytest.warns(UserWarning, match="prompt truncated: its last 25 tokens"):
        pipe.encode(" ".join(["cat"] * 100))  # 100 words + bos/eos = 102 tokens, window 77
