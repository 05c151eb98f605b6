"""Stage 2, optimize: graph-level Relax passes.

Attention first becomes our own kernel (wsd.kernels.attention: flash-style, it never writes the
score matrix; its layout depends on whether the target is a GPU, its math does not). Then
each target's data layouts (wsd.compiler.layout: channels-last convolutions and NT linear layers on
CUDA; a build that stores its weights stores them permuted instead of transposing them on
every call), and group norm becomes partial sums, group totals and an element-wise apply
(wsd.kernels.group_norm). Then operators are lowered to TensorIR (legalize), constants folded
(CLIP's causal mask, built from int64 index arithmetic, folds away here), and element-wise
work fused into the reductions and products that produce it, so each fused group becomes one
kernel.
"""

import tvm
from tvm import relax

from wsd.compiler import layout
from wsd.kernels.attention import flash_attention
from wsd.kernels.group_norm import SplitGroupNorm

K_INJECTIVE = 2  # TVM's OpPatternKind: 0 element-wise, 1 broadcast, 2 injective


@tvm.transform.module_pass(opt_level=0, name="PadsAreInjective")
def PadsAreInjective(mod, _ctx):  # noqa: N802 (a pass, named as TVM's are)
    """Legalized `nn.pad`s (the VAE encoder's Downsample2D pads by (0, 1, 0, 1) before its
    stride-2 convolution) annotated injective, as they are, not element-wise:
    AnnotateTIROpPattern calls them element-wise, FuseOps then fuses a pad into the epilogue
    of the convolution before it (a 64x64 result padded to 65x65), and dlight's GPU matmul
    rule cannot schedule that epilogue (its assertion: "consumers of the cache-write stage
    that are not properly inlined")."""
    from tvm import tirx

    updates = {}
    for gv, func in mod.functions.items():
        if (isinstance(func, tirx.PrimFunc) and gv.name_hint.startswith("pad")
                and func.attrs is not None and "op_pattern" in func.attrs
                and int(func.attrs["op_pattern"]) < K_INJECTIVE):
            updates[gv] = func.with_attr("op_pattern", K_INJECTIVE)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def passes(target: tvm.target.Target,
           weight_layouts: layout.WeightLayouts | None = None) -> list[tvm.transform.Pass]:
    """`weight_layouts`: given by builds that store their weights (wsd.runtime.library, the web bundle),
    which then store the weights its pass permutes as it records."""
    return [
        flash_attention(target),
        relax.transform.DeadCodeElimination(),
        *layout.passes(target),
        *([weight_layouts.hoist()] if weight_layouts is not None else []),
        SplitGroupNorm(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        PadsAreInjective,
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
