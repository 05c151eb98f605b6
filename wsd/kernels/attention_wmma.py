"""Attention on CUDA's tensor cores (wmma), for float16 inputs.

wsd.kernels.attention's flash kernel computes every score with scalar FMAs: on an H100 it runs SD v1.5's
4096-token self-attention at ~16 TFLOP/s where PyTorch's SDPA reaches ~100, and attention was the
largest share of the fp16 UNet step. This kernel keeps wsd.kernels.attention's contract (BSNH q, k, v;
float32 accumulation; the score matrix never leaves the chip) and moves both products onto
tensor cores through the wmma API (16x16x16 fp16 tiles, fp32 accumulators).

A wmma accumulator's element-to-thread mapping is unspecified, so a per-row rescale of the
output accumulator (the online softmax's `acc *= exp(m - m')`) cannot be written portably.
The kernel therefore makes two passes over the keys, and the output accumulators only ever add:

    one block = W warps, each owning 16 query rows; Q is loaded into fragments once.
    pass 1, per key tile of BC keys:  S = Q K^T (tensor cores) -> shared memory;
            each row's running max m and sum l = sum exp(s - m) (two lanes per row)
    pass 2, per key tile:             S again; P = exp(s - m) / l as float16 -> shared memory;
                                      O += P V (tensor cores)
    out = O

Pass 1 repeats the Q K^T product (1.5x the tensor-core work of one pass when head and value
dims are equal), which costs far less than the element-wise work both passes share. Scores are
staged per warp in float32 with padded rows (two lanes per row read neighbouring columns:
at most two-way bank conflicts); K and V tiles are zero-padded past the sequence and the head
dim, and padded keys are masked in the softmax, so any length and head dim works.

Only head dims up to MAX_HEAD_DIM: the Q fragments and output accumulators live in registers
(SD v1.5's UNet: 40, 80, 160). Wider heads (the VAE's single 512-wide head) stay on
wsd.kernels.attention's kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from wsd.kernels.attention_shape import NEG, Shape

MAX_HEAD_DIM = 160
MAX_SHARED = 48 * 1024  # CUDA's static shared memory per block
FRAG = 16  # wmma m16n16k16
WARP = 32
SCORE_PAD = 4  # float32 score rows: stride BC + 4 (wmma wants a multiple of 16 bytes)
PROB_PAD = 8  # float16 probability rows: stride BC + 8


def _up(n: int, m: int = FRAG) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class Config:
    """W warps (16 query rows each) per block, BC keys per tile."""

    warps: int
    keys: int


def shared_bytes(shape: Shape, cfg: Config) -> int:
    """Shared memory: the Q-then-K tile, the V tile, per-warp scores (fp32) and
    probabilities (fp16)."""
    rows = FRAG * cfg.warps
    dp, dvp = _up(shape.head_dim), _up(shape.v_dim)
    return (max(rows, cfg.keys) * dp * 2 + cfg.keys * dvp * 2
            + rows * (cfg.keys + SCORE_PAD) * 4 + rows * (cfg.keys + PROB_PAD) * 2)


# Tried in this order; the first that fits the shared memory wins. Measured on an H100
# (scripts/cuda_attention_layouts.py, docs/PERF.md): 4 x 64 fastest where it fits (head dims
# 40 and 80), 2 x 32 next (head dim 160; 4 x 32 was slower there).
CANDIDATES = (Config(4, 64), Config(2, 32), Config(2, 16))


def choose_config(shape: Shape) -> Config | None:
    """The block layout for a shape, or None where this kernel does not apply (not float16,
    heads wider than MAX_HEAD_DIM, nothing fits the shared memory)."""
    if shape.dtype != "float16" or max(shape.head_dim, shape.v_dim) > MAX_HEAD_DIM:
        return None
    for cfg in CANDIDATES:
        if shared_bytes(shape, cfg) <= MAX_SHARED:
            return cfg
    return None


def attention_func(shape: Shape, cfg: Config) -> tvm.tirx.PrimFunc:
    """The PrimFunc `(q, k, v) -> out` (see the module docstring), marked scheduled."""
    B, SQ, SKV, H, D, DV = (shape.batch, shape.q_len, shape.kv_len, shape.heads,
                            shape.head_dim, shape.v_dim)
    dtype, scale = shape.dtype, float(shape.scale)
    W, BC = cfg.warps, cfg.keys
    BR = FRAG * W
    DP, DVP = _up(D), _up(DV)
    NQF, NOF, NSF = DP // FRAG, DVP // FRAG, BC // FRAG
    NQT = -(-SQ // BR)
    NKT = -(-SKV // BC)
    NT = W * WARP
    SS, PS = BC + SCORE_PAD, BC + PROB_PAD
    KROWS = max(BR, BC)
    HALF = BC // 2  # scores per lane per row
    # 16-byte loads where every row and column group starts 8 elements apart
    VEC = 8 if D % 8 == 0 and DV % 8 == 0 else 1
    OUT_ROUNDS = FRAG * FRAG // WARP
    FULL = T.uint32(0xFFFFFFFF)

    @T.macro
    def load_rows(src, dst, b, h, row0, rows, limit, cols, width, tid):
        """rows x width elements of src (rows row0.., columns 0..) into dst (row stride
        width), VEC at a time, zero past `limit` rows or `cols` columns."""
        for e in T.unroll(-(-rows * width // (VEC * NT))):
            idx: T.let[T.int32] = (e * NT + tid) * VEC
            if idx < rows * width:
                row: T.let[T.int32] = row0 + idx // width
                col: T.let[T.int32] = idx % width
                if row < limit and col < cols:
                    for x in T.vectorized(VEC):
                        dst[idx + x] = src[b, row, h, col + x]
                else:
                    for x in T.vectorized(VEC):
                        dst[idx + x] = T.float16(0)

    @T.macro
    def load_tile(frag, index, src, offset, stride, layout):
        """The 16 x 16 float16 tile at src[offset] (rows `stride` apart; "col_major": its
        transpose) into fragment `index` of frag."""
        T.tvm_load_matrix_sync(
            frag.data, FRAG, FRAG, FRAG, index,
            T.tvm_access_ptr(T.type_annotation("float16"), src.data, offset, FRAG * stride, 1),
            stride, layout)

    @T.macro
    def scores(kq, ss, qf, kf, sacc, warp):
        """S (16 x BC) of this warp's rows against the K tile in kq -> ss (float32)."""
        for j in T.unroll(NSF):
            T.tvm_fill_fragment(sacc.data, FRAG, FRAG, FRAG, j, T.float32(0))
            for f in T.unroll(NQF):
                load_tile(kf, 0, kq, j * FRAG * DP + f * FRAG, DP, "col_major")
                T.tvm_mma_sync(sacc.data, j, qf.data, f, kf.data, 0, sacc.data, j)
            T.tvm_store_matrix_sync(
                sacc.data, FRAG, FRAG, FRAG, j,
                T.tvm_access_ptr(T.type_annotation("float32"), ss.data,
                                 warp * FRAG * SS + j * FRAG, FRAG * SS, 2),
                SS, "row_major")
        T.tvm_storage_sync("warp")

    @T.prim_func(private=True, s_tir=True)
    def main(q: T.Buffer((B, SQ, H, D), dtype), k: T.Buffer((B, SKV, H, D), dtype),
             v: T.Buffer((B, SKV, H, DV), dtype), out: T.Buffer((B, SQ, H, DV), dtype)):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding(B * H * NQT, thread="blockIdx.x"):
            for warp in T.thread_binding(W, thread="threadIdx.y"):
                for lane in T.thread_binding(WARP, thread="threadIdx.x"):
                    with T.sblock("attention"):
                        T.reads(q[0:B, 0:SQ, 0:H, 0:D], k[0:B, 0:SKV, 0:H, 0:D],
                                v[0:B, 0:SKV, 0:H, 0:DV])
                        T.writes(out[0:B, 0:SQ, 0:H, 0:DV])
                        kq = T.sblock_alloc_buffer((KROWS * DP,), dtype, scope="shared")
                        vs = T.sblock_alloc_buffer((BC * DVP,), dtype, scope="shared")
                        ss = T.sblock_alloc_buffer((BR * SS,), "float32", scope="shared")
                        ps = T.sblock_alloc_buffer((BR * PS,), dtype, scope="shared")
                        qf = T.sblock_alloc_buffer((NQF * FRAG, FRAG), dtype,
                                                   scope="wmma.matrix_a")
                        kf = T.sblock_alloc_buffer((FRAG, FRAG), dtype, scope="wmma.matrix_b")
                        vf = T.sblock_alloc_buffer((FRAG, FRAG), dtype, scope="wmma.matrix_b")
                        pf = T.sblock_alloc_buffer((FRAG, FRAG), dtype, scope="wmma.matrix_a")
                        sacc = T.sblock_alloc_buffer((NSF * FRAG, FRAG), "float32",
                                                     scope="wmma.accumulator")
                        oacc = T.sblock_alloc_buffer((NOF * FRAG, FRAG), "float32",
                                                     scope="wmma.accumulator")
                        st = T.sblock_alloc_buffer((3,), "float32", scope="local")  # m, l, new m

                        tid: T.let[T.int32] = warp * WARP + lane
                        bh: T.let[T.int32] = bx // NQT
                        b: T.let[T.int32] = bh // H
                        h: T.let[T.int32] = bh % H
                        q0: T.let[T.int32] = (bx % NQT) * BR
                        row: T.let[T.int32] = warp * FRAG + lane // 2  # this lane's score row
                        parity: T.let[T.int32] = lane % 2  # its columns: 2c + parity

                        load_rows(q, kq, b, h, q0, BR, SQ, D, DP, tid)
                        T.tvm_storage_sync("shared")
                        for f in T.unroll(NQF):
                            load_tile(qf, f, kq, warp * FRAG * DP + f * FRAG, DP, "row_major")
                        # pass 1: each row's max and sum of exponentials
                        st[0] = T.float32(NEG)
                        st[1] = T.float32(0)
                        for kt in T.serial(NKT):
                            T.tvm_storage_sync("shared")
                            load_rows(k, kq, b, h, kt * BC, BC, SKV, D, DP, tid)
                            T.tvm_storage_sync("shared")
                            scores(kq, ss, qf, kf, sacc, warp)
                            st[2] = st[0]
                            for c in T.unroll(HALF):
                                if kt * BC + 2 * c + parity < SKV:
                                    st[2] = T.max(st[2], ss[row * SS + 2 * c + parity]
                                                  * T.float32(scale))
                            st[2] = T.max(st[2], T.tvm_warp_shuffle_xor(FULL, st[2], 1, WARP,
                                                                        WARP))
                            st[1] = st[1] * T.exp(st[0] - st[2])
                            for c in T.unroll(HALF):
                                if kt * BC + 2 * c + parity < SKV:
                                    st[1] = st[1] + T.exp(
                                        ss[row * SS + 2 * c + parity] * T.float32(scale) - st[2])
                            st[0] = st[2]
                            T.tvm_storage_sync("warp")
                        st[1] = T.float32(1) / (
                            st[1] + T.tvm_warp_shuffle_xor(FULL, st[1], 1, WARP, WARP))
                        # pass 2: O += softmax(S) V
                        for n in T.unroll(NOF):
                            T.tvm_fill_fragment(oacc.data, FRAG, FRAG, FRAG, n, T.float32(0))
                        for kt in T.serial(NKT):
                            T.tvm_storage_sync("shared")
                            load_rows(k, kq, b, h, kt * BC, BC, SKV, D, DP, tid)
                            load_rows(v, vs, b, h, kt * BC, BC, SKV, DV, DVP, tid)
                            T.tvm_storage_sync("shared")
                            scores(kq, ss, qf, kf, sacc, warp)
                            for c in T.unroll(HALF):
                                if kt * BC + 2 * c + parity < SKV:
                                    ps[row * PS + 2 * c + parity] = T.cast(
                                        T.exp(ss[row * SS + 2 * c + parity] * T.float32(scale)
                                              - st[0]) * st[1], dtype)
                                else:
                                    ps[row * PS + 2 * c + parity] = T.float16(0)
                            T.tvm_storage_sync("warp")
                            for kk in T.unroll(NSF):
                                load_tile(pf, 0, ps, warp * FRAG * PS + kk * FRAG, PS,
                                          "row_major")
                                for n in T.unroll(NOF):
                                    load_tile(vf, 0, vs, kk * FRAG * DVP + n * FRAG, DVP,
                                              "row_major")
                                    T.tvm_mma_sync(oacc.data, n, pf.data, 0, vf.data, 0,
                                                   oacc.data, n)
                        # out: each 16x16 output fragment through this warp's score rows
                        for n in T.unroll(NOF):
                            T.tvm_storage_sync("warp")
                            T.tvm_store_matrix_sync(
                                oacc.data, FRAG, FRAG, FRAG, n,
                                T.tvm_access_ptr(T.type_annotation("float32"), ss.data,
                                                 warp * FRAG * SS, FRAG * SS, 2),
                                SS, "row_major")
                            T.tvm_storage_sync("warp")
                            for e in T.unroll(OUT_ROUNDS):
                                r: T.let[T.int32] = (e * WARP + lane) // FRAG
                                c: T.let[T.int32] = (e * WARP + lane) % FRAG
                                if q0 + warp * FRAG + r < SQ and n * FRAG + c < DV:
                                    out[b, q0 + warp * FRAG + r, h, n * FRAG + c] = T.cast(
                                        ss[(warp * FRAG + r) * SS + c], dtype)

    return main
