"""One PrimFunc or prepared computation against its PyTorch twin: inputs, build, timing, the
check that both compute the same (`compare_kernel`, `time_prepared`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from wsd.bench.device import Device, Peak, Timing, measure, measure_interleaved
from wsd.bench.report import Row


def rel_l2(actual, expected) -> float:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def tolerance(dtype: str) -> float:
    """Relative L2 allowed between TVM's and PyTorch's outputs in a benchmark's check."""
    return 2e-2 if dtype == "float16" else 1e-3


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def first_output(value):
    if isinstance(value, (tuple, list)):
        return value[0]
    return value


def random_arrays(specs: Sequence[tuple[tuple[int, ...], str]], seed: int = 0
                  ) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in specs:
        if np.issubdtype(np.dtype(dtype), np.floating):
            out.append(rng.standard_normal(shape, dtype=np.float32).astype(dtype))
        else:
            out.append(np.zeros(shape, dtype=dtype))
    return out


def param_specs(func) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every parameter buffer of a PrimFunc (inputs, then outputs)."""
    return [(tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)) for p in func.params]


def build_kernel(func, target, schedule: Callable | None = None, name: str = "kernel"):
    """One PrimFunc -> a callable `f(*input_tensors, *output_tensors)` on the target.

    `schedule`: IRModule -> IRModule. Default: what the build does (wsd.compiler.schedule.passes:
    tuned records, then dlight's rules)."""
    import tvm

    from wsd.compiler import schedule as wsd_schedule

    mod = tvm.IRModule({name: func.with_attr("global_symbol", name)})
    if schedule is None:
        with target:
            mod = tvm.transform.Sequential(wsd_schedule.passes(target))(mod)
    else:
        mod = schedule(mod)
    return tvm.compile(mod, target)[name]


@dataclass
class KernelResult:
    tvm: Timing
    reference: Timing | None
    error: float | None
    output: np.ndarray
    expected: np.ndarray | None

    @property
    def ratio(self) -> float | None:
        return self.tvm.median / self.reference.median if self.reference else None


def compare_kernel(func, device: Device, reference: Callable | None = None,
                   schedule: Callable | None = None, inputs: Sequence[np.ndarray] | None = None,
                   num_outputs: int = 1, warmup: int = 1, repeat: int = 5,
                   budget_s: float | None = None, seed: int = 0) -> KernelResult:
    """Time one PrimFunc on the device, and `reference` on the same inputs in the same run.

    `reference(*torch_tensors_on_device) -> torch.Tensor` (e.g. the PyTorch ops the kernel
    replaces); `inputs` default to seeded normal values for the function's input buffers.
    `error` is the relative L2 distance of the kernel's output from the reference's. Used by
    the fused-kernel benchmarks; reusable for schedule records (pass `schedule`)."""
    import torch
    import tvm

    specs = param_specs(func)
    in_specs, out_specs = specs[:len(specs) - num_outputs], specs[len(specs) - num_outputs:]
    arrays = list(inputs) if inputs is not None else random_arrays(in_specs, seed)
    kernel = build_kernel(func, device.tvm_target, schedule)
    args = [tvm.runtime.tensor(a, device.tvm) for a in arrays]
    outs = [tvm.runtime.empty(s, d, device.tvm) for s, d in out_specs]
    timing = measure(lambda: kernel(*args, *outs), device, warmup, repeat, budget_s)
    output = outs[0].numpy()
    if reference is None:
        return KernelResult(timing, None, None, output, None)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(device.torch) for a in arrays]
    with torch.no_grad():
        ref_timing = measure(lambda: reference(*tensors), device, warmup, repeat, budget_s)
        expected = to_numpy(reference(*tensors))
    return KernelResult(timing, ref_timing, rel_l2(output, expected), output, expected)


def tensor_bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


@dataclass
class Prepared:
    """A benchmark ready to time: TVM and PyTorch callables over the same inputs."""

    name: str
    dtype: str
    kind: str
    tvm: Callable[[], object] | None
    eager: Callable[[], object]
    compiled: Callable[[], object] | None
    compile_note: str
    flops: int | None
    bytes: int | None
    error: float | None
    shape: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)
    # TVM timing itself: one call, returning (seconds to report, host seconds outside them);
    # timed instead of `tvm` (webgpu-native: the GPU's time without Python's encoding)
    tvm_timer: Callable[[], tuple[float, float]] | None = None


def time_prepared(prep: Prepared, device: Device, peak: Peak | None, warmup: int = 1,
                  repeat: int = 5, budget_s: float | None = None) -> Row:
    """Time TVM, eager and compiled PyTorch of one prepared benchmark, interleaved."""
    fns = {"eager": prep.eager}
    if prep.tvm:
        fns["tvm"] = prep.tvm_timer or prep.tvm
    if prep.compiled:
        fns["compiled"] = prep.compiled
    t = measure_interleaved(fns, device, warmup, repeat, budget_s,
                            ("tvm",) if prep.tvm_timer else ())
    note = "; ".join(n for n in (prep.note, prep.compile_note
                                 if prep.compile_note.startswith("torch.compile failed")
                                 else "") if n)
    return Row(prep.name, prep.dtype, prep.kind, prep.shape,
               t["tvm"].ms if "tvm" in t else None, t["eager"].ms,
               t["compiled"].ms if "compiled" in t else None,
               prep.flops, prep.bytes, peak.tflops if peak else None, prep.error, note,
               len(t["eager"].times), t["tvm"].host_ms if "tvm" in t else None)
