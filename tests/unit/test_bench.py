"""The benchmark library's own logic (wsd.bench, wsd.compiler.memory), on small inputs: the timing
loop, FLOP counting, ratios and tables, kernel kinds, the kernel comparison and the memory
analysis. The benchmarks themselves are in tests/perf (run explicitly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsd import bench


def test_measure_warms_up_then_times_each_repeat():
    calls = []
    timing = bench.measure(lambda: calls.append(1), warmup=2, repeat=4)
    assert len(calls) == 6 and len(timing.times) == 4
    assert timing.median >= 0 and timing.ms == timing.median * 1e3


def test_measure_stops_at_its_budget():
    import time

    timing = bench.measure(lambda: time.sleep(0.02), warmup=0, repeat=50, budget_s=0.05)
    assert 1 <= len(timing.times) <= 4


def test_flops_of_conv_linear_and_attention():
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    assert bench.count_flops(conv, torch.randn(2, 8, 10, 10)) == 2 * 2 * 16 * 8 * 9 * 100
    lin = torch.nn.Linear(32, 64)
    assert bench.count_flops(lin, torch.randn(3, 5, 32)) == 2 * 15 * 32 * 64
    q = torch.randn(2, 4, 64, 16)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert bench.count_flops(sdpa, q, q, q) == 4 * 2 * 4 * 64 * 64 * 16


def test_row_ratios_and_rates():
    row = bench.Row("x", "float32", tvm_ms=4.0, eager_ms=2.0, compile_ms=8.0, flops=10**9,
                    peak_tflops=1.0)
    assert row.tvm_vs_eager == 2.0 and row.tvm_vs_compile == 0.5
    assert row.tvm_tflops == pytest.approx(0.25)
    assert row.pct_peak(row.tvm_ms) == pytest.approx(25.0)
    missing = bench.Row("y", "float16", tvm_ms=1.0)
    assert missing.tvm_vs_eager is None and missing.tvm_tflops is None
    text = bench.format_rows([row, missing])
    assert "2.00" in text and "0.50" in text and "y" in text
    md = bench.format_rows([row], markdown=True)
    assert md.splitlines()[1].startswith("|---")


@pytest.mark.parametrize("name,kind", [
    ("fused_conv2d5_cast10_add9_add12_divide2", "conv2d_add_add_divide"),
    ("fused_conv2d14_add23_expand_dims6_expand_dims7_add24",
     "conv2d_add_expand_dims_expand_dims_add"),
    ("fused_matmul3_cast6_add5_cast7_add6", "matmul_add_add"),
    ("matmul12", "matmul"),
    ("fused_group_norm_silu1", "group_norm_silu"),
    ("fused_split_gelu_multiply3", "split_gelu_multiply"),
    ("wsd_attention4", "attention"),
    ("attention2", "attention"),
    ("layer_norm", "layer_norm"),
    ("fused_conv2d17_cast_add17_cast17", "conv2d_add"),
])
def test_kind_of(name, kind):
    assert bench.kind_of(name) == kind


def test_parse_list():
    assert bench.parse_list("float16", bench.DTYPES, "--dtype") == ["float16"]
    assert bench.parse_list("both", bench.DTYPES, "--dtype") == list(bench.DTYPES)
    assert bench.parse_list("clip, image", bench.PARTS, "--parts") == ["clip", "image"]
    with pytest.raises(bench.BenchError, match="--parts"):
        bench.parse_list("clip,gpu", bench.PARTS, "--parts")


def test_compile_policy():
    cpu = bench.Device("llvm")
    assert bench.compile_policy("auto", cpu)[0] is False
    assert bench.compile_policy("on", cpu) == (True, "")
    assert bench.compile_policy("off", cpu)[0] is False
    with pytest.raises(bench.BenchError):
        bench.compile_policy("maybe", cpu)


def _small_matmul_bias():
    """A fused kernel as the build makes it: (2, 16, 8) @ (8, 12) + bias."""
    import tvm

    from wsd.compiler import optimize
    from wsd.compiler.trace import to_relax

    lin = torch.nn.Linear(8, 12)
    func, _ = to_relax(lin, (torch.randn(2, 16, 8),))
    target = bench.Device("llvm").tvm_target
    with target:
        mod = tvm.transform.Sequential(optimize.passes(target))(
            tvm.IRModule({"main": func}))
    return next(f for gv, f in mod.functions.items()
                if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in gv.name_hint)


def test_compare_kernel_checks_against_the_reference():
    func = _small_matmul_bias()
    device = bench.Device("llvm")
    right = bench.compare_kernel(func, device, lambda x, w, b: x @ w + b, repeat=2)
    assert right.error < 1e-5 and right.ratio is not None
    wrong = bench.compare_kernel(func, device, lambda x, w, b: x @ w - b, repeat=1)
    assert wrong.error > 1e-2
    alone = bench.compare_kernel(func, device, repeat=1)
    assert alone.reference is None and alone.output.shape == (2, 16, 12)


def test_fused_reference_matches_the_kernel_kind():
    func = _small_matmul_bias()
    specs = bench.param_specs(func)
    kernel = bench.FusedKernel("fused_matmul_add", "matmul_add", "unet_guided", func, 1,
                               specs[:-1], specs[-1:], {"out_shape": specs[-1][0],
                                                        "out_dtype": specs[-1][1]})
    prep = bench.prepare_fused(kernel, bench.Device("llvm"), False, "off")
    assert prep.error < 1e-5 and prep.flops == 2 * 32 * 8 * 12


@pytest.mark.parametrize("part, kind", [("unet_guided", "conv2d_add_add"),
                                        ("unet_guided", "NT_matmul_add"),
                                        ("unet_guided", "attention"),
                                        ("decode", "conv2d_add_add_divide")])
def test_fused_reference_follows_cuda_layouts(monkeypatch, part, kind):
    """With CUDA's layouts (wsd.compiler.layout, forced here on llvm) kernels read NHWC data, OHWI and
    (N, K) weights: the PyTorch counterparts still compute the same thing. Attention stays
    BSNH; the decoder's convolutions are wider than they have channels (a stride read from
    the NHWC output shape would be wrong)."""
    from wsd.compiler import layout
    from wsd.models import load_model

    monkeypatch.setitem(layout.CONV_LAYOUTS, "llvm", layout.CONV_LAYOUTS["cuda"])
    device = bench.Device("llvm")
    kernels = bench.fused_kernels(load_model("tiny"), part, "float32", device.tvm_target)
    kernel = bench.dominant(kernels, kind)
    assert kernel is not None and kernel.ctx["layout"] == "NHWC"
    prep = bench.prepare_fused(kernel, device, False, "off")
    assert prep.error < 1e-5


def test_memory_workspace_and_plan():
    """A kernel that keeps a whole intermediate in device memory while it runs (as unscheduled
    CPU kernels do): the report counts it as workspace, next to the planned storage."""
    import tvm
    from tvm import relax, te

    from wsd.compiler import memory
    from wsd.compiler.pipeline import pipeline

    def two_stage(a):
        doubled = te.compute(a.shape, lambda i, j: a[i, j] * 2.0, name="doubled")
        return te.compute(a.shape, lambda i, j: doubled[i, j] + 1.0, name="out")

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((256, 512), "float32"))
    with bb.function("decode", [x]):
        with bb.dataflow():
            z = bb.emit_output(bb.emit_te(two_stage, x))
        bb.emit_func_output(z)
    lowered = pipeline(tvm.target.Target("llvm"))(bb.get())
    one = 256 * 512 * 4
    work = memory.kernel_workspace(lowered)
    assert work and all(v == one for v in work.values()), work
    report = memory.plan(lowered, {"vae/w": 1000})
    fn = report["functions"]["decode"]
    assert fn["workspace_bytes"] == one and fn["workspace_kernel"] in work
    assert report["peak_bytes"] == 1000 + fn["storage_bytes"] + one
    assert report["peak_function"] == "decode"


def test_memory_table_says_whether_the_goal_is_met():
    plan = {"weight_bytes": 2 * 10**9, "num_weights": 3, "peak_bytes": int(3.5e9),
            "functions": {"decode": {"activation_bytes": int(1.5e9), "storage_bytes": 10**9,
                                     "workspace_bytes": int(5e8), "workspace_kernel": "k"}}}
    text = bench.format_memory({"planned": plan, "measured": {}, "goal_bytes": 3e9})
    assert "NOT met" in text and "k)" in text
    plan["peak_bytes"] = int(2.5e9)
    assert "met (planned)" in bench.format_memory(
        {"planned": plan, "measured": {}, "goal_bytes": 3e9})


def test_random_arrays_are_seeded():
    specs = [((3, 4), "float16"), ((2,), "int32")]
    a, b = bench.random_arrays(specs, 1), bench.random_arrays(specs, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].dtype == np.float16 and not a[1].any()


@pytest.mark.parametrize("edited,invalidates", [
    ("bench/suite.py", False), ("cli.py", False), ("tuning/tune.py", False),
    ("web/bundle.py", False), ("runtime/pipeline.py", False), ("settings.py", False),
    ("compiler/memory.py", True), ("compiler/trace.py", True), ("kernels/attention.py", True),
    ("kernels/gemm/tuned/webgpu.json", True), ("samplers/pndm.py", True),
    ("models/presets.py", True),
])
def test_the_library_cache_key_covers_compiler_sources_only(tmp_path, edited, invalidates):
    """The library cache key hashes what makes compiled code (the compiler, kernels and their
    records, samplers, models) and nothing else: editing the CLI, tuner or benchmarks must
    keep the cached libraries (an SD v1.5 CUDA build takes minutes)."""
    import shutil
    from pathlib import Path

    from wsd.runtime import library

    pkg = tmp_path / "wsd"
    shutil.copytree(Path(library.__file__).parents[1], pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = library.compiler_fingerprint(pkg)
    path = pkg / edited
    path.write_text(path.read_text() + ("\n" if edited.endswith(".json") else "\n# edited\n"))
    assert (library.compiler_fingerprint(pkg) != before) == invalidates


def test_unknown_targets_are_bench_errors():
    with pytest.raises(bench.BenchError, match=r"unknown target 'vulkan': choose llvm, cuda, "
                                               r"webgpu-native"):
        bench.Device("vulkan")
    with pytest.raises(bench.BenchError, match="unknown target 'webgpu'"):
        bench.Device("webgpu")  # the browser bundle's target: not a benchmark device


@pytest.mark.parametrize("parts,message", [
    (["unet", "image"], "not image: a whole image runs the samplers"),
    (["memory"], "not memory"),
])
def test_webgpu_native_refuses_what_it_cannot_time(monkeypatch, parts, message):
    """Said before any weights load (SD v1.5's take a minute; the configs, which say which
    function times the UNet, are read first)."""
    import wsd.models

    for part in ("unet", "vae", "text_encoder"):
        monkeypatch.setattr(wsd.models.Model, part, lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(bench.BenchError, match=message):
        bench.run("tiny", "webgpu-native", ["float32"], parts, log=lambda *_: None)


def test_self_timed_functions_report_their_own_seconds():
    """A self-timed call's figure is what it returns (e.g. GPU time), its host time apart;
    the budget still counts the wall clock."""
    import time

    def timer():
        time.sleep(0.03)  # host work the figure must leave out
        return 0.001, 0.03

    t = bench.measure_interleaved({"eager": lambda: None, "tvm": timer}, warmup=0, repeat=3,
                                  self_timed=("tvm",))
    assert t["tvm"].times == [0.001] * 3 and t["tvm"].host_ms == pytest.approx(30)
    assert t["eager"].host_ms is None and len(t["eager"].times) == 3
    short = bench.measure_interleaved({"tvm": timer}, warmup=0, repeat=50, budget_s=0.05,
                                      self_timed=("tvm",))
    assert 1 <= len(short["tvm"].times) <= 3
    prep = bench.Prepared("part", "float32", "model", lambda: pytest.fail("wall-clock timed"),
                          lambda: None, None, "", None, None, None, tvm_timer=timer)
    row = bench.time_prepared(prep, None, None, warmup=0, repeat=2)
    assert row.tvm_ms == pytest.approx(1.0) and row.tvm_encode_ms == pytest.approx(30, rel=0.5)
    assert "host encode" in bench.table_cells(row)[-1]
