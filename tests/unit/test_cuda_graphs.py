"""CUDA builds capture their kernel runs as CUDA graphs (wsd.compiler.pipeline.cuda_graphs).

On the tiny model's guided UNet step, lowered for an sm_90 target (no GPU needed): nearly every
kernel call moves into one captured function, the rest (kernels reading the step's inputs) stay
in the step; llvm builds get no graphs. That the replayed graphs compute the right thing with
new inputs on every call is checked on a GPU by tests/numerics/test_generate.py (many UNet
steps against diffusers, marked gpu)."""

from __future__ import annotations

import pytest
import tvm
from tvm import relax

from wsd import targets
from wsd.compiler import pipeline as build, memory, trace
from wsd.models import load_model
from wsd.runtime import library

SM90 = tvm.target.Target({"kind": "cuda", "arch": "sm_90", "max_num_threads": 1024,
                          "thread_warp_size": 32})


def kernel_calls(mod: tvm.IRModule, func: relax.Function) -> int:
    """Calls of PrimFuncs (kernels) in one Relax function."""
    count = 0

    def visit(expr):
        nonlocal count
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.GlobalVar) \
                and isinstance(mod[expr.op], tvm.tirx.PrimFunc):
            count += 1

    relax.analysis.post_order_visit(func, visit)
    return count


@pytest.fixture(scope="module")
def traced():
    return trace.trace_model(load_model("tiny"), 64, 64, "float16", names=["unet_guided"])


def test_weights_are_marked_fixed(traced):
    func = traced.mod["unet_guided"]
    assert int(func.attrs["num_input"]) == traced.num_inputs["unet_guided"] == 5  # latents, timestep, cond, uncond, guidance_scale


def test_cuda_build_captures_the_step(traced):
    mod = build.pipeline(SM90)(traced.mod)
    captured = kernel_calls(mod, mod["unet_guided_cuda_graph_capture"])
    outside = kernel_calls(mod, mod["unet_guided"])
    assert "cuda_graph_alloc" in [g.name_hint for g in mod.functions]
    assert captured > 100 and outside < captured // 10, (captured, outside)


def test_llvm_build_has_no_graphs(traced):
    mod = build.pipeline(targets.make("llvm"))(traced.mod)
    names = [g.name_hint for g in mod.functions]
    assert not [n for n in names if "cuda_graph" in n]
    assert kernel_calls(mod, mod["unet_guided"]) > 100


def test_graphs_can_be_switched_off(traced, monkeypatch):
    monkeypatch.setenv("WSD_CUDA_GRAPHS", "0")
    mod = build.pipeline(SM90)(traced.mod)
    assert not [g for g in mod.functions if "cuda_graph" in g.name_hint]
    model = load_model("tiny")
    off = library.library_key(model, SM90, "float16", 64, 64)
    monkeypatch.setenv("WSD_CUDA_GRAPHS", "1")
    assert library.library_key(model, SM90, "float16", 64, 64) != off


def test_memory_report_counts_graph_storage(traced, monkeypatch):
    """The captured kernels' storage moves to the cached allocation: the report still counts
    every byte the plan without graphs had, and adds it to the peak."""
    weights = memory.weight_bytes(traced)
    with_graphs = memory.plan(build.pipeline(SM90)(traced.mod), weights)
    monkeypatch.setenv("WSD_CUDA_GRAPHS", "0")
    without = memory.plan(build.pipeline(SM90)(traced.mod), weights)
    step, plain = with_graphs["functions"]["unet_guided"], without["functions"]["unet_guided"]
    assert with_graphs["graph_storage_bytes"] > 0.9 * plain["storage_bytes"]
    assert with_graphs["graph_storage_bytes"] + step["storage_bytes"] == plain["storage_bytes"]
    assert with_graphs["peak_bytes"] == (with_graphs["weight_bytes"]
                                         + with_graphs["graph_storage_bytes"]
                                         + step["activation_bytes"])
    assert "graph_storage_bytes" not in without or not without["graph_storage_bytes"]


def test_memory_report_sees_the_captured_kernels(traced, monkeypatch):
    """The kernels a step runs (whose workspace the report takes) include those its CUDA
    graphs capture: the same set with and without graphs."""
    prims = lambda mod: {g.name_hint for g, f in mod.functions.items()  # noqa: E731
                         if isinstance(f, tvm.tirx.PrimFunc)}
    graphs = build.pipeline(SM90)(traced.mod)
    monkeypatch.setenv("WSD_CUDA_GRAPHS", "0")
    plain = build.pipeline(SM90)(traced.mod)
    used = memory.references(graphs)["unet_guided"] & prims(graphs)
    assert len(used) > 50
    assert used == memory.references(plain)["unet_guided"] & prims(plain)
