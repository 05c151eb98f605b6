"""Benchmark results as rows and tables (text and markdown), the memory table, and the report
`wsd bench` prints and writes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Sequence


from wsd.bench import profile
from wsd.bench.device import Peak, versions
from wsd.bench.options import GB, MIB


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
