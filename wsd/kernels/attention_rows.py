"""Attention with one query row per invocation, for WebGPU: every workgroup read is a vector.

wsd.kernels.attention's kernel spreads a score tile over TY x TX invocations, so each multiply-add of
Q K^T and of P V reads its operands from workgroup memory one scalar at a time (and WGSL
clamps every such index): as many loads as multiply-adds, about 12 TFLOP/s on an H100. Here
each invocation owns one query row whole, as flash attention 2 lays out a warp:

    q (the row, pre-scaled), s (BC scores), acc (DV outputs): registers, float32
    for each tile of BC keys (K stored transposed, [d][key]; V as is, [key][col]):
        s[j]   += q[d] * K[d][j..j+3]       one vec4 load for 4 multiply-adds, q from registers
        m' = max(m, s); p = exp(s - m'); l = l a + sum p; acc = acc a   (a = exp(m - m'))
        acc[n] += p[c] * V[c][n..n+3]       one vec4 load for 4 multiply-adds
    out = acc / l

No invocation needs another's scores, so the softmax has no cross-invocation reduction and
a key tile costs two barriers. All invocations of a workgroup read the same K and V words at
once (a broadcast). Copies into workgroup memory go through registers and store one vector
per invocation, so that TVM declares both buffers `array<vec4<T>>` (it does only when every
access of a buffer is that wide) and a load is one instruction, not four clamped ones.

The registers grow with the head dim (q and acc: 2 x head dim floats, plus BC scores), so
the build uses it where it was measured faster (wsd.kernels.attention.WEBGPU_LAYOUTS). Head and value
dims must be multiples of 4. Within WebGPU's defaults: K and V tiles take (D + DV) x BC
elements of the 16 KiB, the workgroup is `threads` invocations (<= 256).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from wsd.kernels.attention_shape import (NEG, WEBGPU_MAX_INVOCATIONS,
                                         WEBGPU_MAX_WORKGROUP_STORAGE, Shape)

VEC = 4  # the vector width of every workgroup access


@dataclass(frozen=True)
class RowLayout:
    """This kernel's layout: `threads` query rows per workgroup (one per invocation),
    `keys` keys per tile."""

    threads: int = 128
    keys: int = 32


def workgroup_bytes(shape: Shape, layout: RowLayout) -> int:
    el = tvm.runtime.DataType(shape.dtype).bits // 8
    return (shape.head_dim + shape.v_dim) * layout.keys * el


def fits(shape: Shape, layout: RowLayout) -> str | None:
    """None when the layout can run the shape within WebGPU's defaults, else why not."""
    if shape.head_dim % VEC or shape.v_dim % VEC or layout.keys % VEC:
        return f"head dim, value dim and keys per tile must be multiples of {VEC}"
    if layout.threads > WEBGPU_MAX_INVOCATIONS:
        return f"{layout.threads} invocations > {WEBGPU_MAX_INVOCATIONS}"
    if workgroup_bytes(shape, layout) > WEBGPU_MAX_WORKGROUP_STORAGE:
        return (f"{workgroup_bytes(shape, layout)} B of workgroup storage > "
                f"{WEBGPU_MAX_WORKGROUP_STORAGE}")
    return None


def attention_func(shape: Shape, layout: RowLayout) -> tvm.tirx.PrimFunc:
    """The PrimFunc `(q, k, v) -> out` (BSNH, as wsd.kernels.attention.attention_func)."""
    reason = fits(shape, layout)
    if reason:
        raise ValueError(f"row attention cannot run {shape} with {layout}: {reason}")
    B, SQ, SKV, H, D, DV = (shape.batch, shape.q_len, shape.kv_len, shape.heads,
                            shape.head_dim, shape.v_dim)
    dtype, scale = shape.dtype, float(shape.scale)
    NT, BC = layout.threads, layout.keys
    NQT = -(-SQ // NT)  # query tiles per (batch, head)
    NKT = -(-SKV // BC)  # key tiles
    NWG = B * H * NQT
    KVECS = D * BC // VEC  # vectors of one K tile: (d, group of 4 keys)
    VVECS = BC * DV // VEC  # of one V tile: (key, group of 4 columns)
    MASK = SKV % BC != 0  # the last key tile runs past the sequence
    zero = T.cast(0, dtype)

    @T.macro
    def axpy(y, n, a, src, base, frag):
        """y[0:n] += a * src[base:base + n], src read as vectors into the registers frag."""
        for i4 in T.unroll(n // VEC):
            for r in T.vectorized(VEC):
                frag[i4 * VEC + r] = src[base + i4 * VEC + r]
        for i in T.unroll(n):
            y[i] = y[i] + a * T.cast(frag[i], "float32")

    @T.prim_func(private=True, s_tir=True)
    def main(q: T.Buffer((B, SQ, H, D), dtype), k: T.Buffer((B, SKV, H, D), dtype),
             v: T.Buffer((B, SKV, H, DV), dtype), out: T.Buffer((B, SQ, H, DV), dtype)):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        for bx in T.thread_binding(NWG, thread="blockIdx.x"):
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                with T.sblock("attention"):
                    T.reads(q[0:B, 0:SQ, 0:H, 0:D], k[0:B, 0:SKV, 0:H, 0:D],
                            v[0:B, 0:SKV, 0:H, 0:DV])
                    T.writes(out[0:B, 0:SQ, 0:H, 0:DV])
                    ks = T.sblock_alloc_buffer((D * BC,), dtype, scope="shared")  # [d][key]
                    vs = T.sblock_alloc_buffer((BC * DV,), dtype, scope="shared")  # [key][col]
                    four = T.sblock_alloc_buffer((VEC,), dtype, scope="local")
                    kf = T.sblock_alloc_buffer((BC,), dtype, scope="local")  # a K row, read
                    vf = T.sblock_alloc_buffer((DV,), dtype, scope="local")  # a V row, read
                    q_loc = T.sblock_alloc_buffer((D,), "float32", scope="local")
                    s = T.sblock_alloc_buffer((BC,), "float32", scope="local")
                    acc = T.sblock_alloc_buffer((DV,), "float32", scope="local")
                    ml = T.sblock_alloc_buffer((3,), "float32", scope="local")  # m, l, a

                    bh: T.let[T.int32] = bx // NQT
                    b: T.let[T.int32] = bh // H
                    h: T.let[T.int32] = bh % H
                    row: T.let[T.int32] = (bx % NQT) * NT + tx
                    for d in T.unroll(D):
                        if row < SQ:
                            q_loc[d] = T.cast(q[b, row, h, d], "float32") * T.float32(scale)
                        else:
                            q_loc[d] = T.float32(0)
                    for n in T.unroll(DV):
                        acc[n] = T.float32(0)
                    ml[0] = T.float32(NEG)
                    ml[1] = T.float32(0)
                    for kt in T.serial(NKT):
                        T.tvm_storage_sync("shared")  # the previous tile is read
                        # K transposed: invocations take consecutive d (coalesced reads of
                        # each key row), four keys each, stored as one vector
                        for e in T.unroll(-(-KVECS // NT)):
                            idx: T.let[T.int32] = e * NT + tx
                            if idx < KVECS:
                                for r in T.unroll(VEC):
                                    key: T.let[T.int32] = kt * BC + idx // D * VEC + r
                                    if key < SKV:
                                        four[r] = k[b, key, h, idx % D]
                                    else:
                                        four[r] = zero
                                for r in T.vectorized(VEC):
                                    ks[idx % D * BC + idx // D * VEC + r] = four[r]
                        for e in T.unroll(-(-VVECS // NT)):
                            idx: T.let[T.int32] = e * NT + tx
                            if idx < VVECS:
                                key: T.let[T.int32] = kt * BC + idx // (DV // VEC)
                                col: T.let[T.int32] = idx % (DV // VEC) * VEC
                                for r in T.unroll(VEC):
                                    if key < SKV:
                                        four[r] = v[b, key, h, col + r]
                                    else:
                                        four[r] = zero
                                for r in T.vectorized(VEC):
                                    vs[idx * VEC + r] = four[r]
                        T.tvm_storage_sync("shared")
                        for j in T.unroll(BC):
                            s[j] = T.float32(0)
                        for d in T.unroll(D):
                            axpy(s, BC, q_loc[d], ks, d * BC, kf)
                        # online softmax, all in this invocation's registers
                        ml[2] = ml[0]
                        for j in T.unroll(BC):
                            if not MASK or kt * BC + j < SKV:
                                ml[2] = T.max(ml[2], s[j])
                        m_new: T.let[T.float32] = ml[2]
                        ml[2] = T.exp(ml[0] - m_new)
                        ml[0] = m_new
                        ml[1] = ml[1] * ml[2]
                        for j in T.unroll(BC):
                            if not MASK or kt * BC + j < SKV:
                                s[j] = T.exp(s[j] - ml[0])
                                ml[1] = ml[1] + s[j]
                            else:
                                s[j] = T.float32(0)
                        for n in T.unroll(DV):
                            acc[n] = acc[n] * ml[2]
                        for c in T.unroll(BC):
                            axpy(acc, DV, s[c], vs, c * DV, vf)
                    if row < SQ:
                        for n in T.unroll(DV):
                            out[b, row, h, n] = T.cast(acc[n] / ml[1], dtype)

    return main.with_attr("tirx.is_scheduled", True)
