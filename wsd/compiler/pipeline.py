"""The whole compile pipeline in one place.

    trace (wsd.compiler.trace)        PyTorch -> torch.export -> Relax, one function per model part
    + schedulers             the samplers' step math (wsd.samplers), into the same module
    optimize (wsd.compiler.optimize)  legalize, fold, fuse
    schedule (wsd.compiler.schedule)  dlight rules per target
    lower + plan             dataflow lowering, static memory planning, VM lowering
    codegen                  tvm.compile -> one shared library for the target
"""

from __future__ import annotations

import os

import tvm
from tvm import relax

from wsd.compiler import layout, optimize, schedule
from wsd.compiler.trace import Traced
from wsd.kernels.gemm import tensor_core_matmul


def pipeline(target: tvm.target.Target,
             weight_layouts: layout.WeightLayouts | None = None) -> tvm.transform.Pass:
    """The Relax pipeline, composed here from the named stages. With `weight_layouts` the
    weights are stored as their kernels read them (wsd.compiler.layout.WeightLayouts)."""
    lower = [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
    ]
    plan = [
        relax.transform.StaticPlanBlockMemory(),
        *([cuda_graphs()] if uses_cuda_graphs(target) else []),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]

    @tvm.transform.module_pass(opt_level=0, name="wsd_pipeline")
    def run(mod, _ctx):
        with target:
            return tvm.transform.Sequential(optimize.passes(target, weight_layouts)
                                            + schedule.passes(target) + lower + plan)(mod)

    return run


def uses_cuda_graphs(target: tvm.target.Target) -> bool:
    """CUDA builds capture CUDA graphs unless WSD_CUDA_GRAPHS=0 (then `wsd bench --profile`
    sees each kernel call instead of one replay per graph)."""
    return target.kind.name == "cuda" and os.environ.get("WSD_CUDA_GRAPHS", "1") != "0"


def cuda_graphs() -> tvm.transform.Pass:
    """Runs of kernels that read only weights and statically planned memory become CUDA
    graphs, captured on the first call and replayed after: one launch instead of hundreds
    (SD v1.5's UNet step makes ~900 kernel calls, many of them a few microseconds long).
    TVM's RewriteCUDAGraph, switched on by its pass-context option."""

    @tvm.transform.module_pass(opt_level=0, name="wsd.CUDAGraphs")
    def run(mod, _ctx):
        with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}):
            return relax.transform.RewriteCUDAGraph()(mod)

    return run


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, observe=(),
                   weight_layouts: layout.WeightLayouts | None = None):
    """Relax module -> executable for the target. `observe`: passes that look at the lowered
    module before code generation (e.g. wsd.compiler.memory.observer) and return it unchanged.
    `weight_layouts`: see pipeline."""
    relax_pipeline = pipeline(target, weight_layouts)
    if observe:
        relax_pipeline = tvm.transform.Sequential([relax_pipeline, *observe])
    # CUDA: what tuned tensor-core schedules need (cp.async for their pipelined copies;
    # other kernels have no asynchronous stages), on top of the caller's pass context.
    outer = tvm.transform.PassContext.current()
    config = dict(outer.config)
    if target.kind.name == "cuda":
        config.update(tensor_core_matmul.PASS_CONFIG)
    with tvm.transform.PassContext(opt_level=outer.opt_level, required_pass=outer.required_pass,
                                   disabled_pass=outer.disabled_pass,
                                   instruments=outer.instruments, config=config):
        return tvm.compile(mod, target, relax_pipeline=relax_pipeline)


def add_scheduler_functions(mod: tvm.IRModule) -> tvm.IRModule:
    from wsd.samplers import relax_functions

    for name, func in relax_functions().items():
        mod[name] = func.with_attr("global_symbol", name)
    return mod


def function_meta(traced: Traced, weight_layouts: layout.WeightLayouts | None = None) -> dict:
    """What each function takes: runtime inputs, then weights by state-dict name, each in its
    dtype and, with `weight_layouts` from the compile, the axes it is stored permuted by."""
    meta = {}
    for name, weights in traced.weight_names.items():
        params = traced.mod[name].params[traced.num_inputs[name]:]
        meta[name] = {
            "num_inputs": traced.num_inputs[name],
            "weight_names": weights,
            "weight_dtypes": [str(p.ty.dtype) for p in params],
        }
        if weight_layouts is not None:
            meta[name]["weight_layouts"] = weight_layouts.axes[name]
    return meta
