"""Model families in the web app: a turbo-shaped bundle in Chromium (SwiftShader), an
LCM-shaped one (its UNet takes the guidance scale) in Deno (wgpu on lavapipe), each
generating with the family's defaults from the bundle's config and matching the native
image of the same model (llvm, fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.numerics.test_generate import setup_for
from tests.web.conftest import ARTIFACTS, build_bundle, decode_png, serving, ssim
from wsd.checks import browser_run

SSIM_FP32 = 0.99
PROMPT = "a lighthouse at dusk, oil painting"



@pytest.fixture(scope="module")
def turbo_bundle(web_runtime, tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory, "float32", "tiny-turbo")


@pytest.fixture(scope="module")
def lcm_bundle(web_runtime, tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory, "float32", "tiny-lcm")


def test_bundle_records_the_family(lcm_bundle):
    lcm = json.loads((lcm_bundle / "wsd-config.json").read_text())
    assert lcm["family"] == "lcm" and lcm["guidance_embedded"] is True
    assert lcm["settings"]["schedulers"] == ["lcm"]
    assert "unet_guided" not in lcm["functions"]
    assert [i["name"] for i in lcm["functions"]["unet"]["inputs"]][-1] == "guidance_scale"


@pytest.mark.slow  # its own bundle and a page load on SwiftShader: ~2.5 min
def test_turbo_in_chromium(turbo_bundle, playwright, tmp_path):
    """The page offers SD-Turbo's defaults (1 step of Euler, no guidance), generates with
    them, and gives the native image."""
    turbo = json.loads((turbo_bundle / "wsd-config.json").read_text())
    assert turbo["family"] == "turbo" and turbo["guidance_embedded"] is False
    assert turbo["settings"]["defaults"] | {"scheduler": "euler", "steps": 1,
                                            "guidance_scale": 0.0} == turbo["settings"]["defaults"]
    expected = setup_for("tiny-turbo", "llvm").pipe.generate(PROMPT, seed=5)
    with serving(turbo_bundle) as (url, _):
        context = browser_run.launch(playwright, tmp_path / "profile")
        context.set_default_timeout(browser_run.LOAD_TIMEOUT_MS)
        page = context.new_page()
        page.goto(url)
        ready = browser_run.wait_ready(page)
        if "no GPU adapter" in (ready.get("error") or ""):
            pytest.skip(f"Chromium found no WebGPU adapter: {ready['error']}")
        assert "error" not in ready, ready["error"]
        form = page.evaluate("""() => ({
            steps: document.getElementById("steps").value,
            guidance: document.getElementById("guidance").value,
            scheduler: document.getElementById("scheduler").value,
            samplers: [...document.getElementById("scheduler").options].map(o => o.value)})""")
        assert (form["steps"], float(form["guidance"]), form["scheduler"]) == ("1", 0.0, "euler")
        assert form["samplers"][0] == "euler" and "lcm" in form["samplers"]
        data_url = page.evaluate("s => window.wsd.generate(s)", {"prompt": PROMPT, "seed": 5})
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chromium-tiny-turbo-page.png"))
        last = page.evaluate("window.wsd.last.settings")
        context.close()
    assert (last["steps"], last["guidanceScale"], last["scheduler"]) == (1, 0, "euler")
    image = decode_png(data_url)[..., :3]
    score = ssim(image, expected)
    print(f"chromium tiny-turbo vs native: SSIM {score:.5f}")
    assert score >= SSIM_FP32


def test_lcm_in_deno(lcm_bundle, tmp_path):
    """The engine passes the scale to the UNet (no negative prompt, no batch of two) and
    runs LCM's steps with noise between them, as the native pipeline does; another scale
    gives another image (the scale reaches the UNet)."""
    if not Path(browser_run.DENO).exists():
        pytest.skip("npm `deno` not installed in web/ (npm install in web/)")
    if not Path(browser_run.LAVAPIPE_ICD).exists():
        pytest.skip("Mesa lavapipe not installed (apt install mesa-vulkan-drivers)")
    pipe = setup_for("tiny-lcm", "llvm").pipe
    reference = tmp_path / "native.png"
    Image.fromarray(pipe.generate(PROMPT, seed=6)).save(reference)  # LCM, 4 steps, 8.5
    report = browser_run.measure(lcm_bundle, "deno", "lavapipe", {"prompt": PROMPT, "seed": 6},
                                 runs=1, reference=reference)
    assert report["error"] is None, report["error"]
    print(f"deno tiny-lcm vs native: SSIM {report['ssim']:.5f}")
    assert report["ssim"] >= SSIM_FP32
    other = pipe.generate(PROMPT, guidance_scale=2.0, seed=6)
    image = browser_run.compare_to_reference(other, reference)
    assert image["ssim"] < SSIM_FP32


def test_lcm_img2img_in_deno(lcm_bundle, tmp_path):
    """Image-to-image with a guidance-embedded UNet: LCM's schedule shortened by the
    strength (LatentConsistencyModelImg2ImgPipeline), as natively; another sampler is
    refused, as natively."""
    if not Path(browser_run.DENO).exists():
        pytest.skip("npm `deno` not installed in web/ (npm install in web/)")
    if not Path(browser_run.LAVAPIPE_ICD).exists():
        pytest.skip("Mesa lavapipe not installed (apt install mesa-vulkan-drivers)")
    from tests.numerics.test_img2img import picture
    from tests.web.test_img2img_browser import data_url

    config = json.loads((lcm_bundle / "wsd-config.json").read_text())
    image = picture(config["width"], config["height"], seed=7)
    jobs = [{"prompt": PROMPT, "seed": 6, "image": data_url(image), "strength": 0.5},
            {"prompt": PROMPT, "seed": 6, "image": data_url(image), "scheduler": "ddim"}]
    result = browser_run.run_deno_jobs(lcm_bundle, "lavapipe", jobs)
    assert "error" not in result, result["error"]
    got, refused = result["jobs"]
    assert "error" not in got, got["error"]
    expected = setup_for("tiny-lcm", "llvm").pipe.generate(PROMPT, seed=6, image=image,
                                                           strength=0.5)
    score = ssim(decode_png(got["png"])[..., :3], expected)
    print(f"deno tiny-lcm img2img vs native: SSIM {score:.5f}")
    assert score >= SSIM_FP32
    assert "does not apply to this model" in refused["error"] or \
        "needs the lcm sampler" in refused["error"], refused
