"""Image-to-image end to end: `wsd` against diffusers' StableDiffusionImg2ImgPipeline
(LatentConsistencyModelImg2ImgPipeline for a guidance-embedded UNet), SSIM >= 0.99 on uint8
RGB, on the tiny presets (llvm, float32; the Setup of tests/numerics/test_generate.py).

The input is a deterministic "real-looking" picture (gradients and shapes drawn with PIL).
"""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from tests.numerics.test_generate import PROMPT, SCHEDULERS, SSIM_BAR, setup_for, ssim
from wsd.checks.reference import Settings

STEPS = 6


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Sky-like gradient, a sun, hills and a house, slightly blurred; `seed` moves things."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([90 + 100 * y / height, 140 + 60 * y / height,
                    230 - 40 * x / width], axis=-1)
    image = Image.fromarray(sky.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    rs = np.random.RandomState(seed)
    cx, cy = width * (0.2 + 0.5 * rs.rand()), height * (0.15 + 0.2 * rs.rand())
    r = min(width, height) * 0.12
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 210, 80))
    hills = [(0, height)] + [(i * width / 8, height * (0.55 + 0.15 * rs.rand()))
                             for i in range(9)] + [(width, height)]
    draw.polygon(hills, fill=(60, 130, 60))
    hx, hy = width * 0.55, height * 0.6
    draw.rectangle([hx, hy, hx + width * 0.2, hy + height * 0.18], fill=(170, 60, 40))
    draw.polygon([(hx - 4, hy), (hx + width * 0.1, hy - height * 0.12),
                  (hx + width * 0.2 + 4, hy)], fill=(90, 40, 30))
    return image.filter(ImageFilter.GaussianBlur(0.7))


def pair(setup, settings: Settings, image, strength):
    ours = setup.pipe.generate(**settings.as_dict(), image=image, strength=strength)
    theirs = setup.reference.image(settings, image=image, strength=strength)
    assert ours.shape == theirs.shape == (setup.height, setup.width, 3)
    return ours, theirs


@pytest.fixture(scope="module")
def tiny():
    setup = setup_for("tiny", "llvm")
    return setup, picture(setup.width, setup.height)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_sampler_matches_diffusers(tiny, scheduler):
    setup, image = tiny
    settings = Settings(PROMPT, "blurry", scheduler, steps=STEPS, guidance_scale=7.5, seed=3)
    ours, theirs = pair(setup, settings, image, 0.6)
    assert ssim(ours, theirs) >= SSIM_BAR


@pytest.mark.parametrize("scheduler,strength", [("dpm-solver++", 0.3), ("euler-a", 0.3),
                                                ("pndm", 1.0), ("euler", 1.0)])
def test_strengths_match_diffusers(tiny, scheduler, strength):
    """0.3 of 6 steps keeps 1 (PNDM would keep its warm-up pair); 1.0 keeps all."""
    setup, image = tiny
    settings = Settings(PROMPT, "", scheduler, steps=STEPS, guidance_scale=5.0, seed=7)
    ours, theirs = pair(setup, settings, image, strength)
    assert ssim(ours, theirs) >= SSIM_BAR


def test_without_guidance_matches_diffusers(tiny):
    setup, image = tiny
    settings = Settings(PROMPT, scheduler="ddim", steps=STEPS, guidance_scale=1.0, seed=5)
    ours, theirs = pair(setup, settings, image, 0.8)
    assert ssim(ours, theirs) >= SSIM_BAR


def test_default_strength_is_diffusers(tiny):
    setup, image = tiny
    settings = Settings(PROMPT, scheduler="euler", steps=STEPS, seed=2)
    ours = setup.pipe.generate(**settings.as_dict(), image=image)
    assert ssim(ours, setup.reference.image(settings, image=image)) >= SSIM_BAR
    assert np.array_equal(ours, setup.pipe.generate(**settings.as_dict(), image=image,
                                                    strength=0.8))


def test_size_diffusers_rounds(tiny, tmp_path):
    """A 133x130 (width x height) file: diffusers rounds down to 128x128 and resizes with
    Lanczos; so do we, and the 128x128 library takes it."""
    setup, _ = tiny
    path = tmp_path / "odd.png"
    picture(setup.width + 5, setup.height + 2, seed=1).save(path)
    settings = Settings(PROMPT, "", "euler-a", steps=STEPS, seed=4)
    ours, theirs = pair(setup, settings, str(path), 0.6)
    assert ssim(ours, theirs) >= SSIM_BAR


def test_checks_discriminate(tiny):
    """The result is neither the text-to-image one, nor the input, nor another image's, nor
    another strength's. (With random weights the image's latents are small beside the noise:
    at 0.6 another picture still scores ~0.97-0.99, hence the strength-0.3 cases and
    test_image_latents_match_diffusers.)"""
    setup, image = tiny
    settings = Settings(PROMPT, "", "dpm-solver++", steps=STEPS, seed=3)
    result = setup.pipe.generate(**settings.as_dict(), image=image, strength=0.6)
    assert ssim(result, setup.pipe.generate(**settings.as_dict())) < 0.9
    assert ssim(result, np.asarray(image)) < 0.9
    inverted = ImageOps.invert(image)
    other = setup.pipe.generate(**settings.as_dict(), image=inverted, strength=0.6)
    assert ssim(result, other) < SSIM_BAR
    weaker = setup.pipe.generate(**settings.as_dict(), image=image, strength=0.3)
    assert ssim(result, weaker) < SSIM_BAR
    weaker_other = setup.pipe.generate(**settings.as_dict(), image=inverted, strength=0.3)
    assert ssim(weaker, weaker_other) < 0.95


def test_image_latents_match_diffusers(tiny):
    """encode_image's (mean, std) and the sampled latents against diffusers' vae.encode
    (after VaeImageProcessor's 2x - 1) and scaling_factor * latent_dist.sample(generator)."""
    import torch

    from wsd.runtime.image import prepare_image
    from wsd.runtime.rng import TorchGenerator

    setup, image = tiny
    pixels = prepare_image(image, setup.height, setup.width)
    mean, std = (x.numpy() for x in setup.pipe.call("encode_image", pixels))
    vae = setup.reference.pipe.vae
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(pixels).permute(0, 3, 1, 2) * 2 - 1).latent_dist
    scale = np.abs(dist.mean.numpy()).max()
    assert np.abs(mean - dist.mean.numpy()).max() <= 1e-4 * scale
    # std = exp(logvar / 2) carries the log-variance's rounding (float32 convolutions summed
    # in another order): 2e-4 of its range (measured 1.01e-4 with pads folded into convs)
    assert np.abs(std - dist.std.numpy()).max() <= 2e-4 * np.abs(dist.std.numpy()).max()
    ours = setup.pipe.image_latents(pixels, TorchGenerator(3)).numpy()
    theirs = (vae.config.scaling_factor
              * dist.sample(torch.Generator("cpu").manual_seed(3))).numpy()
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_sd2_v_prediction_matches_diffusers():
    setup = setup_for("tiny-sd2", "llvm")
    image = picture(setup.width, setup.height, seed=2)
    settings = Settings(PROMPT, "", "dpm-solver++", steps=STEPS, guidance_scale=6.0, seed=1)
    ours, theirs = pair(setup, settings, image, 0.6)
    assert ssim(ours, theirs) >= SSIM_BAR


def test_lcm_matches_diffusers():
    """LatentConsistencyModelImg2ImgPipeline: strength shortens LCM's original schedule."""
    setup = setup_for("tiny-lcm", "llvm")
    image = picture(setup.width, setup.height, seed=3)
    settings = Settings(PROMPT, seed=6)  # the family's: lcm, 4 steps, guidance 8.5
    ours, theirs = pair(setup, settings, image, 0.6)
    assert ssim(ours, theirs) >= SSIM_BAR
    with pytest.raises(ValueError, match="needs the lcm sampler"):
        setup.pipe.generate(PROMPT, scheduler="euler", image=image)
    with pytest.raises(ValueError, match="raise the strength or lower the number of steps"):
        setup.pipe.generate(PROMPT, steps=4, image=image, strength=0.05)  # int(50 * .05) < 4


# ---- bad inputs ----------------------------------------------------------------------------

def test_bad_inputs(tiny, tmp_path):
    setup, image = tiny
    gen = setup.pipe.generate
    with pytest.raises(ValueError, match="the image is 96x96 .*library makes 128x128 images: "
                                         "build for the image's size \\(--width 96 --height 96"):
        gen(PROMPT, image=picture(96, 96))
    with pytest.raises(ValueError, match="136x130 \\(width x height\\), 136x128 once "
                                         "rounded down"):
        gen(PROMPT, image=picture(136, 130))
    for strength in (0, -0.1, 1.01, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="strength must be a number in \\(0, 1\\]"):
            gen(PROMPT, image=image, strength=strength)
    with pytest.raises(ValueError, match="strength 0.1 with 6 steps leaves no denoising step"):
        gen(PROMPT, scheduler="ddim", steps=6, image=image, strength=0.1)
    with pytest.raises(ValueError, match="strength is for image-to-image"):
        gen(PROMPT, strength=0.5)
    empty, text = tmp_path / "empty.png", tmp_path / "notes.png"
    empty.write_bytes(b"")
    text.write_text("not a picture")
    with pytest.raises(ValueError, match="is empty"):
        gen(PROMPT, image=str(empty))
    with pytest.raises(ValueError, match="not an image file PIL can read"):
        gen(PROMPT, image=str(text))
    with pytest.raises(ValueError, match="does not exist"):
        gen(PROMPT, image=str(tmp_path / "missing.png"))


def test_non_rgb_inputs_are_converted(tiny):
    """RGBA and grayscale pictures go through as RGB (diffusers would fail on them)."""
    setup, image = tiny
    settings = Settings(PROMPT, "", "ddim", steps=3, seed=1)
    rgb = setup.pipe.generate(**settings.as_dict(), image=image, strength=0.6)
    rgba = setup.pipe.generate(**settings.as_dict(), image=image.convert("RGBA"), strength=0.6)
    assert np.array_equal(rgb, rgba)
    gray = setup.pipe.generate(**settings.as_dict(), image=image.convert("L"), strength=0.6)
    assert gray.shape == rgb.shape


# ---- the CLI -------------------------------------------------------------------------------

def test_cli_img2img(tiny, tmp_path):
    from wsd.cli import main

    setup, image = tiny
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    image.save(source)
    code = main(["generate", "--prompt", PROMPT, "--scheduler", "euler", "--steps", "6",
                 "--seed", "9", "--image", str(source), "--strength", "0.5", "--out", str(out)])
    assert code == 0
    png = Image.open(out)
    parameters = json.loads(png.info["parameters"])
    import hashlib

    assert parameters["image"] == {"name": "in.png",
                                   "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert parameters["strength"] == 0.5
    expected = setup.pipe.generate(**Settings(PROMPT, "", "euler", steps=6, seed=9).as_dict(),
                                   image=str(source), strength=0.5)
    assert np.array_equal(np.asarray(png.convert("RGB")), expected)


@pytest.mark.parametrize("case", ["size", "empty", "text", "missing", "strength", "range",
                                  "no-image"])
def test_cli_errors_write_nothing(tmp_path, capsys, case):
    from wsd.cli import main

    source, out = tmp_path / "in.png", tmp_path / "out.png"
    picture(128, 128).save(source)
    args = {"size": ["--image", str(source), "--width", "96", "--height", "96"],
            "empty": ["--image", str(tmp_path / "e.png")],
            "text": ["--image", str(tmp_path / "t.png")],
            "missing": ["--image", str(tmp_path / "m.png")],
            "strength": ["--image", str(source), "--strength", "0"],
            "range": ["--image", str(source), "--strength", "1.5"],
            "no-image": ["--strength", "0.5"]}[case]
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "t.png").write_text("hello")
    code = main(["generate", "--prompt", PROMPT, "--steps", "2", "--seed", "1",
                 "--out", str(out), *args])
    assert code == 2
    assert not out.exists()
    error = capsys.readouterr().err
    expected = {"size": "the image is 128x128", "empty": "is empty",
                "text": "not an image file", "missing": "does not exist",
                "strength": "strength must be", "range": "strength must be",
                "no-image": "--strength is for image-to-image"}[case]
    assert expected in error
