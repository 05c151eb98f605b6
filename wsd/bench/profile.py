"""Where a compiled function's time goes: every call the Relax VM makes (kernels and
builtins), timed on the device through the VM's instrument hook.

Each call is bracketed by device synchronisations, so the sum is somewhat above the function's
plain time (one sync per call); the shares are what to read. `wsd bench --profile N` prints
the top N kernels of each timed part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class KernelTime:
    name: str
    calls: int  # per run of the function
    ms: float  # per run of the function, all calls together

    @property
    def ms_per_call(self) -> float:
        return self.ms / self.calls


def profile_calls(vm, run: Callable[[], object], sync: Callable[[], None],
                  rounds: int = 2) -> tuple[list[KernelTime], float]:
    """Time every call `run()` makes through `vm` (a tvm.runtime.vm.VirtualMachine), after one
    untimed run; returns the calls per name, slowest first, and the instrumented run's total
    ms (both averaged over `rounds` runs)."""
    runs: list[list[tuple[str, float]]] = []
    started: list[float] = []

    def instrument(_func, symbol, before_run, _ret, *_args):
        sync()
        if before_run:
            started.append(time.perf_counter())
        else:
            runs[-1].append((str(symbol), time.perf_counter() - started.pop()))
        return 0  # VMInstrumentReturnKind.kNoOp

    run()
    sync()
    vm.set_instrument(instrument)
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            runs.append([])
            run()
        sync()
        total = (time.perf_counter() - start) * 1e3 / rounds
    finally:
        vm.set_instrument(lambda *_: 0)
    return tally(runs), total


def tally(runs: Sequence[Sequence[tuple[str, float]]]) -> list[KernelTime]:
    """Calls timed one by one ((name, seconds) per call) over several runs of one function ->
    the calls per name and their ms per run, slowest first."""
    totals: dict[str, list] = {}
    for run in runs:
        for name, seconds in run:
            entry = totals.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds
    rows = [KernelTime(name, calls // len(runs), seconds * 1e3 / len(runs))
            for name, (calls, seconds) in totals.items()]
    rows.sort(key=lambda r: -r.ms)
    return rows


def group_by_kind(rows: Sequence[KernelTime], kind_of: Callable[[str], str]
                  ) -> list[KernelTime]:
    """The same times summed per kind of kernel (conv2d_add, matmul, attention, ...)."""
    kinds: dict[str, KernelTime] = {}
    for r in rows:
        k = kinds.setdefault(kind_of(r.name), KernelTime(kind_of(r.name), 0, 0.0))
        k.calls += r.calls
        k.ms += r.ms
    return sorted(kinds.values(), key=lambda r: -r.ms)


def table_cells(rows: Sequence[KernelTime], total_ms: float, top: int) -> list[list[str]]:
    cells = [[r.name, str(r.calls), f"{r.ms:.3f}", f"{r.ms_per_call:.4f}",
              f"{100 * r.ms / total_ms:.1f}"] for r in rows[:top]]
    rest = rows[top:]
    if rest:
        ms = sum(r.ms for r in rest)
        cells.append([f"({len(rest)} more)", str(sum(r.calls for r in rest)), f"{ms:.3f}", "",
                      f"{100 * ms / total_ms:.1f}"])
    return cells


HEADER = ["kernel", "calls", "ms", "ms/call", "% of run"]
