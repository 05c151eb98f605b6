"""A swapped VAE (`--vae`) against diffusers' StableDiffusionPipeline given the same VAE
(`vae=`): a tiny autoencoder (AutoencoderTiny, the `tiny-taesd` preset and a folder written
by diffusers) and an AutoencoderKL folder with other weights; llvm, float32, tiny model.
Bad --vae arguments fail with a message that names the problem, and write nothing."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline

from tests.numerics.test_generate import PROMPT, SSIM_BAR, ssim
from wsd.checks.reference import Reference, Settings
from wsd.cli import main
from wsd.models import ModelError, load_model
from wsd.runtime.library import build
from wsd.runtime.pipeline import Pipeline

SETTINGS = Settings(PROMPT, scheduler="euler", steps=8, guidance_scale=7.5, seed=4)


@pytest.fixture(scope="module")
def reference():
    return Reference(load_model("tiny"))


def _diffusers_with(reference: Reference, vae) -> Reference:
    """The reference pipeline with `vae=` another VAE, as a diffusers user writes it."""
    swapped = object.__new__(Reference)
    swapped.__dict__.update(reference.__dict__)
    components = {**reference.pipe.components, "vae": vae.float().eval()}
    swapped.pipe = StableDiffusionPipeline(**components)
    swapped.pipe.set_progress_bar_config(disable=True)
    return swapped


def _ours(model) -> "np.ndarray":  # noqa: F821
    pipe = Pipeline(model, build(model, "llvm", "float32"))
    return pipe.generate(**SETTINGS.as_dict())


@pytest.fixture(scope="module")
def taesd_folder(tmp_path_factory):
    """tiny-taesd's random weights, written by diffusers (config.json + safetensors)."""
    folder = tmp_path_factory.mktemp("vae") / "tiny-taesd"
    load_model("tiny").with_vae("tiny-taesd").vae().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def kl_folder(tmp_path_factory):
    """The tiny model's AutoencoderKL with other random weights (seed 1), by diffusers."""
    folder = tmp_path_factory.mktemp("vae") / "tiny-vae-seed1"
    load_model("tiny", seed=1).vae().save_pretrained(folder)
    return folder


def test_taesd_matches_diffusers(reference, taesd_folder):
    model = load_model("tiny").with_vae("tiny-taesd")
    assert model.configs["vae"]["_class_name"] == "AutoencoderTiny"
    assert model.architecture()["vae"]["_class_name"] == "AutoencoderTiny"
    assert model.config_hash() != load_model("tiny").config_hash()
    ours = _ours(model)
    taesd = AutoencoderTiny.from_pretrained(taesd_folder, local_files_only=True)
    theirs = _diffusers_with(reference, taesd).image(SETTINGS, 128, 128)
    default = reference.image(SETTINGS, 128, 128)
    score, against_default = ssim(ours, theirs), ssim(ours, default)
    print(f"tiny-taesd vs diffusers vae=AutoencoderTiny: SSIM {score:.5f}; "
          f"vs the default VAE's image {against_default:.5f}")
    assert score >= SSIM_BAR
    assert against_default < SSIM_BAR  # the check discriminates: the VAE was swapped


def test_taesd_folder_is_the_preset(taesd_folder):
    """A TAESD folder (as madebyollin/taesd, here written by diffusers) loads as the same
    architecture and weights as the preset it was written from; a pipeline folder's `vae/`
    is found too."""
    preset = load_model("tiny").with_vae("tiny-taesd")
    folder = load_model("tiny").with_vae(taesd_folder)
    assert folder.architecture() == preset.architecture()
    assert folder.vae_source.path == taesd_folder.resolve()
    a, b = preset.vae().state_dict(), folder.vae().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipeline_folder = taesd_folder.parent / "pipeline"
    (pipeline_folder / "vae").mkdir(parents=True)
    for item in taesd_folder.iterdir():
        (pipeline_folder / "vae" / item.name).write_bytes(item.read_bytes())
    assert load_model("tiny").with_vae(pipeline_folder).architecture() == preset.architecture()


@pytest.mark.slow  # a library of its own: ~35 s
def test_kl_folder_matches_diffusers(reference, kl_folder):
    model = load_model("tiny").with_vae(kl_folder)
    ours = _ours(model)
    vae = AutoencoderKL.from_pretrained(kl_folder, local_files_only=True)
    theirs = _diffusers_with(reference, vae).image(SETTINGS, 128, 128)
    default = reference.image(SETTINGS, 128, 128)
    score, against_default = ssim(ours, theirs), ssim(ours, default)
    print(f"AutoencoderKL seed 1 vs diffusers vae=: SSIM {score:.5f}; "
          f"vs the default VAE's image {against_default:.5f}")
    assert score >= SSIM_BAR
    assert against_default < SSIM_BAR


def _bad(tmp_path, kind: str):
    """A --vae argument that must be refused, and words its message must hold."""
    folder = tmp_path / kind
    if kind == "file":
        folder.write_text("not a folder")
        return folder, "is not a folder"
    folder.mkdir()
    if kind == "no-config":
        return folder, "no config.json"
    config = {"_class_name": "AutoencoderTiny", "latent_channels": 4}
    if kind == "class":
        config["_class_name"] = "VQModel"
    if kind == "channels":
        config["latent_channels"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    if kind != "no-weights":
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return folder, {"class": "'VQModel' is not supported", "channels": "16 latent channels",
                    "no-weights": "no weights"}[kind]


@pytest.mark.parametrize("kind", ["file", "no-config", "class", "channels", "no-weights"])
def test_bad_vae(tmp_path, capsys, kind):
    path, words = _bad(tmp_path, kind)
    with pytest.raises(ModelError, match=words):
        load_model("tiny").with_vae(path)
    out = tmp_path / "out.png"
    assert main(["generate", "--prompt", "x", "--vae", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and not out.exists()
    if kind == "channels":
        assert "in_channels" in err and " 4 " in err  # names both numbers
    bundle = tmp_path / "bundle"
    assert main(["build", "--target", "webgpu", "--out", str(bundle), "--vae", str(path)]) == 2
    assert not bundle.exists()


def test_unknown_vae_name():
    with pytest.raises(ModelError, match="neither a built-in VAE"):
        load_model("tiny").with_vae("no-such-vae")


def test_tiny_decoder_is_planned_not_split():
    """split.plan records a tiny decoder's largest tensor (TAESD: 64 channels at full size)
    under its function's key and leaves it whole, over the limit or not; the AutoencoderKL
    beside it is still planned (and split) as before."""
    from wsd.compiler import split
    from wsd.compiler.trace import wrap_modules

    model = load_model("sd15").with_preview_vae("taesd")
    modules = wrap_modules(model, ("decode", "decode_preview"))
    limit = 128 << 20
    small = split.plan(modules, 64, 64, "float32", limit)  # 512x512
    assert small["decode_preview"]["largest_bytes"] == 64 * 512 * 512 * 4
    assert small["decode_preview"]["unsupported"] is None
    large = split.plan(modules, 128, 128, "float32", limit)  # 1024x1024
    preview = large["decode_preview"]
    assert preview["largest_bytes"] == 64 * 1024 * 1024 * 4 > limit
    assert preview["first_block"] is None and "not split" in preview["unsupported"]
    assert large["decode"]["first_block"] is not None  # the KL decoder in row bands
    assert any("decode_preview" in line and "not split" in line
               for line in split.describe(large))


def test_generate_cli_records_the_vae(tmp_path):
    """`wsd generate --vae tiny-taesd` writes the swapped VAE's image and says which VAE."""
    import numpy as np
    from PIL import Image

    out = tmp_path / "taesd.png"
    assert main(["generate", "--prompt", SETTINGS.prompt, "--vae", "tiny-taesd",
                 "--scheduler", "euler", "--steps", "8", "--guidance-scale", "7.5",
                 "--seed", "4", "--out", str(out)]) == 0
    png = Image.open(out)
    parameters = json.loads(png.text["parameters"])
    assert parameters["vae"] == {"name": "tiny-taesd", "class": "AutoencoderTiny",
                                 "random_weights": True}
    ours = _ours(load_model("tiny").with_vae("tiny-taesd"))
    assert np.array_equal(np.asarray(png.convert("RGB")), ours)
