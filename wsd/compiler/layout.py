"""Stage 2a, layout: the data layouts each target's kernels read fastest.

The traced graph is PyTorch's: convolutions in NCHW with OIHW weights, linear layers as
`x @ permute_dims(w)` with w stored (N, K). Tensor-core GEMMs (dlight's CUDA rule) load
their tiles along the reduction axis, so on CUDA:

- convolutions go channels-last (NHWC data, OHWI weights): the implicit GEMM's reduction
  (kernel row, kernel column, input channel) then runs along contiguous channels, and its
  output rows along contiguous output channels. ConvertLayout carries the layout through the
  element-wise ops and norms between convolutions; transposes that cancel are removed.
- linear layers become one NT kernel reading w as stored, (N, K), instead of a transpose
  kernel per weight and call followed by a GEMM reading (K, N) across rows.

Other targets keep PyTorch's layouts: WebGPU's tuned records (wsd/kernels/gemm/tuned) were
measured on the kernels as traced.

What is left of a weight's permute (CUDA's OHWI convolution weights; on other targets the
(K, N) linear weights of `x @ permute_dims(w)`) is a transpose kernel on every call unless
the build stores the weight permuted: `WeightLayouts` takes those permutes out of the graph
and records their axes, and wsd.runtime.weights.collect_weights permutes the tensors once, on the host.
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import relax, te
from tvm.relax.dpl import is_op, rewrite_call, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

CONV_LAYOUTS = {"cuda": ("NHWC", "OHWI")}


def conv_layout(target: tvm.target.Target) -> str:
    """The data layout the target's convolutions run in."""
    return CONV_LAYOUTS.get(target.kind.name, ("NCHW", "OIHW"))[0]


def passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    layouts = CONV_LAYOUTS.get(target.kind.name)
    return [] if layouts is None else rewrites(layouts)


def rewrites(conv_layouts: tuple[str, str]) -> list[tvm.transform.Pass]:
    """Convolutions to (data, kernel) layouts, and NT linear layers (any target)."""
    return [
        relax.transform.ConvertLayout({"relax.nn.conv2d": list(conv_layouts)}),
        SimplifyPermutes(),
        NTMatmul(),
        relax.transform.DeadCodeElimination(),
    ]


@tvm.transform.module_pass(opt_level=0, name="wsd.SimplifyPermutes")
class SimplifyPermutes:
    """permute_dims(permute_dims(x, a), b) -> one permute_dims, or x where they cancel; a
    permute_dims that only moves axes of extent 1 (a bias (1, C, 1, 1) to (1, 1, 1, C)) -> a
    reshape, which costs nothing."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        x = wildcard()
        inner = is_op("relax.permute_dims")(x)
        outer = is_op("relax.permute_dims")(inner)
        single = is_op("relax.permute_dims")(wildcard())

        def fold(_expr, matches):
            return fold_permutes(matches[x], permute_axes(matches[inner]),
                                 permute_axes(matches[outer]))

        def drop(_expr, matches):
            call = matches[single]
            axes = permute_axes(call)
            if axes == list(range(len(axes))):
                return call.args[0]
            shape = call.args[0].ty.shape
            if shape is None:
                return call
            moved = [a for a in axes if not (isinstance(shape[a], tvm.tirx.IntImm)
                                              and int(shape[a]) == 1)]
            if moved == sorted(moved):
                return relax.op.reshape(call.args[0], call.ty.shape)
            return call

        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gvar] = rewrite_call(single, drop, rewrite_call(outer, fold, func))
        return mod


@tvm.transform.module_pass(opt_level=0, name="wsd.FoldPadIntoConv")
class FoldPadIntoConv:
    """conv2d(pad(x, zeros), w) -> conv2d(x, w) with the pad in its padding (which may be
    asymmetric: top, left, bottom, right). The VAE encoder's downsamplers pad one row and one
    column after their input; as a separate op, FuseOps fuses that pad into the epilogue of
    the convolution before it, a consumer dlight's matmul rule cannot inline (the WebGPU
    build then fails), while as padding it is read in place by the convolution after it.

    A mutator, not dpl's rewrite_call: rewrite_call also merges equal bindings, and merged
    float32 casts of one tensor, read by several reductions (the banded group norms'
    sums and sums of squares, wsd.compiler.split), are then each a tensor twice their
    input's size instead of fusing into the reductions."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                folded = _PadFolder(mod).visit_expr(func)
                mod[gvar] = relax.analysis.remove_all_unused(folded)
        return mod


@mutator
class _PadFolder(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.conv = tvm.ir.Op.get("relax.nn.conv2d")
        self.pad = tvm.ir.Op.get("relax.nn.pad")

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor name)
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(self.conv)):
            return call
        x, weight = call.args
        pad_call = self.lookup_binding(x) if isinstance(x, relax.Var) else x
        if not (isinstance(pad_call, relax.Call) and pad_call.op.same_as(self.pad)):
            return call
        attrs = call.attrs
        widths = [int(w) for w in pad_call.attrs.pad_width]
        spatial = ((2, 3) if attrs.data_layout == "NCHW"
                   else (1, 2) if attrs.data_layout == "NHWC" else None)
        if (spatial is None or pad_call.attrs.pad_mode != "constant"
                or float(pad_call.attrs.pad_value) != 0.0
                or any(widths[2 * a:2 * a + 2] != [0, 0]
                       for a in range(len(widths) // 2) if a not in spatial)):
            return call
        h, w = spatial
        top, left, bottom, right = (int(p) for p in attrs.padding)
        padding = [top + widths[2 * h], left + widths[2 * w],
                   bottom + widths[2 * h + 1], right + widths[2 * w + 1]]
        return relax.op.nn.conv2d(
            pad_call.args[0], weight, strides=attrs.strides, padding=padding,
            dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
            kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
            out_dtype=attrs.out_dtype)


def permute_axes(call: relax.Call) -> list[int]:
    """A permute_dims call's axes (None in the op means reversed)."""
    axes = call.attrs.axes
    return (list(range(call.args[0].ty.ndim))[::-1] if axes is None
            else [int(a) for a in axes])


def fold_permutes(x: relax.Expr, first: list[int], second: list[int]) -> relax.Expr:
    """permute_dims(permute_dims(x, first), second) as one permute_dims, or x itself."""
    axes = [first[i] for i in second]
    return x if axes == list(range(len(axes))) else relax.op.permute_dims(x, axes)


def _nt_matmul(x: te.Tensor, w: te.Tensor, out_dtype: str) -> te.Tensor:
    """x (..., K) times w (N, K) transposed, accumulated in out_dtype."""
    k = te.reduce_axis((0, x.shape[-1]), name="k")
    return te.compute(
        (*x.shape[:-1], w.shape[0]),
        lambda *i: te.sum(x[(*i[:-1], k)].astype(out_dtype) * w[i[-1], k].astype(out_dtype),
                          axis=k),
        name="NT_matmul")


@tvm.transform.module_pass(opt_level=0, name="wsd.NTMatmul")
class NTMatmul:
    """matmul(x, permute_dims(w)) with a 2-D w -> one NT_matmul kernel reading w as (N, K)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _NTMatmulRewriter(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()


@mutator
class _NTMatmulRewriter(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.matmul = tvm.ir.Op.get("relax.matmul")
        self.permute = tvm.ir.Op.get("relax.permute_dims")

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor name)
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(self.matmul)):
            return call
        x, w_t = call.args
        w_t = self.lookup_binding(w_t) if isinstance(w_t, relax.Var) else w_t
        if not (isinstance(w_t, relax.Call) and w_t.op.same_as(self.permute)):
            return call
        w = w_t.args[0]
        if w.ty.ndim != 2 or permute_axes(w_t) != [1, 0]:
            return call
        out_dtype = str(call.attrs.out_dtype)
        if out_dtype in ("", "void"):  # matmul without out_dtype: the input's
            out_dtype = str(x.ty.dtype)
        return self.builder_.call_te(_nt_matmul, x, w, out_dtype, primfunc_name_hint="NT_matmul")


class WeightLayouts:
    """Weights stored in the layout their kernels read, instead of a transpose per call (SD
    v1.5's fp16 UNet step on CUDA ran 52 of them, 2.7 ms).

    `hoist()` is a pass for after the layout rewrites: a weight parameter whose every use in
    its function is the same permute_dims becomes a parameter of the permuted shape, and
    `axes[function]` lists, per weight parameter (those after the function's `num_inputs`
    runtime inputs), the permutation it is stored in, or None. The caller stores the axes
    beside the weight names (wsd.compiler.pipeline.function_meta); wsd.runtime.weights.collect_weights applies
    them. Runtime inputs keep their layout: callers pass those as they are.
    """

    def __init__(self, num_inputs: Mapping[str, int]):
        self.num_inputs = dict(num_inputs)
        self.axes: dict[str, list[list[int] | None]] = {}

    def hoist(self) -> tvm.transform.Pass:
        @tvm.transform.module_pass(opt_level=0, name="wsd.HoistWeightPermutes")
        def run(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
            for gvar, func in list(mod.functions.items()):
                name = gvar.name_hint
                if isinstance(func, relax.Function) and name in self.num_inputs:
                    mod[gvar], self.axes[name] = _hoist_permutes(func, self.num_inputs[name])
            return relax.transform.CanonicalizeBindings()(mod)

        return run


def _hoist_permutes(func: relax.Function, num_inputs: int):
    """(func with its permuted-only weights as permuted parameters, axes per weight)."""
    permute = tvm.ir.Op.get("relax.permute_dims")
    weights = list(func.params[num_inputs:])
    uses: dict[relax.Var, list] = {w: [] for w in weights}  # axes per use, None: not a permute

    def note(expr: relax.Expr, axes) -> None:
        for var in relax.analysis.free_vars(expr):
            if var in uses:
                uses[var].append(axes)

    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (isinstance(value, relax.Call) and value.op.same_as(permute)
                    and value.args[0] in uses):
                uses[value.args[0]].append(permute_axes(value))
            else:
                note(value, None)
    note(func.body.body, None)

    hoisted: dict[relax.Var, relax.Var] = {}
    axes_of: list[list[int] | None] = []
    for w in weights:
        axes = uses[w][0] if uses[w] else None
        if axes is None or any(a != axes for a in uses[w]):
            axes_of.append(None)
            continue
        shape = [w.ty.shape[a] for a in axes]
        hoisted[w] = relax.Var(w.name, relax.TensorType(shape, w.ty.dtype))
        axes_of.append(axes)
    if not hoisted:
        return func, axes_of
    body = _ReplacePermutes(hoisted).visit_expr(func.body)
    params = [hoisted.get(p, p) for p in func.params]
    return (relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs,
                           func.span), axes_of)


@mutator
class _ReplacePermutes(PyExprMutator):
    """permute_dims(w) -> w's permuted parameter, for the weights in `hoisted`."""

    def __init__(self, hoisted: dict):
        super().__init__()
        self.hoisted = hoisted
        self.permute = tvm.ir.Op.get("relax.permute_dims")

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor name)
        if call.op.same_as(self.permute) and call.args[0] in self.hoisted:
            return self.hoisted[call.args[0]]
        return super().visit_call_(call)
