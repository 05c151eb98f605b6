"""Stage 4, build: the whole compile pipeline in one place, and the library cache.

    trace (wsd.compiler.trace)        PyTorch -> torch.export -> Relax, one function per model part
    + schedulers             the samplers' step math (wsd.samplers), into the same module
    optimize (wsd.compiler.optimize)  legalize, fold, fuse
    schedule (wsd.compiler.schedule)  dlight rules per target
    lower + plan             dataflow lowering, static memory planning, VM lowering
    codegen                  tvm.compile -> one shared library for the target

Compiled libraries do not contain weights (they are function inputs), so a library is keyed
by the architecture, not the checkpoint: model config hash, target, dtype, resolution, and
the versions of TVM and of this compiler.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax

from wsd.compiler import layout, memory, optimize, schedule
from wsd.compiler.trace import Traced, check_dtype, resolve_size, trace_model
from wsd.kernels.gemm import tensor_core_matmul
from wsd.models import Model
from wsd.targets import NATIVE, check, device_of, make

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


@dataclass
class Library:
    """A compiled model: the loaded shared library and what its functions take."""

    path: Path
    module: tvm.runtime.Module
    meta: dict  # functions -> {num_inputs, weight_names, weight_dtypes}; build settings
    target: tvm.target.Target

    @property
    def device(self) -> tvm.runtime.Device:
        return device_of(self.target)


# Sources that take no part in compiling: editing them keeps the cached libraries.
NOT_COMPILER = {"bench/run.py"}


def _compiler_fingerprint() -> str:
    """Hash of this package's compiler sources and tuned records (wsd/tuned): editing them
    invalidates cached libraries."""
    digest = hashlib.sha256(tvm.__version__.encode())
    root = Path(__file__).parents[1]
    for path in sorted([*root.rglob("*.py"), *root.glob("tuned/*.json")]):
        if path.relative_to(root).as_posix() in NOT_COMPILER:
            continue
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("WSD_CACHE", Path.home() / ".cache" / "wsd"))


def library_key(model: Model, target: tvm.target.Target, dtype: str,
                height: int, width: int) -> str:
    settings = json.dumps({
        "model": model.config_hash(), "target": str(target), "dtype": dtype,
        "size": [height, width], "compiler": _compiler_fingerprint(),
        "cuda_graphs": uses_cuda_graphs(target),
    }, sort_keys=True)
    label = f"{model.name}-{target.kind.name}-{dtype}-{height}x{width}"
    return f"{label}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


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


def build(model: Model, target: str = "llvm", dtype: str = "float32",
          height: int | None = None, width: int | None = None,
          log=print, force: bool = False) -> Library:
    """Compile (or load from the cache) the model's library for a target."""
    check_dtype(dtype)
    check(target, NATIVE)
    tvm_target = make(target)
    height, width = resolve_size(model, height, width)
    key = library_key(model, tvm_target, dtype, height, width)
    folder = cache_dir() / "lib" / key
    lib_path, meta_path = folder / "model.so", folder / "meta.json"
    if lib_path.is_file() and meta_path.is_file() and not force:
        log(f"using cached library {folder}")
    else:
        start = time.time()
        log(f"tracing {model.name} ({dtype}, {height}x{width}) ...")
        traced = trace_model(model, height, width, dtype)
        mod = add_scheduler_functions(traced.mod)
        log(f"compiling for {tvm_target.kind.name} ...")
        memory_report = {}  # weights + planned activations (wsd.compiler.memory)
        weight_layouts = layout.WeightLayouts(traced.num_inputs)
        executable = compile_module(
            mod, tvm_target, [memory.observer(memory.weight_bytes(traced), memory_report)],
            weight_layouts)
        log(memory.describe(memory_report))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"model.{os.getpid()}.so"
        executable.export_library(str(tmp))
        meta = {"model": model.name, "config_hash": model.config_hash(), "target": str(tvm_target),
                "dtype": dtype, "height": height, "width": width,
                "functions": function_meta(traced, weight_layouts), "memory": memory_report}
        meta_path.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, lib_path)  # atomic: a crash never leaves a half-written library
        log(f"built {folder} in {time.time() - start:.1f} s")
    meta = json.loads(meta_path.read_text())
    return Library(folder, tvm.runtime.load_module(str(lib_path)), meta, tvm_target)
