"""`wsd build --target webgpu --out DIR` writes a browser bundle (wsd.web.bundle), and its
model.wasm runs under node with tvmjs on WebGPU: the `ddim_step` scheduler kernel, called
through the Relax VM, equals numpy's evaluation of the same formula.

Needs emscripten (web/runtime/build.sh), node + web/node_modules (tvmjs, and the
optional npm `webgpu`, Dawn, with SwiftShader from apt `chromium` on CPU-only machines);
the node part is skipped with the reason when something is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from wsd.cli import main
from wsd.web.limits import page_round
from wsd.models import load_model
from wsd.runtime.weights import read_manifest, verify_tensor_cache

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
RUNTIME = WEB / "runtime"
SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"

pytestmark = pytest.mark.slow  # compile + link ~30 s, the first web runtime build minutes

# Runs one VM function on WebGPU; inputs come as JSON in WSD_INPUTS, result is one JSON line.
NODE_SCRIPT = r"""
const fs = require("fs");
const tvmjs = require("@mlc-ai/web-runtime");
(async () => {
  const webgpu = await import("webgpu");
  Object.assign(globalThis, webgpu.globals);
  globalThis.navigator = { gpu: webgpu.create([]) };
  const gpu = await tvmjs.detectGPUDevice();
  if (!gpu) { process.stdout.write(JSON.stringify({ noAdapter: true }) + "\n"); return; }
  const t0 = Date.now();
  const tvm = await tvmjs.instantiate(new Uint8Array(fs.readFileSync(process.env.WSD_WASM)),
                                      tvmjs.createPolyfillWASI(), () => {});
  tvm.initWebGPU(gpu.device);
  const dev = tvm.webgpu();
  tvm.beginScope();
  const vm = tvm.createVirtualMachine(dev);
  const loadMs = Date.now() - t0;
  const inputs = JSON.parse(process.env.WSD_INPUTS);
  const args = inputs.map(({ data, shape }) =>
    tvm.empty(shape, "float32", dev).copyFrom(new Float32Array(data)));
  const out = vm.getFunction(process.env.WSD_FUNC)(...args);
  const host = tvm.empty(out.shape, "float32", tvm.cpu()).copyFrom(out);
  await dev.sync();
  const result = { shape: out.shape, out: Array.from(host.toArray()), loadMs,
                   ms: Date.now() - t0 };
  tvm.endScope();
  process.stdout.write(JSON.stringify(result) + "\n");
})().then(() => process.exit(0), (err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});
"""


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle  # tests/web/conftest.py: built once per session


def test_files_and_manifest(bundle):
    for name in ("model.wasm", "tokenizer.json", "wsd-config.json", "params/tensor-cache.json"):
        assert (bundle / name).is_file(), name
    assert (bundle / "model.wasm").read_bytes()[:4] == b"\0asm"
    verify_tensor_cache(bundle / "params")
    json.loads((bundle / "tokenizer.json").read_text())


def test_config(bundle):
    model = load_model("tiny")
    config = json.loads((bundle / "wsd-config.json").read_text())
    assert config["model"] == "tiny" and config["config_hash"] == model.config_hash()
    assert config["dtype"] == "float32"
    assert (config["height"], config["width"]) == model.default_size
    f = model.vae_scale_factor
    assert config["vae_scale_factor"] == f
    assert config["latent_shape"] == [1, model.latent_channels,
                                      config["height"] // f, config["width"] // f]
    assert config["max_tokens"] == model.max_tokens
    assert config["scheduler_config"] == model.configs["scheduler"]

    functions = config["functions"]
    metadata = read_manifest(bundle / "params")["metadata"]
    for name, weights in metadata["functions"].items():
        assert functions[name]["weights"] == weights
    assert functions["unet_guided"]["num_inputs"] == 5
    assert functions["encode_text"]["inputs"][0] == {
        "name": "input_ids", "shape": [1, model.max_tokens], "dtype": "int32"}
    assert functions["ddim_step"]["num_inputs"] == 3 and "weights" not in functions["ddim_step"]

    req = config["requirements"]
    assert req["shader_f16"] is False
    assert req["max_weight_bytes"] == metadata["max_tensor_bytes"]
    assert req["max_storage_bytes"] > 0  # read from the lowered module
    # decode allocates at least its output image, (1, H, W, 3) float32
    assert req["max_storage_bytes"] >= config["height"] * config["width"] * 3 * 4
    assert functions["decode"]["storage"]["dynamic"] == 0
    # buffers are bound whole; planned storages are allocated in 4 KiB pages
    assert req["max_storage_binding_bytes"] == req["max_buffer_bytes"] == max(
        req["max_weight_bytes"], page_round(req["max_storage_bytes"]), req["latent_bytes"])
    assert req["max_intermediate_bytes"] == 0  # no kernel keeps a global scratch buffer
    assert req["weights_bytes"] == metadata["tensor_bytes"]
    assert req["peak_memory_bytes"] == req["weights_bytes"] + req["activation_pool_bytes"]
    assert req["activation_pool_bytes"] >= req["max_function_storage_bytes"] \
        >= req["max_storage_bytes"]
    assert 0 < req["max_invocations_per_workgroup"] <= 256
    assert 0 < req["max_workgroup_storage_bytes"] <= 16384
    assert req["webgpu_defaults_ok"] is True
    # wsd.compiler.split's choice: nothing of the tiny model needs splitting
    splitting = config["splitting"]
    assert splitting["method"] == "exact" and "untiled" in splitting["why"]
    assert splitting["decode"]["first_block"] is None and splitting["unet"] == {}


def test_cli_errors(capsys, tmp_path):
    assert main(["build", "--target", "webgpu"]) == 2
    assert "--target webgpu needs --out DIR" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--target", "webgpu"]) == 2
    assert "web app's job" in capsys.readouterr().err


def _node_env():
    if shutil.which("node") is None:
        pytest.skip("node not installed")
    if not (WEB / "node_modules" / "@mlc-ai" / "web-runtime").is_dir():
        pytest.skip("tvmjs not installed: run `npm install` in web/ (scripts/setup.sh does)")
    if not (WEB / "node_modules" / "webgpu").is_dir():
        pytest.skip("npm package `webgpu` (optional dependency of web/) not installed")
    env = dict(os.environ)
    if "VK_ICD_FILENAMES" not in env and os.path.exists(SWIFTSHADER_ICD):
        env["VK_ICD_FILENAMES"] = SWIFTSHADER_ICD  # Dawn rejects lavapipe; SwiftShader works
    return env


def test_ddim_step_on_webgpu(bundle):
    env = _node_env()
    rng = np.random.default_rng(0)
    shape = json.loads((bundle / "wsd-config.json").read_text())["latent_shape"]
    sample = rng.standard_normal(shape).astype(np.float32)
    model_output = rng.standard_normal(shape).astype(np.float32)
    coeffs = np.array([0.6, 0.8, 0.9, 0.43588989], np.float32)
    env.update(WSD_WASM=str(bundle / "model.wasm"), WSD_FUNC="ddim_step",
               WSD_INPUTS=json.dumps([
                   {"data": a.ravel().tolist(), "shape": list(a.shape)}
                   for a in (sample, model_output, coeffs)]))
    t0 = time.time()
    proc = subprocess.run(["node", "-e", NODE_SCRIPT], cwd=RUNTIME, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"node failed:\n{proc.stderr[-4000:]}"
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res.get("noAdapter"):
        pytest.skip("no WebGPU adapter for node (install apt `chromium libvulkan1` for "
                    "SwiftShader)")
    print(f"node: load + VM {res['loadMs']} ms, total {res['ms']} ms, "
          f"wall {time.time() - t0:.1f} s")
    assert res["shape"] == shape
    got = np.array(res["out"], np.float32).reshape(shape)
    # wsd/samplers/ddim.py, the same float32 op order
    b, a, a_prev, d = coeffs
    ref = a_prev * ((sample - b * model_output) / a) + d * model_output
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
