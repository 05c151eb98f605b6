"""Every stored tuned-schedule record must still earn its place (wsd/kernels/gemm/tuned/<target>.json).

- well formed, admitted with a measured win (anywhere), inside its target's limits (WebGPU's
  portable ones; CUDA's threads and shared memory);
- its stored kernel still hashes to its key, the rule still schedules it, TVM lowers it
  (CUDA) and the WGSL it builds declares no more workgroup storage or invocations than the
  portable limits (WebGPU);
- the model still has that kernel (slow: traces SD v1.5 for each target and dtype);
- on a GPU WebGPU adapter: the tuned kernel matches the llvm reference and dlight's output,
  and runs faster than dlight's default schedule in the same run;
- on an NVIDIA GPU: the same for the CUDA records (built with nvcc, against the SIMT
  reference of wsd.tuning.cuda_bench).

The WebGPU check runs where a WebGPU adapter on a GPU exists. On a machine without TVM,
point WSD_BENCH_DIR at a folder made here by
`python -m wsd.tuning.tune export --records --out DIR` and run `pytest tests/perf/test_records.py`
there. On a CPU adapter (Mesa's lavapipe) timings say nothing about GPUs: that check skips.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from wsd.targets import tuning_target

ROOT = Path(__file__).resolve().parents[2]
DB_DIR = ROOT / "wsd" / "kernels" / "gemm" / "tuned"
MAX_INVOCATIONS = 256
MAX_WORKGROUP_BYTES = 16384
ADMISSION_MARGIN = 0.05


def _databases() -> dict:
    out = {}
    for path in sorted(DB_DIR.glob("*.json")):
        out[path.stem] = json.loads(path.read_text())
    return out


DATABASES = _databases()
RECORDS = [(target, key, rec) for target, db in DATABASES.items()
           for key, rec in db["records"].items()]
IDS = [f"{t}:{r['name']}:{k}" for t, k, r in RECORDS]


def test_database_files():
    assert DATABASES, f"no tuned-records database in {DB_DIR}"
    for target, db in DATABASES.items():
        assert db["format"] == "wsd-tuned" and db["version"] == 1, target
        assert db["target"] == target
        for key in db["records"]:
            assert re.fullmatch(r"[0-9a-f]{16}", key), key


@pytest.mark.parametrize("target,key,record", RECORDS, ids=IDS)
def test_record_admitted_on_evidence(target, key, record):
    """The record carries the measurement it was admitted on: correct and faster."""
    m = record["measured"]
    assert m["tuned_ms"] > 0 and m["default_ms"] > 0
    assert m["tuned_ms"] <= m["default_ms"] * (1 - ADMISSION_MARGIN) + 1e-9, m
    tol = 2e-3 if "float16" in record["workload"]["dtypes"] else 1e-4
    assert m["err_ref"] <= tol and m["err_default"] <= tol, m
    p = record["params"]
    if record["rule"] == "tiled_matmul":
        threads = (p["bm"] // p["tm"]) * (p["bn"] // p["tn"])
        ebytes = 2 if record["workload"]["dtypes"][0] == "float16" else 4
        smem = p["bk"] * ((p["bm"] + p["pad"]) + (p["bn"] + p["pad"])) * ebytes
        smem *= 2 if p.get("pipeline") else 1
        if target == "webgpu":
            assert threads <= MAX_INVOCATIONS and smem <= MAX_WORKGROUP_BYTES, p
        else:
            assert threads <= 1024 and smem <= 48 * 1024, p
    elif record["rule"] == "tensor_core_matmul":
        assert target == "cuda", "tensor-core records are CUDA's"
        pytest.importorskip("tvm")
        from wsd.kernels.gemm import tensor_core_matmul

        tensor_core_matmul.Config.from_json(p).check()  # threads, tiles, shared memory
    else:
        pytest.fail(f"unknown rule {record['rule']}")


@pytest.mark.parametrize("target,key,record", RECORDS, ids=IDS)
def test_record_still_schedules(target, key, record):
    """Stored kernel -> same key; the rule applies; TVM lowers it (CUDA) and the WGSL stays
    inside portable limits (WebGPU)."""
    pytest.importorskip("tvm")
    from wsd.kernels.gemm import records
    from wsd.tuning import kernel_builds

    func = records.record_func(record)
    assert records.workload_key(func) == key
    sch = records.schedule_record(func, record)
    assert sch is not None, "the rule no longer matches this kernel"
    if target == "cuda":
        kernel_builds.lower_kernel(sch.mod["main"], tuning_target("cuda"))
        return
    source = kernel_builds.compile_wgsl(sch.mod["main"], tuning_target("webgpu"))["source"]
    sizes = [int(x) for x in re.findall(r"@workgroup_size\((\d+), (\d+), (\d+)\)", source)[0]]
    assert sizes[0] * sizes[1] * sizes[2] <= MAX_INVOCATIONS
    elem = {"f32": 4, "f16": 2, "i32": 4, "u32": 4}
    words = sum(int(n) * elem[t] for t, n in
                re.findall(r"var<workgroup>\s+\w+\s*:\s*array<(\w+),\s*(\d+)>", source))
    assert words <= MAX_WORKGROUP_BYTES


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(DATABASES))
def test_records_match_the_model(target):
    """Every record is a kernel of today's SD v1.5 build for its target (else it is dead
    weight), in the dtype it was measured in."""
    pytest.importorskip("tvm")
    from wsd.tuning import tune

    stale = []
    mine = [(k, r) for t, k, r in RECORDS if t == target]
    for dtype in sorted({r["workload"]["dtypes"][0] for _, r in mine}):
        mod = tune.optimized_module("sd15", dtype, target=tuning_target(target))
        keys = {w.key for w in tune.workloads(mod, target)}
        stale += [(k, r["name"]) for k, r in mine
                  if r["workload"]["dtypes"][0] == dtype and k not in keys]
    assert not stale, f"records for kernels the model no longer has: {stale}"


def _bench_folder(tmp_path_factory) -> Path:
    folder = os.environ.get("WSD_BENCH_DIR")
    if folder:
        return Path(folder)
    pytest.importorskip("tvm")
    from wsd.kernels.gemm import records
    from wsd.tuning import tune

    db = records.load("webgpu")
    works = tune.record_workloads(db)
    out = tmp_path_factory.mktemp("records_bench")
    tune.export(works, out, {w.key: [("record", records.config_of(db["records"][w.key]))]
                             for w in works}, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def gpu_runner():
    wgsl_bench = pytest.importorskip("wsd.tuning.wgsl_bench")
    pytest.importorskip("wgpu")
    try:
        runner = wgsl_bench.Runner(portable=True)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"no WebGPU adapter: {err}")
    if runner.is_cpu():
        pytest.skip(f"the WebGPU adapter here is a CPU ({runner.info['device']}): its "
                    f"timings say nothing about GPUs; run this on a GPU machine")
    return runner


WEBGPU = [(k, r) for t, k, r in RECORDS if t == "webgpu"]


@pytest.mark.parametrize("key,record", WEBGPU, ids=[f"{r['name']}:{k}" for k, r in WEBGPU])
def test_record_earns_its_place(gpu_runner, tmp_path_factory, key, record):
    from wsd.kernels.gemm import records
    from wsd.tuning import wgsl_bench

    folder = _earn_folder(tmp_path_factory)
    manifest = wgsl_bench.load_manifest(folder)
    kernel = next((k for k in manifest["kernels"] if k["key"] == key), None)
    assert kernel is not None, f"{folder} has no kernel {key}: re-export the records"
    # as parameter sets, not JSON: a record stored before a rule gained a parameter (with a
    # default) holds the same parameters as its re-export
    wanted = records.config_of(record)
    labels = [v["label"] for v in kernel["variants"]
              if v["params"] is not None and records.config_of(v) == wanted]
    assert labels, f"{folder}: kernel {key} was exported with other parameters"
    res = wgsl_bench.check_kernel(gpu_runner, folder, kernel, repeat=50, rounds=3,
                                  log=lambda *_: None, labels=labels)
    default, tuned = res["default"], res[labels[0]]
    assert default.get("ok"), f"dlight's default is wrong here: {default}"
    assert tuned.get("ok"), f"tuned kernel is wrong: {tuned}"
    assert tuned["ms"] < default["ms"], (
        f"tuned {tuned['ms']:.3f} ms is not faster than dlight's {default['ms']:.3f} ms")


_FOLDER = {}


def _earn_folder(tmp_path_factory) -> Path:
    if "path" not in _FOLDER:
        _FOLDER["path"] = _bench_folder(tmp_path_factory)
    return _FOLDER["path"]


CUDA = [(k, r) for t, k, r in RECORDS if t == "cuda"]


@pytest.fixture(scope="module")
def cuda_folder(tmp_path_factory):
    """The CUDA records' kernels (default vs record) built on this machine's NVIDIA GPU,
    with their SIMT references (wsd.tuning.cuda_bench)."""
    tvm = pytest.importorskip("tvm")
    if not tvm.cuda(0).exist:
        pytest.skip("no CUDA GPU here")
    from wsd.kernels.gemm import records
    from wsd.tuning import cuda_bench, tune

    gpu = tvm.target.Target.from_device(tvm.cuda(0))
    db = records.load("cuda")
    # the build passes over records this GPU cannot run; so does this check
    db = dict(db, records={k: r for k, r in db["records"].items() if records.runs_on(r, gpu)})
    works = tune.record_workloads(db)
    out = tmp_path_factory.mktemp("cuda_records")
    tune.export(works, out, {w.key: [("record", records.config_of(db["records"][w.key]))]
                             for w in works}, log=lambda *_: None,
                target=tuning_target("cuda"))
    built = cuda_bench.build_folder(out, gpu, jobs=os.cpu_count() or 1, log=lambda *_: None)
    runner = cuda_bench.Runner(built)
    cuda_bench.write_references(out, runner, log=lambda *_: None)
    return out, runner


@pytest.mark.parametrize("key,record", CUDA, ids=[f"{r['name']}:{k}" for k, r in CUDA])
def test_cuda_record_earns_its_place(cuda_folder, key, record):
    from wsd.tuning import wgsl_bench

    folder, runner = cuda_folder
    kernel = next((k for k in wgsl_bench.load_manifest(folder)["kernels"] if k["key"] == key),
                  None)
    if kernel is None:
        pytest.skip("this GPU cannot run the record (wsd.kernels.gemm.records.runs_on)")
    res = wgsl_bench.check_kernel(runner, folder, kernel, repeat=50, rounds=3,
                                  log=lambda *_: None)
    default, tuned = res["default"], res["record"]
    assert default.get("ok"), f"dlight's default is wrong here: {default}"
    assert tuned.get("ok"), f"tuned kernel is wrong: {tuned}"
    assert tuned["ms"] < default["ms"], (
        f"tuned {tuned['ms']:.3f} ms is not faster than dlight's {default['ms']:.3f} ms")
