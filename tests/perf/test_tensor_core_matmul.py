"""Our tensor-core GEMM rule (wsd.kernels.gemm.tensor_core_matmul) and the CUDA half of the
tuning flow (wsd.tuning.tune export --target cuda, wsd.tuning.cuda_bench).

Everywhere: which kernels the rule takes, which parameters it refuses, and that TVM lowers
what it schedules to wmma with cp.async copies. On an NVIDIA GPU: the scheduled kernels match
the reference and dlight's default (wsd.tuning.cuda_bench, the bench the admission gate reads).
"""

from __future__ import annotations

import dataclasses

import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from wsd.kernels.gemm import records, tensor_core_matmul as tc, tiled_matmul  # noqa: E402
from wsd.targets import tuning_target  # noqa: E402
from wsd.tuning import cuda_bench, kernel_builds, tune, wgsl_bench  # noqa: E402


def _conv(n, c, h, w_, f, k, dtype="float16", residual=False):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, c, h, w_), dtype))
    w = relax.Var("w", relax.TensorType((f, c, k, k), dtype))
    b = relax.Var("b", relax.TensorType((1, f, 1, 1), dtype))
    r = relax.Var("r", relax.TensorType((n, f, h, w_), dtype))
    with bb.function("main", [x, w, b, r] if residual else [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.nn.conv2d(x, w, padding=k // 2, out_dtype="float32"),
                                     relax.op.astype(b, "float32")))
            y = bb.emit(relax.op.astype(y, dtype))
            if residual:
                y = bb.emit(relax.op.add(y, r))
            z = bb.emit_output(y)
        bb.emit_func_output(z)
    return bb.get()


def _linear(m, k, n, dtype="float16"):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, m, k), dtype))
    w = relax.Var("w", relax.TensorType((n, k), dtype))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            z = bb.emit_output(relax.op.matmul(x, relax.op.permute_dims(w), out_dtype="float32"))
        bb.emit_func_output(z)
    return bb.get()


def _works(mod):
    mod = tvm.transform.Sequential(tune.optimize_passes(tuning_target("cuda")))(mod)
    return tune.workloads(mod, "cuda")


@pytest.fixture(scope="module")
def conv_work():
    works = _works(_conv(2, 64, 16, 16, 128, 3, residual=True))
    assert len(works) == 1
    return works[0]


def test_the_rule_takes_fp16_gemms_along_k(conv_work):
    assert conv_work.traits["extents"] == {"S": 1, "I": 2 * 16 * 16, "J": 128, "K": 9 * 64}
    assert tc.applies(conv_work.func)
    assert len(_works(_linear(64, 128, 256))) == 1
    # fp32 operands: not this rule's; on CUDA they get our tiled SIMT rule's candidates
    (fp32,) = _works(_conv(2, 64, 32, 32, 128, 3, dtype="float32"))
    assert not tc.applies(fp32.func)
    found = tune.candidates_for(fp32, "cuda", 8)
    assert found and all(isinstance(c, tiled_matmul.Config) for c in found)
    assert all(isinstance(c, tc.Config) for c in tune.candidates_for(conv_work, "cuda", 8))


@pytest.mark.parametrize("change,why", [
    ({"vec": 3}, "vec must be"),
    ({"warps_m": 8, "warps_n": 8}, "threads"),
    ({"frag_m": 1, "frag_n": 1, "chunk": 1}, "does not split"),
    ({"stages": 8, "chunk": 8}, "shared memory"),
    ({"static_staging": True, "stages": 1}, "static shared"),
])
def test_config_refuses(change, why):
    with pytest.raises(ValueError, match=why):
        dataclasses.replace(tc.Config(), **change).check()


def test_config_round_trips_json():
    cfg = tc.Config(warps_m=4, frag_n=5, stages=4, static_staging=True)
    assert tc.Config.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        tc.Config.from_json({**cfg.to_json(), "bogus": 1})
    assert records.RULES[tc.NAME][0] is tc.Config


def test_candidates_respect_padding_and_occupancy(conv_work):
    e = conv_work.traits["extents"]
    found = tune.tensor_core_candidates(conv_work, limit=50)
    assert found
    for cfg in found:
        assert -e["I"] % cfg.bm <= e["I"] / 8 and -e["J"] % cfg.bn <= e["J"] / 8
        blocks = -(-e["I"] // cfg.bm) * -(-e["J"] // cfg.bn)
        assert cfg.bm * cfg.bn < 128 * 128 or blocks >= 66
        assert cfg.static_staging == (cfg.stages >= 4 and cfg.staging_bytes() <=
                                      tc.MAX_STATIC_SHARED_BYTES)
    # I = 512, J = 128: a 128x128 tile leaves 4 blocks, far from filling a GPU
    assert all(c.bm * c.bn < 128 * 128 for c in found)


def _lowered_device_code(func) -> str:
    """The CUDA device functions TVM lowers the scheduled kernel to (TIR text)."""
    return "\n".join(m.script() for m in kernel_builds.lower_kernel(func, tuning_target("cuda")))


@pytest.mark.parametrize("cfg", [
    tc.Config(frag_m=2, frag_n=2),                                   # 64x64, 3 stages
    tc.Config(frag_m=2, frag_n=2, chunk=4, stages=4, static_staging=True),
    tc.Config(frag_m=4, frag_n=2, stages=1),                         # no pipeline
], ids=lambda c: c.label())
def test_lowers_to_wmma_with_async_copies(conv_work, cfg):
    sch = tc.apply(conv_work.func, cfg)
    assert sch is not None
    code = _lowered_device_code(sch.mod["main"])
    assert "tvm_mma_sync" in code and "tvm_load_matrix_sync" in code
    # the padded input's copy is a predicated (zero-filling) cp.async where pipelined
    assert ("cp_async" in code) == (cfg.stages > 1)


def test_export_for_cuda_leaves_building_and_references_to_the_gpu(conv_work, tmp_path):
    cfg = tc.Config(frag_m=2, frag_n=2)
    manifest = tune.export([conv_work], tmp_path, {conv_work.key: [(cfg.label(), cfg)]},
                           log=lambda *_: None, target=tuning_target("cuda"))
    assert manifest["target"] == "cuda"
    (kernel,) = manifest["kernels"]
    assert [v["label"] for v in kernel["variants"]] == ["default", cfg.label()]
    assert kernel["variants"][1]["rule"] == tc.NAME
    assert all(v["lib"].startswith("cuda_lib/") for v in kernel["variants"])
    assert not (tmp_path / kernel["reference"]).exists()
    assert not (tmp_path / "wgsl").exists()


def test_admit_writes_a_cuda_record(conv_work, tmp_path):
    cfg = tc.Config(frag_m=2, frag_n=2)
    manifest = tune.export([conv_work], tmp_path, {conv_work.key: [(cfg.label(), cfg)]},
                           log=lambda *_: None, target=tuning_target("cuda"))
    times = [{"ms": 1.0, "method": "time_evaluator"}]
    results = {"date": "2026-11-22", "adapter": {"device": "gpu", "backend": "cuda"},
               "kernels": {conv_work.key: {"name": conv_work.name, "variants": {
                   "default": {"ok": True, "ms": 2.0, "tflops": 1.0, "err_ref": 1e-4,
                               "err_default": 0.0, "times": times},
                   cfg.label(): {"ok": True, "ms": 1.0, "tflops": 2.0, "err_ref": 2e-4,
                                 "err_default": 1e-4, "times": times}}}}}
    db = tune.admit(results, manifest, {"records": {}}, log=lambda *_: None)
    record = db["records"][conv_work.key]
    assert record["rule"] == tc.NAME and record["measured"]["speedup"] == 2.0
    assert records.config_of(record) == cfg
    assert records.schedule_record(conv_work.func, record) is not None


@pytest.fixture(scope="module")
def cuda_gpu():
    if not tvm.cuda(0).exist:
        pytest.skip("no CUDA GPU here")
    return tvm.target.Target.from_device(tvm.cuda(0))


def test_candidates_match_the_reference_on_the_gpu(cuda_gpu, conv_work, tmp_path):
    """Built with nvcc and run: every candidate within fp16 tolerance of the SIMT
    reference and of dlight's default, every output element written."""
    configs = tune.tensor_core_candidates(conv_work, limit=4)
    tune.export([conv_work], tmp_path, {conv_work.key: [(c.label(), c) for c in configs]},
                log=lambda *_: None, target=tuning_target("cuda"))
    built = cuda_bench.build_folder(tmp_path, cuda_gpu, jobs=4, log=lambda *_: None)
    runner = cuda_bench.Runner(built)
    cuda_bench.write_references(tmp_path, runner)
    (kernel,) = wgsl_bench.load_manifest(tmp_path)["kernels"]
    res = wgsl_bench.check_kernel(runner, tmp_path, kernel, repeat=3, rounds=1,
                                  log=lambda *_: None)
    assert res["default"]["ok"], res["default"]
    for cfg in configs:
        assert res[cfg.label()]["ok"], (cfg.label(), res[cfg.label()])


@pytest.mark.parametrize("arch,cfg,runs", [
    ("sm_90a", tc.Config(chunk=4), True),          # 108 KiB: fits Hopper's 227
    ("sm_89", tc.Config(chunk=4), False),          # ... not Ada's 99
    ("sm_89", tc.Config(), True),                  # 60 KiB
    ("sm_75", tc.Config(), False),                 # no cp.async before sm_80
    ("", tc.Config(), False),                      # no architecture named
])
def test_records_apply_only_where_the_gpu_can_run_them(conv_work, arch, cfg, runs):
    target = tvm.target.Target({"kind": "cuda", **({"arch": arch} if arch else {})})
    record = {"name": conv_work.name, "rule": tc.NAME, "params": cfg.to_json()}
    assert records.runs_on(record, target) == runs
    mod = tvm.IRModule({"k": conv_work.func})
    out = records.ApplyRecords(target, db={"records": {conv_work.key: record}})(mod)
    scheduled = out["k"].attrs is not None and bool(out["k"].attrs.get("tirx.is_scheduled"))
    assert scheduled == runs
