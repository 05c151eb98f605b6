"""Build, check and time GEMM kernel variants on CUDA: the device half of `wsd.tuning.tune` for CUDA.

    python -m wsd.tuning.tune export --target cuda --dtype float16 --out DIR   (anywhere TVM is)
    python -m wsd.tuning.cuda_bench DIR [--jobs 16]                          (on the NVIDIA GPU)
    python -m wsd.tuning.tune admit DIR/results.json

The folder is the one `wsd.tuning.tune export` writes for WebGPU, without compiled code or
references: each kernel's unscheduled TIR and its variants, dlight's default first, then
candidate parameters of `wsd.kernels.gemm.tensor_core_matmul`. Here every variant is scheduled
and built for the local GPU (nvcc, in parallel processes), then checked and timed by
`wsd.tuning.wgsl_bench.check_kernel` through `Runner` below: the same hash inputs, poisoned outputs,
reference and default comparison, interleaved rounds and results format as the WebGPU bench,
so `admit` reads both.

The reference is the same PrimFunc under dlight's SIMT schedule (tensor cores off: fp32
multiply-adds in a different order, no wmma, no cp.async), run here on the same inputs and
sampled as the llvm reference is; llvm would take minutes per large fp16 kernel.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import tvm

from wsd.tuning import kernel_builds, wgsl_bench

REFERENCE = {"label": "reference", "rule": "simt", "params": None}


def schedule_variant(func, variant: dict, target: tvm.target.Target):
    """The PrimFunc as the variant schedules it (dlight's rules for "default"; for the
    reference, dlight's rules with tensor cores off)."""
    from wsd.kernels.gemm import records

    if variant["rule"] is None:
        return kernel_builds.default_schedule(func, target)
    if variant["rule"] == REFERENCE["rule"]:
        return kernel_builds.default_schedule(func.with_attr("dlight.do_not_tensorize", True), target)
    sch = records.schedule_record(func, variant)
    if sch is None:
        raise RuntimeError(f"{variant['rule']} does not apply")
    return sch.mod["main"]


def _build_job(job: tuple) -> tuple:
    """Worker: (tir, variant, target dict, out path) -> (out path or None, why not)."""
    tir, variant, target, out = job
    import tvm.script

    try:
        target = tvm.target.Target(target)
        func = tvm.script.from_source(tir)
        kernel_builds.build_kernel(schedule_variant(func, variant, target), target).export_library(out)
        return out, None
    except Exception as err:  # noqa: BLE001 - a candidate that does not build loses
        return None, f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"


def build_folder(folder: Path, target: tvm.target.Target, jobs: int, log=print) -> dict:
    """Build every variant of the folder in `jobs` processes (each to its "lib" path):
    {lib: None, or why it did not build}."""
    manifest = wgsl_bench.load_manifest(folder)
    work, names = [], []
    for kernel in manifest["kernels"]:
        extra = [] if (folder / kernel["reference"]).is_file() else [reference_variant(kernel)]
        for variant in kernel["variants"] + extra:
            out = folder / variant["lib"]
            out.parent.mkdir(parents=True, exist_ok=True)
            work.append((kernel["tir"], variant, target.export(), str(out)))
            names.append(variant["lib"])
    start = time.time()
    # spawn: the workers must not inherit this process's CUDA context
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        built = {name: error for name, (_, error) in zip(names, pool.map(_build_job, work))}
    failed = sum(1 for error in built.values() if error is not None)
    log(f"built {len(built) - failed} of {len(built)} variants in {time.time() - start:.0f} s")
    return built


def reference_variant(kernel: dict) -> dict:
    return dict(REFERENCE, lib=f"cuda_lib/{kernel['key']}_reference.so")


def write_references(folder: Path, runner: "Runner", log=print) -> None:
    """refs/KEY.npz for every kernel that has none: its reference variant's output on the
    hash inputs, sampled as wsd.tuning.kernel_builds samples llvm's."""
    for kernel in wgsl_bench.load_manifest(folder)["kernels"]:
        path = folder / kernel["reference"]
        if path.is_file():
            continue
        specs = kernel["buffers"]
        buffers = wgsl_bench.kernel_buffers(runner, specs)
        try:
            launch = runner.prepare(folder, reference_variant(kernel), buffers)
        except RuntimeError as err:
            log(f"{kernel['name']}: no reference ({err}); its variants cannot be admitted")
            continue
        runner.run(launch)
        outputs = [runner.read(buffers[s["name"]], s) if s["output"] else None for s in specs]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **kernel_builds.sample_outputs(specs, outputs))


class Runner:
    """The local CUDA GPU, behind the interface `wgsl_bench.check_kernel` uses."""

    def __init__(self, built: dict):
        self.dev = tvm.cuda(0)
        if not self.dev.exist:
            raise RuntimeError("no CUDA GPU visible")
        self.built = built
        self.portable = None

    @property
    def info(self) -> dict:
        return {"device": self.dev.device_name, "vendor": "NVIDIA", "adapter_type": "gpu",
                "backend": "cuda", "description": f"compute {self.dev.compute_version}"}

    def buffer(self, spec: dict, array: np.ndarray | None = None):
        if array is not None:
            return tvm.runtime.tensor(array, self.dev)
        return tvm.runtime.empty(spec["shape"], spec["dtype"], self.dev)

    def prepare(self, folder: Path, variant: dict, buffers: dict):
        error = self.built.get(variant["lib"], "not built")
        if error is not None:
            raise RuntimeError(error)
        lib = tvm.runtime.load_module(str(folder / variant["lib"]))
        return lib, list(buffers.values())

    def write(self, buffer, array: np.ndarray) -> None:
        buffer.copyfrom(np.ascontiguousarray(array))

    def read(self, buffer, spec: dict) -> np.ndarray:
        return buffer.numpy().ravel()

    def run(self, launch) -> None:
        lib, args = launch
        lib["main"](*args)
        self.dev.sync()

    def time(self, launch, repeat: int, sync_buffer) -> dict:
        """Median over 3 batches of `repeat` back-to-back launches (ms per launch)."""
        lib, args = launch
        timer = lib.time_evaluator("main", self.dev, number=repeat, repeat=3)
        ms = sorted(r * 1e3 for r in timer(*args).results)
        return {"ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
                "method": "time_evaluator", "repeat": repeat}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsd.tuning.cuda_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, help="results JSON (default: FOLDER/results.json)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget-ms", type=float, default=50.0,
                        help="about this much GPU time per variant per round")
    args = parser.parse_args(argv)
    target = tvm.target.Target.from_device(tvm.cuda(0))
    built = build_folder(args.folder, target, args.jobs)
    runner = Runner(built)
    write_references(args.folder, runner)
    out = args.out or args.folder / "results.json"
    report = wgsl_bench.run_folder(args.folder, runner, args.repeat, args.rounds,
                                   out=out, budget_ms=args.budget_ms)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
