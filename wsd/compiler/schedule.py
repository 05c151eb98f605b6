"""Stage 3, schedule: give every TensorIR kernel a loop schedule for its target.

First the tuned records (wsd.kernels.gemm.records, wsd/kernels/gemm/tuned/<target>.json): kernels that have
a measured, admitted schedule get it (for WebGPU, wsd.kernels.gemm.tiled_matmul). Then dlight's
rules, which match kernels by shape of computation (matmul, GEMV, reduction, fallback) and
pick thread bindings, schedule the rest; on CPUs only GEMV and reductions have rules, the
rest run as legalized loops.
"""

import tvm
from tvm.s_tir import dlight as dl

from wsd.kernels.gemm import records


def dlight_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """dlight's default rules for the target (what a kernel gets without a record)."""
    if target.kind.name == "llvm":
        return [dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())]
    return [
        dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(),
            dl.gpu.GEMV(),
            dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )
    ]


def passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    return [records.ApplyRecords(target)] + dlight_passes(target)
