"""wsd.kernels.gemm.cuda_arch: what a CUDA target's architecture allows."""

import pytest

tvm = pytest.importorskip("tvm")

from wsd.kernels.gemm import cuda_arch  # noqa: E402


@pytest.mark.parametrize("arch,sm,shared_kib", [
    ("sm_90a", 90, 227), ("sm_90", 90, 227), ("sm_89", 89, 99), ("sm_86", 86, 99),
    ("sm_80", 80, 163), ("sm_75", 75, 64), ("sm_70", 70, 96),
    ("sm_61", 61, 64),          # unlisted: the smallest listed
])
def test_architectures(arch, sm, shared_kib):
    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    assert cuda_arch.sm_version(target) == sm
    assert cuda_arch.optin_shared_bytes(target) == shared_kib * 1024


def test_no_architecture():
    for target in (tvm.target.Target({"kind": "llvm"}),
                   tvm.target.Target({"kind": "webgpu", "host": "llvm"})):
        assert cuda_arch.sm_version(target) == 0
        assert cuda_arch.optin_shared_bytes(target) == 0
