"""The float16 bundle end to end on a WebGPU with shader-f16, against the fp32 golden.

Chromium's only adapter here (SwiftShader) has no shader-f16, and Firefox ESR refuses WebGPU
in release builds (a compile-time switch, `WebGPU is not yet available in Release or late
Beta builds`, measured on 140.12esr). So the app's engine (web/src/engine.js, the code the
page runs) runs in Deno, whose WebGPU is wgpu, the implementation inside Firefox, on Mesa's
lavapipe, which offers shader-f16: that is tests/web/test_browser_run.py's
test_deno_lavapipe_cli, through the same runner the GPU machine uses. Here Firefox ESR is
driven (puppeteer-core) to check that the page gives its clear message there, or, in a
Firefox that allows WebGPU, the image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.web.conftest import ARTIFACTS, ROOT, decode_png, golden, serving, ssim

WEB = ROOT / "web"
LAVAPIPE_ICD = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"
FIREFOX = os.environ.get("WSD_FIREFOX", "/usr/bin/firefox-esr")
SSIM_FP16 = 0.95


def _check(image, expected, label):
    score = ssim(image[..., :3], expected)
    diff = np.abs(image[..., :3].astype(int) - expected).max()
    print(f"{label} vs fp32 golden tiny-ddim: SSIM {score:.5f}, max |diff| {diff}")
    assert score >= SSIM_FP16


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
