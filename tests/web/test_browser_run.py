"""wsd.checks.browser_run, the runner of the browser measurements on the GPU machine (issue 16), on
this machine's software adapters: its command line on Deno/wgpu over lavapipe (fp16 bundle),
and its Python API on Chromium over SwiftShader (fp32; slow: two shader compilations there).
Each run's JSON must hold every field the results need, the image must match the golden, and
the warm reload must fetch no weights."""

from __future__ import annotations

import json
import numbers
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.web.conftest import GOLDEN, golden
from wsd.checks import browser_run
from wsd.bench import Report, Row, write_outputs

REFERENCE = GOLDEN / "tiny-ddim.png"
SSIM_FP32 = 0.99
SSIM_FP16_VS_FP32 = 0.95  # as test_fp16_wgpu
REQUIRED = ("measured_at", "command", "engine", "engine_version", "adapter_mode", "flags",
            "gpu", "adapter_info", "model", "dtype", "height", "width", "settings", "ssim",
            "psnr", "step_ms", "step_host_ms", "image_ms", "encode_ms", "decode_ms",
            "cold_load", "warm_reload", "native", "host_overhead_ratio", "console_errors",
            "error")
# Native GPU times of a made-up `wsd bench --target webgpu-native` (its real writer)
NATIVE_UNET_MS, NATIVE_VAE_MS = 2.0, 4.0


def _bench_json(path: Path, dtype: str) -> Path:
    rows = [Row("unet (unet_guided)", dtype, "model", tvm_ms=NATIVE_UNET_MS, tvm_encode_ms=9.0),
            Row("vae (decode)", dtype, "model", tvm_ms=NATIVE_VAE_MS),
            Row("unet (unet_guided)", "other", "model", tvm_ms=1e6)]
    write_outputs(Report("2026-12-05", "lavapipe", "webgpu-native", "wsd bench", {}, rows=rows),
                  str(path), None)
    return path


def _positive_numbers(mapping: dict | None) -> None:
    for name, value in (mapping or {}).items():
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            assert value >= 0, (name, value)


def _check_report(report: dict, dtype: str, bar: float) -> None:
    missing = [k for k in REQUIRED if k not in report]
    assert not missing, missing
    assert report["error"] is None, report["error"]
    assert report["dtype"] == dtype and report["model"] == "tiny"
    assert report["ssim"] >= bar, report["ssim"]
    assert report["psnr"] > 20
    assert report["steps"] == 20 and 0 < report["step_ms"] <= report["image_ms"]
    for key in ("encode_ms", "decode_ms", "step_host_ms"):
        assert report[key] is None or report[key] > 0, key
    cold, warm = report["cold_load"], report["warm_reload"]
    assert cold["ready_ms"] > 0 and warm["ready_ms"] > 0
    assert all(v > 0 for v in (cold["stages_ms"] or {}).values()), cold["stages_ms"]
    _positive_numbers(cold["weights"])
    assert warm["shard_bytes_served"] == 0, warm
    assert warm["fetched_bytes"] in (0, None), warm


def test_flag_sets_are_data():
    gpu = browser_run.chromium_flags("gpu", ["vulkan_enable_f16_on_nvidia",
                                             "disable_robustness"])
    assert not [f for f in gpu if "swiftshader" in f], gpu
    assert "--enable-dawn-features=vulkan_enable_f16_on_nvidia,disable_robustness" in gpu
    assert browser_run.chromium_flags() == browser_run.QUIET + browser_run.WEBGPU
    assert "--use-webgpu-adapter=swiftshader" in browser_run.WEBGPU


def test_native_comparison(tmp_path):
    native = browser_run.native_comparison(_bench_json(tmp_path / "bench.json", "float16"),
                                           "float16", step_ms=3.0, decode_ms=6.0)
    assert native["unet_step_gpu_ms"] == NATIVE_UNET_MS and native["decode_gpu_ms"] == 4.0
    assert native["host_overhead_ratio"] == pytest.approx(1.5)
    assert native["decode_ratio"] == pytest.approx(1.5)
    assert native["unet_step_host_encode_ms"] == 9.0


def test_deno_lavapipe_cli(tiny_bundle_fp16, tmp_path, capsys):
    """The command line as the GPU script runs it, on Deno/wgpu over lavapipe."""
    if not Path(browser_run.DENO).exists():
        pytest.skip("npm `deno` not installed in web/ (npm install in web/)")
    if not Path(browser_run.LAVAPIPE_ICD).exists():
        pytest.skip("Mesa lavapipe not installed (apt install mesa-vulkan-drivers)")
    settings, _ = golden("tiny-ddim")
    out, image, script = tmp_path / "deno.json", tmp_path / "deno.png", tmp_path / "measure.js"
    assert browser_run.main(["--write-deno-script", str(script)]) == 0  # as the GPU script does
    code = browser_run.main([
        "--bundle", str(tiny_bundle_fp16), "--engine", "deno", "--adapter", "lavapipe",
        "--settings", json.dumps(settings), "--runs", "1", "--reference", str(REFERENCE),
        "--compare-native", str(_bench_json(tmp_path / "bench.json", "float16")),
        "--deno-script", str(script), "--save-image", str(image), "--out", str(out)])
    report = json.loads(out.read_text())
    print(capsys.readouterr().out, json.dumps({k: v for k, v in report.items()
                                               if k != "adapter_info"}, indent=1))
    assert code == 0
    _check_report(report, "float16", SSIM_FP16_VS_FP32)
    assert report["engine"] == "deno" and report["engine_version"].startswith("deno ")
    assert report["host_overhead_ratio"] == pytest.approx(report["step_ms"] / NATIVE_UNET_MS)
    assert report["command"].startswith("python -m wsd.checks.browser_run --bundle")
    # the bar can fail: the same image against a wrong reference (the golden mirrored)
    mirrored = tmp_path / "mirrored.png"
    Image.fromarray(np.asarray(Image.open(REFERENCE).convert("RGB"))[:, ::-1]).save(mirrored)
    wrong = browser_run.compare_to_reference(np.asarray(Image.open(image)), mirrored)
    assert wrong["ssim"] < SSIM_FP16_VS_FP32 <= report["ssim"]


@pytest.mark.slow  # Chromium on SwiftShader compiles the shaders twice (load, reload): ~5 min
def test_chromium_swiftshader(tiny_bundle, tmp_path):
    if not Path(browser_run.CHROMIUM).exists():
        pytest.skip(f"no Chromium at {browser_run.CHROMIUM} (apt install chromium)")
    settings, _ = golden("tiny-ddim")
    report = browser_run.measure(tiny_bundle, "chromium", "swiftshader", settings, runs=1,
                                 reference=REFERENCE)
    print(json.dumps({k: v for k, v in report.items() if k != "adapter_info"}, indent=1))
    if "no GPU adapter" in (report["error"] or ""):
        pytest.skip(f"Chromium found no WebGPU adapter: {report['error']}")
    _check_report(report, "float32", SSIM_FP32)
    assert report["flags"] == browser_run.chromium_flags("swiftshader")
    assert "HeadlessChrome" in report["user_agent"]
    assert not report["console_errors"], report["console_errors"]


def test_negative_runs_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        browser_run.main(["--bundle", str(tmp_path), "--engine", "deno", "--runs", "-1",
                          "--out", str(tmp_path / "x.json")])
    assert exit_.value.code == 2 and "--runs must be 0 or more, got -1" in capsys.readouterr().err


def test_the_runner_finds_the_web_app():
    """The runner's paths point into this repository's web/ (a wrong root would make the
    Deno test skip as if Deno were not installed)."""
    assert (browser_run.WEB / "test" / "measure.js").is_file()
    assert (browser_run.WEB / "package.json").is_file()
