"""wsd.layout's rewrites (channels-last convolutions, NT linear layers, permutes folded) keep
every block's numbers: they run on CUDA builds, and here on llvm with the same rewrites
forced, one block per kind of the tiny model against fp32 PyTorch."""

from __future__ import annotations

import pytest
import tvm
from tvm import relax

from wsd import bench, layout, optimize, verify
from wsd.models import load_model
from wsd.trace import resolve_size, trace_model


@pytest.fixture
def cuda_layouts_on_llvm(monkeypatch):
    monkeypatch.setitem(layout.CONV_LAYOUTS, "llvm", layout.CONV_LAYOUTS["cuda"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_blocks_pass_with_cuda_layouts(cuda_layouts_on_llvm, dtype):
    rows = verify.verify_layers(load_model("tiny"), "llvm", dtype, log=None,
                                blocks=verify.one_per_kind())
    print(verify.format_report(rows))
    failed = [r for r in rows if not r.passed]
    assert rows and not failed, verify.format_report(failed)


def _kernel_kinds(target: tvm.target.Target, part: str = "unet_guided") -> dict[str, int]:
    """{kernel kind: calls} of one part as the build fuses it for the target."""
    kinds: dict[str, int] = {}
    for kernel in bench.fused_kernels(load_model("tiny"), part, "float16", target):
        kinds[kernel.kind] = kinds.get(kernel.kind, 0) + kernel.calls
    return kinds


def test_cuda_graph_reads_weights_as_stored():
    """On CUDA every linear layer is one NT kernel (no transpose of its weight per call), and
    the only transposes left are 3x3 convolution weights (OIHW -> OHWI) and the UNet's input
    and output; llvm keeps the traced graph."""
    import torch

    convs_3x3 = sum(1 for m in load_model("tiny").unet().modules()
                    if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    cuda = _kernel_kinds(tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    llvm = _kernel_kinds(tvm.target.Target("llvm"))
    assert not [k for k in cuda if k.startswith("matmul")], cuda
    assert sum(n for k, n in cuda.items() if k.startswith("NT_matmul")) == sum(
        n for k, n in llvm.items() if k.startswith("matmul"))
    transposes = sum(n for k, n in cuda.items() if "transpose" in k)
    assert transposes <= convs_3x3 + 3, cuda
    assert not [k for k in llvm if k.startswith("NT_")]


def test_cuda_passes_take_every_function():
    """The whole module the build compiles (every model part and the samplers' functions)
    goes through CUDA's graph passes; the block sweep above sees only pieces of it."""
    from wsd.build import add_scheduler_functions

    model = load_model("tiny")
    traced = trace_model(model, *resolve_size(model, None, None), "float16")
    mod = add_scheduler_functions(traced.mod)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    with target:
        out = tvm.transform.Sequential(optimize.passes(target))(mod)
    relax_funcs = {gv.name_hint for gv, f in out.functions.items()
                   if isinstance(f, relax.Function)}
    assert {gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, relax.Function)} <= relax_funcs
