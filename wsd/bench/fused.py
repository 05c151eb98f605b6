"""The build's fused kernels of SD v1.5's UNet (and VAE), each next to the PyTorch ops it
replaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from wsd.bench.device import Device, count_flops, torch_compiled
from wsd.bench.kernels import (Prepared, build_kernel, param_specs, random_arrays, rel_l2,
                               tensor_bytes, to_numpy)
from wsd.bench.options import BenchError


def _conv_of(x, w, out_shape):
    import torch

    stride = max(1, x.shape[-1] // out_shape[-1])
    return torch.nn.functional.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)


def _linear_of(x, w, b=None):
    import torch

    if w.ndim == 2:  # the kernel holds the weight transposed (K, N): PyTorch's (N, K) view
        return torch.nn.functional.linear(x, w.t(), b)
    out = torch.matmul(x, w)
    return out if b is None else out + b


def _sdpa_bsnh(q, k, v):
    import torch

    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _silu(x):
    import torch

    return torch.nn.functional.silu(x)


def _fused_reference(kind: str, ctx: dict) -> Callable | None:
    import torch

    nhwc = ctx.get("layout") == "NHWC" and kind.startswith("conv2d")
    out_shape = ctx["out_shape"]
    if nhwc:  # the PyTorch counterpart works in NCHW (its stride is read from this shape)
        out_shape = _channels_first(torch.empty(out_shape, device="meta")).shape
    scale = ctx.get("output_scale", 1.0)
    refs = {
        "conv2d_add": lambda x, w, b: _conv_of(x, w, out_shape) + b,
        "conv2d_add_add": lambda x, w, b, r: _conv_of(x, w, out_shape) + b + r,
        "conv2d_add_add_divide": lambda x, w, b, r: (_conv_of(x, w, out_shape) + b + r) / scale,
        "conv2d_add_expand_dims_expand_dims_add":
            lambda x, w, b, t: _conv_of(x, w, out_shape) + b + t[:, :, None, None],
        "matmul": lambda x, w: _linear_of(x, w),
        "matmul_add": lambda x, w, b: _linear_of(x, w, b),
        "matmul_add_add": lambda x, w, b, r: _linear_of(x, w, b) + r,
        "matmul_add_silu": lambda x, w, b: _silu(_linear_of(x, w, b)),
        "layer_norm": lambda x, g, b: torch.nn.functional.layer_norm(
            x, x.shape[-1:], g, b, 1e-5),
        "split_gelu_multiply": lambda x: (lambda h, gate: h * torch.nn.functional.gelu(gate))(
            *x.chunk(2, dim=-1)),
        "attention": _sdpa_bsnh,
    }
    for name in [k for k in refs if k.startswith("matmul")]:  # wsd.compiler.layout's, w as (N, K)
        refs[f"NT_{name}"] = lambda x, w, *rest, _ref=refs[name]: _ref(x, w.t(), *rest)
    fn = refs.get(kind)
    if fn is None:
        return None
    out_dtype = getattr(torch, ctx["out_dtype"])
    if nhwc:  # channels-last convolutions (wsd.compiler.layout): PyTorch's view; attention is BSNH
        return lambda *args: _channels_last(fn(*map(_channels_first, args))).to(out_dtype)
    return lambda *args: fn(*args).to(out_dtype)


def _channels_first(t):
    """NHWC activations, OHWI weights and (1, 1, 1, C) biases -> NCHW, OIHW, (1, C, 1, 1)."""
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t


def _channels_last(t):
    return t.permute(0, 2, 3, 1) if t.ndim == 4 else t


# Group norm is five kernels since wsd.kernels.group_norm (partial sums, totals, apply): it is
# benchmarked whole, as a layer (layer_cases' group_norm rows), and per kernel by --profile.
FUSED_KINDS = ("conv2d_add_expand_dims_expand_dims_add", "conv2d_add_add_divide", "conv2d_add",
               "conv2d_add_add", "matmul_add", "matmul_add_add", "matmul", "matmul_add_silu",
               "NT_matmul_add", "NT_matmul_add_add", "NT_matmul", "NT_matmul_add_silu",
               "attention", "layer_norm", "split_gelu_multiply")


def kind_of(name: str) -> str:
    """Fused kernel name -> its kind (numbering, casts and the `fused_`/`wsd_` prefixes
    dropped)."""
    name = re.sub(r"^(fused_|wsd_)", "", name)
    ops = [re.sub(r"(?<=[a-z_])\d+$", "", op) for op in name.split("_")]
    text = "_".join(ops)
    text = re.sub(r"(^|_)cast(?=_|$)", "", text).strip("_")
    return re.sub(r"_+", "_", text).replace("wsd_attention", "attention")


@dataclass
class FusedKernel:
    """One fused PrimFunc of a traced model part, as the build produces it."""

    name: str
    kind: str
    part: str
    func: object  # tvm.tirx.PrimFunc
    calls: int
    inputs: list  # (shape, dtype)
    outputs: list
    ctx: dict  # what the PyTorch counterpart needs (groups, eps, output scale, out shape)

    @property
    def work(self) -> int:
        """Multiply-adds of one call (from the shapes; ranks kernels of one kind)."""
        shapes = [s for s, _ in self.inputs]
        out = self.outputs[0][0]
        if self.kind.startswith("conv2d"):
            w = shapes[1]
            return int(np.prod(out)) * w[1] * w[2] * w[3]
        if self.kind.startswith(("matmul", "NT_matmul")):
            return int(np.prod(out)) * shapes[0][-1]
        if self.kind == "attention":
            (b, sq, h, d), (_, skv, _, dv) = shapes[0], shapes[2]
            return b * h * sq * skv * (d + dv)
        return int(sum(np.prod(s) for s in shapes))

    @property
    def label(self) -> str:
        dims = ", ".join("x".join(map(str, s)) for s, _ in self.inputs)
        return f"[{dims}] x{self.calls}"

    def reference(self) -> Callable | None:
        return _fused_reference(self.kind, self.ctx)


_FUSED_CACHE: dict = {}


def fused_kernels(model, part: str, dtype: str, target, height: int | None = None,
                  width: int | None = None) -> list[FusedKernel]:
    """The PrimFuncs the build makes for one model function (`unet_guided`, `decode`, ...):
    traced, then optimized by the project's passes for the target (attention rewrite,
    legalize, fusion). Cached per process."""
    import tvm
    from tvm import relax

    from wsd.compiler import layout, optimize
    from wsd.compiler.trace import resolve_size, trace_model

    height, width = resolve_size(model, height, width)
    key = (model.name, model.config_hash(), part, dtype, str(target), height, width,
           layout.conv_layout(target))
    if key in _FUSED_CACHE:
        return _FUSED_CACHE[key]
    traced = trace_model(model, height, width, dtype, names=(part,))
    with target:
        mod = tvm.transform.Sequential(optimize.passes(target))(traced.mod)
    calls: dict[str, int] = {}
    sites: dict[str, object] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            calls[name] = calls.get(name, 0) + 1
            sites[name] = expr

    relax.analysis.post_order_visit(mod[part], visit)
    # What the PyTorch counterparts need beyond the shapes: the residual blocks' output
    # scale (diffusers' output_scale_factor, 1 in SD's UNet and VAE) and the conv layout.
    base = {"output_scale": 1.0, "layout": layout.conv_layout(target)}
    found = []
    for gvar, func in mod.functions.items():
        name = gvar.name_hint
        if not isinstance(func, tvm.tirx.PrimFunc) or name not in calls:
            continue
        specs = param_specs(func)
        out_ty = sites[name].ty
        n_out = len(out_ty.fields) if hasattr(out_ty, "fields") else 1
        inputs, outputs = specs[:len(specs) - n_out], specs[len(specs) - n_out:]
        ctx = dict(base, out_shape=outputs[0][0], out_dtype=outputs[0][1])
        found.append(FusedKernel(name, kind_of(name), part, func, calls[name], inputs,
                                 outputs, ctx))
    _FUSED_CACHE[key] = found
    return found


def dominant(kernels: Sequence[FusedKernel], kind: str, rank: int = 0,
             max_work: float | None = None) -> FusedKernel | None:
    """The kernel of `kind` with the `rank`-th largest share of the model's work (work per call
    x calls); with `max_work`, only kernels doing at most that many multiply-adds per call."""
    pool = [k for k in kernels if k.kind == kind and (max_work is None or k.work <= max_work)]
    pool.sort(key=lambda k: (-k.work * k.calls, k.name))
    return pool[rank] if rank < len(pool) else None


def prepare_fused(kernel: FusedKernel, device: Device, compile_enabled: bool,
                  compile_reason: str = "", seed: int = 0) -> Prepared:
    """Build the kernel alone (the project's schedules), its PyTorch counterpart, and check
    they compute the same thing."""
    import torch
    import tvm

    reference = kernel.reference()
    if reference is None:
        raise BenchError(f"no PyTorch counterpart for kind {kernel.kind!r} ({kernel.name})")
    arrays = random_arrays(kernel.inputs, seed)
    built = build_kernel(kernel.func, device.tvm_target)
    args = [tvm.runtime.tensor(a, device.tvm) for a in arrays]
    outs = [tvm.runtime.empty(s, d, device.tvm) for s, d in kernel.outputs]
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device.torch) for a in arrays)

    def run_tvm():
        built(*args, *outs)

    def run_eager():
        with torch.no_grad():
            return reference(*tensors)

    run_tvm()
    device.sync()
    expected = run_eager()
    error = rel_l2(outs[0].numpy(), to_numpy(expected))
    flops = count_flops(reference, *tensors)
    traffic = tensor_bytes(list(tensors) + [expected])
    compiled, note = torch_compiled(reference, tensors, compile_enabled, compile_reason)
    return Prepared(kernel.name, str(kernel.outputs[0][1]), "fused", run_tvm, run_eager,
                    compiled, note, flops or None, traffic, error, shape=kernel.label,
                    note=kernel.kind)
