"""How much memory a compiled pipeline needs: weights + planned activations, from the build.

Three sources, all read from the lowered Relax module (after static memory planning, before
code generation), so the numbers are what the compiled code will allocate, not estimates
from the PyTorch model:

- weights: every distinct weight tensor the functions take, in the compiled dtype (the UNet's
  guided and plain functions share theirs), as `wsd.runtime.pipeline.Pipeline` uploads them;
- planned storage per Relax function (wsd.compiler.buffers.storage_sizes); the sum is an upper
  bound for the function's live activations;
- kernel workspace: the global buffers a kernel allocates inside itself for one call
  (wsd.compiler.buffers.kernel_workspace). Per function we count its largest kernel workspace.

- CUDA graph storage (CUDA builds, wsd.compiler.pipeline.cuda_graphs): the storage of captured
  kernels, of every function, moves into one `cuda_graph_alloc` function whose allocations the VM caches
  for its lifetime (a replayed graph must find its buffers where it captured them), so it
  stays allocated from the first call on.

The pipeline runs one function at a time, so its peak is

    weights + CUDA graph storage + max over functions (planned storage + largest workspace)

plus the few latent-sized tensors the host loop keeps between calls (text embeddings, latents,
sampler history: kilobytes to a few MiB, not counted). TVM's runtime allocator pools blocks by
size and does not give them back, so the memory a process holds after a whole image can be
larger than this peak; `wsd bench` measures that on CUDA.
"""

from __future__ import annotations

import tvm
from tvm import relax

from wsd.compiler.buffers import kernel_workspace, nbytes, storage_sizes
from wsd.compiler.weight_names import tensor_name

# The functions a run calls (the samplers' kernels work on latents only).
MODEL_FUNCTIONS = ("encode_text", "encode_image", "unet_guided", "unet", "decode",
                   "decode_preview")

MIB = 1 << 20


def weight_bytes(traced) -> dict[str, int]:
    """{tensor-cache name: bytes} of every distinct weight of a `wsd.compiler.trace.Traced` module."""
    out = {}
    for function, names in traced.weight_names.items():
        params = traced.mod[function].params[traced.num_inputs[function]:]
        for name, param in zip(names, params):
            out[tensor_name(function, name)] = nbytes(param.ty.shape.values, param.ty.dtype)
    return out


def references(mod: tvm.IRModule) -> dict[str, set[str]]:
    """{Relax function: names of the module's functions it uses}, directly or through the
    Relax functions it calls: CUDA graphs move a function's kernels into a lifted
    `*_cuda_graph_capture` function and its storage into `cuda_graph_alloc`."""
    direct = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            found = set()

            def visit(expr, found=found):
                if isinstance(expr, tvm.ir.GlobalVar):
                    found.add(expr.name_hint)

            relax.analysis.post_order_visit(func, visit)
            direct[gvar.name_hint] = found
    out = {}
    for name in direct:
        seen, todo = set(), [name]
        while todo:
            for ref in direct.get(todo.pop(), ()):
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
        out[name] = seen
    return out


def plan(lowered: tvm.IRModule, weights: dict[str, int]) -> dict:
    """The memory report of a lowered module (see the module docstring). JSON-ready."""
    storage = storage_sizes(lowered)
    workspace = kernel_workspace(lowered)
    used = references(lowered)
    prims = {gv.name_hint for gv, f in lowered.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    functions = {}
    for name in MODEL_FUNCTIONS:
        if name not in storage:
            continue
        kernels = used.get(name, set()) & prims
        known = {k: workspace[k] for k in kernels if workspace.get(k) is not None}
        top = max(known, key=known.get, default=None)
        ws = known[top] if top is not None else 0
        top = top if ws > 0 else None
        functions[name] = {
            "storage_bytes": storage[name]["total_bytes"],
            "largest_storage_bytes": storage[name]["max_bytes"],
            "dynamic_allocations": storage[name]["dynamic"],
            "workspace_bytes": ws,
            "workspace_kernel": top,
            # kernels whose buffers have a symbolic size
            "unanalysed_kernels": sorted(k for k in kernels
                                         if k in workspace and workspace[k] is None),
            "activation_bytes": storage[name]["total_bytes"] + ws,
        }
    weight_total = int(sum(weights.values()))
    allocs = {ref for name in functions for ref in used.get(name, ())
              if ref.startswith("cuda_graph_alloc")}
    graph_total = int(sum(storage[a]["total_bytes"] for a in allocs))
    worst = max(functions, key=lambda f: functions[f]["activation_bytes"], default=None)
    activations = functions[worst]["activation_bytes"] if worst else 0
    return {
        "weight_bytes": weight_total,
        "num_weights": len(weights),
        "largest_weight_bytes": max(weights.values(), default=0),
        "functions": functions,
        "graph_storage_bytes": graph_total,
        "peak_function": worst,
        "activation_bytes": activations,
        "peak_bytes": weight_total + graph_total + activations,
    }


def plan_model(model, dtype: str, target: tvm.target.Target,
               height: int | None = None, width: int | None = None) -> dict:
    """Trace and run the Relax pipeline (no code generation) for any target, also one this
    machine cannot run (e.g. `Target("nvidia/nvidia-h100")` on a CPU machine)."""
    from wsd.compiler.layout import WeightLayouts
    from wsd.compiler.pipeline import add_scheduler_functions, compile_module
    from wsd.compiler.trace import resolve_size, trace_model

    height, width = resolve_size(model, height, width)
    traced = trace_model(model, height, width, dtype)
    mod = add_scheduler_functions(traced.mod)
    compiled = compile_module(mod, target, WeightLayouts(traced.num_inputs), codegen=False)
    return plan(compiled.lowered, weight_bytes(traced))


def describe(report: dict) -> str:
    """One line for build logs."""
    if not report or not report.get("functions"):
        return "memory: no report"
    fn = report["functions"][report["peak_function"]]
    graphs = report.get("graph_storage_bytes", 0)
    return (f"memory (planned): weights {report['weight_bytes'] / MIB:.1f} MiB + "
            + (f"CUDA graph storage {graphs / MIB:.1f} MiB + " if graphs else "")
            + f"{report['peak_function']} activations {fn['storage_bytes'] / MIB:.1f} MiB "
            f"+ kernel workspace {fn['workspace_bytes'] / MIB:.1f} MiB = "
            f"{report['peak_bytes'] / MIB:.1f} MiB peak")


def main(argv=None) -> int:
    """`python -m wsd.compiler.memory --model sd15 --dtype float16 --target nvidia/nvidia-h100`: the
    planned memory for any target (a TVM target string or tag), without code generation."""
    import argparse
    import json

    from wsd import settings, targets
    from wsd.models import load_model

    p = argparse.ArgumentParser(prog="python -m wsd.compiler.memory", description=main.__doc__)
    p.add_argument("--model", default="tiny")
    p.add_argument("--dtype", default="float16", choices=settings.DTYPES)
    p.add_argument("--target", default="llvm", help="llvm, cuda (needs the GPU), or a TVM "
                   "tag such as nvidia/nvidia-h100 (plans for it on any machine)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if args.target in targets.TARGETS:
        target = targets.make(args.target)
    else:
        target = tvm.target.Target(args.target)
    report = plan_model(load_model(args.model), args.dtype, target, args.height, args.width)
    for name, info in report["functions"].items():
        kernel = f" ({info['workspace_kernel']})" if info["workspace_kernel"] else ""
        print(f"{name:12s} storage {info['storage_bytes'] / MIB:9.1f} MiB  workspace "
              f"{info['workspace_bytes'] / MIB:7.1f} MiB{kernel}")
    print(f"{'weights':12s} {report['weight_bytes'] / MIB:9.1f} MiB in {report['num_weights']} "
          f"tensors (largest {report['largest_weight_bytes'] / MIB:.1f} MiB)")
    print(describe(report) + f" ({report['peak_bytes'] / 1e9:.3f} GB)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
