"""`wsd build --target webgpu --preview-vae tiny-taesd`: the bundle gains `decode_preview` (a
tiny autoencoder; weights under `preview_vae/`), and the engine's previews (Deno, wgpu on
lavapipe) go through it, every step, with the pixels of the native tiny-taesd decode of the
same latents; the final image is still the full VAE's (llvm, fp32, tiny model)."""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # its own bundle (~2 min) and a Deno run with previews

from tests.web.conftest import build_bundle, serving, ssim
from wsd.checks import browser_run
from wsd.runtime.weights import read_manifest

SSIM_FP32 = 0.99
PROMPT = "a lighthouse at dusk, oil painting"
SETTINGS = {"prompt": PROMPT, "steps": 4, "scheduler": "euler", "guidanceScale": 7.5, "seed": 2}
WEB = Path(__file__).resolve().parents[2] / "web"


@pytest.fixture(scope="module")
def preview_bundle(web_runtime, tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory, "float32", "tiny", "--preview-vae", "tiny-taesd")


def _rgb(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def test_bundle_has_decode_preview(preview_bundle):
    config = json.loads((preview_bundle / "wsd-config.json").read_text())
    assert config["preview_vae"]["function"] == "decode_preview"
    assert config["preview_vae"]["class"] == "AutoencoderTiny"
    assert config["preview_vae"]["name"] == "tiny-taesd"
    assert config["vae"] is None  # the model's own VAE decodes the final image
    functions = config["functions"]
    assert {"decode", "decode_preview"} <= set(functions)
    preview_weights = functions["decode_preview"]["weights"]
    assert preview_weights and all(w.startswith("preview_vae/decoder.layers.")
                                   for w in preview_weights)
    assert all(w.startswith("vae/") for w in functions["decode"]["weights"])
    stored = {r["name"] for shard in read_manifest(preview_bundle / "params")["records"]
              for r in shard["records"]}
    assert set(preview_weights) <= stored
    assert config["architecture"]["preview_vae"]["_class_name"] == "AutoencoderTiny"
    assert config["splitting"]["decode_preview"]["first_block"] is None


def test_weights_only_needs_the_preview_vae(preview_bundle, tmp_path, capsys):
    from wsd.cli import main

    out = tmp_path / "other"
    args = ["build", "--target", "webgpu", "--weights-only", "--from", str(preview_bundle),
            "--out", str(out)]
    assert main(args) == 2
    assert "--preview-vae" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--preview-vae", "tiny-taesd"]) == 0
    assert json.loads((out / "wsd-config.json").read_text())["preview_vae"]["name"] == "tiny-taesd"


def _deno_previews(bundle: Path, settings: dict) -> dict:
    from wsd.web.app import bundle_script

    with tempfile.TemporaryDirectory(prefix="wsd-deno-") as tmp, serving(bundle) as (url, _):
        state = Path(tmp)
        script = state / "preview_probe.js"
        bundle_script(WEB / "test" / "preview_probe.js", script)
        env = browser_run.deno_env("lavapipe", state)
        result, stderr, _ = browser_run._deno_job(script, url, env, {"settings": settings},
                                                  timeout_s=1800)
    if "error" in result:
        result["error"] += "\n" + "\n".join(stderr[-20:])
    return result


def test_previews_in_deno(preview_bundle):
    if not Path(browser_run.DENO).exists():
        pytest.skip("npm `deno` not installed in web/ (npm install in web/)")
    if not Path(browser_run.LAVAPIPE_ICD).exists():
        pytest.skip("Mesa lavapipe not installed (apt install mesa-vulkan-drivers)")
    from wsd.models import load_model
    from wsd.runtime.library import build
    from wsd.runtime.pipeline import Pipeline

    # native: the same model and preview VAE (llvm), its latents after every step
    model = load_model("tiny").with_preview_vae("tiny-taesd")
    pipe = Pipeline(model, build(model, "llvm", "float32"))
    previews, full = {}, {}

    def on_latents(step, latents):
        previews[step] = pipe.preview(latents)
        full[step] = (pipe.call("decode", latents).numpy()[0] * 255).round().astype(np.uint8)

    expected = pipe.generate(PROMPT, steps=SETTINGS["steps"], scheduler="euler",
                             guidance_scale=SETTINGS["guidanceScale"], seed=SETTINGS["seed"],
                             on_latents=on_latents)

    result = _deno_previews(preview_bundle, SETTINGS)
    assert "error" not in result, result["error"]
    got = result["previews"]
    # every step but the last (the final image replaces it), through decode_preview
    assert [p["step"] for p in got] == [1, 2, 3]
    assert {p["decoder"] for p in got} == {"decode_preview"}
    timings = result["last"]["timings"]
    assert len(timings["previewMs"]) == 3 and all(ms > 0 for ms in timings["previewMs"])
    last = got[-1]["step"]
    image = _rgb(got[-1]["image"])
    score = ssim(image, previews[last])
    against_full = ssim(image, full[last])
    final = ssim(_rgb(result["png"]), expected)
    print(f"deno preview (step {last}) vs native tiny-taesd decode: SSIM {score:.5f}; vs the "
          f"full decode {against_full:.5f}; final vs native {final:.5f}; previewMs "
          f"{[round(ms, 1) for ms in timings['previewMs']]}")
    assert score >= SSIM_FP32
    assert against_full < SSIM_FP32  # the preview is the tiny decoder's, not decode's
    assert final >= SSIM_FP32
