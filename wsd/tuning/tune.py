"""Tuned schedules, gated: find kernels worth tuning, measure candidates, admit winners.

    python -m wsd.tuning.tune list   [--target webgpu|cuda] [--model sd15] [--dtype float32] [--top 30]
    python -m wsd.tuning.tune export --out DIR [--target ...] [--model sd15] [--top 30]
                                        [--max-candidates 8]
                                        [--records]   (re-check the stored records instead)
    (webgpu: on a machine with a WebGPU GPU, no TVM needed)  python -m wsd.tuning.wgsl_bench DIR
    (cuda: on the NVIDIA GPU, with TVM and nvcc)            python -m wsd.tuning.cuda_bench DIR
    python -m wsd.tuning.tune admit  DIR/results.json [--margin 0.05] [--dry-run]

WebGPU kernels get `wsd.kernels.gemm.tiled_matmul` candidates; CUDA kernels with fp16 operands
get `wsd.kernels.gemm.tensor_core_matmul` candidates (built on the GPU machine, where nvcc is).

`export` traces the model, runs the target-independent passes (wsd.compiler.optimize), keeps the
kernels that are GEMMs in the sense of our tiled rule (matmuls, and convolutions as implicit
GEMM), ranks them by FLOPs per image, and for each writes the WGSL of dlight's default
schedule and of candidate parameter sets of `wsd.kernels.gemm.tiled_matmul`, plus reference
samples of the output: the same PrimFunc, unscheduled, built for llvm, on deterministic
inputs (`wsd.tuning.wgsl_bench.hash_inputs`).

`admit` reads the bench results and writes a record for a kernel only if its best candidate
(a) matched the reference (and dlight's output) within the dtype's tolerance and (b) ran at
least `margin` faster than dlight's default in the same run. A kernel whose stored record no
longer wins is dropped from the database.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
import tvm.script
from tvm import relax, tirx

from wsd import settings
from wsd.kernels.gemm import records, tensor_core_matmul, tiled_matmul
from wsd.targets import tuning_target
from wsd.tuning import kernel_builds, wgsl_bench



@dataclass
class Workload:
    name: str
    func: tirx.PrimFunc
    key: str
    traits: dict
    calls: dict = field(default_factory=dict)  # relax function -> calls per invocation

    @property
    def flops(self) -> int:
        e = self.traits["extents"]
        return 2 * e["S"] * e["I"] * e["J"] * e["K"]

    @property
    def dtype(self) -> str:
        return self.traits["dtypes"][0]

    def describe(self) -> dict:
        e = self.traits["extents"]
        return {"name": self.name, "S": e["S"], "I": e["I"], "J": e["J"], "K": e["K"],
                "dtypes": self.traits["dtypes"], "a_fast": self.traits["a_fast"],
                "b_fast": self.traits["b_fast"], "flops": self.flops,
                "buffers": [[[int(d) for d in p.ty.shape], str(p.ty.dtype)]
                            for p in self.func.params]}


# --------------------------------------------------------------------------- workloads

def optimized_module(model_spec: str = "sd15", dtype: str = "float32",
                     height: int | None = None, width: int | None = None,
                     names=("unet_guided", "decode", "encode_text"),
                     target: tvm.target.Target | None = None) -> tvm.IRModule:
    from wsd.compiler.layout import WeightLayouts
    from wsd.compiler.trace import resolve_size, trace_model
    from wsd.models import load_model

    model = load_model(model_spec)
    height, width = resolve_size(model, height, width)
    traced = trace_model(model, height, width, dtype, names=names)
    # weights stored as the build stores them: the kernels are the build's
    passes = optimize_passes(target or tuning_target("webgpu"), WeightLayouts(traced.num_inputs))
    return tvm.transform.Sequential(passes)(traced.mod)


def optimize_passes(target: tvm.target.Target, weight_layouts=None) -> list:
    """wsd.compiler.optimize's passes for the target (the kernels the schedule stage sees)."""
    from wsd.compiler import optimize

    return optimize.passes(target, weight_layouts)


def call_counts(mod: tvm.IRModule) -> dict:
    counts: dict = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue

        def visit(expr, fname=gvar.name_hint):
            if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
                    and expr.op.name == "relax.call_tir":
                callee = expr.args[0].name_hint
                counts.setdefault(callee, {}).setdefault(fname, 0)
                counts[callee][fname] += 1

        relax.analysis.post_order_visit(func, visit)
    return counts


def workloads(mod: tvm.IRModule, target_kind: str = "webgpu") -> list[Workload]:
    """The GEMM-like kernels of an optimized module that one of the target's rules takes
    (`candidates_for`), one per distinct workload key."""
    counts = call_counts(mod)
    found: dict[str, Workload] = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        traits = tiled_matmul.matmul_traits(func)
        if traits is None or target_kind == "cuda" and traits["dtypes"][0] != "float32" \
                and not tensor_core_matmul.applies(func):
            continue
        key = records.workload_key(func)
        calls = counts.get(gvar.name_hint, {})
        if key in found:
            for fn, n in calls.items():
                found[key].calls[fn] = found[key].calls.get(fn, 0) + n
            continue
        found[key] = Workload(gvar.name_hint, func, key, traits, dict(calls))
    return sorted(found.values(), key=lambda w: -w.flops * max(1, sum(w.calls.values())))


def record_workloads(db: dict) -> list[Workload]:
    """The kernels of a records database, from the TIR stored with each record."""
    works = []
    for key, record in db["records"].items():
        func = records.record_func(record)
        if records.workload_key(func) != key:
            raise ValueError(f"record {record['name']}: its TIR no longer hashes to {key}")
        traits = tiled_matmul.matmul_traits(func)
        works.append(Workload(record["name"], func, key, traits, dict(record.get("calls", {}))))
    return works


# --------------------------------------------------------------------------- candidates

# (bm, bn, bk, tm, tn, x_is_j, pad, pipeline): the shapes tried, in order of preference.
SHAPES = [
    (128, 128, 8, 8, 8, True, 4, False), (128, 128, 8, 8, 8, True, 0, True),
    (128, 128, 8, 8, 8, False, 4, False), (128, 64, 16, 8, 4, True, 4, False),
    (128, 64, 8, 8, 4, True, 4, True), (64, 128, 8, 4, 8, True, 4, True),
    (64, 128, 16, 4, 8, True, 4, False), (128, 128, 16, 8, 8, True, 0, False),
    (64, 64, 16, 4, 4, True, 4, False), (64, 64, 8, 4, 4, False, 4, True),
    (64, 32, 16, 4, 4, True, 4, False), (32, 64, 16, 4, 4, True, 4, False),
    (32, 32, 16, 4, 4, True, 4, False),
]


# Few workgroups (mid-sized GEMMs): fewer invocations per workgroup, more work each.
SHAPES_SMALL_GRID = [
    (64, 64, 16, 8, 8, True, 4, False), (32, 64, 16, 4, 8, True, 4, False),
    (64, 32, 16, 8, 4, True, 4, False), (32, 32, 32, 4, 4, True, 4, False),
    (128, 64, 8, 8, 8, True, 4, False), (64, 128, 8, 8, 8, True, 4, False),
    (32, 128, 16, 4, 8, True, 4, False), (64, 64, 8, 8, 8, False, 4, False),
]
SHAPE_SETS = {"default": SHAPES, "small-grid": SHAPES_SMALL_GRID}


def bench_workloads(folder: Path, below_tflops: float | None = None) -> list[Workload]:
    """The kernels of an earlier export (their stored TIR), optionally only those whose best
    correct variant in that folder's results.json ran below `below_tflops`."""
    manifest = wgsl_bench.load_manifest(folder)
    slow = None
    if below_tflops is not None:
        results = json.loads((folder / "results.json").read_text())
        slow = set()
        for key, res in results["kernels"].items():
            rates = [r["tflops"] for r in res["variants"].values() if r.get("ok") and
                     "tflops" in r]
            if rates and max(rates) < below_tflops:
                slow.add(key)
    works = []
    for kernel in manifest["kernels"]:
        if slow is not None and kernel["key"] not in slow:
            continue
        func = tvm.script.from_source(kernel["tir"])
        works.append(Workload(kernel["name"], func, kernel["key"],
                              tiled_matmul.matmul_traits(func), dict(kernel.get("calls", {}))))
    return works


# CUDA without tensor cores (fp32): the 48 KiB of static shared memory every CUDA GPU
# has allows deeper slices and double buffering of the large tiles.
SHAPES_CUDA = [
    (128, 128, 16, 8, 8, True, 4, True), (128, 128, 8, 8, 8, True, 4, True),
    (128, 128, 16, 8, 8, True, 4, False), (128, 64, 16, 8, 4, True, 4, True),
    (64, 128, 16, 4, 8, True, 4, True), (128, 128, 32, 8, 8, True, 4, False),
    (64, 64, 16, 4, 4, True, 4, True), (64, 64, 32, 8, 8, True, 4, True),
    (32, 64, 32, 4, 4, True, 4, True),
]
CUDA_STATIC_SHARED_BYTES = 48 * 1024


# Split-K: parts tried, and the least reduction length per part (shorter parts cost more
# in partial products written and summed than the extra workgroups win).
SPLITS = (2, 3, 4, 6, 8, 12, 16)
MIN_PART_K = 256


# Workgroups per compute unit below which --retune also measures split-K.
RETUNE_WAVES = 3.0


def split_for(groups: int, k: int, bk: int, units: int = 132) -> int | None:
    """Parts to split K into so that `groups` workgroups become two waves on `units` compute
    units (or as close as parts of MIN_PART_K allow); None if K is too short to split."""
    fits = [s for s in SPLITS if k // s >= MIN_PART_K and -k % (bk * s) <= k // 8]
    if not fits:
        return None
    return next((s for s in fits if groups * s >= 2 * units), fits[-1])


def candidates(work: Workload, limit: int = 8, waves: float = 1.0,
               units: int = 132, shapes=None,
               max_bytes: int = tiled_matmul.MAX_WORKGROUP_BYTES,
               split: bool = False, staged: bool = True) -> list[tiled_matmul.Config]:
    """Parameter sets worth measuring for one kernel: tiles within `max_bytes` of workgroup
    memory (WebGPU's portable limit by default), at most a quarter of padding per axis, and
    (for the larger tiles) at least `waves` workgroups per compute unit of a large GPU (an
    H100 has 132), in SHAPES' order. With `split`, a larger tile with fewer workgroups than
    that splits K instead (split_for) of being passed over. `staged`: copies through
    registers (tiled_matmul.Config.staged: 150 of the 164 WebGPU kernels of its first
    measurement were faster with it, the same tiles beside each other)."""
    e = work.traits["extents"]
    ebytes = 2 if work.dtype == "float16" else 4
    out = []
    for bm, bn, bk, tm, tn, x_is_j, pad, pipeline in shapes or SHAPES:
        cfg = tiled_matmul.Config(bm=bm, bn=bn, bk=bk, tm=tm, tn=tn, tm_vec=min(4, tm),
                                  tn_vec=min(4, tn), x_is_j=x_is_j, pad=pad,
                                  pipeline=pipeline, staged=staged)
        try:
            cfg.check()
        except ValueError:
            continue
        if cfg.workgroup_bytes(ebytes, ebytes) > max_bytes:
            continue
        if (bm * bk) % cfg.threads or (bn * bk) % cfg.threads or e["K"] < bk:
            continue
        if -e["I"] % bm > 0.25 * e["I"] or -e["J"] % bn > 0.25 * e["J"]:
            continue
        groups = e["S"] * -(-e["I"] // bm) * -(-e["J"] // bn)
        if bm * bn > 32 * 32 and groups < waves * units:
            parts = split_for(groups, e["K"], bk, units) if split else None
            if parts is None:
                continue
            cfg = dataclasses.replace(cfg, split_k=parts)
        out.append(cfg)
    return out[:limit]


# (warps_m, warps_n, frag_m, frag_n, chunk, stages): tensor-core block shapes tried, in order
# of preference (BM = 16 warps_m frag_m, BN = 16 warps_n frag_n, BK = 16 chunk).
TC_SHAPES = [
    (2, 2, 4, 4, 2, 3),   # 128x128x32, 4 warps of 64x64
    (2, 4, 4, 2, 2, 3),   # 128x128x32, 8 warps of 64x32
    (2, 2, 4, 4, 4, 3),   # 128x128x64
    (4, 2, 2, 4, 2, 4),   # 128x128x32, 8 warps of 32x64, 4 stages
    (2, 2, 4, 5, 2, 3),   # 128x160 (J = 320, 640, 1280)
    (4, 2, 4, 4, 2, 3),   # 256x128
    (2, 2, 4, 2, 2, 4),   # 128x64
    (2, 2, 2, 4, 2, 4),   # 64x128
    (2, 2, 2, 5, 2, 4),   # 64x160
    (2, 2, 2, 2, 4, 4),   # 64x64x64
    (1, 2, 2, 4, 4, 4),   # 32x128x64
    (2, 2, 1, 2, 4, 4),   # 32x64x64
]


def unique(configs: list) -> list:
    """The parameter sets in order, each once."""
    return [c for n, c in enumerate(configs) if c not in configs[:n]]


def with_option(work: Workload, found: list, db: dict, limit: int, option: str) -> list:
    """The kernel's stored record (or first candidate) as it is, then it and the other
    candidates with `option` (a boolean field of tiled_matmul.Config) set."""
    record = db["records"].get(work.key)
    base = unique([c for c in ([records.config_of(record)] if record else []) + found
                   if not getattr(c, option)])
    return base[:1] + [dataclasses.replace(c, **{option: True}) for c in base[:limit]]


def taps_candidates(work: Workload, found: list, db: dict, limit: int) -> list:
    """Convolutions: with K as (ry, rx, c) (with_option); nothing for other kernels."""
    if not tiled_matmul.is_convolution(work.func):
        return []
    return with_option(work, found, db, limit, "taps_outer")


def f16_candidates(work: Workload, found: list, db: dict, limit: int) -> list:
    """Kernels with fp16 operands: with f16 partial sums (with_option); nothing for others."""
    if work.traits["dtypes"] != tiled_matmul.F16_PARTIALS_DTYPES:
        return []
    return with_option(work, found, db, limit, "f16_partials")


def candidates_for(work: Workload, target_kind: str, limit: int = 8) -> list:
    """The rule and parameter sets to measure for a kernel on the target: tensor cores for
    fp16 on CUDA, our tiled SIMT rule otherwise."""
    if target_kind != "cuda":
        return candidates(work, limit)
    if tensor_core_matmul.applies(work.func):
        return tensor_core_candidates(work, limit)
    return candidates(work, limit, waves=0.5, shapes=SHAPES_CUDA,
                      max_bytes=CUDA_STATIC_SHARED_BYTES, staged=False)


def tensor_core_candidates(work: Workload, limit: int = 8, units: int = 132,
                           shapes=None) -> list[tensor_core_matmul.Config]:
    """Tensor-core parameter sets worth measuring for one kernel: at most an eighth of
    padding per axis, and tiles of 128x128 or more only where they occupy at least half the
    SMs of a large GPU (an H100 has 132)."""
    e = work.traits["extents"]
    out = []
    for wm, wn, fm, fn, chunk, stages in shapes or TC_SHAPES:
        cfg = tensor_core_matmul.Config(warps_m=wm, warps_n=wn, frag_m=fm, frag_n=fn,
                                        chunk=chunk, stages=stages)
        # Deep pipelines of small tiles are the shapes whose reused staging TVM fails to
        # lower (tensor_core_matmul.Config.static_staging); they stage in static memory.
        if stages >= 4 and cfg.staging_bytes() <= tensor_core_matmul.MAX_STATIC_SHARED_BYTES:
            cfg = dataclasses.replace(cfg, static_staging=True)
        try:
            cfg.check()
        except ValueError:
            continue
        if -e["I"] % cfg.bm > e["I"] / 8 or -e["J"] % cfg.bn > e["J"] / 8 or e["K"] < cfg.bk:
            continue
        blocks = e["S"] * -(-e["I"] // cfg.bm) * -(-e["J"] // cfg.bn)
        if cfg.bm * cfg.bn >= 128 * 128 and blocks < units / 2:
            continue
        out.append(cfg)
    return out[:limit]


# --------------------------------------------------------------------------- export

def new_bench_folder(out: Path, kind: str) -> dict:
    """Make a bench folder's refs/ (and for WebGPU wgsl/) directories; its empty manifest."""
    (out / "refs").mkdir(parents=True, exist_ok=True)
    if kind == "webgpu":
        (out / "wgsl").mkdir(parents=True, exist_ok=True)
    return {"format": wgsl_bench.FORMAT, "version": wgsl_bench.VERSION, "target": kind,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "kernels": []}


def write_wgsl(out: Path, stem: str, compiled: dict) -> dict:
    """Write compile_wgsl's source as wgsl/STEM.wgsl.gz in a bench folder; the variant's
    fields for it (wgsl, launches, workspaces)."""
    fname = f"wgsl/{stem}.wgsl.gz"
    (out / fname).write_bytes(gzip.compress(compiled["source"].encode(), mtime=0))
    return {"wgsl": fname, "launches": compiled["launches"],
            "workspaces": compiled["workspaces"]}


def export(works: list[Workload], out: Path, configs: dict, log=print,
           target: tvm.target.Target | None = None) -> dict:
    """Write the bench folder: manifest.json, refs/*.npz and, for WebGPU, wgsl/*.wgsl (CUDA
    variants are built where they run, by wsd.tuning.cuda_bench, into their "lib" path).
    configs: key -> list of (label, Config)."""
    target = target or tuning_target("webgpu")
    kind = target.kind.name
    manifest = new_bench_folder(out, kind)
    for work in works:
        start = time.time()
        specs = kernel_builds.buffer_specs(work.func)
        entry = {"key": work.key, "name": work.name, "flops": work.flops, "calls": work.calls,
                 "workload": work.describe(), "tir": work.func.script(), "buffers": specs,
                 "reference": f"refs/{work.key}.npz", "variants": []}
        variants = [("default", None)] + list(configs.get(work.key, []))
        for label, cfg in variants:
            try:
                if cfg is None:
                    scheduled = kernel_builds.default_schedule(work.func, target)
                else:
                    sch = records.RULES[cfg.rule][1](work.func, cfg)
                    if sch is None:
                        raise RuntimeError("rule does not apply")
                    scheduled = sch.mod["main"]
                if kind == "webgpu":
                    compiled = kernel_builds.compile_wgsl(scheduled, target)
                else:  # drops what TVM's lowering rejects (nvcc runs on the GPU machine)
                    kernel_builds.lower_kernel(scheduled, target)
            except Exception as err:  # noqa: BLE001 - a candidate that fails is dropped
                log(f"  {label}: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
                if cfg is None:
                    break
                continue
            variant = {"label": label, "params": None if cfg is None else cfg.to_json(),
                       "rule": None if cfg is None else cfg.rule}
            index = len(entry["variants"])
            if kind == "webgpu":
                variant.update(write_wgsl(out, f"{work.key}_{index}", compiled))
            else:
                variant["lib"] = f"cuda_lib/{work.key}_{index}.so"
            entry["variants"].append(variant)
        if not entry["variants"] or entry["variants"][0]["label"] != "default":
            log(f"{work.name}: default schedule does not compile; skipped")
            continue
        # A re-export keeps its references. CUDA's are computed on the GPU machine
        # (wsd.tuning.cuda_bench): llvm takes minutes per large fp16 kernel here.
        if kind == "webgpu" and not (out / entry["reference"]).is_file():
            np.savez_compressed(out / entry["reference"],
                                **kernel_builds.reference_samples(work.func, specs))
        manifest["kernels"].append(entry)
        log(f"{work.name} [{work.key}] {work.flops / 1e9:.1f} GFLOP, "
            f"{len(entry['variants']) - 1} candidates ({time.time() - start:.1f} s)")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# --------------------------------------------------------------------------- admission

def admit(results: dict, manifest: dict, db: dict, margin: float = 0.05,
          log=print) -> dict:
    """Update `db` from one bench run: keep or write the best correct candidate per kernel
    when it beats dlight's default by `margin`; drop stored records that no longer do."""
    kernels = {k["key"]: k for k in manifest["kernels"]}
    adapter = results["adapter"]
    for key, res in results["kernels"].items():
        variants = res["variants"]
        kernel = kernels[key]
        base = variants.get("default", {})
        if not base.get("ok") or "ms" not in base:
            log(f"{res['name']}: default did not run correctly; nothing admitted")
            continue
        best = None
        for v in kernel["variants"][1:]:
            r = variants.get(v["label"], {})
            if r.get("ok") and "ms" in r and (best is None or r["ms"] < best[1]["ms"]):
                best = (v, r)
        if best is None or best[1]["ms"] > base["ms"] * (1 - margin):
            if key in db["records"]:
                log(f"{res['name']}: stored record no longer wins; dropped")
                del db["records"][key]
            else:
                log(f"{res['name']}: no candidate beats the default "
                    f"({base['ms']:.3f} ms); nothing admitted")
            continue
        variant, r = best
        db["records"][key] = {
            "name": kernel["name"], "rule": variant["rule"], "params": variant["params"],
            "workload": kernel["workload"], "calls": kernel.get("calls", {}),
            "measured": {"date": results["date"], "device": adapter["device"],
                         "backend": adapter["backend"], "default_ms": round(base["ms"], 5),
                         "tuned_ms": round(r["ms"], 5),
                         "speedup": round(base["ms"] / r["ms"], 3),
                         "tflops_default": round(base["tflops"], 3),
                         "tflops_tuned": round(r["tflops"], 3),
                         "err_ref": r["err_ref"], "err_default": r["err_default"],
                         "timing": r["times"][0]["method"]},
            "tir": kernel["tir"],
        }
        log(f"{kernel['name']}: admitted {variant['label']} "
            f"{base['ms']:.3f} -> {r['ms']:.3f} ms (x{base['ms'] / r['ms']:.2f})")
    return db


# --------------------------------------------------------------------------- CLI

def _select(works: list[Workload], top: int | None, min_gflop: float) -> list[Workload]:
    picked = [w for w in works if w.flops >= min_gflop * 1e9]
    return picked[:top] if top else picked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsd.tuning.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "export"):
        p = sub.add_parser(name)
        p.add_argument("--target", default="webgpu", choices=("webgpu", "cuda"))
        p.add_argument("--model", default="sd15")
        p.add_argument("--dtype", default=settings.DEFAULT_DTYPE, choices=settings.DTYPES)
        p.add_argument("--height", type=int)
        p.add_argument("--width", type=int)
        p.add_argument("--top", type=int, default=None, help="the N kernels with most FLOPs")
        p.add_argument("--min-gflop", type=float, default=0.0)
    exp = sub.choices["export"]
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--max-candidates", type=int, default=8)
    exp.add_argument("--records", action="store_true",
                     help="export the stored records (default vs record) instead of candidates")
    exp.add_argument("--from-bench", type=Path,
                     help="take the kernels (and references) of an earlier export, no tracing")
    exp.add_argument("--below-tflops", type=float,
                     help="with --from-bench and its results.json: only kernels whose best "
                          "variant ran below this rate")
    exp.add_argument("--shapes", default="default", choices=sorted(SHAPE_SETS))
    exp.add_argument("--split-k", action="store_true",
                     help="with --from-bench: tiles with too few workgroups split K")
    exp.add_argument("--taps", action="store_true",
                     help="with --from-bench: convolutions only, their record and the best "
                          "tiles with K as (ry, rx, c) (tiled_matmul.Config.taps_outer)")
    exp.add_argument("--f16-partials", action="store_true",
                     help="with --from-bench: fp16 kernels only, their record and the best "
                          "tiles with f16 partial sums (tiled_matmul.Config.f16_partials)")
    exp.add_argument("--retune", action="store_true",
                     help="with --from-bench: every kernel's stored record (as stored and "
                          "staged), its tiles, and split-K where 128x128 tiles make fewer "
                          f"than {RETUNE_WAVES} waves")
    exp.add_argument("--waves", type=float, default=0.5,
                     help="with --from-bench: workgroups per compute unit below which a "
                          "large tile is too few (passed over, or split with --split-k)")
    adm = sub.add_parser("admit")
    adm.add_argument("results", type=Path)
    adm.add_argument("--margin", type=float, default=0.05)
    adm.add_argument("--dry-run", action="store_true")
    adm.add_argument("--bench", type=Path,
                     help="the exported folder the results are of (default: their folder)")
    args = parser.parse_args(argv)

    if args.command == "admit":
        results = json.loads(args.results.read_text())
        manifest = wgsl_bench.load_manifest(args.bench or args.results.parent)
        db = records.load(manifest["target"])
        db = admit(results, manifest, db, args.margin)
        if not args.dry_run:
            print(f"wrote {records.save(db, manifest['target'])} "
                  f"({len(db['records'])} records)")
        return 0

    if getattr(args, "from_bench", None) and args.target != "webgpu":
        parser.error("--from-bench re-exports WebGPU bench folders only")
    target = tuning_target(args.target)
    db = records.load(args.target)
    if args.command == "export" and args.records:
        works = record_workloads(db)
        configs = {w.key: [("record", records.config_of(db["records"][w.key]))]
                   for w in works}
        export(works, args.out, configs, target=target)
        return 0
    if args.command == "export" and args.from_bench:
        works = bench_workloads(args.from_bench, args.below_tflops)
        configs = {}
        for w in works:
            found = candidates(w, args.max_candidates, shapes=SHAPE_SETS[args.shapes],
                               waves=args.waves, split=args.split_k)
            if args.split_k:  # the unsplit ones were measured in the earlier export
                found = [c for c in found if c.split_k > 1]
            stored = (records.config_of(db["records"][w.key]) if w.key in db["records"]
                      else None)
            if args.retune:
                found += [c for c in candidates(w, args.max_candidates, waves=RETUNE_WAVES,
                                                split=True) if c.split_k > 1]
                if stored:
                    found = [stored, dataclasses.replace(stored, staged=True)] + found
                found = unique(found)
            elif args.taps:
                found = taps_candidates(w, found, db, args.max_candidates)
            elif args.f16_partials:
                found = f16_candidates(w, found, db, args.max_candidates)
            elif stored and found:  # the incumbent beside the new ones
                found = unique([stored] + found)
            configs[w.key] = [(c.label(), c) for c in found]
        works = [w for w in works if configs[w.key]]
        # the references of the earlier export hold for the same kernels
        (args.out / "refs").mkdir(parents=True, exist_ok=True)
        for w in works:
            src = args.from_bench / "refs" / f"{w.key}.npz"
            if src.is_file():
                (args.out / "refs" / src.name).write_bytes(src.read_bytes())
        export(works, args.out, configs)
        return 0
    mod = optimized_module(args.model, args.dtype, args.height, args.width, target=target)
    works = _select(workloads(mod, args.target), args.top, args.min_gflop)
    if args.command == "list":
        total = sum(w.flops * max(1, sum(w.calls.values())) for w in works)
        print(f"{len(works)} GEMM kernels, {total / 1e12:.2f} TFLOP per pass")
        for w in works:
            e = w.traits["extents"]
            print(f"{w.key} {w.name:50s} S{e['S']} I{e['I']} J{e['J']} K{e['K']} "
                  f"A:{w.traits['a_fast']} B:{w.traits['b_fast']} "
                  f"{w.flops / 1e9:7.2f} GFLOP x{w.calls}")
        return 0
    configs = {w.key: [(c.label(), c) for c in candidates_for(w, args.target,
                                                                 args.max_candidates)]
               for w in works}
    works = [w for w in works if configs[w.key]]
    export(works, args.out, configs, target=target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
