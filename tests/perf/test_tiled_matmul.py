"""Our tiled GEMM rule and the admission gate, on small kernels (any WebGPU adapter: Mesa's
lavapipe on a CPU is enough for correctness; timings there mean nothing and are not used).
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from wsd.kernels.gemm import records, tiled_matmul  # noqa: E402
from wsd.targets import tuning_target  # noqa: E402
from wsd.tuning import tune, wgsl_bench  # noqa: E402


def _product(bb, y, dtype):
    """fp16 as wsd's importer emits it (wsd.compiler.trace_ops): fp32 sums, cast to fp16."""
    return y if dtype == "float32" else bb.emit(relax.op.astype(y, dtype))


def _linear(m, k, n, batch=1, dtype="float32"):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, m, k), dtype))
    w = relax.Var("w", relax.TensorType((n, k), dtype))
    b = relax.Var("b", relax.TensorType((n,), dtype))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(w), out_dtype="float32"))
            z = bb.emit_output(relax.op.add(_product(bb, y, dtype), b))
        bb.emit_func_output(z)
    return bb.get()


def _conv(n, c, h, w_, f, k, stride=1, pad=1, residual=False, dtype="float32"):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, c, h, w_), dtype))
    w = relax.Var("w", relax.TensorType((f, c, k, k), dtype))
    b = relax.Var("b", relax.TensorType((1, f, 1, 1), dtype))
    oh, ow = (h + 2 * pad - k) // stride + 1, (w_ + 2 * pad - k) // stride + 1
    r = relax.Var("r", relax.TensorType((n, f, oh, ow), dtype))
    with bb.function("main", [x, w, b, r] if residual else [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=pad,
                                           out_dtype="float32"))
            y = bb.emit(relax.op.add(_product(bb, y, dtype), b))
            if residual:
                y = bb.emit(relax.op.divide(relax.op.add(y, r), relax.const(2.0, dtype)))
            z = bb.emit_output(y)
        bb.emit_func_output(z)
    return bb.get()


def _works(mods):
    out = []
    for mod in mods:
        mod = tvm.transform.Sequential(tune.optimize_passes(tuning_target("webgpu")))(mod)
        out += tune.workloads(mod)
    return out


CONFIGS = [
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4),
    tiled_matmul.Config(bm=64, bn=64, bk=16, tm=4, tn=4, x_is_j=False),
    tiled_matmul.Config(bm=64, bn=32, bk=8, tm=8, tn=4, tm_vec=4, tn_vec=2),  # 2 chunks
    tiled_matmul.Config(bm=32, bn=64, bk=8, tm=2, tn=8, tm_vec=1, tn_vec=4, pad=0),
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, split_k=2),  # two kernels
    tiled_matmul.Config(bm=64, bn=32, bk=8, tm=4, tn=4, split_k=3),  # K padded to 3 parts
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, taps_outer=True),  # K as (ry, rx, c)
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, split_k=2, taps_outer=True),
    # copies staged through registers, stored as vectors
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, staged=True),
    tiled_matmul.Config(bm=64, bn=32, bk=8, tm=4, tn=4, split_k=3, staged=True),  # B scalar
    tiled_matmul.Config(bm=32, bn=64, bk=8, tm=2, tn=8, tm_vec=1, tn_vec=4, pad=0,
                        staged=True),  # A's runs of 1: a scalar array
    tiled_matmul.Config(bm=64, bn=64, bk=16, tm=4, tn=4, x_is_j=False, taps_outer=True,
                        staged=True),
]


# f16 partial sums (fp16 kernels only), beside fp32 sums (F16_CONFIGS[0])
F16_CONFIGS = [
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, staged=True),
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, staged=True, f16_partials=True),
    tiled_matmul.Config(bm=64, bn=32, bk=8, tm=8, tn=4, tm_vec=4, tn_vec=2,
                        f16_partials=True),  # two chunks of rows, unstaged
    tiled_matmul.Config(bm=32, bn=64, bk=8, tm=2, tn=8, tm_vec=1, tn_vec=4, pad=0,
                        f16_partials=True),  # runs of one row: scalar partial sums
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, split_k=2, staged=True,
                        f16_partials=True),
    tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, taps_outer=True, f16_partials=True),
]


@pytest.fixture(scope="module")
def runner():
    pytest.importorskip("wgpu")
    try:
        return wgsl_bench.Runner(portable=True)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"no WebGPU adapter: {err}")


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    works = _works([
        _linear(77, 64, 96),                        # I not a tile multiple (CLIP-like)
        _linear(128, 64, 128, batch=2),             # batched
        _conv(1, 16, 16, 16, 32, 3, residual=True),  # 3x3, fused residual epilogue
        _conv(1, 4, 8, 8, 32, 3),                   # K = 36: padded reduction
        _conv(1, 16, 16, 16, 32, 3, stride=2),      # downsampling
        _conv(2, 32, 8, 8, 64, 1, pad=0),           # 1x1
    ])
    assert len(works) == 6
    out = tmp_path_factory.mktemp("small_bench")
    manifest = tune.export(works, out, {w.key: [(c.label(), c) for c in CONFIGS]
                                        for w in works}, log=lambda *_: None)
    return out, manifest


@pytest.fixture(scope="module")
def f16_bench(tmp_path_factory):
    works = _works([
        _linear(77, 64, 96, dtype="float16"),
        _conv(1, 16, 16, 16, 32, 3, residual=True, dtype="float16"),
        _conv(1, 4, 8, 8, 32, 3, dtype="float16"),  # K = 36: padded reduction
    ])
    assert [w.traits["dtypes"] for w in works] == [["float16", "float16", "float32"]] * 3
    out = tmp_path_factory.mktemp("f16_bench")
    configs = [(c.label(), c) for c in F16_CONFIGS]
    return out, tune.export(works, out, {w.key: configs for w in works}, log=lambda *_: None)


def test_conv_is_implicit_gemm():
    """A legalized NCHW conv2d is a GEMM for the rule: I = (n, y, x), J = f, K = (c, ky, kx);
    the im2col operand is read in its contiguous direction (x), the weights along K."""
    (work,) = _works([_conv(2, 8, 8, 8, 16, 3)])
    e = work.traits["extents"]
    assert (e["S"], e["I"], e["J"], e["K"]) == (1, 2 * 8 * 8, 16, 8 * 9)
    assert work.traits["a_fast"] == "I" and work.traits["b_fast"] == "K"
    (lin,) = _works([_linear(8, 16, 32)])
    assert lin.traits["a_fast"] == "K" and lin.traits["b_fast"] == "J"


def test_config_limits():
    with pytest.raises(ValueError):
        tiled_matmul.Config(bm=256, bn=128, tm=4, tn=4).check()  # 2048 invocations
    with pytest.raises(ValueError):
        tiled_matmul.Config(bm=64, bn=64, tm=3, tn=4).check()  # tm does not divide bm
    for work in _works([_conv(2, 320, 64, 64, 320, 3)]):
        for cfg in tune.candidates(work, limit=20):
            assert cfg.threads <= tiled_matmul.MAX_INVOCATIONS
            assert cfg.workgroup_bytes() <= tiled_matmul.MAX_WORKGROUP_BYTES


def test_rule_matches_reference(runner, small_bench):
    """Every candidate of every small kernel equals the llvm reference and dlight's output."""
    folder, manifest = small_bench
    bad = []
    for kernel in manifest["kernels"]:
        assert len(kernel["variants"]) == 1 + len(CONFIGS), kernel["name"]
        res = wgsl_bench.check_kernel(runner, folder, kernel, repeat=3, rounds=1,
                                      log=lambda *_: None, budget_ms=1)
        bad += [(kernel["name"], label, r) for label, r in res.items() if not r.get("ok")]
    assert not bad


def test_gate_rejects_wrong_kernels(runner, small_bench, tmp_path):
    """A kernel that leaves outputs unwritten, or computes something else, fails the check."""
    folder, manifest = small_bench
    kernel = copy.deepcopy(manifest["kernels"][2])  # the conv with a residual
    tuned = kernel["variants"][1]
    half = copy.deepcopy(tuned)
    half["label"] = "half-grid"
    half["launches"][0]["grid"][1] = max(1, half["launches"][0]["grid"][1] // 2)
    swapped = copy.deepcopy(tuned)
    swapped["label"] = "swapped-operands"
    b = swapped["launches"][0]["bindings"]
    i, j = b.index("b"), b.index("r")  # bias and residual change places
    b[i], b[j] = b[j], b[i]
    kernel["variants"] += [half, swapped]
    res = wgsl_bench.check_kernel(runner, folder, kernel, repeat=3, rounds=1,
                                  log=lambda *_: None, budget_ms=1)
    assert res["default"]["ok"] and res[tuned["label"]]["ok"]
    assert not res["half-grid"]["ok"]
    assert not res["swapped-operands"]["ok"]


def test_split_k_runs_two_kernels_and_the_gate_sees_them(runner, small_bench):
    """A split-K variant is two launches sharing a workspace; skipping the second (the sum
    of the parts and the epilogue) leaves the output unwritten, and the check fails."""
    folder, manifest = small_bench
    kernel = copy.deepcopy(manifest["kernels"][2])
    split = next(v for v in kernel["variants"] if "/sk2" in v["label"])
    assert len(split["launches"]) == 2 and len(split["workspaces"]) == 1
    workspace = split["workspaces"][0]["name"]
    assert workspace in split["launches"][0]["bindings"]
    assert workspace in split["launches"][1]["bindings"]
    first_only = copy.deepcopy(split)
    first_only["label"] = "parts-not-summed"
    first_only["launches"] = first_only["launches"][:1]
    kernel["variants"] = [kernel["variants"][0], split, first_only]
    res = wgsl_bench.check_kernel(runner, folder, kernel, repeat=3, rounds=1,
                                  log=lambda *_: None, budget_ms=1)
    assert res[split["label"]]["ok"]
    assert not res["parts-not-summed"]["ok"]


def test_taps_outer_reorders_a_convolutions_reduction():
    """taps_outer: a 3x3 convolution's K runs (ry, rx, c), so with BK dividing C one k step
    reads one filter tap (the im2col operand's tap index is per step); only convolutions get
    such candidates (their record or first candidate first, unchanged)."""
    (conv,) = _works([_conv(1, 16, 8, 8, 32, 3)])
    (lin,) = _works([_linear(64, 64, 64)])
    assert tiled_matmul.is_convolution(conv.func) and not tiled_matmul.is_convolution(lin.func)
    plain = tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4)
    taps = tiled_matmul.Config(bm=32, bn=32, bk=8, tm=4, tn=4, taps_outer=True)
    scripts = [tiled_matmul.apply(conv.func, c).mod["main"].script() for c in (plain, taps)]
    # K = c * 9 + ry * 3 + rx before (c = k // 9), ry * 48 + rx * 16 + c after (c = k % 16)
    assert "// T.int64(9)" in scripts[0] and "% T.int64(16)" not in scripts[0]
    assert "// T.int64(9)" not in scripts[1] and "% T.int64(16)" in scripts[1]
    assert "// T.int64(48)" in scripts[1]
    db = {"records": {}}
    found = tune.candidates(conv, 3)
    assert tune.taps_candidates(conv, found, db, 2) == [
        found[0], *(dataclasses.replace(c, taps_outer=True) for c in found[:2])]
    assert tune.taps_candidates(lin, tune.candidates(lin, 3), db, 2) == []


def test_f16_candidates_are_for_fp16_kernels():
    """`export --f16-partials`: an fp16 kernel's stored record as it is, then it and the
    other candidates with f16 partial sums; nothing for fp32 kernels."""
    (half,) = _works([_linear(1024, 512, 1024, dtype="float16")])
    (single,) = _works([_linear(1024, 512, 1024)])
    found = tune.candidates(half, 3)
    stored = found[2]
    db = {"records": {half.key: {"rule": stored.rule, "params": stored.to_json()}}}
    assert tune.f16_candidates(half, found, db, 2) == [
        stored, *(dataclasses.replace(c, f16_partials=True) for c in (stored, found[0]))]
    assert tune.f16_candidates(single, tune.candidates(single, 3), {"records": {}}, 2) == []


def test_staged_copies_make_workgroup_arrays_of_vectors(small_bench):
    """staged: every workgroup buffer of the WGSL is an array of vec4 (one load per fragment
    of four), unstaged ones arrays of scalars; a tile too small for a run of four per
    invocation stays scalar. WebGPU's candidates are staged, CUDA's are not (their
    records were measured without)."""
    folder, manifest = small_bench
    kernel = manifest["kernels"][2]
    by_label = {v["label"]: v for v in kernel["variants"]}

    def workgroup_types(config):
        text = gzip.decompress((folder / by_label[config.label()]["wgsl"]).read_bytes())
        return set(re.findall(r"var<workgroup> \w+ : array<([^,]+), \d+>", text.decode()))

    assert workgroup_types(CONFIGS[0]) == {"f32"}
    assert workgroup_types(dataclasses.replace(CONFIGS[0], staged=True)) == {"vec4<f32>"}
    assert workgroup_types(CONFIGS[9]) == {"vec4<f32>", "f32"}  # 64x32: B's 32 x 8 tile
    (conv,) = _works([_conv(1, 16, 8, 8, 32, 3)])
    assert all(c.staged for c in tune.candidates_for(conv, "webgpu"))
    assert not any(c.staged for c in tune.candidates_for(conv, "cuda"))


def test_f16_partials_match_reference(runner, f16_bench):
    """Every f16-partials variant of every fp16 kernel passes the gate's check, and its
    error exceeds that of the same tiles with fp32 sums: the sums really are in f16."""
    folder, manifest = f16_bench
    fp32_sums = F16_CONFIGS[0].label()
    for kernel in manifest["kernels"]:
        assert len(kernel["variants"]) == 1 + len(F16_CONFIGS), kernel["name"]
        res = wgsl_bench.check_kernel(runner, folder, kernel, repeat=3, rounds=1,
                                      log=lambda *_: None, budget_ms=1)
        assert all(r.get("ok") for r in res.values()), (kernel["name"], res)
        for cfg in F16_CONFIGS[1:]:
            assert res[cfg.label()]["err_ref"] > res[fp32_sums]["err_ref"], cfg.label()


def test_f16_partials_are_f16_registers(f16_bench):
    """The partial sums are a register array of vec4<f16> updated by vec4 FMAs (scalar f16
    for runs of one row); with fp32 sums there is no f16 arithmetic at all. The option is
    refused for fp32 kernels."""
    folder, manifest = f16_bench
    kernel = manifest["kernels"][1]
    by_label = {v["label"]: v for v in kernel["variants"]}

    def wgsl(config):
        return gzip.decompress((folder / by_label[config.label()]["wgsl"]).read_bytes()).decode()

    vec, scalar = wgsl(F16_CONFIGS[1]), wgsl(F16_CONFIGS[3])
    assert re.search(r"var \w+_rf_local : array<vec4<f16>, 4>;", vec)
    assert re.search(r"_rf_local\[\w+\] = fma\(\w+\[\w+\], vec4<f16>\(", vec)
    assert re.search(r"var \w+_rf_local : array<f16, 16>;", scalar)
    assert "_rf_local" not in wgsl(F16_CONFIGS[0])
    (fp32,) = _works([_linear(77, 64, 96)])
    with pytest.raises(ValueError, match="f16 partials need fp16 operands"):
        tiled_matmul.apply(fp32.func, F16_CONFIGS[1])


def test_timed_passes_follow_as_many_untimed_ones(runner, small_bench, monkeypatch):
    """Runner.time runs the kernel `repeat` times untimed, in the same submission, before
    the `repeat` timed passes: a GPU left idle while the host checked outputs has lowered
    its clocks (short kernels measured up to 5x slow on an H100 without this)."""
    folder, manifest = small_bench
    kernel = manifest["kernels"][0]
    buffers = wgsl_bench.kernel_buffers(runner, kernel["buffers"])
    launches = runner.prepare(folder, kernel["variants"][0], buffers)
    passes = []
    encode = runner.encode
    monkeypatch.setattr(runner, "encode", lambda enc, launch, stamp=None: (
        passes.append(stamp is not None), encode(enc, launch, stamp))[1])
    out = buffers[next(s["name"] for s in kernel["buffers"] if s["output"])]
    result = runner.time(launches, 3, out)
    assert result["repeat"] == 3 and result["ms"] > 0
    timed = [True] * 3 if runner.timestamps else [False] * 3
    assert passes[-6:] == [False] * 3 + timed


def test_split_for():
    """Parts enough for two waves of workgroups, none shorter than MIN_PART_K, at most an
    eighth of K padding; the most parts allowed when two waves are out of reach."""
    assert tune.split_for(groups=40, k=11520, bk=8) == 8      # 320 workgroups
    assert tune.split_for(groups=10, k=11520, bk=8) == 16     # 160: as many as allowed
    assert tune.split_for(groups=10, k=600, bk=8) == 2        # parts of 300
    assert tune.split_for(groups=10, k=500, bk=8) is None     # parts would be under 256
    assert tune.split_for(groups=200, k=4096, bk=8) == 2


def test_small_grids_get_split_candidates():
    """The UNet's 8x8-latent convolution has 10 workgroups of 128x128: without split-K the
    large tiles are passed over; with it they come back with K in parts."""
    (work,) = _works([_conv(2, 1280, 8, 8, 1280, 3)])
    plain = tune.candidates(work, 20, waves=0.5)
    split = tune.candidates(work, 20, waves=0.5, split=True)
    assert plain and all(c.split_k == 1 and c.bm * c.bn < 128 * 128 for c in plain)
    assert [c for c in split if c.split_k == 1] == plain
    parts = [c for c in split if c.split_k > 1]
    assert any(c.bm * c.bn == 128 * 128 for c in parts)
    assert all(-(-128 // c.bm) * -(-1280 // c.bn) < 0.5 * 132 for c in parts)


def _fake_results(manifest, times, ok=None):
    ok = ok or {}
    kernels = {}
    for kernel in manifest["kernels"]:
        variants = {}
        for v in kernel["variants"]:
            ms = times.get(v["label"], 1.0)
            good = ok.get(v["label"], True)
            variants[v["label"]] = {"ok": good, "err_ref": 0.0 if good else 1.0,
                                    "err_default": 0.0, "ms": ms,
                                    "tflops": kernel["flops"] / ms / 1e9,
                                    "times": [{"method": "test", "ms": ms}]}
        kernels[kernel["key"]] = {"name": kernel["name"], "flops": kernel["flops"],
                                  "variants": variants}
    return {"adapter": {"device": "test", "backend": "test"}, "date": "today",
            "kernels": kernels}


def test_admission(small_bench):
    """Admit only a correct candidate that beats the default by the margin; drop a stored
    record once it stops winning."""
    _, manifest = small_bench
    labels = [v["label"] for v in manifest["kernels"][0]["variants"]]
    empty = {"format": records.FORMAT, "version": records.VERSION, "target": "webgpu",
             "records": {}}
    # fastest candidate is wrong -> the next correct one that wins is taken
    db = tune.admit(_fake_results(manifest, {labels[1]: 0.5, labels[2]: 0.8},
                                  ok={labels[1]: False}), manifest,
                    copy.deepcopy(empty), log=lambda *_: None)
    assert len(db["records"]) == len(manifest["kernels"])
    rec = db["records"][manifest["kernels"][0]["key"]]
    assert rec["params"] == manifest["kernels"][0]["variants"][2]["params"]
    assert rec["tir"] and records.workload_key(records.record_func(rec)) == \
        manifest["kernels"][0]["key"]
    # within the margin: nothing admitted, and an existing record is dropped
    db2 = tune.admit(_fake_results(manifest, {labels[2]: 0.97}), manifest,
                     copy.deepcopy(db), log=lambda *_: None)
    assert db2["records"] == {}
    # a default that fails its own check admits nothing
    db3 = tune.admit(_fake_results(manifest, {labels[2]: 0.5}, ok={"default": False}),
                     manifest, copy.deepcopy(empty), log=lambda *_: None)
    assert db3["records"] == {}


def test_records_pass(small_bench, tmp_path):
    """The schedule stage applies a record to its kernel (and only to it) before dlight."""
    _, manifest = small_bench
    results = _fake_results(manifest, {manifest["kernels"][0]["variants"][1]["label"]: 0.5})
    results["kernels"] = {k: v for k, v in list(results["kernels"].items())[:1]}
    db = tune.admit(results, manifest, {"format": records.FORMAT, "version": records.VERSION,
                                        "target": "webgpu", "records": {}},
                    log=lambda *_: None)
    records.save(db, "webgpu", root=tmp_path)
    assert json.loads((tmp_path / "webgpu.json").read_text())["records"].keys() == \
        db["records"].keys()
    mod = tvm.transform.Sequential(tune.optimize_passes(tuning_target("webgpu")))(
        _linear(77, 64, 96))
    other = tvm.transform.Sequential(tune.optimize_passes(tuning_target("webgpu")))(
        _linear(64, 64, 96))
    seen = []
    with tuning_target("webgpu"):
        out = records.ApplyRecords(tuning_target("webgpu"), root=tmp_path, log=seen.append)(mod)
        untouched = records.ApplyRecords(tuning_target("webgpu"), root=tmp_path)(other)
    tuned = [f for f in out.functions.values()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled")]
    assert len(tuned) == 1 and len(seen) == 1
    assert "vthread" in tuned[0].script()  # our rule's chunks; dlight's default has none
    assert not any(isinstance(f, tvm.tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled")
                   for f in untouched.functions.values())


def test_hash_inputs_are_deterministic():
    a = wgsl_bench.hash_inputs((3, 5), "float32", 7)
    assert a.dtype == np.float32 and a.shape == (3, 5)
    assert np.array_equal(a, wgsl_bench.hash_inputs((3, 5), "float32", 7))
    assert not np.array_equal(a, wgsl_bench.hash_inputs((3, 5), "float32", 8))
    assert -1 <= a.min() and a.max() < 1 and abs(float(a.mean())) < 0.5
