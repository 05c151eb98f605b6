"""The whole compile pipeline in one place, and the one compile entry.

    trace (wsd.compiler.trace)          PyTorch -> torch.export -> Relax, one function per part
    + samplers                          their step math (wsd.samplers), into the same module
    PHASES, in order (pipeline):
      optimize (wsd.compiler.optimize)  our kernels (attention, group norm), target layouts,
                                        legalize, fold, fuse
      schedule (wsd.compiler.schedule)  tuned records, then dlight rules
      lower                             dataflow lowering
      plan                              static memory planning (+ CUDA graphs), VM lowering
    codegen                             tvm.compile -> one executable for the target

`compile_module` runs them; what it returns (`Compiled`) carries the module as code generation
got it, which wsd.compiler.buffers reads (planned storages, kernels' global buffers) for the
memory plan (wsd.compiler.memory) and the WebGPU requirements (wsd.web.limits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import tvm
from tvm import relax

from wsd.compiler import buffers, layout, optimize, schedule
from wsd.compiler.trace import Traced
from wsd.kernels.gemm import tensor_core_matmul

PHASES = ("optimize", "schedule", "lower", "plan")
Hook = Callable[[str, tvm.IRModule], None]  # (phase, the module after it)


def _phase_passes(target: tvm.target.Target,
                  weight_layouts: layout.WeightLayouts | None) -> dict[str, list]:
    return {
        "optimize": optimize.passes(target, weight_layouts),
        "schedule": schedule.passes(target),
        "lower": [
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
        ],
        "plan": [
            relax.transform.StaticPlanBlockMemory(),
            *([cuda_graphs()] if uses_cuda_graphs(target) else []),
            relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            relax.transform.AttachGlobalSymbol(),
        ],
    }


def pipeline(target: tvm.target.Target, weight_layouts: layout.WeightLayouts | None = None,
             hook: Hook | None = None) -> tvm.transform.Pass:
    """The Relax pipeline: PHASES in order, `hook(phase, module)` after each. With
    `weight_layouts` the weights are stored as their kernels read them
    (wsd.compiler.layout.WeightLayouts)."""

    @tvm.transform.module_pass(opt_level=0, name="wsd_pipeline")
    def run(mod, _ctx):
        with target:
            for phase, passes in _phase_passes(target, weight_layouts).items():
                mod = tvm.transform.Sequential(passes)(mod)
                if hook is not None:
                    hook(phase, mod)
        return mod

    return run


@dataclass
class Compiled:
    """One compile: the executable (None when compiled without code generation) and the Relax
    module as code generation got it, with what it allocates (wsd.compiler.buffers)."""

    executable: relax.VMExecutable | None
    lowered: tvm.IRModule

    @cached_property
    def storages(self) -> dict[str, dict]:
        return buffers.planned_storages(self.lowered)

    @cached_property
    def intermediates(self) -> dict[str, list]:
        return buffers.kernel_intermediates(self.lowered)


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


def compile_module(mod: tvm.IRModule, target: tvm.target.Target,
                   weight_layouts: layout.WeightLayouts | None = None, codegen: bool = True,
                   hook: Hook | None = None) -> Compiled:
    """The compile entry: Relax module -> Compiled for the target (every build, bundle and
    check compiles here). `codegen=False` stops after the Relax pipeline (planning for a
    target this machine cannot compile for, e.g. an H100 tag on a CPU). `weight_layouts`,
    `hook`: see pipeline."""
    kept = {}

    def keep(phase: str, lowered: tvm.IRModule) -> None:
        if phase == PHASES[-1]:
            kept["lowered"] = lowered
        if hook is not None:
            hook(phase, lowered)

    relax_pipeline = pipeline(target, weight_layouts, keep)
    if not codegen:
        return Compiled(None, relax_pipeline(mod))
    # CUDA: what tuned tensor-core schedules need (cp.async for their pipelined copies;
    # other kernels have no asynchronous stages), on top of the caller's pass context.
    outer = tvm.transform.PassContext.current()
    config = dict(outer.config)
    if target.kind.name == "cuda":
        config.update(tensor_core_matmul.PASS_CONFIG)
    with tvm.transform.PassContext(opt_level=outer.opt_level, required_pass=outer.required_pass,
                                   disabled_pass=outer.disabled_pass,
                                   instruments=outer.instruments, config=config):
        executable = tvm.compile(mod, target, relax_pipeline=relax_pipeline)
    return Compiled(executable, kept["lowered"])


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
