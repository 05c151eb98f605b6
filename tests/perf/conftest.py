"""Benchmarks (run explicitly: `pytest tests/perf`; not in the default test paths).

Each figure is a pytest-benchmark test: one per implementation (`torch`, `torch.compile`,
`tvm`) of the same computation, in one benchmark group, so pytest-benchmark's tables show them
side by side (the numbers in parentheses are ratios to the group's fastest). At the end a
summary prints the ratios TVM/eager and TVM/compile, TFLOP/s and % of the device's peak (the
same table `wsd bench` prints), and `--perf-markdown`/`--perf-json` write it.

Options (root conftest.py): --perf-target auto|llvm|cuda, --perf-model tiny|sd15|PATH,
--perf-dtype, --perf-full, --perf-torch-compile auto|on|off, --perf-repeat N,
--perf-markdown PATH, --perf-json PATH.

Reusing it: the `perf` fixture's `record(benchmark, group, impl, fn, ...)` times any callable
with pytest-benchmark and files the result under a group's TVM/torch columns; for one TVM
PrimFunc against a reference, `wsd.bench.kernels.compare_kernel`.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time

import pytest

from wsd import bench

IMPLS = ("torch", "torch.compile", "tvm")

class _Stats:
    def __init__(self, times):
        self.median = statistics.median(times)


class _FallbackBenchmark:
    """pytest-benchmark's `benchmark` as far as these tests use it, for machines without the
    plugin (or with -p no:benchmark)."""

    def __init__(self):
        self.extra_info, self.group, self.stats = {}, None, None

    def pedantic(self, fn, rounds=1, warmup_rounds=0, iterations=1, **_):
        for _ in range(warmup_rounds):
            fn()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        self.stats = type("Stats", (), {"stats": _Stats(times)})()


@pytest.fixture
def timer(request):
    """pytest-benchmark's `benchmark` fixture where the plugin is active, else a stand-in."""
    if request.config.pluginmanager.hasplugin("benchmark"):
        return request.getfixturevalue("benchmark")
    return _FallbackBenchmark()


class PerfSession:
    """What the benchmarks of one pytest run share: the device, its peak rates, prepared
    benchmarks (compiled once, timed by several tests) and the results table."""

    def __init__(self, config):
        self.settings = bench.PerfSettings.from_pytest(config)
        self._device = None
        self.peaks: dict[str, bench.Peak] = {}
        self.rows: dict[tuple, bench.Row] = {}
        self.memory: list[dict] = []
        self.cache: dict = {}
        self.load_start = os.getloadavg()[0]

    @property
    def device(self) -> bench.Device:
        if self._device is None:
            try:
                self._device = bench.Device(self.settings.target)
            except bench.BenchError as err:
                pytest.skip(str(err))
            bench.strict_fp32()
        return self._device

    def peak(self, dtype: str) -> bench.Peak:
        if dtype not in self.peaks:
            self.peaks[dtype] = bench.measure_peak(self.device, dtype)
        return self.peaks[dtype]

    @property
    def compile_policy(self) -> tuple[bool, str]:
        return bench.compile_policy(self.settings.compile_option, self.device)

    def cached(self, key, make):
        """make() once per key and session; a failure is remembered and re-raised."""
        if key not in self.cache:
            try:
                self.cache[key] = ("ok", make())
            except pytest.skip.Exception:
                raise
            except Exception as err:  # noqa: BLE001
                self.cache[key] = ("error", err)
        state, value = self.cache[key]
        if state == "error":
            raise value
        return value

    def record(self, benchmark, section: str, prep: bench.Prepared, impl: str, fn,
               rounds: int | None = None, warmup: int | None = None) -> float:
        """Time fn with pytest-benchmark as `impl` of `prep`; returns the median in ms."""
        rounds = rounds or self.settings.repeat
        warmup = self.settings.warmup if warmup is None else warmup
        device = self.device
        benchmark.group = f"{section}: {prep.name} {prep.shape} {prep.dtype}".replace("  ", " ")
        benchmark.extra_info.update(impl=impl, dtype=prep.dtype, flops=prep.flops,
                                    bytes=prep.bytes, device=device.name)

        def call():
            fn()
            device.sync()

        # One untimed call first (the first warm-up round); slow figures get fewer rounds so
        # that one figure takes about budget_s (a CPU runs SD-sized TVM kernels for seconds).
        start = time.perf_counter()
        call()
        once = time.perf_counter() - start
        budget = self.settings.budget_s
        if budget and once * rounds > budget:
            rounds = max(1, int(budget / once))
        benchmark.pedantic(call, rounds=rounds, warmup_rounds=max(0, warmup - 1), iterations=1)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            median_ms = stats.stats.median * 1e3
        else:  # --benchmark-disable: time it ourselves
            median_ms = bench.measure(fn, device, 0, rounds).ms
        key = (section, prep.name, prep.shape, prep.dtype)
        row = self.rows.setdefault(key, bench.Row(
            prep.name, prep.dtype, prep.kind, prep.shape, flops=prep.flops, bytes=prep.bytes,
            peak_tflops=self.peak(prep.dtype).tflops if prep.dtype in bench.DTYPES else None,
            error=prep.error, note=prep.note))
        setattr(row, {"tvm": "tvm_ms", "torch": "eager_ms", "torch.compile": "compile_ms"}[impl],
                median_ms)
        if impl == "tvm":
            benchmark.extra_info.update(error=prep.error, tvm_vs_eager=row.tvm_vs_eager,
                                        tvm_vs_compile=row.tvm_vs_compile,
                                        tvm_tflops=row.tvm_tflops,
                                        tvm_pct_peak=row.pct_peak(row.tvm_ms))
        return median_ms

    def run_impl(self, benchmark, section: str, prep: bench.Prepared, impl: str,
                 rounds: int | None = None, warmup: int | None = None) -> None:
        """The usual test body: check (for tvm), skip (compile unavailable), time."""
        if impl == "tvm":
            tol = bench.tolerance(prep.dtype)
            assert prep.error is not None and prep.error <= tol, (
                f"TVM's output differs from PyTorch's: rel-L2 {prep.error:.2e} > {tol:.0e}")
            fn = prep.tvm
        elif impl == "torch":
            fn = prep.eager
        else:
            if prep.compiled is None:
                row = self.rows.get((section, prep.name, prep.shape, prep.dtype))
                if row is not None and prep.compile_note.startswith("torch.compile failed"):
                    row.note = "; ".join(n for n in (row.note, prep.compile_note) if n)
                pytest.skip(prep.compile_note or "torch.compile unavailable")
            fn = prep.compiled
        self.record(benchmark, section, prep, impl, fn, rounds, warmup)

    # ---- the summary -------------------------------------------------------------------
    def report(self) -> bench.Report:
        device = self._device
        report = bench.Report(datetime.date.today().isoformat(),
                              device.name if device else "-", self.settings.target,
                              "pytest tests/perf", bench.versions())
        report.peaks = list(self.peaks.values())
        report.rows = list(self.rows.values())
        report.memory = self.memory
        enabled, reason = bench.compile_policy(self.settings.compile_option, device) \
            if device else (False, "")
        report.notes = ["TVM/eager, TVM/compile: time ratios (below 1: TVM faster); "
                        "err: relative L2 of TVM's output against eager PyTorch's."]
        if not enabled and reason:
            report.notes.append(reason)
        report.notes.append(bench.load_note(self.load_start))
        return report


def pytest_configure(config):
    config._wsd_perf = None


@pytest.fixture(scope="session")
def perf(request) -> PerfSession:
    if request.config._wsd_perf is None:
        request.config._wsd_perf = PerfSession(request.config)
    return request.config._wsd_perf


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_wsd_perf", None)
    if session is None or not (session.rows or session.memory or session.peaks):
        return
    report = session.report()
    terminalreporter.write_sep("=", "wsd perf: TVM side by side with PyTorch")
    terminalreporter.write_line(report.text())
    md, js = config.getoption("--perf-markdown"), config.getoption("--perf-json")
    if md or js:
        bench.write_outputs(report, js, md)
        terminalreporter.write_line(f"wrote {', '.join(p for p in (md, js) if p)}")
