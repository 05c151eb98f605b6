"""WebGPU-native per-layer numerics: the WGSL of the browser build, run on a native WebGPU
(wgpu-py; Mesa's lavapipe on a machine without a GPU), block by block against fp32 PyTorch,
with the bars of the native checks (fp32 >= 60 dB, fp16 >= 35 dB).

By default one block of each (part, kind) is verified in fp32 and fp16 (`verify.one_per_kind`:
22 blocks, CLIP, UNet and VAE); the full sweeps (59 blocks each) are marked slow. lavapipe
compiles every new shader pipeline on the CPU, which is most of the time here.
Skipped, with the reason, where wgpu-py or a WebGPU adapter is missing.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import tvm
from tvm.script import relax as R

from tests.cases import TINY_BLOCK_KINDS
from wsd import targets
from wsd.checks import verify
from wsd.models import load_model
from wsd.runtime import webgpu_native, wgsl

TARGET = targets.WEBGPU_NATIVE

SWEEPS = [
    pytest.param(("float32", "subset"), id="float32-one-per-kind"),
    pytest.param(("float16", "subset"), id="float16-one-per-kind"),
    pytest.param(("float32", "full"), id="float32-full", marks=pytest.mark.slow),
    pytest.param(("float16", "full"), id="float16-full", marks=pytest.mark.slow),
]

_model = None


def _tiny():
    global _model
    if _model is None:
        _model = load_model("tiny")
    return _model


@pytest.fixture(scope="module")
def webgpu():
    """The WebGPU device, or a skip saying why there is none."""
    reason = webgpu_native.available()
    if reason is not None:
        pytest.skip(reason)
    return webgpu_native.gpu()


@pytest.fixture(scope="module", params=SWEEPS)
def sweep(request, webgpu):
    dtype, scope = request.param
    if dtype == "float16" and not webgpu.shader_f16:
        pytest.skip(f"the WebGPU adapter ({webgpu.adapter}) has no shader-f16")
    blocks = verify.one_per_kind() if scope == "subset" else None
    rows = verify.verify_layers(_tiny(), target=TARGET, dtype=dtype, blocks=blocks, log=None)
    print(f"\ntiny {TARGET} {dtype} {scope} on {webgpu.adapter}\n{verify.format_report(rows)}")
    return request.param, rows


def test_every_block_passes_its_bar(sweep):
    (dtype, scope), rows = sweep
    failed = [r for r in rows if not r.passed]
    assert not failed, verify.format_report(failed)
    assert all(r.psnr >= verify.BARS[dtype] and r.error is None for r in rows)
    assert all(r.dtype == dtype and r.target == TARGET for r in rows)
    assert {(r.part, r.kind) for r in rows} == TINY_BLOCK_KINDS
    if scope == "subset":
        assert len(rows) == len(TINY_BLOCK_KINDS)
    else:
        assert len(rows) == 59  # every block of the tiny model (as on llvm)


# ---- the check can fail --------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet(webgpu):
    """The first UNet resnet, captured and exported (fp32), with its compiled program."""
    first = verify.one_per_kind()
    _, _, found = next(verify.capture(
        _tiny(), ["unet"], blocks=lambda part, path, kind: kind == "resnet"
        and first(part, path, kind)))
    assert len(found) == 1
    exported = verify.export_block(found[0], "float32", "resnet")
    assert exported.error is None, exported.error
    mod = tvm.IRModule({"resnet": exported.relax_func})
    return exported, webgpu_native.compile_program(mod)


def _psnr(exported, executor, inputs=None, weights=None) -> float:
    outputs = verify.run_block(executor, exported, inputs=inputs, weights=weights)
    return verify.psnr(outputs, [r.numpy() for r in exported.block.reference])[0]


def test_unperturbed_block_passes_and_runs_the_generated_wgsl(resnet):
    exported, program = resnet
    executor = webgpu_native.WebGPUExecutor(program)
    launched = []
    executor.after_dispatch = lambda name, args: launched.append(name)
    assert _psnr(exported, executor) >= verify.FP32_BAR_DB
    assert launched and set(launched) <= set(program.kernels)
    for name in set(launched):  # TVM's WGSL, as the bundle carries it
        kernel = program.kernels[name]
        assert f"fn {name}(" in kernel.wgsl and "@compute @workgroup_size(" in kernel.wgsl


def test_perturbed_weight_fails(resnet):
    exported, program = resnet
    executor = webgpu_native.WebGPUExecutor(program)
    weights = [w.copy() for w in exported.weights]
    index = exported.weight_names.index("block.conv2.weight")  # the last conv's kernel
    typical = float(np.abs(weights[index]).mean())
    weights[index].flat[0] += 10 * typical  # ONE element of one weight
    assert _psnr(exported, executor, weights=weights) < verify.FP32_BAR_DB
    weights[index] *= 1.5  # the whole kernel 50 % off fails the fp16 bar too
    assert _psnr(exported, executor, weights=weights) < verify.FP16_BAR_DB


def test_perturbed_wgsl_fails(resnet):
    """Edit the WGSL of the kernel that writes the block's output: its workgroups past the
    first half return early. The PSNR drops below both bars, so the table measures the WGSL."""
    exported, program = resnet
    launched = []
    executor = webgpu_native.WebGPUExecutor(program)
    executor.after_dispatch = lambda name, args: launched.append((name, args))
    _psnr(exported, executor)
    last, args = launched[-1]
    kernel = program.kernels[last]
    grid_x = args[len(kernel.arg_types) + kernel.launch_tags.index("blockIdx.x")]
    assert grid_x > 1  # more than one workgroup along x
    wgsl, count = re.subn(r"> (\w+)\.packGridDimX\)", r"> \1.packGridDimX / 2u)", kernel.wgsl)
    assert count == 1
    broken = dataclasses.replace(program, kernels={
        **program.kernels, last: dataclasses.replace(kernel, wgsl=wgsl)})
    value = _psnr(exported, webgpu_native.WebGPUExecutor(broken))
    assert value < verify.FP16_BAR_DB


def test_perturbed_kernel_output_fails(resnet):
    """Overwrite one element of the block's output buffer right after the kernel that
    writes it: a single wrong value is enough to fail the fp32 bar."""
    exported, program = resnet
    executor = webgpu_native.WebGPUExecutor(program)
    launched = []
    executor.after_dispatch = lambda name, args: launched.append(name)
    _psnr(exported, executor)
    last = launched[-1]
    out_index = program.kernels[last].write_access.index(True)
    peak = float(np.max(np.abs(exported.block.reference[0].numpy())))

    def corrupt(name, args):
        if name == last:
            executor.flush()
            bad = np.array([4 * peak], np.float32).tobytes()
            executor.device.queue.write_buffer(args[out_index].buffer, 0, bad)

    executor.after_dispatch = corrupt
    assert _psnr(exported, executor) < verify.FP32_BAR_DB


# ---- pieces --------------------------------------------------------------------------------

_N = 256 * 65537  # an element-wise kernel of 256 threads a workgroup: 65537 workgroups


@tvm.script.ir_module
class _Add:
    @R.function
    def main(x: R.Tensor((_N,), dtype="float32"), y: R.Tensor((_N,), dtype="float32")):
        return R.add(x, y)


def test_large_grid_spreads_over_z(webgpu):
    """WebGPU allows 65535 workgroups a dimension: an x grid beyond that is spread over z
    (the kernel recombines it from the packed x size), as tvmjs does (full-size VAE grids)."""
    program = webgpu_native.compile_program(_Add)
    executor = webgpu_native.WebGPUExecutor(program)
    grids = []
    executor.after_dispatch = lambda name, args: grids.append(
        args[len(program.kernels[name].arg_types):])
    x = np.arange(_N, dtype=np.float32)
    y = np.full(_N, 0.5, np.float32)
    out = executor("main", x, y).numpy()
    assert grids == [[65537, 256]]
    np.testing.assert_array_equal(out, x + y)


def _shaders_in_wasm(wasm: bytes) -> dict[str, str]:
    """The WGSL a bundle's model.wasm carries: TVM serializes each kernel's text as a
    64-bit little-endian length and the bytes; each text starts with its comment header."""
    found = {}
    for m in re.finditer(rb"//-{40}\n// Function: (\w+)\n//-{40}\n", wasm):
        size = int.from_bytes(wasm[m.start() - 8:m.start()], "little")
        found[m.group(1).decode()] = wasm[m.start():m.start() + size].decode()
    return found


@pytest.mark.slow
def test_kernels_are_the_bundles(tmp_path):
    """The WGSL the executor runs is, byte for byte, the WGSL in the browser bundle."""
    from wsd.compiler.layout import WeightLayouts
    from wsd.compiler.pipeline import add_scheduler_functions
    from wsd.compiler.trace import resolve_size, trace_model
    from wsd.web.bundle import BundleError, build_bundle

    model = _tiny()
    try:
        build_bundle(model, tmp_path, "float32", log=lambda *_: None)
    except BundleError as err:
        pytest.skip(str(err))
    stored = _shaders_in_wasm((tmp_path / "model.wasm").read_bytes())
    traced = trace_model(model, *resolve_size(model, None, None), "float32")
    program = webgpu_native.compile_program(add_scheduler_functions(traced.mod),
                                            weight_layouts=WeightLayouts(traced.num_inputs))
    assert len(stored) > 50 and set(stored) == set(program.kernels)
    differ = [k for k, text in stored.items() if program.kernels[k].wgsl != text]
    assert not differ


def test_split_sources():
    sep = "//" + "-" * 40 + "\n"
    a = f"{sep}// Function: a_kernel\n{sep}fn a_kernel() {{}}\n\n"
    b = f"{sep}// Function: b_kernel\n{sep}enable f16;\n\nfn b_kernel() {{}}\n\n"
    text = f"// Function: a_kernel\n{a}\n// Function: b_kernel\n{b}\n"  # as inspect_source
    assert wgsl.split_sources(text) == {"a_kernel": a, "b_kernel": b}


def test_unknown_target_is_refused():
    with pytest.raises(Exception, match="unknown target"):
        verify.verify_layers(_tiny(), target="webgpu-nowhere", log=None)


# ---- the subgroup kernel set (`webgpu-native-subgroups`) -----------------------------------

@tvm.script.ir_module
class _LayerNorm:
    @R.function
    def main(x: R.Tensor((2, 64, 320), dtype="float32"), g: R.Tensor((320,), dtype="float32"),
             b: R.Tensor((320,), dtype="float32")):
        return R.nn.layer_norm(x, g, b, axes=[-1])


def test_subgroup_kernel_set_reduces_through_shuffles():
    """The subgroup set's reductions are shuffle trees over 32 lanes and its WGSL enables
    subgroups; the portable set has neither. For naga the `enable` line goes, nothing else."""
    from wsd.targets import SUBGROUP_SIZE, webgpu_target

    portable, subgroups = (
        "".join(k.wgsl for k in webgpu_native.compile_program(
            _LayerNorm, webgpu_target(sg)).kernels.values()) for sg in (False, True))
    assert "subgroup" not in portable and "workgroupBarrier" in portable
    assert subgroups.startswith("//") and "enable subgroups;\n" in subgroups
    assert f"subgroupShuffleDown(red_buf0[0i], u32({SUBGROUP_SIZE // 2}i))" in subgroups
    naga = wgsl.for_naga(subgroups)
    assert "enable subgroups" not in naga
    assert naga.count("subgroupShuffleDown") == subgroups.count("subgroupShuffleDown") > 0


def test_subgroup_kernel_set_needs_subgroups_of_32(webgpu):
    """The subgroup target runs only where every kernel gets subgroups of 32 (the WGSL's
    shuffle trees assume it); elsewhere it is refused, naming what the adapter has."""
    from wsd import bench
    from wsd.targets import TargetError

    assert bool(webgpu.subgroup_sizes) == ("subgroup" in webgpu.device.features)
    name = targets.WEBGPU_NATIVE_SUBGROUPS
    if webgpu.subgroup_sizes == {32}:
        webgpu_native.check_adapter(name)
        assert targets.make(name).attrs["supports_subgroups"]
    else:
        with pytest.raises(TargetError, match="needs subgroups of exactly 32 invocations; "
                                              r"this adapter .* has (subgroups of|no sub)"):
            webgpu_native.check_adapter(name)
        with pytest.raises(bench.BenchError, match="subgroups of exactly 32"):
            bench.Device(name)  # `wsd bench` says so before timing anything
    assert not targets.make(targets.WEBGPU_NATIVE).attrs["supports_subgroups"]
    with pytest.raises(TargetError, match="unknown target 'webgpu-native-warps'"):
        targets.make("webgpu-native-warps")
    assert set(targets.WEBGPU_NATIVES) <= set(bench.TARGETS)  # bench's names: wsd.targets


# ---- timing: WebGPUExecutor.timed and `wsd bench --target webgpu-native` -------------------

@tvm.script.ir_module
class _Chain:
    @R.function
    def main(x: R.Tensor((1 << 20,), dtype="float32"), y: R.Tensor((1 << 20,), dtype="float32")):
        a = R.add(x, y)
        b = R.multiply(a, y)
        return R.exp(b)


@pytest.fixture(scope="module")
def chain(webgpu):
    return webgpu_native.compile_program(_Chain)


def test_timestamps_are_used_where_the_adapter_has_them(webgpu):
    import wgpu

    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    assert webgpu.timestamps == ("timestamp-query" in adapter.features)
    assert ("timestamp-query" in webgpu.device.features) == webgpu.timestamps


@pytest.mark.parametrize("timestamps", [True, False], ids=["timestamp-query", "submit-to-done"])
def test_timed_calls_leave_out_the_encoding(webgpu, chain, timestamps):
    """A slow host (a sleep after each kernel is encoded) shows in encode_s, not in gpu_s."""
    import time

    if timestamps and not webgpu.timestamps:
        pytest.skip(f"the WebGPU adapter ({webgpu.adapter}) has no timestamp-query")
    device = dataclasses.replace(webgpu, timestamps=timestamps)
    executor = webgpu_native.WebGPUExecutor(chain, device)
    assert executor.timing_method == ("timestamp-query" if timestamps else "submit-to-done")
    x = np.linspace(-1, 1, 1 << 20, dtype=np.float32)
    y = np.full(1 << 20, 0.5, np.float32)
    args = executor.upload(x), executor.upload(y)
    executor.timed("main", *args)  # pipelines compiled
    out, plain = executor.timed("main", *args)
    np.testing.assert_allclose(out.numpy(), np.exp((x + y) * y), rtol=1e-5)
    assert plain.method == executor.timing_method and plain.dispatches == 3
    assert 0 < plain.gpu_s <= plain.wall_s and plain.encode_s > 0
    delay = 3 * plain.gpu_s + 0.3
    executor.after_dispatch = lambda name, args: time.sleep(delay / 3)
    _, slow = executor.timed("main", *args)
    assert slow.encode_s >= delay
    assert slow.gpu_s < plain.gpu_s + delay / 2, (plain, slow)


@pytest.mark.parametrize("max_queries", [4096, 4], ids=["one-query-set", "three-query-sets"])
def test_profiled_calls_time_each_kernel(webgpu, chain, monkeypatch, max_queries):
    """One GPU time per kernel, named by the host function that launched it, in launch order;
    a call with more kernels than one query set holds spreads them over several."""
    if not webgpu.timestamps:
        pytest.skip(f"the WebGPU adapter ({webgpu.adapter}) has no timestamp-query")
    monkeypatch.setattr(webgpu_native, "_MAX_QUERIES", max_queries)
    executor = webgpu_native.WebGPUExecutor(chain)
    x = np.linspace(-1, 1, 1 << 20, dtype=np.float32)
    y = np.full(1 << 20, 0.5, np.float32)
    args = executor.upload(x), executor.upload(y)
    executor("main", *args)  # pipelines compiled
    out, calls = executor.profiled("main", *args)
    np.testing.assert_allclose(out.numpy(), np.exp((x + y) * y), rtol=1e-5)
    assert [name for name, _ in calls] == ["add", "multiply", "tir_exp"]
    _, whole = executor.timed("main", *args)
    assert all(s > 0 for _, s in calls)
    assert sum(s for _, s in calls) < 3 * whole.gpu_s  # three passes, not three calls


def test_profile_needs_timestamps(webgpu, chain):
    device = dataclasses.replace(webgpu, timestamps=False)
    executor = webgpu_native.WebGPUExecutor(chain, device)
    with pytest.raises(webgpu_native.TargetError, match="no timestamp-query"):
        executor.profiled("main", np.zeros(1 << 20, np.float32), np.zeros(1 << 20, np.float32))


@pytest.fixture(scope="module")
def unet_bench(webgpu):
    """`wsd bench --target webgpu-native --parts unet` on the tiny model (fp32, 2 repeats),
    and the WebGPUModelBench it ran."""
    from wsd import bench

    made = []

    class Kept(bench.WebGPUModelBench):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.suite, "WebGPUModelBench", Kept)  # where run() finds it
        report = bench.run("tiny", TARGET, ["float32"], ["unet"], repeat=2,
                           compile_option="off", log=lambda *_: None)
    return report, made[0]


def test_bench_row_is_the_webgpu_build_next_to_pytorch(webgpu, unet_bench):
    import torch

    from wsd import bench

    report, mb = unet_bench
    (row,) = report.rows
    print("\n" + report.text())
    assert row.name == "unet (unet_guided)" and row.dtype == "float32" and row.repeats == 2
    assert row.tvm_ms > 0 and row.eager_ms > 0 and row.tvm_encode_ms > 0
    assert row.error is not None and row.error < bench.tolerance("float32")
    assert f"GPU time by {mb.executor.timing_method}" in row.note
    assert ("PyTorch on cpu (no CUDA)" in row.note) == (not torch.cuda.is_available())
    assert report.target == TARGET and webgpu.adapter in report.device
    assert any(n.startswith("webgpu-native: TVM is the browser bundle's build")
               for n in report.notes)
    assert set(mb.program.functions()) == {"unet_guided"}  # only what was asked is compiled


def test_bench_times_the_gpu_and_keeps_the_weights(unet_bench):
    """Timing a prepared part uploads nothing (inputs and weights stay on the device), and
    its figure is the GPU's: a host slowed down while encoding shows in the encode time."""
    import time

    from wsd import bench

    _, mb = unet_bench
    prep = mb.prepare_part("unet")
    executor = mb.executor
    plain = bench.time_prepared(prep, mb.device, None, warmup=0, repeat=1)
    delay_s = 3 * plain.tvm_ms * 1e-3 + 1
    uploads, slept = [], []
    upload = executor.upload

    def counted_upload(array):
        uploads.append(array.shape)
        return upload(array)

    def slow_host(name, args):  # once: repeat=1 makes one timed call
        if not slept:
            slept.append(name)
            time.sleep(delay_s)

    executor.upload, executor.after_dispatch = counted_upload, slow_host
    try:
        slow = bench.time_prepared(prep, mb.device, None, warmup=0, repeat=1)
    finally:
        executor.upload, executor.after_dispatch = upload, None
    assert slept and not uploads
    assert slow.tvm_encode_ms >= delay_s * 1e3
    assert slow.tvm_ms < plain.tvm_ms + delay_s * 1e3 / 2, (plain, slow)


def test_bench_profile_times_every_kernel_of_the_step(webgpu, unet_bench):
    """`wsd bench --target webgpu-native --profile N`: one row per kernel the UNet step
    launches, with as many calls as its Relax code makes."""
    from collections import Counter

    from tvm import relax

    if not webgpu.timestamps:
        pytest.skip(f"the WebGPU adapter ({webgpu.adapter}) has no timestamp-query")
    _, mb = unet_bench
    prof = mb.profile("unet")
    program = mb.program
    expected = Counter()

    def count(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.GlobalVar) \
                and expr.op.name_hint in program.host:
            expected[expr.op.name_hint] += 1

    relax.analysis.post_order_visit(program.relax_mod["unet_guided"], count)
    assert {r.name: r.calls for r in prof["kernels"]} == dict(expected)
    assert all(r.ms > 0 for r in prof["kernels"]) and prof["total_ms"] > 0
    assert sum(r.calls for r in prof["kinds"]) == sum(expected.values())

