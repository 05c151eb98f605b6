"""wsd.bench.profile: each call of a compiled function timed through the VM instrument."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from wsd import targets
from wsd.bench import profile
from wsd.bench.fused import kind_of
from wsd.compiler import pipeline as build


@pytest.fixture(scope="module")
def vm():
    """main(x, w) = relu(x @ w) @ w: two kernels, one of them called twice."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((64, 64), "float32"))
    w = relax.Var("w", relax.TensorType((64, 64), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            h = bb.emit(relax.op.nn.relu(relax.op.matmul(x, w)))
            out = bb.emit_output(relax.op.matmul(h, w))
        bb.emit_func_output(out)
    target = targets.make("llvm")
    return relax.VirtualMachine(build.compile_module(bb.get(), target).executable, tvm.cpu())


def test_every_kernel_call_is_timed(vm):
    x = tvm.runtime.tensor(np.ones((64, 64), "float32"))
    rows, total = profile.profile_calls(vm, lambda: vm["main"](x, x), lambda: None, rounds=3)
    kernels = {r.name: r for r in rows if not r.name.startswith("vm.builtin")}
    assert sum(r.calls for r in kernels.values()) == 2, kernels
    assert {kind_of(n) for n in kernels} == {"matmul_relu", "matmul"}, kernels
    assert all(r.ms > 0 for r in rows)
    assert sum(r.ms for r in rows) <= total * 1.01
    assert rows == sorted(rows, key=lambda r: -r.ms)
    # the instrument is gone afterwards: the function still runs and returns its value
    assert float(vm["main"](x, x).numpy()[0, 0]) == 64 * 64


def test_kinds_and_table():
    rows = [profile.KernelTime("fused_conv2d3_add5", 2, 3.0),
            profile.KernelTime("fused_conv2d7_add9", 1, 1.0),
            profile.KernelTime("wsd_attention2", 4, 2.0)]
    kinds = profile.group_by_kind(rows, kind_of)
    assert [(k.name, k.calls, k.ms) for k in kinds] == [("conv2d_add", 3, 4.0),
                                                         ("attention", 4, 2.0)]
    cells = profile.table_cells(rows, 10.0, top=2)
    assert cells[0] == ["fused_conv2d3_add5", "2", "3.000", "1.5000", "30.0"]
    assert cells[-1][0] == "(1 more)" and cells[-1][-1] == "20.0"
