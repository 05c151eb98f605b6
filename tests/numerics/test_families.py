"""Model families beyond SD v1.5, end to end against diffusers on their small variants.

tiny-sd2: SD 2.x's text encoder (gelu, its own width), the tokenizer padding with "!",
linear projections, per-level head counts, upcast attention, v-prediction (DDIM, its
folder's sampler). tiny-turbo: the same architecture with SD-Turbo's scheduler (Euler,
trailing) and defaults (1 step, no guidance). tiny-lcm: a UNet with a guidance embedding,
run as diffusers' LatentConsistencyModelPipeline runs it. SSIM >= 0.99 in fp32 (llvm).
"""

import json

import numpy as np
import pytest

from tests.numerics.test_generate import PROMPT, SSIM_BAR, setup_for, ssim
from wsd.checks.reference import Reference, Settings
from wsd.models import load_model
from wsd.runtime.library import build
from wsd.runtime.pipeline import Pipeline
from wsd.samplers import SCHEDULERS

SD_SAMPLERS = [s for s in SCHEDULERS if s != "lcm"]


@pytest.mark.parametrize("scheduler", [None, *SD_SAMPLERS])  # None: the folder's (DDIM)
def test_sd2_matches_diffusers(scheduler):
    setup = setup_for("tiny-sd2", "llvm")
    ours, theirs = setup.pair(Settings(PROMPT, "blurry", scheduler, steps=8, seed=4))
    assert ssim(ours, theirs) >= SSIM_BAR


def test_sd2_pads_with_its_own_token():
    """The prompt's padding is "!" (id 0), as SD 2.x's tokenizer folder says: padding with
    <|endoftext|> instead changes the text embedding, and the image."""
    setup = setup_for("tiny-sd2", "llvm")
    ids = setup.model.tokenizer()(PROMPT)
    assert ids[-1] == 0 and setup.model.tokenizer().pad_token == "!"
    assert load_model("tiny").tokenizer()(PROMPT)[-1] == 49407


def test_turbo_defaults_match_diffusers():
    """No settings: SD-Turbo's 1 step of Euler (trailing: t=999) without guidance."""
    setup = setup_for("tiny-turbo", "llvm")
    assert setup.model.settings() == ("euler", 1, 0.0)
    ours, theirs = setup.pair(Settings(PROMPT, seed=2))
    assert ssim(ours, theirs) >= SSIM_BAR
    four = setup.pipe.generate(PROMPT, steps=4, seed=2)  # the family's range: 1-4 steps
    assert ssim(four, setup.reference.image(Settings(PROMPT, steps=4, seed=2),
                                            setup.height, setup.width)) >= SSIM_BAR


def test_guidance_embedding_unet_matches_diffusers():
    """The compiled `unet` of an LCM-distilled UNet takes the scale: diffusers' embedding of
    (scale - 1) * 1000 enters as timestep_cond. Checked on the UNet alone, at two scales
    (the embedding must matter: the outputs differ)."""
    import torch

    setup = setup_for("tiny-lcm", "llvm")
    assert "unet_guided" not in setup.pipe.meta["functions"]
    pipe = setup.reference.pipe
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, 4, 16, 16)).astype(np.float32)
    cond = rng.standard_normal((1, 77, 32)).astype(np.float32)
    t = np.array([759.0], np.float32)
    outputs = []
    for scale in (8.5, 2.0):
        ours = setup.pipe.call("unet", latents, t, cond, np.array([scale], np.float32)).numpy()
        w = pipe.get_guidance_scale_embedding(torch.tensor([scale - 1.0]),
                                              embedding_dim=pipe.unet.config.time_cond_proj_dim)
        with torch.no_grad():
            theirs = pipe.unet(torch.from_numpy(latents), torch.from_numpy(t),
                               encoder_hidden_states=torch.from_numpy(cond),
                               timestep_cond=w).sample.numpy()
        assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
        outputs.append(ours)
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-2 * np.abs(outputs[0]).max()


@pytest.mark.parametrize("steps,guidance", [(None, None), (2, 1.0), (6, 3.0)])
def test_lcm_matches_diffusers(steps, guidance):
    """LatentConsistencyModelPipeline: its defaults (LCM, 4 steps, 8.5), no guidance, and
    multi-step with noise drawn between the steps from the same generator."""
    setup = setup_for("tiny-lcm", "llvm")
    ours, theirs = setup.pair(Settings(PROMPT, "", None, steps, guidance, seed=6))
    assert ssim(ours, theirs) >= SSIM_BAR
    other = setup.pipe.generate(PROMPT, steps=steps, guidance_scale=guidance, seed=7)
    assert ssim(ours, other) < 0.9  # the check discriminates


@pytest.mark.slow  # a library of its own: ~30 s
def test_family_folder(tmp_path):
    """A folder written by diffusers: its family from its name, its sampler from its
    scheduler config, its pad token from its tokenizer files; the image diffusers makes from
    that folder."""
    folder = tmp_path / "my-sd-turbo"
    setup_for("tiny-turbo", "llvm").reference.save(folder)
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())[
        "_class_name"] == "EulerDiscreteScheduler"
    model = load_model(folder)
    assert (model.family.name, model.settings()) == ("turbo", ("euler", 1, 0.0))
    assert model.tokenizer().pad_token_id == 0
    pipe = Pipeline(model, build(model, "llvm", "float32"))
    settings = Settings(PROMPT, seed=12)
    ours = pipe.generate(**settings.as_dict())
    assert ssim(ours, Reference(model).image(settings, *model.default_size)) >= SSIM_BAR
    renamed = tmp_path / "plain-sd2"
    folder.rename(renamed)
    assert load_model(renamed).settings() == ("euler", 25, 7.5)  # an SD 2.x with Euler


def test_cli_prints_the_family_defaults(tmp_path, capsys):
    from wsd.cli import main

    out = tmp_path / "t.png"
    assert main(["generate", "--model", "tiny-turbo", "--prompt", PROMPT, "--seed", "2",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "SD-Turbo" in err and "sampler euler, 1 steps, guidance 0" in err
    from PIL import Image

    png = Image.open(out)
    params = json.loads(png.info["parameters"])
    assert (params["scheduler"], params["steps"], params["guidance_scale"]) == ("euler", 1, 0.0)
    expected = setup_for("tiny-turbo", "llvm").pipe.generate(PROMPT, seed=2)
    assert np.array_equal(np.asarray(png.convert("RGB")), expected)
    assert main(["generate", "--model", "tiny-lcm", "--prompt", PROMPT, "--scheduler", "ddim",
                 "--out", str(out)]) == 2
    assert "does not apply to tiny-lcm" in capsys.readouterr().err
