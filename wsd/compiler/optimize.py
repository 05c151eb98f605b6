"""Stage 2, optimize: graph-level Relax passes.

Attention first becomes our own kernel (wsd.kernels.attention: flash-style, it never writes the
score matrix; its layout depends on whether the target is a GPU, its math does not). Zero pads
before convolutions become the convolutions' padding (the VAE encoder's downsamplers). Then
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


def passes(target: tvm.target.Target,
           weight_layouts: layout.WeightLayouts | None = None) -> list[tvm.transform.Pass]:
    """`weight_layouts`: given by builds that store their weights (wsd.runtime.library, the web bundle),
    which then store the weights its pass permutes as it records."""
    return [
        flash_attention(target),
        relax.transform.DeadCodeElimination(),
        layout.FoldPadIntoConv(),
        *layout.passes(target),
        *([weight_layouts.hoist()] if weight_layouts is not None else []),
        SplitGroupNorm(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
