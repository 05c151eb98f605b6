"""Run and time TVM-generated WGSL kernels with wgpu-py, without TVM.

This is the device half of `wsd.tuning.tune`: `python -m wsd.tuning.tune export` (where TVM is) writes a
folder of kernels (WGSL source, binding order, grid, input recipes and reference samples
computed by the unscheduled kernel on llvm); this module runs every variant of every kernel on
the WebGPU adapter of the machine it runs on, checks it against the reference and against the
default variant, and times it. It needs only numpy and wgpu, so it runs on a GPU machine
that has no TVM:

    python -m wsd.tuning.wgsl_bench DIR [--out results.json] [--repeat 50]

The dispatch follows TVM's WebGPU runtime (web/src/webgpu.ts in the TVM wheel): buffers are
bound in the kernel's parameter order (0..n-1), then one uniform holding the POD arguments
and `packGridDimX` (the x extent of the grid before it is spread into z above 65535 groups).
Kernels with POD arguments other than packGridDimX (dynamic shapes) are not supported here.
(`wsd/runtime/webgpu_native.py`, the per-layer WebGPU executor, dispatches the same way; the two can
share one dispatch function once both exist.)

Inputs are a deterministic hash of the element index and a seed (`hash_inputs`), the same
numbers wherever numpy runs, so the reference samples computed elsewhere apply here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from wsd.runtime.wgsl import split_sources

FORMAT = "wsd-wgsl-bench"
VERSION = 1


def hash_inputs(shape, dtype: str, seed: int) -> np.ndarray:
    """Uniform values in [-1, 1) from a 32-bit integer hash of (index, seed)."""
    n = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):
        h = np.arange(n, dtype=np.uint32) * np.uint32(0x9E3779B1) + np.uint32((seed * 0x85EBCA77) & 0xFFFFFFFF)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    values = (h >> np.uint32(8)).astype(np.float64) / float(1 << 23) - 1.0
    return values.astype(dtype).reshape(shape)


def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    out = out.astype(np.float64).ravel()
    ref = ref.astype(np.float64).ravel()
    if not np.all(np.isfinite(out)):
        return float("inf")
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (denom if denom > 0 else 1.0))


def tolerance(dtype: str) -> float:
    return 2e-3 if dtype == "float16" else 1e-4


class Runner:
    """One wgpu device; compiles WGSL modules and dispatches kernels the TVM way."""

    def __init__(self, portable: bool = True):
        import wgpu

        self.wgpu = wgpu
        self.adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        features = [f for f in ("shader-f16", "timestamp-query", "subgroup")
                    if f in self.adapter.features]
        limits = self.adapter.limits
        # Buffer sizes as large as the adapter allows; workgroup storage and invocations at
        # WebGPU's portable defaults unless asked otherwise, so that a kernel that needs more
        # fails to compile here instead of passing on a generous adapter.
        wanted = {k: limits[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size")
                  if k in limits}
        if not portable:
            for key in ("max-compute-workgroup-storage-size",
                        "max-compute-invocations-per-workgroup",
                        "max-compute-workgroup-size-x", "max-compute-workgroup-size-y"):
                if key in limits:
                    wanted[key] = limits[key]
        self.device = self.adapter.request_device_sync(required_features=features,
                                                       required_limits=wanted)
        self.timestamps = "timestamp-query" in features
        self.portable = portable
        self._modules = {}

    @property
    def info(self) -> dict:
        info = self.adapter.info
        return {"device": info.get("device", ""), "vendor": info.get("vendor", ""),
                "adapter_type": info.get("adapter_type", ""),
                "backend": info.get("backend_type", ""),
                "description": info.get("description", ""),
                "features": sorted(self.device.features)}

    def is_cpu(self) -> bool:
        return str(self.adapter.info.get("adapter_type", "")).lower() == "cpu"

    # The interface check_kernel uses (wsd.tuning.cuda_bench.Runner has the same):
    # buffer, prepare, write, read, run, time.

    def buffer(self, spec: dict, array: np.ndarray | None = None):
        usage = (self.wgpu.BufferUsage.STORAGE | self.wgpu.BufferUsage.COPY_SRC
                 | self.wgpu.BufferUsage.COPY_DST)
        if array is not None:
            return self.device.create_buffer_with_data(data=np.ascontiguousarray(array),
                                                       usage=usage)
        nbytes = int(np.prod(spec["shape"])) * np.dtype(_np_dtype(spec["dtype"])).itemsize
        return self.device.create_buffer(size=max(4, (nbytes + 3) // 4 * 4), usage=usage)

    def prepare(self, folder: Path, variant: dict, buffers: dict):
        """A variant's launches with the kernel's buffers and its own workspaces bound."""
        sources = split_sources(read_source(folder / variant["wgsl"]))
        buffers = {**buffers, **{w["name"]: self.buffer(w)
                                 for w in variant.get("workspaces", [])}}
        return [(pipe := self.pipeline(sources[launch["entry"]], launch["entry"]),
                 self.bind(pipe, [buffers[n] for n in launch["bindings"]], launch["grid"][0]),
                 launch["grid"])
                for launch in variant["launches"]]

    def write(self, buffer, array: np.ndarray) -> None:
        self.device.queue.write_buffer(buffer, 0, np.ascontiguousarray(array))

    def read(self, buffer, spec: dict) -> np.ndarray:
        """The buffer's elements, flat."""
        return np.frombuffer(self.device.queue.read_buffer(buffer), dtype=_np_dtype(spec["dtype"]))

    def pipeline(self, source: str, entry: str):
        key = (hash(source), entry)
        if key not in self._modules:
            module = self.device.create_shader_module(code=source)
            self._modules[key] = self.device.create_compute_pipeline(
                layout="auto", compute={"module": module, "entry_point": entry})
        return self._modules[key]

    def bind(self, pipeline, buffers: list, grid_x: int):
        """Bind group: buffers in order, then the POD uniform (packGridDimX)."""
        pod = np.zeros(4, dtype=np.uint32)
        pod[0] = grid_x
        uniform = self.device.create_buffer_with_data(
            data=pod, usage=self.wgpu.BufferUsage.UNIFORM)
        entries = [{"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                   for i, b in enumerate(buffers)]
        entries.append({"binding": len(buffers),
                        "resource": {"buffer": uniform, "offset": 0, "size": 16}})
        return self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0),
                                             entries=entries)

    @staticmethod
    def spread_grid(grid) -> tuple[int, int, int]:
        """TVM's WebGPU runtime spreads blockIdx.x beyond 65535 into z; same here."""
        x, y, z = (list(grid) + [1, 1, 1])[:3]
        if z != 1:
            raise ValueError("blockIdx.z is reserved by TVM's WebGPU runtime")
        while x >= 1 << 16:
            x = x // 2 if x % 2 == 0 else (x + 1) // 2
            z *= 2
        return x, y, z

    def encode(self, encoder, launches, timestamp=None):
        """launches: [(pipeline, bind_group, grid)], one compute pass."""
        kwargs = {}
        if timestamp is not None:
            query_set, index = timestamp
            kwargs["timestamp_writes"] = {"query_set": query_set,
                                          "beginning_of_pass_write_index": index,
                                          "end_of_pass_write_index": index + 1}
        compute = encoder.begin_compute_pass(**kwargs)
        for pipeline, group, grid in launches:
            compute.set_pipeline(pipeline)
            compute.set_bind_group(0, group)
            compute.dispatch_workgroups(*self.spread_grid(grid))
        compute.end()

    def run(self, launches) -> None:
        encoder = self.device.create_command_encoder()
        self.encode(encoder, launches)
        self.device.queue.submit([encoder.finish()])

    def sync(self, some_buffer) -> None:
        # on_submitted_work_done_sync raises in wgpu 0.32: a small read waits instead.
        self.device.queue.read_buffer(some_buffer, 0, 4)

    def time(self, launches, repeat: int, sync_buffer) -> dict:
        """Median GPU time of one execution of `launches` (ms): timestamp queries around each
        pass where the adapter has them, else host time over `repeat` back-to-back passes.
        The timed passes follow `repeat` untimed ones in the same submission: a GPU that
        idled while the host checked outputs has dropped its clocks, and short kernels timed
        straight away ran up to 5x slow (H100, Vulkan)."""
        self.run(launches)  # pipelines, caches
        self.sync(sync_buffer)
        if self.timestamps:
            query_set = self.device.create_query_set(type="timestamp", count=2 * repeat)
            resolve = self.device.create_buffer(
                size=16 * repeat, usage=self.wgpu.BufferUsage.QUERY_RESOLVE
                | self.wgpu.BufferUsage.COPY_SRC)
            encoder = self.device.create_command_encoder()
            for _ in range(repeat):  # clocks up
                self.encode(encoder, launches)
            for r in range(repeat):
                self.encode(encoder, launches, (query_set, 2 * r))
            encoder.resolve_query_set(query_set, 0, 2 * repeat, resolve, 0)
            self.device.queue.submit([encoder.finish()])
            stamps = np.frombuffer(self.device.queue.read_buffer(resolve), dtype=np.uint64)
            ns = (stamps[1::2] - stamps[0::2]).astype(np.float64)
            ms = sorted(ns / 1e6)
            return {"ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
                    "method": "timestamp-query", "repeat": repeat}
        encoder = self.device.create_command_encoder()
        for _ in range(repeat):  # clocks up
            self.encode(encoder, launches)
        self.device.queue.submit([encoder.finish()])
        self.sync(sync_buffer)
        start = time.perf_counter()
        encoder = self.device.create_command_encoder()
        for _ in range(repeat):
            self.encode(encoder, launches)
        self.device.queue.submit([encoder.finish()])
        self.sync(sync_buffer)
        ms = (time.perf_counter() - start) * 1e3 / repeat
        return {"ms": ms, "min_ms": ms, "max_ms": ms, "method": "host", "repeat": repeat}


def _np_dtype(dtype: str):
    return {"float32": np.float32, "float16": np.float16, "int32": np.int32}[dtype]


def read_source(path: Path) -> str:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode()
    return path.read_text()


def load_manifest(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{folder}: not a {FORMAT} v{VERSION} folder")
    return manifest


def kernel_buffers(runner, specs: list[dict]) -> dict:
    """{name: device buffer} for a kernel's parameters, in their order: the inputs filled
    with their hash inputs, the outputs left for the kernel to write."""
    return {spec["name"]: runner.buffer(spec, None if spec["output"] else
                                        hash_inputs(spec["shape"], spec["dtype"], spec["seed"]))
            for spec in specs}


def check_kernel(runner: Runner, folder: Path, kernel: dict, repeat: int = 30,
                 rounds: int = 2, log=print, labels=None, budget_ms: float = 100.0) -> dict:
    """Run, check and time every variant of one kernel (default first). Returns
    {label: {"ok", "err_ref", "err_default", "ms", ...}}."""
    buffers = kernel_buffers(runner, kernel["buffers"])
    outputs = [s for s in kernel["buffers"] if s["output"]]
    ref = np.load(folder / kernel["reference"])
    results, launches, default_out = {}, {}, {}
    variants = [v for v in kernel["variants"] if labels is None or v["label"] in labels
                or v["label"] == "default"]
    for variant in variants:
        label = variant["label"]
        try:
            launches[label] = runner.prepare(folder, variant, buffers)
        except Exception as err:  # noqa: BLE001 - a candidate that does not compile loses
            results[label] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
            log(f"  {label}: does not compile: {results[label]['error'][:200]}")
            continue
        # Poison the outputs (NaN), run once, read back: every element must be written.
        for spec in outputs:
            poison = np.full(spec["shape"], np.nan, dtype=_np_dtype(spec["dtype"]))
            runner.write(buffers[spec["name"]], poison)
        runner.run(launches[label])
        errs_ref, errs_def = [], []
        for spec in outputs:
            out = runner.read(buffers[spec["name"]], spec)
            idx, val = ref[spec["name"] + ".idx"], ref[spec["name"] + ".val"]
            errs_ref.append(rel_l2(out[idx], val) if np.all(np.isfinite(out)) else float("inf"))
            if label == "default":
                default_out[spec["name"]] = out.copy()
            elif spec["name"] in default_out:
                errs_def.append(rel_l2(out, default_out[spec["name"]]))
        tol = tolerance(outputs[0]["dtype"])
        err_ref = max(errs_ref)
        err_def = max(errs_def) if errs_def else 0.0
        results[label] = {"ok": err_ref <= tol and err_def <= tol, "err_ref": err_ref,
                          "err_default": err_def, "tol": tol, "times": []}
    # Time in rounds, variants interleaved, so that drift affects all alike; each variant
    # repeated about budget_ms worth (at least 3, at most `repeat` times).
    sync = buffers[outputs[0]["name"]]
    reps = {}
    for label, launch in launches.items():
        if results[label]["ok"]:
            once = runner.time(launch, 2, sync)["ms"]
            reps[label] = max(3, min(repeat, int(budget_ms / max(once, 1e-3))))
    for _ in range(rounds):
        for label in reps:
            results[label]["times"].append(runner.time(launches[label], reps[label], sync))
    for label, res in results.items():
        if res.get("times"):
            res["ms"] = min(t["ms"] for t in res["times"])
            res["tflops"] = kernel["flops"] / (res["ms"] * 1e-3) / 1e12
    return results


def run_folder(folder: Path, runner, repeat: int = 30, rounds: int = 2,
               only=None, log=print, out: Path | None = None,
               budget_ms: float = 100.0) -> dict:
    """Check and time every kernel of a bench folder on `runner` (this module's Runner, or
    wsd.tuning.cuda_bench's); the report is rewritten to `out` after each kernel, so a run cut short
    still leaves its results."""
    manifest = load_manifest(folder)
    report = {"format": FORMAT + "-results", "version": VERSION, "adapter": runner.info,
              "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "target": manifest.get("target"),
              "portable_limits": runner.portable, "kernels": {}}
    log(f"adapter: {runner.info['device']} ({runner.info['backend']}, "
        f"{runner.info['adapter_type']})")
    for kernel in manifest["kernels"]:
        if only and kernel["key"] not in only and kernel["name"] not in only:
            continue
        log(f"{kernel['name']} ({kernel['flops'] / 1e9:.1f} GFLOP)")
        try:
            res = check_kernel(runner, folder, kernel, repeat, rounds, log,
                               budget_ms=budget_ms)
        except Exception as err:  # noqa: BLE001 - one broken kernel must not stop the run
            log(f"  error: {type(err).__name__}: {err}")
            res = {"default": {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}}
        report["kernels"][kernel["key"]] = {"name": kernel["name"], "flops": kernel["flops"],
                                            "variants": res}
        base = res.get("default", {}).get("ms")
        for label, r in res.items():
            if "ms" in r:
                speed = f" x{base / r['ms']:.2f}" if base else ""
                log(f"  {label:44s} {r['ms']:8.3f} ms {r['tflops']:6.2f} TFLOP/s "
                    f"err {r['err_ref']:.1e}{speed}")
            elif not r.get("ok"):
                log(f"  {label:44s} FAILED {r.get('error', '')[:80]} "
                    f"err_ref {r.get('err_ref')} err_default {r.get('err_default')}")
        if out is not None:
            out.write_text(json.dumps(report, indent=1))
    summary(report, log)
    return report


def summary(report: dict, log=print) -> None:
    """One line per kernel: default vs best correct variant."""
    log(f"{'kernel':48s} {'GFLOP':>7s} {'default':>16s} {'best':>16s} {'x':>5s}  variant")
    for res in report["kernels"].values():
        v = res["variants"]
        base = v.get("default", {})
        timed = [(r["ms"], label) for label, r in v.items()
                 if label != "default" and r.get("ok") and "ms" in r]
        if "ms" not in base:
            log(f"{res['name'][:48]:48s} default failed")
            continue
        best_ms, best = min(timed) if timed else (float("nan"), "-")
        log(f"{res['name'][:48]:48s} {res['flops'] / 1e9:7.1f} "
            f"{base['ms']:7.3f} ms {base['tflops']:5.1f}T "
            f"{best_ms:7.3f} ms {res['flops'] / best_ms / 1e9 if timed else 0:5.1f}T "
            f"{base['ms'] / best_ms if timed else 0:5.2f}  {best}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsd.tuning.wgsl_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, help="results JSON (default: FOLDER/results.json)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--adapter-limits", action="store_true",
                        help="use the adapter's workgroup limits instead of the portable ones")
    parser.add_argument("--only", nargs="*", help="kernel names or keys")
    parser.add_argument("--budget-ms", type=float, default=100.0,
                        help="about this much GPU time per variant per round")
    args = parser.parse_args(argv)
    out = args.out or args.folder / "results.json"
    report = run_folder(args.folder, Runner(portable=not args.adapter_limits), args.repeat,
                        args.rounds, set(args.only) if args.only else None, out=out,
                        budget_ms=args.budget_ms)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
