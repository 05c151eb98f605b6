"""Our attention kernel: softmax(Q K^T * scale) V without ever writing the score matrix.

TVM's legalization of `relax.nn.attention` materialises the (q_len x kv_len) scores per head in
global memory: 2 x 8 x 4096 x 4096 float32 = 1 GiB for SD v1.5's first UNet block at 512x512,
far past WebGPU's 128 MiB storage-binding default. This kernel is flash-style instead:

    for each tile of BR query rows (one workgroup):
        m = -BIG, l = 0, acc = 0                 running max, sum and output, float32
        for each tile of BC keys:
            S = Q_tile K_tile^T * scale          (BR x BC, in the threads' registers)
            m' = max(m, rowmax S); a = exp(m - m')
            P = exp(S - m');  l = l a + rowsum P;  acc = acc a + P V_tile;  m = m'
        out = acc / l

The row max is reduced from one partial per thread (its own columns' max) rather than from
all BC scores; the row sum l stays a per-thread partial until the end, where it is reduced
once (rescaling by `a` is the same for every thread of a row).

so the largest buffer it writes is its output. Everything accumulates in float32, also for
float16 inputs (read as float16, converted on use).

One program serves every target. It is written SPMD for a workgroup of TY x TX threads;
thread (ty, tx) owns RY query rows (ty + TY i) and RX key columns (tx + TX j) of each score
tile, and output columns tx + TX k of its rows. Q, K and V tiles are staged in workgroup
memory in chunks of DK (head dim) and DVK (value dim) columns; K and V take turns in one
buffer. On GPUs (webgpu, cuda) the workgroups are `blockIdx.x` and the threads
`threadIdx.y/x`, with barriers between the phases and the per-thread loops unrolled; on CPUs
the same program runs with one "thread" per workgroup (TY = TX = 1, so each owns the whole
tile) and workgroups as a parallel loop. CPU tests therefore check the same tiling, masking
and online-softmax arithmetic that the GPU kernel executes.

On CUDA the workgroup is 8 x 16 threads with 4 x 4 scores each and up to 48 KiB of shared
memory (GPU_LAYOUTS, measured); WebGPU takes a measured layout per head dim and dtype
(WEBGPU_LAYOUTS, all within WebGPU's defaults), else the portable one (16 x 16 threads, 2 x 2
scores), as every other GPU target does. For fp16 on CUDA GPUs with tensor cores the pass uses
wsd.kernels.attention_wmma instead, where it applies.

WebGPU portability (the defaults every adapter offers): at most 256 invocations and
16 KiB of workgroup storage per workgroup, no 64-bit integers, and no infinities in WGSL
(masked scores are a large finite negative number, never -inf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.script import tirx as T

from wsd.compiler.layout import fold_permutes
from wsd.kernels import attention_rows, attention_wmma
from wsd.kernels.attention_rows import RowLayout
from wsd.kernels.attention_shape import NEG, WEBGPU_MAX_WORKGROUP_STORAGE, Shape
from wsd.kernels.gemm.cuda_arch import sm_version

# SD v1.5's attention calls at 512x512, (batch, q_len, kv_len, heads, head_dim): the UNet at
# batch 2 (classifier-free guidance) with 8 heads, per latent size; the VAE's one head.
SD15_SHAPES = {
    "unet64-self": (2, 4096, 4096, 8, 40),
    "unet64-cross": (2, 4096, 77, 8, 40),
    "unet32-self": (2, 1024, 1024, 8, 80),
    "unet32-cross": (2, 1024, 77, 8, 80),
    "unet16-self": (2, 256, 256, 8, 160),
    "unet16-cross": (2, 256, 77, 8, 160),
    "unet8-self": (2, 64, 64, 8, 160),
    "unet8-cross": (2, 64, 77, 8, 160),
    "vae-mid": (1, 4096, 4096, 1, 512),
}

# Query rows x key columns of one tile, on every target (the online softmax's steps).
TILE_Q = 32
TILE_KV = 32


@dataclass(frozen=True)
class Config:
    """How a workgroup is laid out: TY x TX threads, each owning RY x RX scores of the
    (TY*RY) x (TX*RX) tile; head-dim chunks of DK and value-dim chunks of DVK columns."""

    ty: int
    tx: int
    ry: int
    rx: int
    dk: int
    dvk: int
    gpu: bool
    unroll_keys: bool = False  # GPUs: P V's loop over the key tile unrolled

    @property
    def rows(self) -> int:
        return self.ty * self.ry

    @property
    def cols(self) -> int:
        return self.tx * self.rx

    @property
    def threads(self) -> int:
        return self.ty * self.tx


def workgroup_bytes(shape: Shape, cfg: Config) -> int:
    """Workgroup storage of the kernel: the Q chunk, one buffer that holds the K chunk
    (rows padded by one) and then the V chunk, in the input dtype; in float32 the
    probabilities P and one partial (row max, later row sum) per row and thread along x."""
    el = tvm.runtime.DataType(shape.dtype).bits // 8
    kv = max(cfg.cols * (cfg.dk + 1), cfg.cols * cfg.dvk)
    return (cfg.rows * cfg.dk + kv) * el + (cfg.rows * cfg.cols + cfg.rows * cfg.tx) * 4


# Value chunks up to this many are unrolled on GPUs, so the output accumulators have constant
# indices (registers, not an indexed private array).
MAX_UNROLLED_VALUE_CHUNKS = 4


@dataclass(frozen=True)
class GPULayout:
    """Threads (ty x tx) of a workgroup, scores each owns (ry x rx), the workgroup storage
    the chunk widths must fit, and whether P V's loop over the key tile is unrolled."""

    ty: int = 16
    tx: int = 16
    ry: int = TILE_Q // 16
    rx: int = TILE_KV // 16
    max_bytes: int = WEBGPU_MAX_WORKGROUP_STORAGE
    unroll_keys: bool = False


# WebGPU's portable layout is every GPU target's unless one is listed here. CUDA: measured
# with scripts/cuda_attention_layouts.py on an H100 (docs/PERF.md), SD v1.5's fp16 shapes took
# 5.80 ms in sum against 7.16 with the portable layout, equally correct.
GPU_LAYOUTS: dict[str, GPULayout] = {"cuda": GPULayout(8, 16, 4, 4, 48 * 1024)}

# WebGPU: per (head dim, dtype), the layout measured fastest through Vulkan on an H100 with
# scripts/webgpu_attention_layouts.py (docs/PERF.md): correct on every SD v1.5 shape and more
# than 5% faster than the portable layout on those of its head dim (64x64 and 32x32 latents;
# the VAE's 512 in fp16; P V unrolled where that was > 5% faster too). A RowLayout is
# wsd.kernels.attention_rows' kernel, where it beat every layout of this one (64x64 latents: 1.9 ms
# per self-attention against 3.5; 32x32 in fp32). Within WebGPU's defaults, so every adapter
# runs them.
WEBGPU_LAYOUTS: dict[tuple[int, str], GPULayout | RowLayout] = {
    (40, "float32"): RowLayout(256, 16),
    (80, "float32"): RowLayout(64, 8),
    (40, "float16"): RowLayout(256, 16),
    (80, "float16"): GPULayout(16, 8, 4, 4),
    (512, "float16"): GPULayout(8, 16, 4, 2),
}


def layout_for(target_kind: str, shape: Shape) -> GPULayout | RowLayout:
    """A GPU target's layout for one shape: WebGPU's measured table, else the target's entry
    in GPU_LAYOUTS, else the portable layout."""
    if target_kind == "webgpu":
        return WEBGPU_LAYOUTS.get((shape.head_dim, shape.dtype), GPULayout())
    return GPU_LAYOUTS.get(target_kind, GPULayout())


def kernel_for(target_kind: str, shape: Shape, gpu: bool = True) -> tvm.tirx.PrimFunc:
    """The flash kernel for one shape on a target, in its layout (layout_for; CPUs: one
    thread per workgroup): wsd.kernels.attention_rows' kernel for a RowLayout that fits the shape,
    else this module's."""
    layout = layout_for(target_kind, shape) if gpu else GPULayout()
    if isinstance(layout, RowLayout):
        if attention_rows.fits(shape, layout) is None:
            return attention_rows.attention_func(shape, layout)
        layout = GPULayout()
    return attention_func(shape, choose_config(shape, gpu, layout))


def choose_config(shape: Shape, gpu: bool, layout: GPULayout = GPULayout()) -> Config:
    """The layout for a shape. CPUs: one thread owns the whole 32 x 32 tile, no chunking.
    GPUs: `layout`'s threads and scores per thread (WebGPU's default: 16 x 16 threads with
    2 x 2 scores each); of the head-dim / value-dim chunk widths that fit its workgroup
    storage, the one with the fewest value chunks beyond what is unrolled, then the fewest
    barriers per key tile (two per head-dim chunk, one per value chunk), then the widest
    head-dim chunk."""
    if not gpu:
        return Config(1, 1, TILE_Q, TILE_KV, shape.head_dim, shape.v_dim, gpu=False)
    ty, tx, ry, rx, max_bytes = (layout.ty, layout.tx, layout.ry, layout.rx,
                                 layout.max_bytes)
    best, best_cost = None, None
    for dk in _chunks(shape.head_dim):
        for dvk in _chunks(shape.v_dim, multiple=tx):
            cfg = Config(ty, tx, ry, rx, dk, dvk, gpu=True, unroll_keys=layout.unroll_keys)
            if workgroup_bytes(shape, cfg) > max_bytes:
                continue
            nkc, nvc = -(-shape.head_dim // dk), -(-shape.v_dim // dvk)
            cost = (nvc > MAX_UNROLLED_VALUE_CHUNKS, 2 * nkc + nvc, -dk)
            if best_cost is None or cost < best_cost:
                best, best_cost = cfg, cost
    if best is None:
        raise ValueError(f"no attention layout fits {max_bytes} B of workgroup storage "
                         f"for {shape}")
    return best


def _chunks(dim: int, multiple: int = 1) -> list[int]:
    """Chunk widths to try, widest first: the whole dimension (rounded up to `multiple`),
    its halves and quarters (rounded up likewise), then powers of two."""
    up = lambda n: -(-n // multiple) * multiple  # noqa: E731
    widths = {up(dim), up(-(-dim // 2)), up(-(-dim // 4))}
    widths |= {c for c in (256, 128, 64, 32, 16, 8) if c < dim and c % multiple == 0}
    return sorted(widths, reverse=True)


def attention_func(shape: Shape, cfg: Config) -> tvm.tirx.PrimFunc:
    """The PrimFunc `(q, k, v) -> out` for one shape and layout (see the module docstring).
    GPU variants unroll the per-thread loops (register tiles; Mesa's lavapipe also caps a
    loop's total iterations at 65535) and are marked scheduled, so dlight leaves them as
    written."""
    B, SQ, SKV, H, D, DV = (shape.batch, shape.q_len, shape.kv_len, shape.heads,
                            shape.head_dim, shape.v_dim)
    dtype, scale = shape.dtype, float(shape.scale)
    TY, TX, RY, RX, DK, DVK = cfg.ty, cfg.tx, cfg.ry, cfg.rx, cfg.dk, cfg.dvk
    BR, BC, NT = cfg.rows, cfg.cols, cfg.threads
    GPU = cfg.gpu
    if GPU and DVK % TX:
        raise ValueError("value chunk must be a multiple of the threads along x")
    NQT = -(-SQ // BR)  # query tiles per (batch, head)
    NKT = -(-SKV // BC)  # key tiles
    NKC = -(-D // DK)  # head-dim chunks
    NVC = -(-DV // DVK)  # value-dim chunks
    VPT = DVK // TX  # value columns per thread per chunk
    NV = NVC * VPT  # value columns per thread
    Q_ONCE = NKC == 1  # the whole query tile stays in workgroup memory
    NWG = B * H * NQT
    SMEM = "shared" if GPU else "local"
    QLOAD = -(-BR * DK // NT)  # cooperative-load rounds
    KLOAD = -(-BC * DK // NT)
    VLOAD = -(-BC * DVK // NT)
    KPAD = DK + 1  # padded K rows (1-D, so compaction keeps the pad): no bank conflicts
    KVS = max(BC * KPAD, BC * DVK)  # one buffer: the K chunk, later the V chunk
    # loops over a thread's own registers (and the head-dim chunk): unrolled on GPUs, plain
    # loops on CPUs; loops over the key tile's columns stay loops (code size)
    U = T.unroll if GPU else T.serial
    UV = T.unroll if GPU and NVC <= MAX_UNROLLED_VALUE_CHUNKS else T.serial

    @T.macro
    def sync():
        if GPU:
            T.tvm_storage_sync("shared")

    @T.macro
    def load_q(q, qs, b, h, q0, kc, tid):
        for e in U(QLOAD):
            idx: T.let[T.int32] = e * NT + tid
            if idx < BR * DK:
                row: T.let[T.int32] = q0 + idx // DK
                col: T.let[T.int32] = kc * DK + idx % DK
                if row < SQ and col < D:
                    qs[idx // DK, idx % DK] = q[b, row, h, col]
                else:
                    qs[idx // DK, idx % DK] = T.cast(0, dtype)

    @T.macro
    def load_kv(src, kvs, b, h, key0, col0, width, row_stride, cols, rounds, tid):
        """Key rows key0.. of src's columns col0..col0+width into kvs (rows row_stride
        apart), zero past the sequence or the columns."""
        for e in U(rounds):
            idx: T.let[T.int32] = e * NT + tid
            if idx < BC * width:
                key: T.let[T.int32] = key0 + idx // width
                col: T.let[T.int32] = col0 + idx % width
                if key < SKV and col < cols:
                    kvs[idx // width * row_stride + idx % width] = src[b, key, h, col]
                else:
                    kvs[idx // width * row_stride + idx % width] = T.cast(0, dtype)

    @T.prim_func(private=True, s_tir=True)
    def main(q: T.Buffer((B, SQ, H, D), dtype), k: T.Buffer((B, SKV, H, D), dtype),
             v: T.Buffer((B, SKV, H, DV), dtype), out: T.Buffer((B, SQ, H, DV), dtype)):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        for bx in (T.thread_binding(NWG, thread="blockIdx.x") if GPU else T.parallel(NWG)):
            for ty in (T.thread_binding(TY, thread="threadIdx.y") if GPU else T.serial(TY)):
                for tx in (T.thread_binding(TX, thread="threadIdx.x") if GPU else T.serial(TX)):
                    with T.sblock("attention"):
                        T.reads(q[0:B, 0:SQ, 0:H, 0:D], k[0:B, 0:SKV, 0:H, 0:D],
                                v[0:B, 0:SKV, 0:H, 0:DV])
                        T.writes(out[0:B, 0:SQ, 0:H, 0:DV])
                        qs = T.sblock_alloc_buffer((BR, DK), dtype, scope=SMEM)
                        kvs = T.sblock_alloc_buffer((KVS,), dtype, scope=SMEM)
                        ss = T.sblock_alloc_buffer((BR, BC), "float32", scope=SMEM)
                        red = T.sblock_alloc_buffer((BR, TX), "float32", scope=SMEM)
                        s_loc = T.sblock_alloc_buffer((RY, RX), "float32", scope="local")
                        acc = T.sblock_alloc_buffer((RY, NV), "float32", scope="local")
                        m_loc = T.sblock_alloc_buffer((RY,), "float32", scope="local")
                        l_loc = T.sblock_alloc_buffer((RY,), "float32", scope="local")
                        a_loc = T.sblock_alloc_buffer((RY,), "float32", scope="local")

                        tid: T.let[T.int32] = ty * TX + tx
                        bh: T.let[T.int32] = bx // NQT
                        b: T.let[T.int32] = bh // H
                        h: T.let[T.int32] = bh % H
                        q0: T.let[T.int32] = (bx % NQT) * BR
                        for i in U(RY):
                            m_loc[i] = T.float32(NEG)
                            l_loc[i] = T.float32(0)
                            for n in U(NV):
                                acc[i, n] = T.float32(0)
                        if Q_ONCE:
                            load_q(q, qs, b, h, q0, 0, tid)
                        for kt in T.serial(NKT):
                            # scores of this key tile, accumulated over head-dim chunks
                            for i in U(RY):
                                for j in U(RX):
                                    s_loc[i, j] = T.float32(0)
                            for kc in T.serial(NKC):
                                sync()
                                if not Q_ONCE:
                                    load_q(q, qs, b, h, q0, kc, tid)
                                load_kv(k, kvs, b, h, kt * BC, kc * DK, DK, KPAD, D, KLOAD,
                                        tid)
                                sync()
                                for dd in U(DK):
                                    for i in U(RY):
                                        for j in U(RX):
                                            s_loc[i, j] = s_loc[i, j] + (
                                                T.cast(qs[ty + TY * i, dd], "float32")
                                                * T.cast(kvs[(tx + TX * j) * KPAD + dd],
                                                         "float32"))
                            # online softmax: the row's new running max from each thread's
                            # max over its own columns (TX partials, not BC scores, per row)
                            for i in U(RY):
                                a_loc[i] = T.float32(NEG)
                                for j in U(RX):
                                    if kt * BC + tx + TX * j < SKV:
                                        a_loc[i] = T.max(a_loc[i],
                                                         s_loc[i, j] * T.float32(scale))
                                red[ty + TY * i, tx] = a_loc[i]
                            sync()
                            for i in U(RY):
                                a_loc[i] = m_loc[i]
                                for t in U(TX):
                                    a_loc[i] = T.max(a_loc[i], red[ty + TY * i, t])
                            # P to workgroup memory (the previous tile's P was read before
                            # this tile's first barrier); l is each thread's partial sum over
                            # its own columns, summed across the row once, at the end
                            for i in U(RY):
                                m_new: T.let[T.float32] = a_loc[i]
                                a_loc[i] = T.exp(m_loc[i] - m_new)
                                m_loc[i] = m_new
                                l_loc[i] = l_loc[i] * a_loc[i]
                                for j in U(RX):
                                    if kt * BC + tx + TX * j < SKV:
                                        p: T.let[T.float32] = T.exp(
                                            s_loc[i, j] * T.float32(scale) - m_new)
                                        ss[ty + TY * i, tx + TX * j] = p
                                        l_loc[i] = l_loc[i] + p
                                    else:
                                        ss[ty + TY * i, tx + TX * j] = T.float32(0)
                                for n in U(NV):
                                    acc[i, n] = acc[i, n] * a_loc[i]
                            sync()  # P complete, red read; the K chunk is read, V may come
                            # acc += P V, value chunk by value chunk
                            for vc in UV(NVC):
                                if NVC > 1:
                                    sync()
                                load_kv(v, kvs, b, h, kt * BC, vc * DVK, DVK, DVK, DV, VLOAD,
                                        tid)
                                sync()
                                for c in (T.unroll(BC) if cfg.unroll_keys else T.serial(BC)):
                                    for i in U(RY):
                                        for n in U(VPT):
                                            acc[i, vc * VPT + n] = acc[i, vc * VPT + n] + (
                                                ss[ty + TY * i, c]
                                                * T.cast(kvs[c * DVK + tx + TX * n], "float32"))
                        # the row sums: each thread's partial l, summed over the row's threads
                        # (the last tile's reads of red came before a barrier of its V loop)
                        for i in U(RY):
                            red[ty + TY * i, tx] = l_loc[i]
                        sync()
                        for i in U(RY):
                            l_loc[i] = T.float32(0)
                            for t in U(TX):
                                l_loc[i] = l_loc[i] + red[ty + TY * i, t]
                        for i in U(RY):
                            for vc in UV(NVC):
                                for n in U(VPT):
                                    row: T.let[T.int32] = q0 + ty + TY * i
                                    col: T.let[T.int32] = vc * DVK + tx + TX * n
                                    if row < SQ and col < DV:
                                        out[b, row, h, col] = T.cast(
                                            acc[i, vc * VPT + n] / l_loc[i], dtype)

    func = main
    if GPU:
        func = func.with_attr("tirx.is_scheduled", True)
    return func


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


# ---- the Relax pass ---------------------------------------------------------------------------

_ATTENTION = tvm.ir.Op.get("relax.nn.attention")
_PERMUTE = tvm.ir.Op.get("relax.permute_dims")


def _static_shape(expr) -> list[int] | None:
    ty = expr.ty
    if getattr(ty, "shape", None) is None:
        return None
    dims = [getattr(d, "value", None) for d in ty.shape.values]
    return None if any(not isinstance(d, int) for d in dims) else dims


def _axes(call) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    """relax.nn.attention -> call_tir of our kernel; permute_dims(permute_dims(x)) -> one
    permute (or x itself): the importer wraps SDPA in transposes that undo PyTorch's."""

    def __init__(self, mod: tvm.IRModule, gpu: bool, target_kind: str, tensor_cores: bool):
        super().__init__(mod)
        self.gpu, self.target_kind, self.tensor_cores = gpu, target_kind, tensor_cores
        self.kernels: dict = {}

    def visit_var_binding_(self, binding):
        value = self.visit_expr(binding.value)
        if isinstance(value, relax.Var) and not isinstance(binding.value, relax.Var):
            self.set_var_remap(binding.var, value)  # a folded permute pair: no alias
            return
        super().visit_var_binding_(binding)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op.same_as(_PERMUTE):
            return self._fold_permute(call)
        if call.op.same_as(_ATTENTION):
            return self._attention(call)
        return call

    def _fold_permute(self, call):
        outer = _axes(call)
        inner = self.lookup_binding(call.args[0]) if isinstance(call.args[0], relax.Var) \
            else None
        if outer is None or not isinstance(inner, relax.Call) \
                or not inner.op.same_as(_PERMUTE) or _axes(inner) is None:
            return call
        return fold_permutes(inner.args[0], _axes(inner), outer)

    def _attention(self, call):
        q, k, v = call.args
        dtype = str(q.ty.dtype)
        shapes = [_static_shape(x) for x in (q, k, v)]
        supported = (
            call.attrs.causal_mask is None and call.attrs.window_size is None
            and dtype in ("float16", "float32")
            and all(str(x.ty.dtype) == dtype for x in (k, v))
            and all(s is not None and len(s) == 4 for s in shapes))
        if not supported:
            return self._fallback(call, dtype)
        (b, sq, h, d), (_, skv, _, _), (_, _, _, dv) = shapes
        scale = call.attrs.scale
        shape = Shape(b, sq, skv, h, d, dv, dtype,
                      default_scale(d) if scale is None else float(scale.value))
        if shape not in self.kernels:
            self.kernels[shape] = self.builder_.add_func(self._kernel(shape), "wsd_attention")
        return relax.call_tir(self.kernels[shape], [q, k, v],
                              relax.TensorType([b, sq, h, dv], dtype))

    def _kernel(self, shape: Shape) -> tvm.tirx.PrimFunc:
        """The tensor-core kernel where the target has them and it covers the shape,
        else the scalar flash kernel in this target's layout."""
        if self.tensor_cores:
            cfg = attention_wmma.choose_config(shape)
            if cfg is not None:
                return attention_wmma.attention_func(shape, cfg)
        return kernel_for(self.target_kind, shape, self.gpu)

    def _fallback(self, call, dtype):
        """What our kernel does not cover (masks, dynamic shapes) goes to TVM's lowering,
        in float32 for half precision (fp16 softmax sums lose too much)."""
        if dtype != "float16":
            return call
        args = [relax.op.astype(x, "float32") for x in call.args]
        attrs = call.attrs
        out = relax.op.nn.attention(*args, scale=attrs.scale, causal_mask=attrs.causal_mask,
                                    window_size=attrs.window_size)
        return relax.op.astype(out, dtype)


def flash_attention(target: tvm.target.Target) -> tvm.transform.Pass:
    """The pass: every `relax.nn.attention` becomes a call of our kernel, laid out for the
    target (GPU layout for targets with the "gpu" key, the one-thread layout otherwise;
    tensor cores on CUDA GPUs that have them, sm_70 and later)."""
    gpu = "gpu" in [str(key) for key in target.keys]
    tensor_cores = target.kind.name == "cuda" and sm_version(target) >= 70

    @tvm.transform.module_pass(opt_level=0, name="wsd.FlashAttention")
    def run(mod, _ctx):
        rewriter = _Rewriter(mod, gpu, target.kind.name, tensor_cores)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return run
