"""What a benchmark run can be asked: targets, dtypes, parts, and the options of
`pytest tests/perf` (PerfSettings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


from wsd import settings
from wsd.targets import names


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
