"""Group norm as small, well-shaped kernels: per-channel partial sums over pixel chunks,
per-group statistics from them, then an element-wise normalisation.

TVM's lowering (topi.nn.group_norm) is one function that reshapes the input into groups and
reduces over them; dlight's GPU rules schedule it poorly, worst in channels-last layout, where
it was 96% of SD v1.5's VAE decode on an H100 (974 ms of 1014, `wsd bench --profile`). A
direct per-group reduction is not enough either: channels-last groups are strided in memory,
and there are only batch x groups (32 for the VAE) of them to spread over the GPU. So, for each
`relax.nn.group_norm` (x's pixels P = the reduced axes, in chunks: wsd.kernels.group_norm._chunk):

    sums[n, k, c]    = sum of x      over chunk k's pixels, float32   (reduction kernels:
    squares[n, k, c] = sum of x * x  over chunk k's pixels, float32    many outputs, each
                                                                       read along memory)
    total[n, g]      = the group's sum of x, from the partial sums    (a reduction each,
    total_sq[n, g]   = the group's sum of x * x, likewise               over a workgroup)
    y = (x - mean) / sqrt(var + eps) * gamma + beta    element-wise in float32 (mean and var
                                           from the totals), cast to x's dtype, fused with
                                           what follows (SiLU)

Every kernel reads x in its own layout (the channel axis and the reduced axes come from the
op), so NCHW and NHWC graphs get the same program.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, tirx

# Pixels per partial sum: at least MIN_CHUNK (enough work per sum), and at most MAX_CHUNKS
# partial sums per channel (the group totals read them all).
MIN_CHUNK = 64
MAX_CHUNKS = 512


def _chunk(pixels: int) -> int:
    """The smallest divisor of `pixels` from max(MIN_CHUNK, pixels / MAX_CHUNKS) up."""
    target = max(MIN_CHUNK, -(-pixels // MAX_CHUNKS))
    return next(d for d in range(min(target, pixels), pixels + 1) if pixels % d == 0)


def _batch_axes(ndim: int, channel_axis: int, axes: list[int]) -> list[int]:
    """The axes group norm neither reduces nor groups (the batch)."""
    return [d for d in range(ndim) if d != channel_axis and d not in axes]


def _layout(shape: list[int], channel_axis: int, axes: list[int]):
    """(batch axes, pixel count, index(batch, pixel, channel) -> x's index)."""
    batch_axes = _batch_axes(len(shape), channel_axis, axes)
    pixels = math.prod(shape[d] for d in axes)
    strides, stride = {}, 1
    for d in reversed(axes):
        strides[d] = stride
        stride *= shape[d]

    def index(batch, pixel, channel):
        it, out = iter(batch), []
        for d in range(len(shape)):
            if d == channel_axis:
                out.append(channel)
            elif d in strides:
                out.append(pixel // strides[d] % shape[d])
            else:
                out.append(next(it))
        return tuple(out)

    return batch_axes, pixels, index


def _partial_sums(x: te.Tensor, channel_axis: int, axes: list[int], power: int) -> te.Tensor:
    """(batch..., chunks, channels): sum of x**power over each chunk of pixels, float32."""
    shape = [int(s) for s in x.shape]
    batch_axes, pixels, index = _layout(shape, channel_axis, axes)
    chunk = _chunk(pixels)
    r = te.reduce_axis((0, chunk), name="r")

    def value(*i):
        *batch, k, c = i
        v = x[index(batch, k * chunk + r, c)].astype("float32")
        return te.sum(v if power == 1 else v * v, axis=r)

    out = [shape[d] for d in batch_axes] + [pixels // chunk, shape[channel_axis]]
    return te.compute(out, value, name="group_partial_sum" if power == 1 else "group_partial_sq")


def _group_total(parts: te.Tensor, groups: int) -> te.Tensor:
    """(batch..., groups): each group's total of the partial sums `parts`. One plain
    reduction per output, which dlight spreads over a workgroup's threads (the sums of x and
    of x * x as one kernel, selected by an output axis, got its fallback: one thread per
    output, 8192 sums in a row, 0.125-0.19 ms a call on the H100)."""
    *batch, chunks, channels = [int(s) for s in parts.shape]
    per_group = channels // groups
    rk = te.reduce_axis((0, chunks), name="rk")
    rc = te.reduce_axis((0, per_group), name="rc")

    def value(*i):
        *n, g = i
        return te.sum(parts[(*n, rk, g * per_group + rc)], axis=[rk, rc])

    return te.compute([*batch, groups], value, name="group_total")


def _normalize(x: te.Tensor, total: te.Tensor, total_sq: te.Tensor, gamma: te.Tensor,
               beta: te.Tensor, groups: int, channel_axis: int, axes: list[int],
               eps: float) -> te.Tensor:
    per_group = int(x.shape[channel_axis]) // groups
    count = per_group * math.prod(int(x.shape[d]) for d in axes)
    batch_axes = _batch_axes(len(x.shape), channel_axis, axes)

    def value(*i):
        c = i[channel_axis]
        batch = [i[d] for d in batch_axes]
        mean = total[(*batch, c // per_group)] / count
        var = tirx.max(total_sq[(*batch, c // per_group)] / count - mean * mean, 0.0)
        y = (x[i].astype("float32") - mean) * tirx.rsqrt(var + eps) * gamma[c].astype("float32")
        return (y + beta[c].astype("float32")).astype(x.dtype)

    return te.compute(x.shape, value, name="group_norm_apply")


@tvm.transform.module_pass(opt_level=0, name="wsd.SplitGroupNorm")
class SplitGroupNorm:
    """Every relax.nn.group_norm with a static shape -> partial sums and group totals (two
    kernels each: of x and of x * x), and the element-wise apply (fused with what follows)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.op = tvm.ir.Op.get("relax.nn.group_norm")

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: N802 (TVM's visitor name)
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(self.op)):
            return call
        x, gamma, beta = call.args
        shape = x.ty.shape
        if shape is None or not all(isinstance(s, tirx.IntImm) for s in shape):
            return call
        attrs = call.attrs
        if not (attrs.center and attrs.scale):
            return call
        groups, channel_axis = int(attrs.num_groups), int(attrs.channel_axis)
        ndim = len(shape)
        channel_axis %= ndim
        axes = [int(a) % ndim for a in attrs.axes]
        bb = self.builder_
        sums, squares = (
            bb.emit(bb.call_te(_partial_sums, x, channel_axis, axes, power,
                               primfunc_name_hint="group_partial_sums"))
            for power in (1, 2))
        total, total_sq = (bb.emit(bb.call_te(_group_total, parts, groups,
                                              primfunc_name_hint="group_total"))
                           for parts in (sums, squares))
        return bb.call_te(_normalize, x, total, total_sq, gamma, beta, groups, channel_axis,
                          axes, float(attrs.epsilon), primfunc_name_hint="group_norm_apply")
