"""wsd.kernels.group_norm (partial sums over pixel chunks, group totals, fused apply) against
PyTorch's group norm, in both layouts the build uses, at sizes that exercise the chunking:
pixel counts with no power-of-two factor, fewer pixels than one chunk, more chunks than
MAX_CHUNKS would allow at the minimum chunk size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from wsd import targets
from wsd.compiler import pipeline as build
from wsd.kernels.group_norm import MAX_CHUNKS, MIN_CHUNK, _chunk

CASES = {  # name: (batch, channels, height, width, groups)
    "unet-like": (2, 64, 16, 16, 32),
    "odd-pixels": (1, 12, 7, 9, 3),  # 63 pixels: one chunk of 63
    "many-pixels": (1, 8, 256, 160, 4),  # 40960 pixels: chunks of 80, 512 of them
    "one-per-group": (2, 6, 5, 5, 6),
}


def group_norm_module(case, dtype: str, channels_last: bool) -> tvm.IRModule:
    n, c, h, w, groups = case
    shape = (n, h, w, c) if channels_last else (n, c, h, w)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    gamma = relax.Var("gamma", relax.TensorType((c,), dtype))
    beta = relax.Var("beta", relax.TensorType((c,), dtype))
    axis, axes = (3, [1, 2]) if channels_last else (1, [2, 3])
    with bb.function("main", [x, gamma, beta]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.group_norm(x, gamma, beta, groups, axis, axes,
                                                        epsilon=1e-5))
        bb.emit_func_output(out)
    return bb.get()


def test_chunks():
    assert _chunk(4096) == MIN_CHUNK
    assert _chunk(63) == 63
    assert _chunk(40960) == 80 and 40960 // 80 <= MAX_CHUNKS
    assert _chunk(262144) * MAX_CHUNKS == 262144
    for pixels in (1, 7, 97, 6144, 65536):
        assert pixels % _chunk(pixels) == 0


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_matches_torch(dtype, channels_last):
    target = targets.make("llvm")
    rng = np.random.default_rng(0)
    for name, case in CASES.items():
        n, c, h, w, groups = case
        # an offset mean: E[x^2] - E[x]^2 must not lose the variance to rounding
        x = (rng.standard_normal((n, c, h, w)) * 3 + 5).astype(dtype)
        gamma = rng.standard_normal(c).astype(dtype)
        beta = rng.standard_normal(c).astype(dtype)
        expected = torch.nn.functional.group_norm(
            torch.from_numpy(x.astype(np.float64)), groups,
            torch.from_numpy(gamma.astype(np.float64)),
            torch.from_numpy(beta.astype(np.float64)), 1e-5).numpy()
        vm = relax.VirtualMachine(build.compile_module(
            group_norm_module(case, dtype, channels_last), target).executable, tvm.cpu())
        data = x.transpose(0, 2, 3, 1).copy() if channels_last else x
        out = vm["main"](*[tvm.runtime.tensor(a) for a in (data, gamma, beta)]).numpy()
        if channels_last:
            out = out.transpose(0, 3, 1, 2)
        error = np.abs(out.astype(np.float64) - expected).max() / np.abs(expected).max()
        bar = 1e-5 if dtype == "float32" else 2e-3
        assert error <= bar, f"{name} {dtype}: max error {error:.2e} of range"


def test_the_build_splits_group_norm():
    """No TVM group norm kernel is left in a build: our kernels replace it."""
    target = targets.make("llvm")
    mod = group_norm_module(CASES["unet-like"], "float32", False)
    with target:
        lowered = build.pipeline(target)(mod)
    names = {gv.name_hint for gv, f in lowered.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    # one group_total kernel: the totals of x and of x * x are the same function
    assert {"group_partial_sums", "group_partial_sums1", "group_total"} <= names, names
    assert not [n for n in names if n.startswith("group_norm") and "apply" not in n], names
