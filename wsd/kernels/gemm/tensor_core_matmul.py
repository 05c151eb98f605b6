"""Our GEMM schedule for NVIDIA tensor cores (CUDA, fp16 operands, fp32 accumulators).

It takes the kernels of `wsd.kernels.gemm.tiled_matmul` (one reduction block that re-indexes to
C[S, I, J] += A[S, I, K] * B[S, J, K], element-wise producers and consumers fused around it;
convolutions as implicit GEMM) when both operands are fp16 and run along K in memory, which
is what wsd.compiler.layout gives every convolution (NHWC data, OHWI weights) and linear layer (NT) on
CUDA. dlight's tensor-core rule takes the same kernels with one fixed shape (16 warps of 32x32
per 128x128 block, copies through registers); this rule is parameterised, and which
parameters a kernel gets is measured (`python -m wsd.tuning.tune export --target cuda`, then
`python -m wsd.tuning.cuda_bench`) and stored as a record.

Per thread block a BM x BN tile of C, split over warps_m x warps_n warps; each warp owns a
frag_m x frag_n grid of 16x16 wmma accumulators, so one A fragment serves frag_n products and
one B fragment frag_m. Each k step copies A's BM x BK and B's BN x BK slices to shared memory
with cp.async (16-byte vectors; the convolution's zero padding becomes the copy's zero-fill),
`stages` steps in flight. The accumulators leave through shared memory, where the fused
epilogue (bias, residual, casts) runs before the coalesced store to global memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tvm import s_tir, tirx
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, auto_inline_producers

from wsd.kernels.gemm import cuda_arch
from wsd.kernels.gemm import tiled_matmul
from wsd.kernels.gemm.rule_params import RuleParams

NAME = "tensor_core_matmul"
FRAGMENT = 16               # wmma m16n16k16
WARP = 32
MAX_THREADS = 1024
# Candidates stay within sm_80's opt-in shared memory per block (163 KiB; Hopper has 227),
# so records run on A100s too; `supported` passes over them on GPUs with less (wsd.kernels.gemm.cuda_arch).
MAX_SHARED_BYTES = 163 * 1024
MAX_STATIC_SHARED_BYTES = 48 * 1024
# What building a kernel so scheduled needs: the pipelined copies become cp.async only with
# this pass-context option (wsd.compiler.pipeline sets it for CUDA builds, wsd.tuning.cuda_bench for its own).
PASS_CONFIG = {"tirx.use_async_copy": True}


@dataclass(frozen=True)
class Config(RuleParams):
    rule: ClassVar[str] = NAME

    warps_m: int = 2        # warps along I
    warps_n: int = 2        # warps along J
    frag_m: int = 4         # 16x16 accumulators per warp along I
    frag_n: int = 4         # ... along J
    chunk: int = 2          # 16-deep k fragments per step: BK = 16 * chunk
    stages: int = 3         # k steps in flight (cp.async pipeline); 1: copy, then compute
    vec: int = 8            # fp16 elements per copy instruction (8 = 16 bytes)
    pad: int = 8            # fp16 elements of padding per shared-memory row (bank conflicts)
    # The accumulators' staging in static shared memory (at most 48 KiB) instead of reusing
    # the operands' dynamic shared memory: for some tile shapes TVM 0.27's lowering resolves
    # the reused memory's fp32 view to an fp16 operand's and fails ("tvm_access_ptr element
    # type must match"); `wsd.tuning.tune export` drops a candidate that fails to lower.
    static_staging: bool = False

    @property
    def bm(self) -> int:
        return FRAGMENT * self.warps_m * self.frag_m

    @property
    def bn(self) -> int:
        return FRAGMENT * self.warps_n * self.frag_n

    @property
    def bk(self) -> int:
        return FRAGMENT * self.chunk

    @property
    def threads(self) -> int:
        return WARP * self.warps_m * self.warps_n

    def operand_bytes(self, rows: int) -> int:
        """One operand's shared buffer (fp16, every stage)."""
        return self.stages * rows * (self.bk + self.pad) * 2

    def staging_bytes(self) -> int:
        return self.bm * (self.bn + 4) * 4

    def shared_bytes(self) -> int:
        """Both operand buffers and the epilogue's staging (which reuses the operands'
        dynamic shared memory unless static_staging)."""
        operands = self.operand_bytes(self.bm) + self.operand_bytes(self.bn)
        if self.static_staging:
            return operands + self.staging_bytes()
        return max(operands, self.staging_bytes())

    def check(self) -> None:
        for name in ("warps_m", "warps_n", "frag_m", "frag_n", "chunk", "stages", "vec"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive: {self}")
        if self.threads > MAX_THREADS:
            raise ValueError(f"{self.threads} threads > {MAX_THREADS}: {self}")
        if self.vec not in (2, 4, 8):
            raise ValueError(f"vec must be 2, 4 or 8 (cp.async copies 4, 8 or 16 bytes): {self}")
        for rows in (self.bm, self.bn):
            if (rows * self.bk) % (self.threads * self.vec):
                raise ValueError(f"a {rows}x{self.bk} tile does not split into "
                                 f"{self.threads} threads x {self.vec}: {self}")
        if self.shared_bytes() > MAX_SHARED_BYTES:
            raise ValueError(f"{self.shared_bytes()} B of shared memory: {self}")
        if self.static_staging and self.staging_bytes() > MAX_STATIC_SHARED_BYTES:
            raise ValueError(f"{self.staging_bytes()} B of static shared memory: {self}")

    def label(self) -> str:
        return (f"{NAME}:{self.bm}x{self.bn}x{self.bk}/w{self.warps_m}x{self.warps_n}"
                f"/s{self.stages}/v{self.vec}/p{self.pad}" + ("/st" if self.static_staging else ""))


def supported(target, config: Config) -> bool:
    """Whether a kernel so scheduled runs on the target's GPU: cp.async needs sm_80 or
    later, and the block's shared memory must fit what the architecture lets it opt in to
    (99 KiB on sm_86/89, 163 on sm_80, 227 on sm_90)."""
    return (cuda_arch.sm_version(target) >= 80
            and config.shared_bytes() <= cuda_arch.optin_shared_bytes(target))


def applies(func: tirx.PrimFunc) -> bool:
    """fp16 x fp16 GEMM kernels whose operands both run along K in memory."""
    info = tiled_matmul.matmul_traits(func)
    return (info is not None and info["dtypes"][:2] == ["float16", "float16"]
            and info["a_fast"] == "K" and info["b_fast"] == "K")


def apply(func: tirx.PrimFunc, config: Config) -> s_tir.Schedule | None:
    """Schedule `func` with `config`; None if the kernel is not one this rule takes."""
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

    config.check()
    if not applies(func):
        return None
    sch = s_tir.Schedule(func)
    main = tiled_matmul.main_block(sch)
    tiled_matmul.normalize(sch, main)
    sch.pad_einsum(main, [1, config.bm, config.bn, config.bk])

    # 1. 16x16x16 tiles become one block each (the unit wmma computes).
    s, i, j, k = sch.get_loops(main)
    i, i_frag = sch.split(i, [None, FRAGMENT])
    j, j_frag = sch.split(j, [None, FRAGMENT])
    k, k_frag = sch.split(k, [None, FRAGMENT])
    sch.reorder(i, j, k, i_frag, j_frag, k_frag)
    inner = main
    outer = sch.blockize(i_frag)

    # 2. Thread blocks over (S, I) x J tiles, warps inside; per warp frag_m x frag_n tiles.
    bi, wi, fi = sch.split(i, [None, config.warps_m, config.frag_m])
    bj, wj, fj = sch.split(j, [None, config.warps_n, config.frag_n])
    ko, kc = sch.split(k, [None, config.chunk])
    sch.reorder(s, bi, bj, wi, wj, ko, kc, fi, fj)
    sch.bind(sch.fuse(s, bi), "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    warp = sch.fuse(wi, wj)
    sch.bind(warp, "threadIdx.y")

    # 3. Operand slices to shared memory, copied along K (contiguous in memory) in vectors.
    warps = config.warps_m * config.warps_n

    def to_shared(index: int):
        block = sch.cache_read(outer, index, "shared.dyn")
        sch.compute_at(block, ko)
        fused = sch.fuse(*sch.get_loops(block)[-2:])
        _, ty, tx, v = sch.split(fused, [None, warps, WARP, config.vec])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(v)
        if config.pad:
            sch.storage_align(block, 0, axis=-2, factor=16, offset=config.pad)
        return block

    a_shared = to_shared(0)
    b_shared = to_shared(1)
    auto_inline_producers(sch, a_shared)
    auto_inline_producers(sch, b_shared)

    # 4. Fragments: per k fragment, the warp's frag_m A and frag_n B tiles.
    a_frag = sch.cache_read(outer, 0, "wmma.matrix_a")
    b_frag = sch.cache_read(outer, 1, "wmma.matrix_b")
    sch.compute_at(a_frag, kc)
    sch.compute_at(b_frag, kc)

    # 5. Accumulators -> shared (fp32) -> epilogue -> global, per warp.
    staging_scope = "shared" if config.static_staging else "shared.dyn"
    staging = sch.cache_write(outer, 0, staging_scope)
    sch.storage_align(staging, 0, axis=-2, factor=16, offset=4)
    store = sch.cache_write(outer, 0, "wmma.accumulator")
    sch.reverse_compute_at(store, warp)
    sch.reverse_compute_at(staging, warp)
    si, sj = sch.get_loops(store)[-2:]
    si0, si1 = sch.split(si, [None, FRAGMENT])
    sj0, sj1 = sch.split(sj, [None, FRAGMENT])
    sch.reorder(si0, sj0, si1, sj1)

    init = sch.decompose_reduction(outer, ko)
    init_inner = sch.get_child_blocks(init)[0]

    # 6. Tensor-core intrinsics.
    intrins = get_wmma_intrin_group(load_scope="shared.dyn", store_scope=staging_scope,
                                    in_dtype="float16", out_dtype="float32", trans_b=True)
    for frag, name in ((a_frag, "load_a"), (b_frag, "load_b")):
        fr, fk = sch.get_loops(frag)[-2:]
        fr0, fr1 = sch.split(fr, [None, FRAGMENT])
        fk0, fk1 = sch.split(fk, [None, FRAGMENT])
        sch.reorder(fr0, fk0, fr1, fk1)
        sch.unroll(fr0)
        sch.unroll(fk0)
        sch.tensorize(fr1, intrins[name])
    sch.tensorize(sch.get_loops(init_inner)[-2], intrins["init"])
    sch.tensorize(sch.get_loops(store)[-2], intrins["store"])
    sch.tensorize(sch.get_loops(inner)[-3], intrins["compute"])

    auto_inline_consumer_chain(sch, staging)
    out = sch.fuse(*sch.get_loops(staging)[-2:])
    _, tx, v = sch.split(out, [None, WARP, 4])
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(v)

    # 7. Pipeline: ko's body is [copy A, copy B, the kc loop]; the copies run stages - 1
    # steps ahead, asynchronously (cp.async needs PASS_CONFIG at build).
    if config.stages > 1:
        sch.annotate(ko, "software_pipeline_stage", [0, 0, config.stages - 1])
        sch.annotate(ko, "software_pipeline_order", [0, 1, 2])
        sch.annotate(ko, "software_pipeline_async_stages", [0])
    return sch
