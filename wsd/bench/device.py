"""The device a benchmark runs on, seen by TVM and PyTorch, and how it is timed: medians of
synchronized calls, interleaved rounds, the peak matmul rate, FLOPs, torch.compile's baseline.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Sequence


from wsd.bench.options import BenchError, COMPILE_CHOICES, TARGETS
from wsd.targets import WEBGPU_NATIVES, TargetError, make


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
            from wsd.runtime import webgpu_native

            try:  # the adapter, and for the subgroup set its subgroup size
                webgpu_native.check_adapter(target)
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
