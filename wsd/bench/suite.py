"""`wsd bench`: wsd's compiled code side by side with PyTorch, on the same device, in one run.

Every figure is a TVM time next to PyTorch's for the same computation, measured in the same
process (eager, and torch.compile where it is available), reported as a ratio, and as a
fraction of the device's peak rate (FLOPs counted on the PyTorch side with
`torch.utils.flop_counter.FlopCounterMode`; the peak is a large PyTorch matmul, measured once
per run and dtype). Timings on a shared machine are noisy; ratios measured in one run are the
figures to read.

What is measured:

- `device.measure_peak`  the device's matmul rate per dtype (fp32 without TF32 on GPUs);
- `layers.layer_cases`   single layers at SD v1.5's real shapes (convolutions, linear layers,
                   attention, group norm): a PyTorch module, imported and compiled by the
                   project's whole pipeline (`wsd.compiler.trace.to_relax` + `wsd.compiler.pipeline.compile_module`),
                   run through the Relax VM - every kernel the build emits for that layer;
- `fused.fused_kernels`  the fused PrimFuncs the build produces for SD v1.5's UNet (and VAE), the
                   dominant instance of each kind (conv+bias+residual, group norm+SiLU, ...),
                   each built alone with the project's schedules and timed next to the
                   PyTorch ops it replaces (checked to compute the same thing);
- `models.ModelBench`    per model function: CLIP (`encode_text`), the UNet step with guidance
                   (`unet_guided`, batch 2 inside), the VAE (`decode`), and a whole image
                   (`wsd.runtime.pipeline.Pipeline` against diffusers' StableDiffusionPipeline); plus
                   the pipeline's memory (weights + planned activations, `wsd.compiler.memory`; on CUDA
                   also measured).

For other benchmarks (e.g. re-checking tuned schedule records) the reusable piece is
`kernels.compare_kernel(func, device, reference=..., schedule=...)`: it builds one PrimFunc (with the
project's schedules, or the `schedule` you pass), times it and optionally a reference on the
same inputs in the same run, and checks the outputs agree. `tests/perf/conftest.py` wraps the
same timing for pytest-benchmark (`perf.record`).

PyTorch's float32 baselines run without TF32 (`strict_fp32`): TVM computes true float32.
Entry points: `wsd bench` (wsd/cli.py) and `pytest tests/perf`. Results: docs/PERF.md.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Sequence


from wsd import settings
from wsd.bench.device import Device, compile_policy, measure_peak, versions
from wsd.bench.kernels import time_prepared
from wsd.bench.models import ModelBench, WebGPUModelBench
from wsd.bench.options import DTYPES, MEMORY_GOAL_BYTES, PARTS
from wsd.bench.report import Report, format_rows, load_note
from wsd.targets import WEBGPU_NATIVES


def run(model_spec: str = "tiny", target: str = "llvm", dtypes: Sequence[str] = DTYPES,
        parts: Sequence[str] = PARTS, height: int | None = None, width: int | None = None,
        repeat: int = 5, warmup: int = 1, steps: int = 20, compile_option: str = "auto",
        budget_s: float | None = 60.0, log=print, command: str | None = None,
        profile_top: int = 0) -> Report:
    """`wsd bench`: the per-model benchmarks; returns the report (printed by the CLI). With
    `profile_top`, also each timed part's kernels (wsd.bench.profile), the top ones listed."""
    from wsd.compiler.trace import resolve_size
    from wsd.models import load_model

    load_start = os.getloadavg()[0]
    model = load_model(model_spec)  # configs only: the weights load later
    if target in WEBGPU_NATIVES:  # before minutes of loading
        WebGPUModelBench.functions_of(model, parts)
    device = Device(target)
    report = Report(datetime.date.today().isoformat(), device.name, target,
                    command or " ".join(["wsd"] + sys.argv[1:]), versions(),
                    profile_top=profile_top)
    timed = [p for p in parts if p != "memory"]
    if not timed and not device.is_cuda:  # the plan alone: no code generation, no weights
        from wsd.compiler import memory

        for dtype in dtypes:
            log(f"{model.name} {dtype}: planning memory for {target} ...")
            h, w = resolve_size(model, height, width)
            report.memory.append({
                "dtype": dtype, "model": model.name, "size": [h, w], "measured": {},
                "planned": memory.plan_model(model, dtype, device.tvm_target, h, w),
                "goal_bytes": MEMORY_GOAL_BYTES if model.name == "sd15" else None})
        return report
    report.peaks = [measure_peak(device, d) for d in dtypes]
    for p in report.peaks:
        log(f"peak {p.dtype}: {p.tflops:.3g} TFLOP/s ({p.label}, {p.ms:.3g} ms)")
    for dtype in dtypes:
        peak = next(p for p in report.peaks if p.dtype == dtype)
        if target in WEBGPU_NATIVES:
            bench = WebGPUModelBench(model, device, dtype, height, width, compile_option,
                                     parts, log)
        else:
            bench = ModelBench(model, device, dtype, height, width, compile_option, steps, log)
        for part in parts:
            if part == "memory":
                continue
            log(f"{model.name} {dtype} {part} ...")
            prep = bench.prepare_image() if part == "image" else bench.prepare_part(part)
            reps = min(repeat, 3) if part == "image" else repeat
            row = time_prepared(prep, device, peak, 0 if part == "image" else warmup, reps,
                                budget_s)
            report.rows.append(row)
            log(format_rows([row]).splitlines()[-1])
            if profile_top and part != "image":
                report.profiles.append(bench.profile(part))
        if "memory" in parts:
            report.memory.append(bench.memory())
        del bench
    report.notes = [
        "TVM/eager and TVM/compile: time ratios (below 1: TVM faster). % peak: FLOP rate "
        "(PyTorch FlopCounterMode FLOPs of the same computation) over the peak row's rate.",
        "PyTorch float32 without TF32. Model inputs/outputs are float32 in both dtypes "
        "(the fp16 functions cast inside, as wsd's compiled functions do).",
        f"image: prompt to uint8 pixels, PNDM, {steps} steps, guidance {settings.GUIDANCE_SCALE:g} (UNet batch 2): "
        "wsd.runtime.pipeline.Pipeline against diffusers' StableDiffusionPipeline on the same weights "
        "(torch.compile: its UNet compiled). Every figure warm; implementations timed "
        "round-robin; median.",
    ]
    if target in WEBGPU_NATIVES:
        report.notes.append(
            "webgpu-native: TVM is the browser bundle's build (same target, passes and tuned "
            "records), its WGSL run through wgpu-py on the WebGPU adapter named above; the "
            "figure is the GPU time of one call's command buffer (timestamp-query: from the "
            "beginning of its first compute pass to the end of its last; submit-to-done: "
            "wall clock from submit until the GPU is done), without the host's time "
            "interpreting the call and encoding its kernels in Python (host encode, in the "
            f"note). PyTorch on {device.torch}.")
    enabled, reason = compile_policy(compile_option, device)
    if not enabled:
        report.notes.append(reason)
    report.notes.append(load_note(load_start))
    return report
