"""Fixtures of the web suites: the tiny model's web bundles (built once per session, fp32
and fp16) and a local `wsd serve` server that records what it was asked for."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

# The runner's helpers, shared with the suites (they import them from here)
from wsd.checks.browser_run import decode_png, serving, ssim  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "golden"
ARTIFACTS = ROOT / "artifacts" / "web"  # screenshots and images the tests keep (ignored)


@pytest.fixture(scope="session")
def web_runtime() -> str:
    """TVM's wasm runtime (web/runtime/build.sh: built once, then up to date in a second);
    returns its directory (the TVM_HOME to link with). Skips where emscripten is missing."""
    t0 = time.time()
    proc = subprocess.run(["bash", str(ROOT / "web" / "runtime" / "build.sh")],
                          capture_output=True, text=True)
    if proc.returncode == 77:
        pytest.skip(f"emscripten unavailable: {proc.stderr.strip().splitlines()[-1:]}")
    assert proc.returncode == 0, f"build.sh failed:\n{proc.stderr[-4000:]}"
    print(f"build.sh: {time.time() - t0:.1f} s")
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def playwright():
    """Playwright's sync API driving Debian's Chromium (wsd.checks.browser_run.CHROMIUM), one
    per test module; skips where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from wsd.checks.browser_run import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium)")
    with sync_api.sync_playwright() as p:
        yield p


def build_bundle(tmp_path_factory, dtype: str = "float32", model: str = "tiny",
                 *options: str) -> Path:
    """`wsd build --target webgpu` of `model` into a fresh folder named after it; `options`
    go to the command (e.g. "--preview-vae", "tiny-taesd")."""
    from wsd.cli import main

    out = tmp_path_factory.mktemp(f"bundle-{model}-{dtype}") / model
    assert main(["build", "--model", model, "--target", "webgpu", "--dtype", dtype,
                 "--out", str(out), *options]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_bundle(web_runtime, tmp_path_factory) -> Path:
    """`wsd build --target webgpu --out DIR` of the embedded tiny model (float32)."""
    return build_bundle(tmp_path_factory, "float32")


@pytest.fixture(scope="session")
def tiny_bundle_fp16(web_runtime, tmp_path_factory) -> Path:
    return build_bundle(tmp_path_factory, "float16")


def golden(name: str):
    """(settings for window.wsd.generate, golden RGB array) of golden/<name>.png."""
    import numpy as np
    from PIL import Image

    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    s = meta["settings"]
    settings = {"prompt": s["prompt"], "negativePrompt": s["negative_prompt"],
                "steps": s["steps"], "guidanceScale": s["guidance_scale"],
                "scheduler": s["scheduler"], "seed": s["seed"]}
    return settings, np.asarray(Image.open(GOLDEN / f"{name}.png").convert("RGB"))
