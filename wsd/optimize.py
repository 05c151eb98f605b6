"""Stage 2, optimize: graph-level Relax passes, independent of the target.

Operators are lowered to TensorIR (legalize), constants folded (CLIP's causal mask, built
from int64 index arithmetic, folds away here), and element-wise work fused into the
reductions and products that produce it, so each fused group becomes one kernel.
"""

import tvm
from tvm import relax


def passes() -> list[tvm.transform.Pass]:
    return [
        relax.transform.DeadCodeElimination(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
