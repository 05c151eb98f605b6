"""Benchmarks: wsd's compiled code side by side with PyTorch, on the same device, in one run.

Every figure is a TVM time next to PyTorch's for the same computation, measured in the same
process (eager, and torch.compile where it is available), reported as a ratio, and as a
fraction of the device's peak rate (FLOPs counted on the PyTorch side with
`torch.utils.flop_counter.FlopCounterMode`; the peak is a large PyTorch matmul, measured once
per run and dtype). Timings on a shared machine are noisy; ratios measured in one run are the
figures to read.

What is measured:

- `measure_peak`   the device's matmul rate per dtype (fp32 without TF32 on GPUs);
- `layer_cases`    single layers at SD v1.5's real shapes (convolutions, linear layers,
                   attention, group norm): a PyTorch module, imported and compiled by the
                   project's whole pipeline (`wsd.compiler.trace.to_relax` + `wsd.compiler.pipeline.compile_module`),
                   run through the Relax VM - every kernel the build emits for that layer;
- `fused_kernels`  the fused PrimFuncs the build produces for SD v1.5's UNet (and VAE), the
                   dominant instance of each kind (conv+bias+residual, group norm+SiLU, ...),
                   each built alone with the project's schedules and timed next to the
                   PyTorch ops it replaces (checked to compute the same thing);
- `ModelBench`     per model function: CLIP (`encode_text`), the UNet step with guidance
                   (`unet_guided`, batch 2 inside), the VAE (`decode`), and a whole image
                   (`wsd.runtime.pipeline.Pipeline` against diffusers' StableDiffusionPipeline); plus
                   the pipeline's memory (weights + planned activations, `wsd.compiler.memory`; on CUDA
                   also measured).

For other benchmarks (e.g. re-checking tuned schedule records) the reusable piece is
`compare_kernel(func, device, reference=..., schedule=...)`: it builds one PrimFunc (with the
project's schedules, or the `schedule` you pass), times it and optionally a reference on the
same inputs in the same run, and checks the outputs agree. `tests/perf/conftest.py` wraps the
same timing for pytest-benchmark (`perf.record`).

PyTorch's float32 baselines run without TF32 (`strict_fp32`): TVM computes true float32.
Entry points: `wsd bench` (wsd/cli.py) and `pytest tests/perf`. Results: docs/PERF.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Callable, Sequence

import numpy as np

from wsd import settings
from wsd.bench import profile
from wsd.targets import WEBGPU_NATIVE, WEBGPU_NATIVES, TargetError, make, names

DTYPES = settings.DTYPES
TARGETS = names("bench")
PARTS = ("clip", "unet", "vae", "image", "memory")
PART_FUNCTIONS = {"clip": "encode_text", "unet": "unet_guided", "vae": "decode"}
COMPILE_CHOICES = ("auto", "on", "off")
GB = 1e9
MIB = 1 << 20
MEMORY_GOAL_BYTES = 3 * GB  # the fp16 pipeline of SD v1.5 at 512x512 (weights + activations)


class BenchError(ValueError):
    """A benchmark cannot run as asked (e.g. no GPU for --target cuda, a bad option)."""


# --------------------------------------------------------------------------- the device

class Device:
    """One device seen by both TVM and PyTorch: `llvm` (the CPU), `cuda` (GPU 0), or
    `webgpu-native`: the browser build's WGSL on the WebGPU adapter through wgpu-py
    (wsd.runtime.webgpu_native: Vulkan on a GPU machine, Mesa lavapipe on a CPU), next to PyTorch on
    CUDA where there is one (on a one-GPU machine the same GPU), else on the CPU."""

    def __init__(self, target: str):
        if target not in TARGETS:
            raise BenchError(f"unknown target {target!r}: choose {', '.join(TARGETS)}")
        self.target = target
        import torch
        import tvm

        if target == "cuda" and (not tvm.cuda(0).exist or not torch.cuda.is_available()):
            raise BenchError("target 'cuda' needs an NVIDIA GPU visible to TVM and PyTorch")
        if target in WEBGPU_NATIVES:
            try:
                self.tvm_target  # the adapter, and for the subgroup set its subgroup size
            except TargetError as err:
                raise BenchError(str(err)) from None
        self.torch_cuda = target == "cuda" or (target in WEBGPU_NATIVES
                                               and torch.cuda.is_available())
        if not self.torch_cuda:
            # The same number of threads on both sides: TVM's (TVM_NUM_THREADS; by default
            # its estimate of the physical cores). PyTorch would otherwise take every logical
            # CPU, and on a loaded machine its OpenMP barriers stall (tiny models ran 100x
            # slower with 2 threads than with 1 on this project's shared 2-core machine).
            torch.set_num_threads(max(1, int(tvm.get_global_func("runtime.NumThreads")())))

    @property
    def is_cuda(self) -> bool:
        """TVM runs on CUDA (and PyTorch with it)."""
        return self.target == "cuda"

    @cached_property
    def tvm(self):
        import tvm

        if self.target in WEBGPU_NATIVES:
            raise BenchError("target webgpu-native has no TVM runtime device: its kernels run "
                             "through wsd.runtime.webgpu_native (wsd bench --parts clip,unet,vae)")
        return tvm.cuda(0) if self.is_cuda else tvm.cpu()

    @cached_property
    def torch(self):
        import torch

        return torch.device("cuda:0" if self.torch_cuda else "cpu")

    @cached_property
    def tvm_target(self):
        return make(self.target)

    def sync(self) -> None:
        """Wait for PyTorch's and TVM's device work (webgpu-native calls wait themselves)."""
        if self.torch_cuda:
            import torch

            torch.cuda.synchronize()
        if self.is_cuda:
            self.tvm.sync()

    @cached_property
    def torch_name(self) -> str:
        if self.torch_cuda:
            import torch

            return torch.cuda.get_device_name(0)
        return f"{cpu_model()} ({os.cpu_count()} cores)"

    @cached_property
    def name(self) -> str:
        if self.target in WEBGPU_NATIVES:
            from wsd.runtime import webgpu_native

            return (f"{webgpu_native.gpu().adapter} through WebGPU (wgpu-py); PyTorch on "
                    f"{'cuda' if self.torch_cuda else 'cpu'}: {self.torch_name}")
        return self.torch_name


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def strict_fp32() -> None:
    """PyTorch float32 without TF32 in matmuls and convolutions: what TVM computes."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def versions() -> dict:
    import torch
    import tvm

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "tvm": tvm.__version__}
    try:
        import diffusers

        out["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return out


# --------------------------------------------------------------------------- timing

@dataclass
class Timing:
    """Seconds per call of each timed repeat."""

    times: list[float]
    # Of a call that times itself (measure_interleaved): host seconds outside `times`
    host_times: list[float] = field(default_factory=list)

    @property
    def host_ms(self) -> float | None:
        return statistics.median(self.host_times) * 1e3 if self.host_times else None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ms(self) -> float:
        return self.median * 1e3

    @property
    def best(self) -> float:
        return min(self.times)


def measure(fn: Callable[[], object], device: Device | None = None, warmup: int = 1,
            repeat: int = 5, budget_s: float | None = None) -> Timing:
    """Run `fn` `warmup` times, then time up to `repeat` calls (wall clock, the device
    synchronized after each call). With `budget_s`, stop repeating once the timed calls have
    used that much time (at least one call is always timed)."""
    sync = device.sync if device is not None else (lambda: None)
    for _ in range(warmup):
        fn()
        sync()
    times: list[float] = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        if budget_s is not None and sum(times) >= budget_s:
            break
    return Timing(times)


# --------------------------------------------------------------------------- peak rate

@dataclass
class Peak:
    dtype: str
    tflops: float
    n: int  # the square matmul's size
    ms: float
    device: str
    measured_dtype: str = ""  # the matmul's dtype, when not `dtype` (see measure_peak)

    @property
    def label(self) -> str:
        label = f"torch matmul {self.n}^3 {self.measured_dtype or self.dtype}"
        if self.measured_dtype and self.measured_dtype != self.dtype:
            label += f" (faster than {self.dtype} here)"
        return label


_PEAKS: dict[tuple[str, str], Peak] = {}


def measure_peak(device: Device, dtype: str) -> Peak:
    """The device's rate for `dtype`: PyTorch's best time for a square matmul, grown until one
    call takes long enough to time well. Measured once per process, device and dtype."""
    key = (device.target, dtype)
    if key in _PEAKS:
        return _PEAKS[key]
    import torch

    strict_fp32()
    tdtype = getattr(torch, dtype)
    n, limit = (1024, 16384) if device.torch_cuda else (256, 4096)
    enough = 0.02 if device.torch_cuda else 0.2
    torch.manual_seed(0)
    while True:
        a = torch.randn(n, n, device=device.torch, dtype=tdtype)
        b = torch.randn(n, n, device=device.torch, dtype=tdtype)
        one = measure(lambda: torch.mm(a, b), device, warmup=1, repeat=1)
        if one.best >= enough or n >= limit:
            break
        n *= 2
    timing = measure(lambda: torch.mm(a, b), device, warmup=0,
                     repeat=5 if device.torch_cuda else 3)
    peak = Peak(dtype, 2 * n ** 3 / timing.best / 1e12, n, timing.best * 1e3,
                device.torch_name, dtype)
    if dtype != "float32" and not device.torch_cuda:
        # CPUs without half-precision arithmetic convert and compute in float32: their rate
        # for float16 work is the float32 rate (PyTorch's float16 matmul is far slower).
        f32 = measure_peak(device, "float32")
        if f32.tflops > peak.tflops:
            peak = Peak(dtype, f32.tflops, f32.n, f32.ms, device.torch_name, "float32")
    _PEAKS[key] = peak
    return peak


# --------------------------------------------------------------------------- FLOPs

def count_flops(fn: Callable, *args) -> int:
    """FLOPs of one call, as PyTorch's FlopCounterMode counts them (matmuls, convolutions,
    attention: 2 per multiply-add; element-wise work and norms count 0)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:  # PyTorch counts its GPU attention kernels, not the CPU one
        custom[cpu_sdpa] = lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v)
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn(*args)
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- results

@dataclass
class Row:
    """One benchmark: TVM and PyTorch times (ms, median) for the same computation."""

    name: str
    dtype: str
    kind: str = "model"  # layer | fused | model | image
    shape: str = ""
    tvm_ms: float | None = None
    eager_ms: float | None = None
    compile_ms: float | None = None
    flops: int | None = None
    bytes: int | None = None  # minimal traffic: inputs + outputs (kernels)
    peak_tflops: float | None = None
    error: float | None = None  # relative L2 of TVM's output against eager PyTorch's
    note: str = ""
    repeats: int | None = None
    # Host time of a TVM call outside tvm_ms (webgpu-native: Python interpreting the call and
    # encoding its kernels; the GPU starts after it)
    tvm_encode_ms: float | None = None

    @property
    def tvm_vs_eager(self) -> float | None:
        return _ratio(self.tvm_ms, self.eager_ms)

    @property
    def tvm_vs_compile(self) -> float | None:
        return _ratio(self.tvm_ms, self.compile_ms)

    def tflops_of(self, ms: float | None) -> float | None:
        if not self.flops or not ms:
            return None
        return self.flops / (ms * 1e-3) / 1e12

    @property
    def tvm_tflops(self) -> float | None:
        return self.tflops_of(self.tvm_ms)

    def pct_peak(self, ms: float | None) -> float | None:
        rate = self.tflops_of(ms)
        if rate is None or not self.peak_tflops:
            return None
        return 100 * rate / self.peak_tflops

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(tvm_vs_eager=self.tvm_vs_eager, tvm_vs_compile=self.tvm_vs_compile,
                   tvm_tflops=self.tvm_tflops, tvm_pct_peak=self.pct_peak(self.tvm_ms),
                   eager_pct_peak=self.pct_peak(self.eager_ms),
                   compile_pct_peak=self.pct_peak(self.compile_ms))
        return out


def _ratio(a, b):
    return a / b if a and b else None


def _fmt(value, spec: str = ".3g", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float) and spec.endswith("g") and abs(value) >= 1000:
        return f"{value:.0f}"
    return format(value, spec)


COLUMNS = ["name", "dtype", "TVM ms", "eager ms", "compile ms", "TVM/eager", "TVM/compile",
           "TVM TFLOP/s", "TVM % peak", "eager % peak", "note"]


def table_cells(row: Row) -> list[str]:
    name = f"{row.name} {row.shape}".strip()
    note = "; ".join(n for n in (
        None if row.error is None else f"err {row.error:.1e}", row.note,
        None if row.tvm_encode_ms is None else f"host encode {_fmt(row.tvm_encode_ms)} ms")
        if n)
    return [name, row.dtype.replace("float", "fp"), _fmt(row.tvm_ms), _fmt(row.eager_ms),
            _fmt(row.compile_ms), _fmt(row.tvm_vs_eager, ".2f"), _fmt(row.tvm_vs_compile, ".2f"),
            _fmt(row.tvm_tflops, ".3g"), _fmt(row.pct_peak(row.tvm_ms), ".2g"),
            _fmt(row.pct_peak(row.eager_ms), ".2g"), note]


def format_table(header: list[str], cells: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    def line(values):
        return "  ".join(v.ljust(w) if i in (0, len(header) - 1) else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


def format_rows(rows: Sequence[Row], markdown: bool = False) -> str:
    return format_table(COLUMNS, [table_cells(r) for r in rows], markdown)


def format_peaks(peaks: Sequence[Peak], markdown: bool = False) -> str:
    cells = [[p.dtype.replace("float", "fp"), p.label, _fmt(p.ms), f"{p.tflops:.3g}"]
             for p in peaks]
    return format_table(["dtype", "measured with", "ms", "TFLOP/s (peak)"], cells, markdown)


def _mib(value) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def memory_rows(memory: dict) -> list[list[str]]:
    """Table cells for a `ModelBench.memory()` dict."""
    plan = memory.get("planned") or {}
    cells = []
    fn = plan.get("functions", {})
    for name, info in fn.items():
        ws = info["workspace_bytes"]
        detail = f"storage {_mib(info['storage_bytes'])} + workspace {_mib(ws)}"
        if info.get("workspace_kernel"):
            detail += f" ({info['workspace_kernel']})"
        cells.append([f"{name} activations", _mib(info["activation_bytes"]), "-", "-", detail])
    if plan.get("graph_storage_bytes"):
        cells.append(["CUDA graph storage", _mib(plan["graph_storage_bytes"]), "-", "-",
                      "captured kernels' buffers, every function's, kept from the first call"])
    measured = memory.get("measured", {})
    cells.append(["weights", _mib(plan.get("weight_bytes")),
                  _mib(measured.get("tvm_weight_bytes")), "-",
                  f"{plan.get('num_weights', '-')} tensors"])
    goal = memory.get("goal_bytes")
    cells.append(["peak: weights + activations", _mib(plan.get("peak_bytes")),
                  _mib(measured.get("tvm_after_image_bytes")),
                  _mib(measured.get("torch_peak_bytes")),
                  (f"goal < {goal / GB:.0f} GB: "
                   f"{'met' if plan.get('peak_bytes', 0) < goal else 'NOT met'} (planned)")
                  if goal else ""])
    return cells


MEMORY_COLUMNS = ["MiB", "TVM planned", "TVM measured", "PyTorch measured", "detail"]


def format_memory(memory: dict, markdown: bool = False) -> str:
    return format_table(MEMORY_COLUMNS, memory_rows(memory), markdown)


def slug(text: str) -> str:
    """A benchmark name as a test id."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace("->", "to")).strip("_")


def image_psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of two uint8 images, dB (inf when equal)."""
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def rel_l2(actual, expected) -> float:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def tolerance(dtype: str) -> float:
    """Relative L2 allowed between TVM's and PyTorch's outputs in a benchmark's check."""
    return 2e-2 if dtype == "float16" else 1e-3


# --------------------------------------------------------------------------- torch.compile

def compile_policy(option: str, device: Device) -> tuple[bool, str]:
    """(use torch.compile?, why not). auto: with PyTorch on CUDA yes; on CPUs no (inductor
    takes minutes per model there, and on this project's 2-core machine longer than the
    benchmarks)."""
    if option not in COMPILE_CHOICES:
        raise BenchError(f"torch.compile option must be one of {COMPILE_CHOICES}, got {option!r}")
    if option == "off":
        return False, "torch.compile off (--torch-compile off)"
    if option == "auto" and not device.torch_cuda:
        return False, "torch.compile skipped on CPU (slow to compile; --torch-compile on)"
    return True, ""


def torch_compiled(fn: Callable, args: tuple, enabled: bool, reason: str = ""
                   ) -> tuple[Callable[[], object] | None, str]:
    """torch.compile(fn), compiled by one call on `args`. Returns (a no-argument callable, or
    None with the reason it is unavailable; or a note saying how long compiling took)."""
    if not enabled:
        return None, reason
    import torch

    if not torch.cuda.is_available():  # no pool of compile worker processes competing for
        torch._inductor.config.compile_threads = 1  # a small CPU with the timed code
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 4096)
    try:
        compiled = torch.compile(fn)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(*args)
        took = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - any backend failure: report it, keep going
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        return None, f"torch.compile failed: {type(err).__name__}: {first}"

    def run():
        with torch.no_grad():
            return compiled(*args)

    return run, f"compile {took:.0f} s"


# --------------------------------------------------------------------------- tensors

def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def _first(value):
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


# --------------------------------------------------------------------------- one PrimFunc

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
        expected = _to_numpy(reference(*tensors))
    return KernelResult(timing, ref_timing, rel_l2(output, expected), output, expected)


# --------------------------------------------------------------------------- layer cases

@dataclass(frozen=True)
class LayerCase:
    """One layer at an SD v1.5 shape: a PyTorch module and its example inputs."""

    name: str
    group: str  # conv | linear | attention | group_norm
    make: Callable[[], tuple]  # () -> (module, inputs), float32, on the CPU
    default: bool = False  # in the default subset (cheap enough for a CPU run)


def _randn(*shape):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _conv(c_in, c_out, k, size, batch):
    def make():
        import torch

        torch.manual_seed(0)
        return torch.nn.Conv2d(c_in, c_out, k, padding=k // 2), (_randn(batch, c_in, size, size),)
    return make


def _linear(batch, tokens, d_in, d_out):
    def make():
        import torch

        torch.manual_seed(0)
        return torch.nn.Linear(d_in, d_out), (_randn(batch, tokens, d_in),)
    return make


class Attention:
    """diffusers' attention core (AttnProcessor2_0): heads split, SDPA, heads merged."""

    @staticmethod
    def module(heads: int):
        import torch

        class Core(torch.nn.Module):
            def forward(self, q, k, v):
                b, sq, inner = q.shape
                d = inner // heads
                split = [t.reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v)]
                out = torch.nn.functional.scaled_dot_product_attention(*split)
                return out.transpose(1, 2).reshape(b, sq, inner)

        return Core()


def _attention(batch, heads, q_len, kv_len, head_dim):
    def make():
        inner = heads * head_dim
        return Attention.module(heads), (_randn(batch, q_len, inner), _randn(batch, kv_len, inner),
                                         _randn(batch, kv_len, inner))
    return make


def _group_norm(batch, channels, size, groups=32, eps=1e-5):
    def make():
        import torch

        torch.manual_seed(0)
        norm = torch.nn.GroupNorm(groups, channels, eps=eps)
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
        return norm, (_randn(batch, channels, size, size),)
    return make


def layer_cases() -> list[LayerCase]:
    """SD v1.5 at 512x512: UNet at batch 2 (guidance) on 64x64 latents, VAE decoder at
    batch 1 from 64x64 to 512x512. `default` marks the subset a CPU run takes."""
    cases = []
    for c, s, default in ((320, 64, False), (640, 32, False), (1280, 16, False), (1280, 8, True)):
        cases.append(LayerCase(f"unet conv3x3 {c}->{c} {s}x{s} b2", "conv",
                               _conv(c, c, 3, s, 2), default))
    for c_in, c_out, s in ((640, 320, 64), (2560, 1280, 16)):  # up-block concat inputs
        cases.append(LayerCase(f"unet conv3x3 {c_in}->{c_out} {s}x{s} b2", "conv",
                               _conv(c_in, c_out, 3, s, 2)))
    cases.append(LayerCase("unet conv1x1 320->320 64x64 b2", "conv", _conv(320, 320, 1, 64, 2)))
    for c, s in ((512, 64), (512, 128), (512, 256), (256, 256), (256, 512), (128, 512)):
        cases.append(LayerCase(f"vae conv3x3 {c}->{c} {s}x{s}", "conv", _conv(c, c, 3, s, 1)))
    for b, t, i, o, default, label in (
            (2, 4096, 320, 320, True, "attn q/k/v/out"),
            (2, 4096, 320, 2560, False, "GEGLU proj"),
            (2, 4096, 1280, 320, False, "ff out"),
            (2, 1024, 640, 640, False, "attn q/k/v/out"),
            (2, 256, 1280, 1280, False, "attn q/k/v/out"),
            (2, 256, 1280, 10240, False, "GEGLU proj"),
            (2, 77, 768, 320, True, "cross-attn k/v"),
            (2, 77, 768, 1280, False, "cross-attn k/v")):
        cases.append(LayerCase(f"linear {label} {b}x{t}x{i}->{o}", "linear",
                               _linear(b, t, i, o), default))
    for b, h, q, kv, d, default, label in (
            (2, 8, 4096, 4096, 40, False, "unet self"),
            (2, 8, 1024, 1024, 80, False, "unet self"),
            (2, 8, 256, 256, 160, True, "unet self"),
            (2, 8, 64, 64, 160, False, "unet self"),
            (2, 8, 4096, 77, 40, True, "unet cross"),
            (2, 8, 1024, 77, 80, False, "unet cross"),
            (2, 8, 256, 77, 160, False, "unet cross"),
            (1, 1, 4096, 4096, 512, False, "vae mid")):
        cases.append(LayerCase(f"attention {label} b{b} h{h} {q}x{kv} d{d}", "attention",
                               _attention(b, h, q, kv, d), default))
    for b, c, s, eps, default, label in (
            (2, 320, 64, 1e-5, True, "unet"), (2, 640, 32, 1e-5, False, "unet"),
            (2, 1280, 16, 1e-5, False, "unet"), (2, 1280, 8, 1e-5, True, "unet"),
            (1, 512, 64, 1e-6, False, "vae"), (1, 512, 256, 1e-6, False, "vae"),
            (1, 256, 512, 1e-6, False, "vae"), (1, 128, 512, 1e-6, False, "vae")):
        cases.append(LayerCase(f"group_norm {label} {b}x{c}x{s}x{s} g32", "group_norm",
                               _group_norm(b, c, s, 32, eps), default))
    return cases


def _tensor_bytes(tensors) -> int:
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


def prepare_layer(case: LayerCase, dtype: str, device: Device, compile_enabled: bool,
                  compile_reason: str = "") -> Prepared:
    """Compile the layer with the project's pipeline, make the PyTorch baselines, check that
    TVM's output matches eager PyTorch's."""
    import torch

    from wsd.compiler.pipeline import compile_module
    from wsd.compiler.trace import to_relax
    from wsd.runtime.executor import Executor

    import tvm

    module, cpu_inputs = case.make()
    tdtype = getattr(torch, dtype)
    module = module.to(tdtype).eval()
    cpu_inputs = tuple(x.to(tdtype) for x in cpu_inputs)
    func, names = to_relax(module, cpu_inputs)
    module = module.to(device.torch)
    inputs = tuple(x.to(device.torch) for x in cpu_inputs)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    executor = Executor(compile_module(mod, device.tvm_target).executable, device.tvm)
    state = module.state_dict()
    weights = [executor.upload(state[n].detach().cpu().numpy()) for n in names]
    args = [executor.upload(x.numpy()) for x in cpu_inputs]

    def run_tvm():
        return executor("main", *args, *weights)

    def run_eager():
        with torch.no_grad():
            return module(*inputs)

    flops = count_flops(module, *inputs)
    with torch.no_grad():
        expected = module(*inputs)
    error = rel_l2(_first(run_tvm()).numpy(), _to_numpy(expected))
    compiled, note = torch_compiled(module, inputs, compile_enabled, compile_reason)
    traffic = _tensor_bytes(list(inputs) + [expected] + list(module.parameters()))
    return Prepared(case.name, dtype, "layer", run_tvm, run_eager, compiled, note,
                    flops or None, traffic, error)


# --------------------------------------------------------------------------- fused kernels

# The PyTorch ops each kind of fused kernel replaces. Kinds are the fused kernel's name with
# numbering and casts dropped ("fused_conv2d5_cast10_add9_add12_divide2" ->
# "conv2d_add_add_divide"); inputs arrive in the kernel's parameter order.

def _conv_of(x, w, out_shape):
    import torch

    stride = max(1, x.shape[-1] // out_shape[-1])
    return torch.nn.functional.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)


def _linear_of(x, w, b=None):
    import torch

    if w.ndim == 2:  # the kernel holds the weight transposed (K, N): PyTorch's (N, K) view
        return torch.nn.functional.linear(x, w.t(), b)
    out = torch.matmul(x, w)
    return out if b is None else out + b


def _sdpa_bsnh(q, k, v):
    import torch

    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _silu(x):
    import torch

    return torch.nn.functional.silu(x)


def _fused_reference(kind: str, ctx: dict) -> Callable | None:
    import torch

    nhwc = ctx.get("layout") == "NHWC" and kind.startswith("conv2d")
    out_shape = ctx["out_shape"]
    if nhwc:  # the PyTorch counterpart works in NCHW (its stride is read from this shape)
        out_shape = _channels_first(torch.empty(out_shape, device="meta")).shape
    scale = ctx.get("output_scale", 1.0)
    refs = {
        "conv2d_add": lambda x, w, b: _conv_of(x, w, out_shape) + b,
        "conv2d_add_add": lambda x, w, b, r: _conv_of(x, w, out_shape) + b + r,
        "conv2d_add_add_divide": lambda x, w, b, r: (_conv_of(x, w, out_shape) + b + r) / scale,
        "conv2d_add_expand_dims_expand_dims_add":
            lambda x, w, b, t: _conv_of(x, w, out_shape) + b + t[:, :, None, None],
        "matmul": lambda x, w: _linear_of(x, w),
        "matmul_add": lambda x, w, b: _linear_of(x, w, b),
        "matmul_add_add": lambda x, w, b, r: _linear_of(x, w, b) + r,
        "matmul_add_silu": lambda x, w, b: _silu(_linear_of(x, w, b)),
        "layer_norm": lambda x, g, b: torch.nn.functional.layer_norm(
            x, x.shape[-1:], g, b, 1e-5),
        "split_gelu_multiply": lambda x: (lambda h, gate: h * torch.nn.functional.gelu(gate))(
            *x.chunk(2, dim=-1)),
        "attention": _sdpa_bsnh,
    }
    for name in [k for k in refs if k.startswith("matmul")]:  # wsd.compiler.layout's, w as (N, K)
        refs[f"NT_{name}"] = lambda x, w, *rest, _ref=refs[name]: _ref(x, w.t(), *rest)
    fn = refs.get(kind)
    if fn is None:
        return None
    out_dtype = getattr(torch, ctx["out_dtype"])
    if nhwc:  # channels-last convolutions (wsd.compiler.layout): PyTorch's view; attention is BSNH
        return lambda *args: _channels_last(fn(*map(_channels_first, args))).to(out_dtype)
    return lambda *args: fn(*args).to(out_dtype)


def _channels_first(t):
    """NHWC activations, OHWI weights and (1, 1, 1, C) biases -> NCHW, OIHW, (1, C, 1, 1)."""
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t


def _channels_last(t):
    return t.permute(0, 2, 3, 1) if t.ndim == 4 else t


# Group norm is five kernels since wsd.kernels.group_norm (partial sums, totals, apply): it is
# benchmarked whole, as a layer (layer_cases' group_norm rows), and per kernel by --profile.
FUSED_KINDS = ("conv2d_add_expand_dims_expand_dims_add", "conv2d_add_add_divide", "conv2d_add",
               "conv2d_add_add", "matmul_add", "matmul_add_add", "matmul", "matmul_add_silu",
               "NT_matmul_add", "NT_matmul_add_add", "NT_matmul", "NT_matmul_add_silu",
               "attention", "layer_norm", "split_gelu_multiply")


def kind_of(name: str) -> str:
    """Fused kernel name -> its kind (numbering, casts and the `fused_`/`wsd_` prefixes
    dropped)."""
    name = re.sub(r"^(fused_|wsd_)", "", name)
    ops = [re.sub(r"(?<=[a-z_])\d+$", "", op) for op in name.split("_")]
    text = "_".join(ops)
    text = re.sub(r"(^|_)cast(?=_|$)", "", text).strip("_")
    return re.sub(r"_+", "_", text).replace("wsd_attention", "attention")


@dataclass
class FusedKernel:
    """One fused PrimFunc of a traced model part, as the build produces it."""

    name: str
    kind: str
    part: str
    func: object  # tvm.tirx.PrimFunc
    calls: int
    inputs: list  # (shape, dtype)
    outputs: list
    ctx: dict  # what the PyTorch counterpart needs (groups, eps, output scale, out shape)

    @property
    def work(self) -> int:
        """Multiply-adds of one call (from the shapes; ranks kernels of one kind)."""
        shapes = [s for s, _ in self.inputs]
        out = self.outputs[0][0]
        if self.kind.startswith("conv2d"):
            w = shapes[1]
            return int(np.prod(out)) * w[1] * w[2] * w[3]
        if self.kind.startswith(("matmul", "NT_matmul")):
            return int(np.prod(out)) * shapes[0][-1]
        if self.kind == "attention":
            (b, sq, h, d), (_, skv, _, dv) = shapes[0], shapes[2]
            return b * h * sq * skv * (d + dv)
        return int(sum(np.prod(s) for s in shapes))

    @property
    def label(self) -> str:
        dims = ", ".join("x".join(map(str, s)) for s, _ in self.inputs)
        return f"[{dims}] x{self.calls}"

    def reference(self) -> Callable | None:
        return _fused_reference(self.kind, self.ctx)


_FUSED_CACHE: dict = {}


def fused_kernels(model, part: str, dtype: str, target, height: int | None = None,
                  width: int | None = None) -> list[FusedKernel]:
    """The PrimFuncs the build makes for one model function (`unet_guided`, `decode`, ...):
    traced, then optimized by the project's passes for the target (attention rewrite,
    legalize, fusion). Cached per process."""
    import tvm
    from tvm import relax

    from wsd.compiler import layout, optimize
    from wsd.compiler.trace import resolve_size, trace_model

    height, width = resolve_size(model, height, width)
    key = (model.name, model.config_hash(), part, dtype, str(target), height, width,
           layout.conv_layout(target))
    if key in _FUSED_CACHE:
        return _FUSED_CACHE[key]
    traced = trace_model(model, height, width, dtype, names=(part,))
    with target:
        mod = tvm.transform.Sequential(optimize.passes(target))(traced.mod)
    calls: dict[str, int] = {}
    sites: dict[str, object] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            calls[name] = calls.get(name, 0) + 1
            sites[name] = expr

    relax.analysis.post_order_visit(mod[part], visit)
    # What the PyTorch counterparts need beyond the shapes: the residual blocks' output
    # scale (diffusers' output_scale_factor, 1 in SD's UNet and VAE) and the conv layout.
    base = {"output_scale": 1.0, "layout": layout.conv_layout(target)}
    found = []
    for gvar, func in mod.functions.items():
        name = gvar.name_hint
        if not isinstance(func, tvm.tirx.PrimFunc) or name not in calls:
            continue
        specs = param_specs(func)
        out_ty = sites[name].ty
        n_out = len(out_ty.fields) if hasattr(out_ty, "fields") else 1
        inputs, outputs = specs[:len(specs) - n_out], specs[len(specs) - n_out:]
        ctx = dict(base, out_shape=outputs[0][0], out_dtype=outputs[0][1])
        found.append(FusedKernel(name, kind_of(name), part, func, calls[name], inputs,
                                 outputs, ctx))
    _FUSED_CACHE[key] = found
    return found


def dominant(kernels: Sequence[FusedKernel], kind: str, rank: int = 0,
             max_work: float | None = None) -> FusedKernel | None:
    """The kernel of `kind` with the `rank`-th largest share of the model's work (work per call
    x calls); with `max_work`, only kernels doing at most that many multiply-adds per call."""
    pool = [k for k in kernels if k.kind == kind and (max_work is None or k.work <= max_work)]
    pool.sort(key=lambda k: (-k.work * k.calls, k.name))
    return pool[rank] if rank < len(pool) else None


def prepare_fused(kernel: FusedKernel, device: Device, compile_enabled: bool,
                  compile_reason: str = "", seed: int = 0) -> Prepared:
    """Build the kernel alone (the project's schedules), its PyTorch counterpart, and check
    they compute the same thing."""
    import torch
    import tvm

    reference = kernel.reference()
    if reference is None:
        raise BenchError(f"no PyTorch counterpart for kind {kernel.kind!r} ({kernel.name})")
    arrays = random_arrays(kernel.inputs, seed)
    built = build_kernel(kernel.func, device.tvm_target)
    args = [tvm.runtime.tensor(a, device.tvm) for a in arrays]
    outs = [tvm.runtime.empty(s, d, device.tvm) for s, d in kernel.outputs]
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device.torch) for a in arrays)

    def run_tvm():
        built(*args, *outs)

    def run_eager():
        with torch.no_grad():
            return reference(*tensors)

    run_tvm()
    device.sync()
    expected = run_eager()
    error = rel_l2(outs[0].numpy(), _to_numpy(expected))
    flops = count_flops(reference, *tensors)
    traffic = _tensor_bytes(list(tensors) + [expected])
    compiled, note = torch_compiled(reference, tensors, compile_enabled, compile_reason)
    return Prepared(kernel.name, str(kernel.outputs[0][1]), "fused", run_tvm, run_eager,
                    compiled, note, flops or None, traffic, error, shape=kernel.label,
                    note=kernel.kind)


def measure_interleaved(fns: dict[str, Callable[[], object]], device: Device | None = None,
                        warmup: int = 1, repeat: int = 5, budget_s: float | None = None,
                        self_timed: Sequence[str] = ()) -> dict[str, Timing]:
    """Time several implementations of one computation round-robin (one call of each per
    round), so that load from elsewhere on a shared machine falls on all of them alike.
    The functions named in `self_timed` time themselves: each call returns (seconds, host
    seconds outside them), recorded instead of its wall-clock time."""
    sync = device.sync if device is not None else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
            sync()
    timings = {name: Timing([]) for name in fns}
    elapsed = 0.0
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            start = time.perf_counter()
            out = fn()
            sync()
            wall = time.perf_counter() - start
            elapsed += wall
            if name in self_timed:
                seconds, host = out
                timings[name].times.append(seconds)
                timings[name].host_times.append(host)
            else:
                timings[name].times.append(wall)
        if budget_s is not None and elapsed >= budget_s * len(fns):
            break
    return timings


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


# --------------------------------------------------------------------------- whole models

def _pipeline_from(model, library, modules):
    """wsd.runtime.pipeline.Pipeline with its weights taken from wrapped modules already loaded
    (wsd.runtime.weights.collect_weights(modules=...)) instead of loading the model again."""
    from wsd.runtime.pipeline import Pipeline, upload_weights

    class PipelineFrom(Pipeline):
        def _upload_weights(self):
            return upload_weights(self.executor, self.model, self.meta, modules)

    return PipelineFrom(model, library)


class ModelBench:
    """One model in one dtype on one device: the compiled library (wsd.compiler.pipeline), its Pipeline,
    and the same PyTorch modules in diffusers' pipeline (wsd.checks.reference)."""

    PROMPT = "a lighthouse on a cliff at dusk, oil painting"
    tvm_note = ""  # what every TVM figure of a part says about itself

    def __init__(self, model, device: Device, dtype: str, height: int | None = None,
                 width: int | None = None, compile_option: str = "auto", steps: int = 20,
                 log=print):
        import torch

        from wsd.checks.reference import Reference
        from wsd.compiler.trace import (GuidedUNet, PlainUNet, TextEncoder, VaeDecoder, check_dtype,
                               resolve_size)

        check_dtype(dtype)
        strict_fp32()
        self.model, self.device, self.dtype, self.steps, self.log = model, device, dtype, steps, log
        self.height, self.width = resolve_size(model, height, width)
        self.compile_enabled, self.compile_reason = compile_policy(compile_option, device)
        self._compile()
        # diffusers' pipeline first, on the CPU in the dtype; wsd's pipeline takes its weights
        # from the same modules (one model load, not two: SD v1.5's takes ~30 s).
        self.reference = Reference(model, "cpu")
        pipe = self.reference.pipe
        pipe.to(dtype=getattr(torch, dtype))
        wrapped = {"encode_text": TextEncoder(pipe.text_encoder).eval(),
                   "unet_guided": GuidedUNet(pipe.unet).eval(),
                   "unet": PlainUNet(pipe.unet).eval(),
                   "decode": VaeDecoder(pipe.vae).eval()}
        self.measured: dict = {}
        self._load(wrapped)
        pipe.to(device.torch)
        self.torch_modules = {k: wrapped[k] for k in ("encode_text", "unet_guided", "decode")}
        self._flops: dict[str, int] = {}

    def _compile(self) -> None:
        from wsd.runtime.library import build

        self.library = build(self.model, self.device.target, self.dtype, self.height,
                             self.width, log=self.log)

    def _load(self, wrapped: dict) -> None:
        """wsd's pipeline, its weights taken from `wrapped` (the PyTorch side's modules, still
        on the CPU); on CUDA, the device memory it takes."""
        import torch

        device = self.device
        if device.is_cuda:  # what the device has free before wsd's pipeline exists
            import gc

            import tvm

            gc.collect()
            tvm.get_global_func("vm.builtin.memory_manager.clear")()  # pooled, unused blocks
            torch.cuda.empty_cache()
            free0 = torch.cuda.mem_get_info()[0]
        self.pipe = _pipeline_from(self.model, self.library, wrapped)
        if device.is_cuda:
            device.sync()
            self.measured["tvm_weight_bytes"] = free0 - torch.cuda.mem_get_info()[0]
            self.pipe.generate(self.PROMPT, steps=2, seed=0)  # every function, once
            device.sync()
            self.measured["tvm_after_image_bytes"] = free0 - torch.cuda.mem_get_info()[0]
            torch.cuda.reset_peak_memory_stats()

    def _tvm_call(self, function: str, inputs: tuple):
        """(a no-argument call of the compiled `function` on `inputs`, uploaded once; and a
        timer for Prepared.tvm_timer, or None: the call is timed by wall clock)."""
        uploaded = [self.pipe.executor.upload(x.numpy()) for x in inputs]
        return (lambda: self.pipe.call(function, *uploaded)), None

    @cached_property
    def tokenizer(self):
        return self.model.tokenizer()

    def inputs(self, function: str) -> tuple:
        from wsd.compiler.trace import example_inputs

        inputs = example_inputs(self.model, self.height, self.width)[function]
        if function == "encode_text":  # a real prompt's ids (bos ... eos pad)
            ids = self.tokenizer(self.PROMPT).reshape(1, -1).astype(np.int32)
            import torch

            inputs = (torch.from_numpy(ids),)
        return inputs

    def flops(self, function: str) -> int:
        if function not in self._flops:
            args = tuple(x.to(self.device.torch) for x in self.inputs(function))
            self._flops[function] = count_flops(self.torch_modules[function], *args)
        return self._flops[function]

    def prepare_part(self, part: str) -> Prepared:
        import torch

        function = PART_FUNCTIONS[part]
        inputs = self.inputs(function)
        module = self.torch_modules[function]
        args = tuple(x.to(self.device.torch) for x in inputs)
        run_tvm, timer = self._tvm_call(function, inputs)

        def run_eager():
            with torch.no_grad():
                return module(*args)

        flops = self.flops(function)
        expected = run_eager()
        error = rel_l2(_first(run_tvm()).numpy(), _to_numpy(expected))
        compiled, note = torch_compiled(module, args, self.compile_enabled, self.compile_reason)
        shape = "x".join(map(str, inputs[0].shape))
        return Prepared(f"{part} ({function})", self.dtype, "model", run_tvm, run_eager,
                        compiled, note, flops, None, error, shape=shape, note=self.tvm_note,
                        tvm_timer=timer)

    def profile(self, part: str) -> dict:
        """The part's compiled function, each kernel call timed (wsd.bench.profile)."""
        function = PART_FUNCTIONS[part]
        run, _ = self._tvm_call(function, self.inputs(function))
        rows, total = profile.profile_calls(self.pipe.executor.vm, run, self.device.sync)
        return {"title": f"{part} ({function}) {self.dtype}", "total_ms": total,
                "total_is": "instrumented (each call synchronised)",
                "kernels": rows, "kinds": profile.group_by_kind(rows, kind_of)}

    def image_flops(self) -> int:
        from wsd.samplers import make_scheduler

        sampler = make_scheduler("pndm", self.model.configs["scheduler"])
        sampler.set_timesteps(self.steps)
        evaluations = len(sampler.timesteps)
        return (2 * self.flops("encode_text") + evaluations * self.flops("unet_guided")
                + self.flops("decode"))

    def prepare_image(self) -> Prepared:
        """A whole image: prompt -> PNDM, `steps` steps, the default guidance -> uint8 pixels."""
        import torch

        from wsd.checks.reference import Settings

        settings = Settings(self.PROMPT, steps=self.steps)
        pipe = self.reference.pipe
        unets = {"eager": pipe.unet}

        def run_tvm():
            return self.pipe.generate(self.PROMPT, steps=self.steps, seed=settings.seed)

        def run_torch(which: str):
            pipe.unet = unets[which]
            try:
                return self.reference.image(settings, self.height, self.width)
            finally:
                pipe.unet = unets["eager"]

        flops = self.image_flops()
        ours = run_tvm()
        if self.device.is_cuda:
            torch.cuda.reset_peak_memory_stats()
        theirs = run_torch("eager")
        if self.device.is_cuda:  # weights (live) + one image's activations
            self.measured["torch_peak_bytes"] = torch.cuda.max_memory_allocated()
        psnr = image_psnr(ours, theirs)
        note = f"PSNR vs diffusers {psnr:.1f} dB"
        extra = {"psnr": psnr}
        if self.dtype != "float32":
            # Half precision drifts over the steps on both sides: how far each lands from
            # diffusers computing in float32 (on the same, rounded weights) says whether
            # wsd's drift is PyTorch's or its own.
            pipe.to(dtype=torch.float32)
            try:
                exact = run_torch("eager")
            finally:
                pipe.to(dtype=getattr(torch, self.dtype))
            extra["psnr_vs_fp32"] = image_psnr(ours, exact)
            extra["torch_psnr_vs_fp32"] = image_psnr(theirs, exact)
            note += (f"; vs diffusers fp32: wsd {extra['psnr_vs_fp32']:.1f} dB, "
                     f"diffusers {extra['torch_psnr_vs_fp32']:.1f} dB")
        compiled, compile_note = None, self.compile_reason
        if self.compile_enabled:
            unets["compiled"] = torch.compile(unets["eager"])
            start = time.perf_counter()
            try:
                run_torch("compiled")
                compile_note = f"UNet compiled in {time.perf_counter() - start:.0f} s"
                compiled = lambda: run_torch("compiled")  # noqa: E731
            except Exception as err:  # noqa: BLE001
                compile_note = f"torch.compile failed: {type(err).__name__}"
        prep = Prepared(f"image {self.steps} steps", self.dtype, "image", run_tvm,
                        lambda: run_torch("eager"), compiled, compile_note, flops, None, None,
                        shape=f"{self.height}x{self.width}", note=note)
        prep.extra.update(extra)
        return prep

    def memory(self) -> dict:
        """Weights + planned activations (from the build), and what was measured on CUDA."""
        return {"dtype": self.dtype, "model": self.model.name,
                "size": [self.height, self.width],
                "planned": self.library.meta.get("memory"),
                "measured": dict(self.measured),
                "goal_bytes": MEMORY_GOAL_BYTES if self.model.name == "sd15" else None}


class WebGPUModelBench(ModelBench):
    """ModelBench for target webgpu-native, the parts clip, unet and vae: their functions
    compiled as the browser bundle compiles them (webgpu_native.compile_program: the same
    target, passes and tuned records), run by webgpu_native.WebGPUExecutor on the WebGPU
    adapter, weights uploaded once. TVM's figure is the GPU time of one call's command
    buffer (WebGPUExecutor.timed); the host's time interpreting the call and encoding its
    kernels in Python (the browser's JavaScript does that far faster) is reported beside it."""

    def __init__(self, model, device: Device, dtype: str, height: int | None = None,
                 width: int | None = None, compile_option: str = "auto",
                 parts: Sequence[str] = tuple(PART_FUNCTIONS), log=print):
        self.functions = self.functions_of(parts)
        super().__init__(model, device, dtype, height, width, compile_option, log=log)

    @staticmethod
    def functions_of(parts: Sequence[str]) -> list[str]:
        """The compiled functions of `parts`; a BenchError for what this target cannot do."""
        bad = [p for p in parts if p not in PART_FUNCTIONS]
        if bad:
            raise BenchError(
                f"target {WEBGPU_NATIVE} times the parts {', '.join(PART_FUNCTIONS)}, not "
                f"{', '.join(bad)}: a whole image runs the samplers, whose symbolic shapes "
                "wsd.runtime.webgpu_native does not run; `wsd build --target webgpu` reports the "
                "browser's memory plan")
        return [PART_FUNCTIONS[p] for p in parts]

    def _compile(self) -> None:
        from wsd.compiler.layout import WeightLayouts
        from wsd.compiler.pipeline import function_meta
        from wsd.compiler.trace import trace_model
        from wsd.runtime import webgpu_native

        start = time.perf_counter()
        self.log(f"tracing {self.model.name} ({self.dtype}, {self.height}x{self.width}) "
                 f"{', '.join(self.functions)} ...")
        traced = trace_model(self.model, self.height, self.width, self.dtype,
                             names=self.functions)
        target = self.device.tvm_target
        sets = "subgroup" if target.attrs["supports_subgroups"] else "portable"
        self.log(f"compiling as the browser bundle (webgpu, {sets} kernel set, wasm32 host) ...")
        weight_layouts = WeightLayouts(traced.num_inputs)  # stored as the browser stores them
        self.program = webgpu_native.compile_program(traced.mod, target,
                                                     weight_layouts=weight_layouts)
        self.meta = {"dtype": self.dtype, "functions": function_meta(traced, weight_layouts)}
        self.log(f"compiled {len(self.program.kernels)} WGSL kernels in "
                 f"{time.perf_counter() - start:.0f} s")

    def _load(self, wrapped: dict) -> None:
        from wsd.runtime import webgpu_native
        from wsd.runtime.pipeline import upload_weights

        self.executor = webgpu_native.WebGPUExecutor(self.program)
        self.weights = upload_weights(self.executor, self.model, self.meta, wrapped)
        self.tvm_note = f"GPU time by {self.executor.timing_method}"
        if not self.device.torch_cuda:
            self.tvm_note += "; PyTorch on cpu (no CUDA)"

    def _device_args(self, function: str, inputs: tuple) -> list:
        """`function`'s arguments on the device: the inputs uploaded, the weights as loaded."""
        return [*(self.executor.upload(x.numpy()) for x in inputs), *self.weights[function]]

    def _tvm_call(self, function: str, inputs: tuple):
        run, args = self.executor, self._device_args(function, inputs)

        def timer():
            _, timing = run.timed(function, *args)
            return timing.gpu_s, timing.encode_s

        return (lambda: run(function, *args)), timer

    def profile(self, part: str, rounds: int = 2) -> dict:
        """The part's function with every kernel timed on the GPU (timestamps around each
        compute pass, WebGPUExecutor.profiled), after one untimed call; the total is one
        call's GPU time, so the rows' shares leave the gaps between passes out."""
        function = PART_FUNCTIONS[part]
        executor, args = self.executor, self._device_args(function, self.inputs(function))
        executor(function, *args)
        runs = [executor.profiled(function, *args)[1] for _ in range(rounds)]
        total = sum(executor.timed(function, *args)[1].gpu_s for _ in range(rounds))
        total *= 1e3 / rounds
        rows = profile.tally(runs)
        return {"title": f"{part} ({function}) {self.dtype}, WebGPU", "total_ms": total,
                "total_is": "GPU time of a plain call (kernels timed by timestamps around "
                            "each compute pass)",
                "kernels": rows, "kinds": profile.group_by_kind(rows, kind_of)}


# --------------------------------------------------------------------------- pytest settings

@dataclass
class PerfSettings:
    """The options of `pytest tests/perf` (declared in the root conftest.py)."""

    target: str
    model: str
    kernel_dtypes: list[str]
    model_dtypes: list[str]
    full: bool
    compile_option: str
    repeat: int
    warmup: int = 1
    budget_s: float | None = None  # about how long one figure may take (fewer rounds)

    @classmethod
    def from_pytest(cls, config) -> "PerfSettings":
        opt = config.getoption
        target = opt("--perf-target", "auto")
        if target == "auto":
            import tvm

            target = "cuda" if tvm.cuda(0).exist else "llvm"
        given = opt("--perf-dtype", None)
        if given:
            kernel = model = parse_list(given, DTYPES, "--perf-dtype")
        else:
            kernel = ["float32"] if target == "llvm" else list(DTYPES)
            model = list(DTYPES)
        repeat = opt("--perf-repeat", None) or (5 if target == "cuda" else 3)
        return cls(target, opt("--perf-model", "tiny"), kernel, model,
                   bool(opt("--perf-full", False)), opt("--perf-torch-compile", "auto"), repeat,
                   budget_s=8.0 if target == "llvm" else 60.0)

    @property
    def max_work(self) -> float | None:
        """Largest fused kernel (multiply-adds per call) a default CPU run takes: SD v1.5's
        3x3 convolutions at 8x8 (1.9e9, a few seconds per call of TVM's CPU code), none of the
        larger ones. No limit on GPUs or with --perf-full."""
        return None if self.full or self.target != "llvm" else 2e9


# --------------------------------------------------------------------------- the CLI's run

@dataclass
class Report:
    date: str
    device: str
    target: str
    command: str
    versions: dict
    peaks: list[Peak] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)
    profiles: list[dict] = field(default_factory=list)
    profile_top: int = 0
    notes: list[str] = field(default_factory=list)

    def text(self, markdown: bool = False) -> str:
        out = []
        if markdown:
            out += [f"- date: {self.date}", f"- device: {self.device} (target {self.target})",
                    f"- command: `{self.command}`",
                    "- versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        else:
            out += [f"{self.date}  {self.device}  target {self.target}", ""]
        if self.peaks:
            out += [format_peaks(self.peaks, markdown), ""]
        if self.rows:
            out += [format_rows(self.rows, markdown), ""]
        for mem in self.memory:
            h, w = mem["size"]
            out += [f"Memory, {mem['model']} {mem['dtype']} {h}x{w} pipeline:", "",
                    format_memory(mem, markdown), ""]
        for prof in self.profiles:
            out += [f"Profile, {prof['title']}: {prof['total_ms']:.2f} ms {prof['total_is']}",
                    ""]
            for key, label in (("kinds", "by kind"), ("kernels", "by kernel")):
                cells = profile.table_cells(prof[key], prof["total_ms"], self.profile_top)
                header = [label] + profile.HEADER[1:]
                out += [format_table(header, cells, markdown), ""]
        out += [f"- {n}" if markdown else n for n in self.notes]
        return "\n".join(out).rstrip() + "\n"

    def as_dict(self) -> dict:
        return {"date": self.date, "device": self.device, "target": self.target,
                "command": self.command, "versions": self.versions,
                "peaks": [asdict(p) for p in self.peaks],
                "rows": [r.as_dict() for r in self.rows], "memory": self.memory,
                "profiles": [dict(p, kernels=[asdict(k) for k in p["kernels"]],
                                  kinds=[asdict(k) for k in p["kinds"]])
                             for p in self.profiles],
                "notes": self.notes}


def parse_list(value: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [i.strip() for i in items if i.strip()]
    if "all" in items or "both" in items:
        return list(allowed)
    bad = [i for i in items if i not in allowed]
    if bad or not items:
        raise BenchError(f"{what} must be from {', '.join(allowed)} (comma-separated), "
                         f"got {value!r}")
    return items


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
    if target in WEBGPU_NATIVES:  # before minutes of loading
        WebGPUModelBench.functions_of(parts)
    model = load_model(model_spec)
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


def load_note(start: float) -> str:
    """The machine's load while the benchmarks ran (others' work shows up in every figure),
    and the threads each side used (OMP_NUM_THREADS and TVM_NUM_THREADS set them)."""
    import torch
    import tvm

    threads = tvm.get_global_func("runtime.NumThreads")()
    return (f"load average (1 min) {start:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
            f"end, on {os.cpu_count()} CPUs; threads: PyTorch {torch.get_num_threads()}, "
            f"TVM {threads}")


def write_outputs(report: Report, json_path: str | None, markdown_path: str | None) -> None:
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(report.as_dict(), f, indent=1, default=str)
    if markdown_path:
        with open(markdown_path, "w", encoding="utf-8") as f:
            f.write(report.text(markdown=True))
