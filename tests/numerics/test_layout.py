"""wsd.compiler.layout's rewrites (channels-last convolutions, NT linear layers, permutes folded) keep
every block's numbers: they run on CUDA builds, and here on llvm with the same rewrites
forced, one block per kind of the tiny model against fp32 PyTorch."""

from __future__ import annotations

import pytest
import tvm
from tvm import relax

from wsd import bench
from wsd.checks import verify
from wsd.compiler import layout, optimize
from wsd.compiler.trace import resolve_size, trace_model
from wsd.models import load_model


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
    from wsd.compiler.pipeline import add_scheduler_functions

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


def _weight_only_kernels(target: tvm.target.Target, weight_layouts) -> dict[str, list[str]]:
    """{function: kernels whose every argument is a weight} after the build's graph passes
    and its reshape rewrite (weight reshapes become views there, and cost nothing)."""
    from wsd.compiler import schedule

    model = load_model("tiny")
    traced = trace_model(model, *resolve_size(model, None, None), "float16")
    passes = [*optimize.passes(target, weight_layouts(traced.num_inputs)),
              *schedule.passes(target), relax.transform.RewriteDataflowReshape()]
    with target:
        mod = tvm.transform.Sequential(passes)(traced.mod)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    found = {}
    for name, count in traced.num_inputs.items():
        weights = set(mod[name].params[count:])
        kernels = found.setdefault(name, [])

        def visit(expr, kernels=kernels, weights=weights):
            if (isinstance(expr, relax.Call) and expr.op.same_as(call_tir)
                    and all(a in weights for a in expr.args[1].fields)):
                kernels.append(expr.args[0].name_hint)

        relax.analysis.post_order_visit(mod[name].body, visit)
    return found


@pytest.mark.parametrize("target", [tvm.target.Target({"kind": "cuda", "arch": "sm_90"}),
                                    tvm.target.Target("llvm")], ids=["cuda", "llvm"])
def test_stored_layouts_leave_no_kernel_on_weights_alone(target):
    """With the weights stored as their kernels read them, no kernel of any function reads
    weights alone (as traced, CUDA transposes every 3x3 convolution weight to OHWI and every
    target every linear weight to (K, N), on every call)."""
    as_traced = _weight_only_kernels(target, lambda _num_inputs: None)
    assert any(k for k in as_traced.values()), as_traced  # the check can fail
    assert _weight_only_kernels(target, layout.WeightLayouts) == {f: [] for f in as_traced}


def test_weight_layouts_record_each_permute():
    """CUDA stores 3x3 convolution weights OHWI and keeps linear weights as stored (NT
    kernels); runtime inputs are never permuted (callers pass them as they are)."""
    import torch

    model = load_model("tiny")
    traced = trace_model(model, *resolve_size(model, None, None), "float32")
    layouts = layout.WeightLayouts(traced.num_inputs)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    with target:
        mod = tvm.transform.Sequential(optimize.passes(target, layouts))(traced.mod)
    convs_3x3 = sum(1 for m in model.unet().modules()
                    if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    unet = layouts.axes["unet_guided"]
    assert len(unet) == len(traced.weight_names["unet_guided"])
    assert sum(a == [0, 2, 3, 1] for a in unet) == convs_3x3
    assert all(a in (None, [0, 2, 3, 1]) for a in unet)
    assert layouts.axes["unet"] == unet
    for name, count in traced.num_inputs.items():
        before, after = traced.mod[name].params, mod[name].params
        assert [p.ty.shape for p in after[:count]] == [p.ty.shape for p in before[:count]]
        for old, new, axes in zip(before[count:], after[count:], layouts.axes[name]):
            shape = [int(d) for d in old.ty.shape]
            want = shape if axes is None else [shape[a] for a in axes]
            assert [int(d) for d in new.ty.shape] == want


def test_weights_stored_permuted_match_pytorch(cuda_layouts_on_llvm):
    """The VAE decoder compiled with CUDA's layouts (forced on llvm) and its weights stored
    permuted, uploaded as wsd.runtime.pipeline uploads them (the layouts from the build's meta),
    against fp32 PyTorch."""
    import numpy as np
    import torch

    from wsd.compiler import pipeline as build
    from wsd.compiler.trace import example_inputs
    from wsd.runtime.executor import Executor
    from wsd.runtime.pipeline import upload_weights

    model = load_model("tiny")
    size = resolve_size(model, None, None)
    traced = trace_model(model, *size, "float32", names=("decode",))
    layouts = layout.WeightLayouts(traced.num_inputs)
    target = tvm.target.Target("llvm")
    compiled = build.compile_module(traced.mod, target, weight_layouts=layouts)
    executor = Executor(compiled.executable, tvm.cpu())
    meta = {"dtype": "float32", "functions": build.function_meta(traced, layouts)}
    assert [0, 2, 3, 1] in meta["functions"]["decode"]["weight_layouts"]
    weights = upload_weights(executor, model, meta, traced.modules)
    (latents,) = example_inputs(model, *size)["decode"]
    with torch.no_grad():
        want = traced.modules["decode"](latents).numpy()
    got = executor("decode", latents.numpy(), *weights["decode"]).numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


@pytest.mark.parametrize("pad", [(0, 1, 0, 1), (2, 0, 1, 3)])
def test_pad_folds_into_the_convolution(pad):
    """A zero pad before a convolution becomes its (asymmetric) padding: no pad op is left,
    and the numbers are PyTorch's. The VAE encoder's downsamplers pad so; left as an op, it
    fuses into the previous convolution's epilogue and dlight cannot schedule that for
    WebGPU (checked below on the tiny encoder)."""
    import numpy as np
    import torch

    from wsd.compiler.trace import to_relax

    class PadConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(torch.nn.functional.pad(x, pad))

    module = PadConv().eval()
    x = torch.randn(1, 3, 9, 11)
    func, _ = to_relax(module, (x,))
    mod = layout.FoldPadIntoConv()(tvm.IRModule({"main": func}))
    assert "nn.pad" not in mod.script() and "R.nn.conv2d" in mod.script()
    exe = tvm.compile(mod, "llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()),
                     *[tvm.runtime.tensor(p.detach().numpy()) for p in module.parameters()])
    out = out if hasattr(out, "numpy") else out[0]  # the importer may return a 1-tuple
    np.testing.assert_allclose(out.numpy(), module(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_the_encoder_compiles_for_webgpu():
    from wsd.compiler.pipeline import compile_module
    from wsd.targets import webgpu_target

    model = load_model("tiny")
    traced = trace_model(model, *resolve_size(model, None, None), "float16",
                         names=("encode_image",))
    compile_module(traced.mod, webgpu_target(), codegen=False)  # raised in dlight before
