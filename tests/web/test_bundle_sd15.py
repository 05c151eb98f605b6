"""Full-size SD v1.5 (random weights, 512x512) as a WebGPU bundle: `wsd build --model sd15
--target webgpu --dtype float16` fits WebGPU's default limits (128 MiB per storage binding,
256 MiB per buffer, 16 KiB workgroup storage, 256 invocations, 8 storage buffers per kernel),
so it runs on any adapter with shader-f16; the float32 build states the larger limits it
needs (its token embedding is 144.75 MiB). Larger sizes: tests/unit/test_split_plans.py. Each build takes ~2 min on 2 cores (trace ~50 s, compile ~40 s, link ~8 s, weights
~15 s: 1.9 GiB fp16, 3.8 GiB fp32, removed afterwards).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from wsd.web import limits
from wsd.cli import main
from wsd.runtime.weights import read_manifest

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20

pytestmark = pytest.mark.slow


def _build(tmp_path_factory, dtype: str):
    proc = subprocess.run(["bash", str(ROOT / "web" / "runtime" / "build.sh")],
                          capture_output=True, text=True)
    if proc.returncode == 77:
        pytest.skip("emscripten unavailable (bash web/runtime/build.sh exits 77)")
    out = tmp_path_factory.mktemp("sd15") / dtype
    log = io.StringIO()
    t0 = time.time()
    with contextlib.redirect_stdout(log):
        code = main(["build", "--model", "sd15", "--target", "webgpu", "--dtype", dtype,
                     "--out", str(out)])
    print(f"\nwsd build --model sd15 --dtype {dtype}: {time.time() - t0:.0f} s\n"
          + log.getvalue())
    assert code == 0
    config = json.loads((out / "wsd-config.json").read_text())
    metadata = read_manifest(out / "params")["metadata"]
    shutil.rmtree(out / "params")  # gigabytes; the manifest was read
    return config, metadata, log.getvalue()


@pytest.fixture(scope="module")
def fp16(tmp_path_factory):
    return _build(tmp_path_factory, "float16")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return _build(tmp_path_factory, "float32")


def _common(config, metadata, log):
    req = config["requirements"]
    assert (config["height"], config["width"]) == (512, 512)
    assert req["max_weight_bytes"] == metadata["max_tensor_bytes"]
    assert req["weights_bytes"] == metadata["tensor_bytes"]
    assert req["max_storage_binding_bytes"] == req["max_buffer_bytes"] >= req["max_storage_bytes"]
    # no score matrix; split-K's partial products (wsd/kernels/gemm/tuned records) are the only kernel
    # scratch: a few tens of MiB, one at a time
    assert 0 < req["max_intermediate_bytes"] == req["workspace_pool_bytes"] <= 64 * MiB
    assert req["peak_memory_bytes"] == (req["weights_bytes"] + req["activation_pool_bytes"]
                                        + req["workspace_pool_bytes"])
    # the kernels' workgroup needs are within the defaults in both builds
    for key in ("max_workgroup_storage_bytes", "max_invocations_per_workgroup",
                "max_storage_buffers_per_shader_stage"):
        assert 0 < req[key] <= limits.WEBGPU_DEFAULTS[key], key
    # `wsd build` prints the largest buffer and the memory plan
    assert f"largest buffer   {req['max_buffer_bytes'] / MiB:.2f} MiB" in log
    assert f"memory plan      peak {req['peak_memory_bytes'] / MiB:.2f} MiB" in log
    return req


def test_fp16_fits_webgpu_defaults(fp16):
    config, metadata, log = fp16
    req = _common(config, metadata, log)
    assert req["shader_f16"] is True
    assert limits.check(req) == [] and req["webgpu_defaults_ok"] is True
    assert req["max_storage_binding_bytes"] <= 128 * MiB
    assert req["max_buffer_bytes"] <= 256 * MiB
    # the token embedding, 49408 x 768 fp16, is the largest weight
    assert req["max_weight_bytes"] == 49408 * 768 * 2
    assert "defaults suffice" in log
    # at 512x512 nothing exceeds 128 MiB: no splitting (wsd.compiler.split)
    assert config["splitting"]["decode"]["first_block"] is None
    assert config["splitting"]["unet"] == {}
    assert "splitting        none needed" in log


def test_fp32_states_its_limits(fp32):
    config, metadata, log = fp32
    req = _common(config, metadata, log)
    assert req["shader_f16"] is False
    # the token embedding, 49408 x 768 fp32 (144.75 MiB), needs a binding over 128 MiB; the
    # decoder's 256 channels at 512x512 (256 MiB in float32) are split down to its size
    # (wsd.compiler.split)
    assert req["max_weight_bytes"] == 49408 * 768 * 4
    assert req["max_storage_bytes"] <= req["max_weight_bytes"]
    assert config["splitting"]["split_limit_bytes"] == req["max_weight_bytes"]
    assert config["splitting"]["decode"]["first_block"] is not None
    assert "needs a binding over 128 MiB anyway" in log
    assert req["max_storage_binding_bytes"] == req["max_weight_bytes"] > 128 * MiB
    assert req["webgpu_defaults_ok"] is False
    over = limits.check(req)
    assert over and over[0].startswith("max_storage_binding_bytes = ")
    assert "above the defaults: max_storage_binding_bytes" in log
