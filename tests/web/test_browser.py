"""The web app end to end in a real browser: headless Chromium (Debian's package, driven by
Playwright) with WebGPU on SwiftShader loads the tiny model's bundle from `wsd serve`,
generates through `window.wsd.generate`, and must match the golden image; a reload must take
the weights from the browser's cache; bad input must give specific messages.

SwiftShader compiles WGSL slowly (about two minutes for the tiny model's kernels on 2 cores),
so one page serves most tests. Screenshots and images land in artifacts/web/.
"""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest

from tests.cases import PROMPTS
from tests.web.conftest import ARTIFACTS, decode_png, golden, serving, ssim
from wsd.checks.browser_run import LOAD_TIMEOUT_MS, launch, wait_ready

SSIM_FP32 = 0.99

pytest.importorskip("playwright.sync_api", reason="pip install playwright")


@pytest.fixture(scope="module")
def app(playwright, tiny_bundle, tmp_path_factory):
    """A page with the tiny fp32 bundle loaded: (page, base URL, server request log)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with serving(tiny_bundle) as (url, log):
        context = launch(playwright, tmp_path_factory.mktemp("chromium-profile"))
        context.set_default_timeout(LOAD_TIMEOUT_MS)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        ready = wait_ready(page)
        if "error" in ready and "no GPU adapter" in ready["error"]:
            pytest.skip(f"Chromium found no WebGPU adapter: {ready['error']}")
        assert "error" not in ready, ready["error"]
        assert not errors, errors
        print(f"chromium: ready in {ready['loadMs'] / 1000:.1f} s on {ready['adapter']}, "
              f"timeline {page.evaluate('window.wsd.timeline')}")
        yield page, url, log, tiny_bundle
        context.close()


def test_generate_matches_golden(app):
    page, _, log, bundle = app
    settings, expected = golden("tiny-ddim")
    data_url = page.evaluate("s => window.wsd.generate(s)", settings)
    image = decode_png(data_url)
    assert image.shape == (*expected.shape[:2], 4)  # RGBA, opaque
    assert (image[..., 3] == 255).all()
    page.screenshot(path=str(ARTIFACTS / "chromium-tiny-fp32-page.png"))
    (ARTIFACTS / "chromium-tiny-fp32.png").write_bytes(
        base64.b64decode(data_url.split(",", 1)[1]))
    score = ssim(image[..., :3], expected)
    diff = np.abs(image[..., :3].astype(int) - expected).max()
    print(f"chromium fp32 vs golden tiny-ddim: SSIM {score:.5f}, max |diff| {diff}")
    assert score >= SSIM_FP32
    # the page shows it too: the <img> carries the same PNG, and the status says done
    assert page.get_attribute("#image", "src") == data_url
    assert page.inner_text("#status").startswith("Done in")
    # each weight shard was fetched exactly once
    manifest = json.loads((bundle / "params" / "tensor-cache.json").read_text())
    fetched = sorted(p for p, _ in log if p.startswith("/params/params_shard_"))
    assert fetched == sorted(f"/params/{r['dataPath']}" for r in manifest["records"])


def test_other_seed_differs(app):
    """The bar can fail: with everything else equal, another seed is far below it."""
    page = app[0]
    settings, _ = golden("tiny-ddim")
    images = [decode_png(page.evaluate("s => window.wsd.generate(s)",
                                       {**settings, "steps": 2, "seed": seed}))
              for seed in (42, 7)]
    assert ssim(images[0][..., :3], images[1][..., :3]) < SSIM_FP32


def test_tokenizer_matches_python(app):
    """web-tokenizers + the app's bos/eos/padding give wsd.runtime.tokenizer's ids, prompt by prompt."""
    from wsd.models import load_model

    tokenizer = load_model("tiny").tokenizer()
    got = app[0].evaluate("ps => ps.map(p => Array.from(window.wsd.engine.tokenize(p).ids))",
                          PROMPTS)
    for prompt, ids in zip(PROMPTS, got):
        assert ids == tokenizer(prompt).tolist(), prompt


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "steps must be an integer from 1 to 1000"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"guidanceScale": -1}, "guidance scale must be between 0 and 100"),
    ({"scheduler": "lms"}, "unknown scheduler 'lms'"),
    ({"seed": -3}, "seed must be an integer from 0 to 2**64-1"),
    ({"seed": "18446744073709551616"}, "seed must be an integer from 0 to 2**64-1"),
    ({"promt": "typo"}, "unknown option 'promt'"),
])
def test_bad_settings_rejected(app, settings, message):
    error = app[0].evaluate(
        "s => window.wsd.generate(s).then(() => 'resolved', e => e.message)", settings)
    assert message in error


@pytest.mark.slow  # reloads the model: ~130 s on SwiftShader
def test_lost_device_named_and_recovered(app):
    """A lost GPU device (here destroyed from outside, as a driver reset would) is named by the
    page and by every call; "Reload the model" loads a new engine from the browser's cache,
    without reloading the page, and it gives the same image as before the loss."""
    page = app[0]
    settings, _ = golden("tiny-ddim")
    settings = {**settings, "steps": 2}
    before = page.evaluate("s => window.wsd.generate(s)", settings)
    page.evaluate("window.wsd.engine.device.destroy()")
    page.wait_for_function("!document.getElementById('recover').hidden")
    shown = page.inner_text("#error")
    assert shown.startswith("the GPU device was lost (destroyed"), shown
    assert "reload the model to continue" in shown
    assert page.is_disabled("#generate")
    error = page.evaluate("s => window.wsd.generate(s).then(() => 'resolved', e => e.message)",
                          settings)
    assert error == shown
    page.click("#recover")
    ready = page.evaluate("window.wsd.ready.then(r => r, e => ({error: e.message}))")
    assert "error" not in ready, ready["error"]
    assert ready["weights"]["fetchedBytes"] == 0 and ready["weights"]["cachedBytes"] > 0
    assert page.is_hidden("#error") and page.is_enabled("#generate")
    assert page.evaluate("s => window.wsd.generate(s)", settings) == before


def test_generation_timings(app):
    """window.wsd.last.timings: one completion interval and one host time per step, the
    encode and decode times, all positive and within the whole."""
    page = app[0]
    settings, _ = golden("tiny-ddim")
    page.evaluate("s => window.wsd.generate(s)", {**settings, "steps": 3})
    timings = page.evaluate("window.wsd.last.timings")
    assert len(timings["stepMs"]) == len(timings["stepHostMs"]) == 3
    parts = [timings["encodeMs"], timings["decodeMs"], *timings["stepMs"]]
    assert all(ms > 0 for ms in parts), timings
    assert sum(parts) <= timings["totalMs"] * 1.001, timings
    memory = page.evaluate("window.wsd.last.gpuMemory")
    assert memory["peakBytes"] >= memory["allocatedBytes"] > 0


def test_reload_fetches_no_weights(app):
    page, _, log, _ = app  # loaded: every shard is in Cache Storage
    before = len(log)
    page.reload()
    # Weights load before the shaders compile: once shaders start, the weights are in.
    page.wait_for_function("window.wsd && window.wsd.timeline && window.wsd.timeline.shaders")
    requested = [path for path, _ in log[before:]]
    assert "/wsd-config.json" in requested  # the page did load again
    assert not [p for p in requested if p.startswith("/params/params_shard_")], requested
    weights = page.evaluate("window.wsd.progress.weights")
    assert weights["fetched"] == 0 and weights["fromCache"] == weights["total"] > 0, weights


def test_corrupt_shard_is_named(playwright, tiny_bundle, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    shard = bad / "params" / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    with serving(bad) as (url, _):
        context = launch(playwright, tmp_path / "profile")
        page = context.new_page()
        page.goto(url)
        ready = wait_ready(page)
        if "no GPU adapter" in ready.get("error", ""):
            pytest.skip(ready["error"])
        shown = page.inner_text("#error")
        context.close()
    assert "params_shard_0.bin" in ready["error"] and "corrupt: sha256" in ready["error"]
    assert shown == ready["error"]


def test_without_webgpu_the_page_says_so(playwright, tiny_bundle, tmp_path):
    with serving(tiny_bundle) as (url, _):
        context = launch(playwright, tmp_path / "profile", webgpu=False)
        page = context.new_page()
        page.goto(url)
        has_gpu = page.evaluate("'gpu' in navigator")
        ready = wait_ready(page)
        shown = page.inner_text("#error")
        disabled = page.is_disabled("#generate")
        page.screenshot(path=str(ARTIFACTS / "chromium-no-webgpu.png"))
        context.close()
    # Chromium 156 keeps navigator.gpu with WebGPU switched off, but gives no adapter
    expected = ("WebGPU is present but no GPU adapter was found" if has_gpu
                else "WebGPU is not available in this browser")
    assert expected in ready["error"]
    assert shown == ready["error"] and disabled


def test_fp16_bundle_needs_shader_f16(playwright, tiny_bundle_fp16, tmp_path):
    """SwiftShader has no shader-f16: the fp16 bundle must say exactly that, before loading."""
    with serving(tiny_bundle_fp16) as (url, log):
        context = launch(playwright, tmp_path / "profile")
        page = context.new_page()
        page.goto(url)
        features = page.evaluate("navigator.gpu.requestAdapter()"
                                 ".then(a => a ? Array.from(a.features) : null)")
        ready = wait_ready(page)
        context.close()
    if features is None or "shader-f16" in features:
        pytest.skip(f"adapter features {features}: not the case under test")
    assert "needs the WebGPU feature 'shader-f16'" in ready["error"]
    assert not [p for p, _ in log if p.startswith("/params/")]  # nothing big was fetched
