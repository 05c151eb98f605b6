"""Image-to-image in the browser engine (web/src/engine.js in Deno, wgpu on lavapipe) on the
tiny fp32 bundle: the same image as the native `Pipeline.generate(image=, strength=)` (llvm,
fp32), SSIM >= 0.99, for a picture of the bundle's size and for one that rounds down to it
(Lanczos resize); a picture of another size and strengths out of (0, 1] are refused with
the native wording. One Deno process runs every case (web/test/measure.js's `jobs`)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.numerics.test_generate import PROMPT, setup_for
from tests.numerics.test_img2img import picture
from tests.web.conftest import decode_png, ssim
from wsd.checks import browser_run

SSIM_FP32 = 0.99
STEPS = 6
STRENGTH = 0.6


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def cases(tiny_bundle):
    """(native pipeline, [(name, settings, PIL image or None)], Deno's results)."""
    if not Path(browser_run.DENO).exists():
        pytest.skip("npm `deno` not installed in web/ (npm install in web/)")
    if not Path(browser_run.LAVAPIPE_ICD).exists():
        pytest.skip("Mesa lavapipe not installed (apt install mesa-vulkan-drivers)")
    config = json.loads((tiny_bundle / "wsd-config.json").read_text())
    w, h = config["width"], config["height"]
    assert (w, h) == (128, 128)
    same, odd, wrong = picture(w, h, seed=1), picture(w + 5, h + 2, seed=2), picture(w + 8, h)
    base = {"prompt": PROMPT, "negativePrompt": "blurry", "steps": STEPS,
            "guidanceScale": 7.5, "seed": 3}
    jobs = [
        ("euler-a", {**base, "scheduler": "euler-a", "image": data_url(same),
                     "strength": STRENGTH}, same),
        ("ddim", {**base, "scheduler": "ddim", "image": data_url(same), "strength": STRENGTH},
         same),
        ("resized", {**base, "scheduler": "ddim", "image": data_url(odd)}, odd),  # 0.8
        ("wrong-size", {**base, "scheduler": "ddim", "image": data_url(wrong)}, None),
        ("strength-0", {**base, "image": data_url(same), "strength": 0}, None),
        ("strength-1.5", {**base, "image": data_url(same), "strength": 1.5}, None),
        ("strength-alone", {**base, "strength": 0.5}, None),
    ]
    size = len(json.dumps({"jobs": [s for _, s, _ in jobs]}))
    assert size < 120_000, f"the Deno job is {size} bytes: over one argument's limit"
    result = browser_run.run_deno_jobs(tiny_bundle, "lavapipe", [s for _, s, _ in jobs])
    assert "error" not in result, result["error"]
    pipe = setup_for("tiny", "llvm").pipe
    return pipe, jobs, dict(zip([name for name, _, _ in jobs], result["jobs"]))


@pytest.mark.parametrize("name", ["euler-a", "ddim", "resized"])
def test_matches_native(cases, name):
    pipe, jobs, results = cases
    _, settings, image = next(job for job in jobs if job[0] == name)
    got = results[name]
    assert "error" not in got, got["error"]
    strength = settings.get("strength")
    expected = pipe.generate(PROMPT, negative_prompt="blurry", scheduler=settings["scheduler"],
                             steps=STEPS, guidance_scale=7.5, seed=3, image=image,
                             strength=strength)
    ours = decode_png(got["png"])[..., :3]
    score = ssim(ours, expected)
    print(f"deno img2img {name} vs native: SSIM {score:.5f}")
    assert score >= SSIM_FP32
    record = got["settings"]
    assert record["strength"] == (strength or 0.8)
    assert len(record["image"]["sha256"]) == 64
    assert (record["image"]["width"], record["image"]["height"]) == image.size
    assert record["image"]["resized"] is (name == "resized")
    # the input changes the output: not the text-to-image image of the same settings
    if name == "ddim":
        plain = pipe.generate(PROMPT, negative_prompt="blurry", scheduler="ddim", steps=STEPS,
                              guidance_scale=7.5, seed=3)
        assert ssim(ours, plain) < SSIM_FP32


def test_refusals(cases):
    _, _, results = cases
    wrong = results["wrong-size"].get("error", "")
    assert "136x128" in wrong and "128x128" in wrong and "built for" in wrong, wrong
    assert results["strength-0"].get("error") == "strength must be a number in (0, 1], got 0"
    assert results["strength-1.5"].get("error") == \
        "strength must be a number in (0, 1], got 1.5"
    assert results["strength-alone"].get("error") == \
        "strength is for image-to-image: give an image too"
