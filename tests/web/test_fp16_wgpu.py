"""The float16 bundle end to end on a WebGPU with shader-f16, against the fp32 golden.

Chromium's only adapter here (SwiftShader) has no shader-f16, and Firefox ESR refuses WebGPU
in release builds (a compile-time switch, `WebGPU is not yet available in Release or late
Beta builds`, measured on 140.12esr). So the app's engine (web/src/engine.js, the code the
page runs) runs in Deno, whose WebGPU is wgpu, the implementation inside Firefox, on Mesa's
lavapipe, which offers shader-f16. Firefox ESR is still driven (puppeteer-core) to check that
the page gives its clear message there, or, in a Firefox that allows WebGPU, the image.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.web.conftest import ARTIFACTS, ROOT, decode_png, golden, serving, ssim

WEB = ROOT / "web"
DENO = WEB / "node_modules" / ".bin" / "deno"
LAVAPIPE_ICD = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"
FIREFOX = os.environ.get("WSD_FIREFOX", "/usr/bin/firefox-esr")
SSIM_FP16 = 0.95


def _check(image, expected, label):
    score = ssim(image[..., :3], expected)
    diff = np.abs(image[..., :3].astype(int) - expected).max()
    print(f"{label} vs fp32 golden tiny-ddim: SSIM {score:.5f}, max |diff| {diff}")
    assert score >= SSIM_FP16


def test_fp16_end_to_end_on_wgpu(tiny_bundle_fp16, tmp_path):
    from wsd.web.app import bundle_script

    if not DENO.exists():
        pytest.skip("npm `deno` not installed in web/ (npm install in web/)")
    if not Path(LAVAPIPE_ICD).exists():
        pytest.skip("Mesa lavapipe not installed (apt install mesa-vulkan-drivers)")
    runner = tmp_path / "headless.js"
    bundle_script(WEB / "test" / "headless.js", runner)
    settings, expected = golden("tiny-ddim")
    env = dict(os.environ, VK_ICD_FILENAMES=LAVAPIPE_ICD, XDG_RUNTIME_DIR=str(tmp_path),
               DENO_DIR=str(tmp_path / "deno"), NO_COLOR="1")
    with serving(tiny_bundle_fp16) as (url, _):
        proc = subprocess.run([str(DENO), "run", "--allow-net", "--allow-env", "--location",
                               url, str(runner), json.dumps(settings)],
                              capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in result, result["error"]
    print(f"deno: {result['ready']}, generated in {result['last']['ms'] / 1000:.1f} s")
    assert result["ready"]["dtype"] == "float16"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "wgpu-tiny-fp16.png").write_bytes(
        base64.b64decode(result["png"].split(",", 1)[1]))
    _check(decode_png(result["png"]), expected, "wgpu (Deno, lavapipe) fp16")


def test_firefox(tiny_bundle_fp16, tmp_path):
    if not Path(FIREFOX).exists():
        pytest.skip(f"no Firefox at {FIREFOX} (apt install firefox-esr)")
    if not (WEB / "node_modules" / "puppeteer-core").is_dir() or shutil.which("node") is None:
        pytest.skip("node + puppeteer-core (npm install in web/) needed to drive Firefox")
    settings, expected = golden("tiny-ddim")
    shot = ARTIFACTS / "firefox-tiny-fp16-page.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, VK_ICD_FILENAMES=LAVAPIPE_ICD,
               WSD_FIREFOX=FIREFOX, WSD_FIREFOX_PROFILE=str(tmp_path / "profile"))
    with serving(tiny_bundle_fp16) as (url, _):
        proc = subprocess.run(["node", str(WEB / "test" / "firefox_generate.mjs"), url,
                               json.dumps(settings), str(shot)],
                              capture_output=True, text=True, env=env, cwd=WEB, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "png" in result:  # a Firefox that offers WebGPU
        _check(decode_png(result["png"]), expected, "Firefox fp16")
        return
    # ESR: the page must say why, in words a user can act on, on the page itself
    assert result["error"] == result["shown"], result
    assert ("refuses to give a WebGPU adapter" in result["error"]
            or "WebGPU is not available in this browser" in result["error"]), result
