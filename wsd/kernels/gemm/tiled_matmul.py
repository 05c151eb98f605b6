"""Our GEMM schedule for GPUs without tensor cores (WebGPU first): workgroup tiles in
workgroup memory, a register tile per invocation, fragments read from workgroup memory into
registers once per k step.

It takes the same kernels dlight's `gpu.Matmul` takes (one reduction block of the form
C[S, I, J] += A[S, I, K] * B[S, J, K] after re-indexing, with element-wise producers and
consumers fused around it). A conv2d legalized in NCHW is such a kernel: its input read
`pad[n, c, y + ry, x + rx]` makes I = (n, y, x), J = f, K = (c, ry, rx), and the re-indexed
A operand is the im2col matrix, which is never materialised: the padding block is inlined
into the copy that fills workgroup memory (implicit GEMM).

Per workgroup a BM x BN tile of C; per invocation a TM x TN register tile, so the workgroup
has (BM / TM) * (BN / TN) invocations. Each k step of BK copies A's BM x BK and B's BN x BK
slices to workgroup memory, stored k-major (As[k][i], Bs[k][j]) so that an invocation's TM
(TN) operands for one k are adjacent; each invocation then loads its TM + TN operands into
registers and does TM * TN multiply-adds. The copies walk the source in its contiguous
direction (chosen from the access pattern) so that neighbouring invocations read
neighbouring addresses.

Staged copies (`staged`, WebGPU's records): WGSL clamps every index into a workgroup array
that it cannot prove in bounds, so a fragment of four scalars costs four clamped loads. With
the copy staged through registers, each invocation stores a run of adjacent rows as one
vector, TVM declares the workgroup buffers as arrays of vectors, and a fragment is one load.
On an H100 through Vulkan that made 150 of 164 stored kernels faster (1.13x median).

Split-K (`split_k` > 1) is for GEMMs with too few output tiles to fill the GPU (SD v1.5's
UNet at 16x16 and 8x8 latents: 10-40 workgroups of 128x128 for 132 compute units): K is cut
into parts, each part's tiles are workgroups of their own writing fp32 partial products to a
workspace (TVM's rfactor), and a second kernel sums each output's parts and runs the
epilogue. WGSL has no float atomics, so the sum is a kernel, not an atomic add.

F16 partial sums (`f16_partials`, kernels with fp16 operands): the BK products of one k step
are summed in f16 registers, four rows per vec4<f16> FMA, and added to the fp32 accumulators
once per step: fp32 over K, f16 within a step (TIR's rfactor over the k step, see
_partials_at and _in_f16). GPUs with double-rate f16 run the FMAs at twice the fp32 rate, and
no operand is converted to fp32 per multiply-add. It costs accuracy: about 7e-4 relative
error per GEMM against 3e-5 with fp32 sums (hash inputs, K 320 to 11520), which the gate's
fp16 bound (2e-3) admits.

The rule is parameterised (`Config`); which parameters a kernel gets is decided by
measurement (wsd.tuning.tune) and stored in a records database (wsd.kernels.gemm.records). Without a
record the rule is not applied: dlight's default stays in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.matmul import (
    auto_inline_consumer_chain,
    auto_inline_consumers,
    auto_inline_producers,
    detect_iter_traits,
    get_index_map,
    get_reduction_blocks,
    IterKind,
)

from wsd.kernels.gemm.rule_params import RuleParams

NAME = "tiled_matmul"

# WebGPU's portable limits (the spec's defaults): a schedule that stays inside them runs on
# every adapter.
MAX_INVOCATIONS = 256
MAX_WORKGROUP_BYTES = 16384

# (A, B, sums) dtypes of the kernels f16_partials applies to: fp16 operands, fp32 sums
F16_PARTIALS_DTYPES = ["float16", "float16", "float32"]


@dataclass(frozen=True)
class Config(RuleParams):
    rule: ClassVar[str] = NAME

    bm: int = 64        # workgroup tile rows (I)
    bn: int = 64        # workgroup tile columns (J)
    bk: int = 8         # reduction slice per step
    tm: int = 4         # register tile rows per invocation
    tn: int = 4         # register tile columns per invocation
    tm_vec: int = 4     # the register tile's rows come in runs of tm_vec adjacent rows
    tn_vec: int = 4     # likewise for columns
    x_is_j: bool = True  # threadIdx.x runs along J (else along I)
    pad: int = 4        # words of padding per workgroup-memory row (bank conflicts)
    unroll: int = 256
    pipeline: bool = False  # double-buffered tiles: copy step k+1 while computing step k
    split_k: int = 1    # K in this many parts, each a workgroup of its own (split-K)
    taps_outer: bool = False  # convolutions: K as (ry, rx, c), so one BK step is one tap
    staged: bool = False  # copies through registers, stored as vectors (see to_shared)
    f16_partials: bool = False  # fp16 operands: each k step's products summed in f16

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def workgroup_bytes(self, a_bytes: int = 4, b_bytes: int = 4) -> int:
        one = self.bk * ((self.bm + self.pad) * a_bytes + (self.bn + self.pad) * b_bytes)
        return one * (2 if self.pipeline else 1)

    def label(self) -> str:
        return (f"{NAME}:{self.bm}x{self.bn}x{self.bk}/{self.tm}x{self.tn}"
                f"/v{self.tm_vec}{self.tn_vec}/{'xj' if self.x_is_j else 'xi'}/p{self.pad}"
                + ("/pipe" if self.pipeline else "")
                + (f"/sk{self.split_k}" if self.split_k > 1 else "")
                + ("/taps" if self.taps_outer else "")
                + ("/st" if self.staged else "")
                + ("/h" if self.f16_partials else ""))

    def check(self) -> None:
        for name in ("bm", "bn", "bk", "tm", "tn", "tm_vec", "tn_vec", "split_k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive: {self}")
        if self.bm % self.tm or self.bn % self.tn or self.tm % self.tm_vec \
                or self.tn % self.tn_vec:
            raise ValueError(f"tiles must divide: {self}")
        if self.f16_partials and self.pipeline:
            raise ValueError(f"f16 partials are not pipelined: {self}")
        if self.threads > MAX_INVOCATIONS:
            raise ValueError(f"{self.threads} invocations > {MAX_INVOCATIONS}: {self}")


def _fast_axis(block: tirx.Block, read_index: int, kinds: dict) -> str:
    """Which GEMM axis ('I'/'J' or 'K') of operand `read_index` walks the source buffer's
    contiguous dimension longest: the copy to workgroup memory goes along it."""
    region = block.reads[read_index].region
    last = region[-1].min
    used = tirx.analysis.undefined_vars(last)
    run = {}
    for iv in block.iter_vars:
        if any(u.same_as(iv.var) for u in used) and iv.var in kinds:
            kind = kinds[iv.var]
            extent = int(iv.dom.extent) if isinstance(iv.dom.extent, tirx.IntImm) else 1 << 30
            run[kind] = max(run.get(kind, 0), extent)
    if not run:
        return "K"
    return max(run, key=lambda k: (run[k], k == "K"))


def matmul_traits(func: tirx.PrimFunc):
    """(I, J, K) extents and the contiguous axis of A and B, or None if not a GEMM kernel."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    reductions = get_reduction_blocks(sch, blocks)
    if reductions is None:
        return None
    block = sch.get(reductions[0])
    traits = detect_iter_traits(block)
    if traits is None or get_index_map(block) is None:
        return None
    kinds = {}
    extents = {"S": 1, "I": 1, "J": 1, "K": 1}
    names = {IterKind.kIter_S: "S", IterKind.kIter_I: "I", IterKind.kIter_J: "J",
             IterKind.kIter_K: "K"}
    for iv, trait in zip(block.iter_vars, traits[3]):
        if trait.kind in names:
            kinds[iv.var] = names[trait.kind]
            if not isinstance(iv.dom.extent, tirx.IntImm):
                return None  # dynamic shapes: not handled here
            extents[names[trait.kind]] *= int(iv.dom.extent)
    a_fast = _fast_axis(block, 0, kinds)
    b_fast = _fast_axis(block, 1, kinds)
    return {"extents": extents, "a_fast": "K" if a_fast == "K" else "I",
            "b_fast": "K" if b_fast == "K" else "J",
            "dtypes": [str(block.reads[0].source.dtype), str(block.reads[1].source.dtype),
                       str(block.writes[0].source.dtype)]}


def apply(func: tirx.PrimFunc, config: Config) -> s_tir.Schedule | None:
    """Schedule `func` with `config`; None if the kernel is not a GEMM of this rule's kind."""
    config.check()
    info = matmul_traits(func)
    if info is None:
        return None
    if config.f16_partials and info["dtypes"] != F16_PARTIALS_DTYPES:
        raise ValueError(f"f16 partials need fp16 operands and fp32 sums, not {info['dtypes']}")
    sch = s_tir.Schedule(func)
    main = main_block(sch)
    if config.taps_outer:
        _taps_outer(sch, main)
    normalize(sch, main)
    sch.pad_einsum(main, [1, config.bm, config.bn, config.bk * config.split_k])
    total = None
    if config.split_k > 1:
        # Split-K: main becomes the GEMM of one K part into a global buffer of partial
        # products (rfactor), and the original block their sum, scheduled with the epilogue
        # as a second kernel (_sum_parts).
        s, i, j, k = sch.get_loops(main)
        part, k = sch.split(k, [config.split_k, None])
        total, main = main, sch.rfactor(part, factor_axis=0)
    mac = main  # the block that multiplies and adds
    if config.f16_partials:
        # Each BK step's products summed in f16 registers (a partial the size of the
        # register tile, vec4 along I), then added to the fp32 accumulators: TIR's rfactor
        # over the k step makes `mac` the per-step sum and `main` the sum of the steps.
        k = sch.get_loops(main)[-1]
        k_step, _ = sch.split(k, [None, config.bk])
        mac = sch.rfactor(k_step, factor_axis=0)
    *lead, k = sch.get_loops(main)
    if total is None:
        s, i, j = lead
    else:
        s, i, j, part = lead

    # 2. Tiles: i = bi*BM + io*(TY*tm_vec) + ty*tm_vec + iv, likewise j; k = ko*BK + ki.
    # The strided chunks (io, jo) are virtual threads: each chunk's accumulators are a dense
    # box, so the write-back covers exactly what the invocation computed.
    ty_n, tx_n = config.bm // config.tm, config.bn // config.tn
    bi, io, ty, iv = sch.split(i, [None, config.tm // config.tm_vec, ty_n, config.tm_vec])
    bj, jo, tx, jv = sch.split(j, [None, config.tn // config.tn_vec, tx_n, config.tn_vec])
    if config.f16_partials:
        ko = k  # main's k is already in steps; mac has the k within one (ki, set below)
        inner_k = [ko]
    else:
        ko, ki = sch.split(k, [None, config.bk])
        inner_k = [ko, ki]
    if total is None:
        sch.reorder(s, bi, bj, io, jo, ty, tx, *inner_k, iv, jv)
        bi = sch.fuse(s, bi)
    else:  # the K part is the outermost workgroup index
        sch.reorder(part, s, bi, bj, io, jo, ty, tx, *inner_k, iv, jv)
        bi = sch.fuse(part, s, bi)
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(io, "vthread.y")
    sch.bind(jo, "vthread.x")
    if config.x_is_j:
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
    else:
        # threadIdx.x along I: the loop order stays; the tags swap.
        sch.bind(ty, "threadIdx.x")
        sch.bind(tx, "threadIdx.y")
    inner = tx
    if config.unroll > 0:
        sch.annotate(inner, "pragma_auto_unroll_max_step", config.unroll)
        sch.annotate(inner, "pragma_unroll_explicit", 1)

    # 3. Accumulators in registers; the epilogue (bias, residual, ...) runs on them.
    acc = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(acc, inner, preserve_unit_loops=True)
    if mac is not main:
        ki = _partials_at(sch, mac, ko)

    # 4. Operands to workgroup memory, k-major, copied along the source's contiguous axis.
    nthreads = ty_n * tx_n

    def spread(block, rows: int, fast: str, run: int):
        """The copy of a rows x BK tile over the invocations, along the source's contiguous
        axis; with run > 1 each invocation takes `run` adjacent rows of one k at a time (the
        innermost loop, returned)."""
        s_, row, kk = sch.get_loops(block)[-3:]  # (S, row, k) of the tile
        if (rows * config.bk // run) % nthreads:
            raise ValueError(f"tile {rows}x{config.bk} does not split over {nthreads} threads")
        inner = []
        if run > 1:
            row, rv = sch.split(row, [None, run])
            inner = [rv]
        order = [s_, row, kk] if fast == "K" else [s_, kk, row]
        sch.reorder(*order, *inner)
        o, t_y, t_x = sch.split(sch.fuse(*order), [None, ty_n, tx_n])
        sch.bind(t_y, "threadIdx.y" if config.x_is_j else "threadIdx.x")
        sch.bind(t_x, "threadIdx.x" if config.x_is_j else "threadIdx.y")
        sch.unroll(o)
        return t_x, inner

    def to_shared(index: int, rows: int, fast: str, vec: int, lanes: int):
        """The copy to workgroup memory; returns the block that reads the source."""
        block = sch.cache_read(mac, index, "shared")
        sch.compute_at(block, ko, preserve_unit_loops=True)
        source = block
        if config.staged and vec > 1 and (rows * config.bk // vec) % nthreads == 0:
            # Through registers, so that each invocation stores its run of rows as one
            # vector: the workgroup buffer becomes an array of vectors and step 5's
            # fragment reads one vector load each (a scalar array costs a bounds-clamped
            # load per element in WGSL). A tile with too few runs for every invocation is
            # copied as unstaged (TVM types a buffer by the one width of all its accesses).
            t_x, (inner,) = spread(block, rows, fast, vec)
            source = sch.cache_read(block, 0, "local")
            sch.compute_at(source, t_x, preserve_unit_loops=True)
            sch.unroll(sch.get_loops(source)[-1])
            sch.vectorize(inner)
        else:
            spread(block, rows, fast, 1)
        # k-major storage, the row split as the register tiles split it:
        # [S, row, k] -> [S, k, row // (lanes * vec), row % (lanes * vec)], so that one
        # invocation's operands for one k form a dense [chunks, vec] box.
        span = lanes * vec
        sch.transform_layout(block, ("write", 0),
                             lambda s_, r, kk: (s_, kk, r // span, r % span))
        if config.pad:
            sch.storage_align(block, 0, axis=1, factor=32, offset=config.pad)
        return source

    a_src = to_shared(0, config.bm, info["a_fast"], config.tm_vec, ty_n)
    b_src = to_shared(1, config.bn, info["b_fast"], config.tn_vec, tx_n)

    # 5. Per k: the invocation's TM (TN) operands from workgroup memory into registers.
    a_reg = sch.cache_read(mac, 0, "local")
    b_reg = sch.cache_read(mac, 1, "local")
    sch.compute_at(a_reg, ki, preserve_unit_loops=True)
    sch.compute_at(b_reg, ki, preserve_unit_loops=True)
    for reg, vec in ((a_reg, config.tm_vec), (b_reg, config.tn_vec)):
        loops = sch.get_loops(reg)
        if vec > 1 and _extent(sch, loops[-1]) == vec:
            sch.vectorize(loops[-1])

    auto_inline_producers(sch, a_src)
    auto_inline_producers(sch, b_src)
    if total is None:
        auto_inline_consumer_chain(sch, acc)
    else:
        _sum_parts(sch, total, config.threads)
    sch.decompose_reduction(main, ko)
    if mac is not main:
        return _in_f16(sch, mac, sch.decompose_reduction(mac, ki))
    if config.pipeline:
        # ko's body: [copy A, copy B, the ki loop]; the copies of step k+1 go ahead of
        # the compute of step k, in a second buffer (TVM's InjectSoftwarePipeline).
        sch.annotate(ko, "software_pipeline_stage", [0, 0, 1])
        sch.annotate(ko, "software_pipeline_order", [0, 1, 2])
    return sch


def _partials_at(sch: s_tir.Schedule, mac, ko):
    """Place the partial sums of one k step (mac) in main's k step loop: loops (k, J run,
    I run), the sums in registers with I innermost, so that a run of rows is one vector.
    Returns mac's k loop."""
    sch.compute_at(mac, ko, preserve_unit_loops=True)
    *_, i_run, j_run, k_in = sch.get_loops(mac)[-5:]
    sch.reorder(k_in, j_run, i_run)
    sch.set_scope(mac, 0, "local")
    ndim = len(sch.get(mac).writes[0].source.shape)  # (step, [part,] s, i, j)
    sch.transform_layout(mac, ("write", 0), tirx.IndexMap.from_func(
        lambda *idx: (*idx[:-2], idx[-1], idx[-2]), ndim=ndim))
    return k_in


def _in_f16(sch: s_tir.Schedule, mac, init) -> s_tir.Schedule:
    """Make the partial sums f16, and their arithmetic: unsafe_set_dtype types the buffer
    but leaves the update as cast(f16, f32(p) + f32(a) * f32(b)), which becomes p + a * b
    here. The I run is vectorized (a vec4<f16> FMA per four rows; the schedule's vectorize
    refuses a reduction block under a loop without its k, so that is done here too)."""
    sch.unsafe_set_dtype(mac, 0, "float16")
    vector_loops = [sch.get(sch.get_loops(b)[-1]) for b in (init, mac)]
    vector_vars = [loop.loop_var for loop in vector_loops if int(loop.extent) > 1]
    partials = sch.get(mac).writes[0].source
    func = sch.mod["main"]
    rewritten = []

    def vectorize(op):
        if not any(op.loop_var.same_as(v) for v in vector_vars):
            return op
        return tirx.For(op.loop_var, op.min, op.extent, tirx.ForKind.VECTORIZED, op.body,
                        op.thread_binding, op.annotations)

    def to_f16(op):
        value = op.value
        if not (op.buffer.same_as(partials) and isinstance(value, tirx.Cast)
                and isinstance(value.value, tirx.Add) and isinstance(value.value.b, tirx.Mul)):
            return op
        terms = [value.value.a, value.value.b.a, value.value.b.b]
        if not all(isinstance(t, tirx.Cast) for t in terms):
            return op
        p, a, b = (t.value for t in terms)
        rewritten.append(op)
        return tirx.BufferStore(op.buffer, tirx.Add(p, tirx.Mul(a, b)), op.indices)

    body = tvm_ffi.structural_map(func.body, [(tirx.BufferStore, to_f16), (tirx.For, vectorize)])
    if len(rewritten) != 1:
        raise RuntimeError(f"f16 partials: {len(rewritten)} updates of the partial sums "
                           "had the expected form, not 1")
    return s_tir.Schedule(func.with_body(body))


def _sum_parts(sch: s_tir.Schedule, total, threads: int) -> None:
    """Split-K's second kernel: each invocation sums one output's partial products and runs
    the epilogue (the re-indexing back to the output layout, bias, residual, ...) on it."""
    auto_inline_consumers(sch, total)  # the epilogue's blocks into the last one
    # normalize's re-indexing of C always consumes the sum, so there is a last block
    sink = sch.get_consumers(total)[0]
    while consumers := sch.get_consumers(sink):
        sink = consumers[0]
    _inline_producers(sch, sink, keep=total)  # what else the epilogue reads (broadcasts)
    bx, tx = sch.split(sch.fuse(*sch.get_loops(sink)), [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    sch.compute_at(total, tx, preserve_unit_loops=True)
    sch.set_scope(total, 0, "local")  # one sum per invocation, in a register


def _inline_producers(sch: s_tir.Schedule, block, keep) -> None:
    """Inline every producer of `block` except `keep` (and what `keep` reads)."""
    while True:
        inlined = False
        for producer in sch.get_producers(block):
            if sch.get(producer).same_as(sch.get(keep)):
                continue
            try:
                sch.compute_inline(producer)
                inlined = True
            except s_tir.ScheduleError:
                continue
        if not inlined:
            return


def is_convolution(func: tirx.PrimFunc) -> bool:
    """A GEMM kernel whose reduction has more than one axis (channels and filter taps)."""
    sch = s_tir.Schedule(func)
    block = sch.get(main_block(sch))
    return sum(iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars) > 1


def _taps_outer(sch: s_tir.Schedule, main) -> None:
    """A convolution's reduction (c, ry, rx) -> (ry, rx, c): with BK dividing C, a k step
    reads one filter tap, so the implicit im2col's index arithmetic (which tap, which
    channel, is the pixel in the padding) is per step, not per element."""
    block = sch.get(main)
    reduce = [n for n, iv in enumerate(block.iter_vars)
              if iv.iter_type == tirx.IterVar.CommReduce]
    extents = [int(block.iter_vars[n].dom.extent) for n in reduce]
    order = sorted(range(len(reduce)), key=lambda n: extents[n] >= max(extents))
    if order != list(range(len(reduce))):
        spatial = [n for n in range(len(block.iter_vars)) if n not in reduce]
        sch.reorder_block_iter_var(main, spatial + [reduce[n] for n in order])
        loops = sch.get_loops(main)[-len(reduce):]  # the loops follow (normalize needs it)
        sch.reorder(*[loops[n] for n in order])


def normalize(sch: s_tir.Schedule, main) -> None:
    """Re-index the reduction block to C[S, I, J] += A[S, I, K] * B[S, J, K]."""
    reindex_a = sch.reindex(main, ("read", 0))
    reindex_b = sch.reindex(main, ("read", 1))
    reindex_c = sch.reindex(main, ("write", 0))
    matmul_map, a_map, b_map, c_map = get_index_map(sch.get(main))
    sch.transform_layout(reindex_a, ("write", 0), a_map)
    sch.transform_layout(reindex_b, ("write", 0), b_map)
    sch.transform_layout(reindex_c, ("read", 0), c_map)
    sch.transform_block_layout(main, matmul_map)


def main_block(sch: s_tir.Schedule):
    blocks = sch.get_child_blocks(get_root_block(sch))
    return get_reduction_blocks(sch, blocks)[0]


def _extent(sch, loop) -> int:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else -1
