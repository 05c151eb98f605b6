"""The TVM web runtime built from the installed wheel's sources (web/runtime/build.sh) runs
TVM-compiled WebAssembly under node with tvmjs, and its numbers equal numpy's.

Steps: build.sh (emscripten from apt; the first build compiles the runtime, ~2 min on 2
cores, then it is cached per machine), smoke_build.py (tiny Relax module -> .wasm with
create_tvmjs_wasm), `npm install` in web/ (tvmjs), smoke.cjs under node.
The WebGPU variant also needs a WebGPU implementation for node (npm `webgpu`, Dawn, with a
Vulkan driver it accepts: SwiftShader from apt `chromium`, or a real GPU); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
RUNTIME = WEB / "runtime"
SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"

pytestmark = pytest.mark.slow  # first build of the runtime takes minutes


def _load_smoke_build():
    spec = importlib.util.spec_from_file_location("wsd_smoke_build", RUNTIME / "smoke_build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # TVMScript looks up the defining module's source
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runtime_dir(web_runtime) -> str:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed")
    if not (WEB / "node_modules" / "@mlc-ai" / "web-runtime").is_dir():
        npm = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=WEB,
                             capture_output=True, text=True)
        if npm.returncode != 0:
            pytest.skip(f"npm install failed (offline?): {npm.stderr[-500:]}")
    return web_runtime


@pytest.fixture(scope="module")
def wasm_modules(runtime_dir, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("wasm")
    smoke = _load_smoke_build()
    t0 = time.time()
    paths = smoke.build(str(out), webgpu=True, runtime_dir=runtime_dir)
    print(f"smoke_build (cpu + webgpu, link -O1): {time.time() - t0:.1f} s")
    return paths


def _run_node(wasm: str, mode: str, env=None) -> dict:
    proc = subprocess.run(["node", str(RUNTIME / "smoke.cjs"), wasm, mode], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"smoke.cjs {mode} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_matmul(mm: dict) -> None:
    a = np.array(mm["a"], dtype=np.float32).reshape(mm["M"], mm["K"])
    b = np.array(mm["b"], dtype=np.float32).reshape(mm["K"], mm["N"])
    got = np.array(mm["out"], dtype=np.float32).reshape(mm["M"], mm["N"])
    assert mm["shape"] == [mm["M"], mm["N"]]
    ref = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def _check(res: dict) -> None:
    add = res["add"]
    x = np.array(add["x"], dtype=np.float32)
    y = np.array(add["y"], dtype=np.float32)
    got = np.array(add["out"], dtype=np.float32)
    assert add["shape"] == [x.size]
    np.testing.assert_array_equal(got, x + y)  # exact

    _check_matmul(res["matmul"])
    if res["mode"] == "webgpu":  # split-K: tvmjs runs both kernels with the workspace
        _check_matmul(res["matmul_split"])


def test_wasm_cpu(wasm_modules):
    _check(_run_node(wasm_modules["cpu"], "cpu"))


def test_wasm_webgpu(wasm_modules):
    if not (WEB / "node_modules" / "webgpu").is_dir():
        pytest.skip("npm package `webgpu` (optional dependency) not installed")
    env = dict(os.environ)
    if "VK_ICD_FILENAMES" not in env and os.path.exists(SWIFTSHADER_ICD):
        env["VK_ICD_FILENAMES"] = SWIFTSHADER_ICD  # Dawn rejects lavapipe; SwiftShader works
    probe = subprocess.run(
        ["node", "--input-type=module", "-e",
         "import {create, globals} from 'webgpu'; Object.assign(globalThis, globals);"
         "const a = await create([]).requestAdapter(); process.exit(a ? 0 : 3);"],
        cwd=RUNTIME, env=env, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip("no WebGPU adapter for node (install apt `chromium libvulkan1` for SwiftShader)")
    _check(_run_node(wasm_modules["webgpu"], "webgpu", env=env))
