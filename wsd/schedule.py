"""Stage 3, schedule: give every TensorIR kernel a loop schedule for its target.

dlight's rules match kernels by shape of computation (matmul, GEMV, reduction, fallback)
and pick thread bindings; on CPUs only GEMV and reductions have rules, the rest run as
legalized loops (tuned schedules are a later stage of the project).
"""

import tvm
from tvm.s_tir import dlight as dl


def passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
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
