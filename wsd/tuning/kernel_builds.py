"""One kernel at a time, as the tuner and the benches compile it: dlight's default schedule,
the WGSL and launches of a WebGPU kernel (read from TVM's host code), CUDA builds and
lowering, buffer specs, and the llvm reference samples the benches check against.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx

from wsd.kernels.gemm import tensor_core_matmul, tiled_matmul
from wsd.tuning import wgsl_bench

SAMPLES = 8192


def default_schedule(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """What wsd.compiler.schedule gives this kernel without records (dlight's rules)."""
    from wsd.compiler import schedule

    mod = tvm.IRModule({"main": func})
    with target:
        mod = tvm.transform.Sequential(schedule.dlight_passes(target))(mod)
    return mod["main"]


def compile_wgsl(func: tirx.PrimFunc, target: tvm.target.Target) -> dict:
    """Scheduled PrimFunc -> {"source", "launches": [{entry, bindings, grid}], "workspaces":
    [{name, shape, dtype}]}: its kernels in launch order, as TVM's host code (kept after
    SplitHostDevice) launches them, each binding a parameter (by buffer_specs' name) or a
    workspace, a global buffer between two kernels (split-K's partial products)."""
    from wsd.runtime.webgpu_host import BUFFER_DATA, build_keeping_host, host_steps

    func = func.with_attr("global_symbol", "main").with_attr("tirx.is_scheduled", True)
    rt, lowered = build_keeping_host(
        lambda: tvm.tirx.build(tvm.IRModule({"main": func}), target=target))
    device = [m for m in rt.imports if m.kind == "webgpu"]
    if len(device) != 1:
        raise RuntimeError("expected one webgpu module")
    source = device[0].inspect_source()
    info = json.loads(device[0].inspect_source("func_info"))
    host = lowered["main"]
    names = {p: spec["name"] for p, spec in zip(host.params, buffer_specs(func))}
    launches, workspaces = [], []

    def buffer(expr):
        return names[expr.args[0] if isinstance(expr, tvm.ir.expr.Call)
                     and expr.op.same_as(BUFFER_DATA) else expr]

    for kind, *step in host_steps(host.body, "main"):
        if kind == "declare":
            names[step[0]] = buffer(step[1])
        elif kind == "allocate":
            b = step[0]
            names[b] = f"workspace:{b.name}"
            workspaces.append({"name": names[b], "shape": [int(d) for d in b.shape],
                               "dtype": str(b.dtype)})
        elif kind == "launch":
            entry, args = step
            finfo = info[entry]
            if any(t != "handle" for t in finfo["arg_types"]):
                raise RuntimeError("kernels with scalar arguments are not supported by the bench")
            count = len(finfo["arg_types"])
            extents = dict(zip(finfo["launch_param_tags"], (int(a) for a in args[count:])))
            launches.append({"entry": entry,
                             "bindings": [buffer(a) for a in args[:count]],
                             "grid": [extents.get(f"blockIdx.{a}", 1) for a in "xyz"]})

    if len(launches) != len(info):
        raise RuntimeError(f"{len(info)} kernels, {len(launches)} launches found")
    return {"source": source, "launches": launches, "workspaces": workspaces}


def buffer_specs(func: tirx.PrimFunc) -> list[dict]:
    """The kernel's parameters (name, shape, dtype, written or not, input seed)."""
    written = set()
    tvm_ffi.structural_walk(func.body,
                            [(tirx.BufferStore, lambda n: written.add(n.buffer.name))])
    specs, names = [], set()
    for i, param in enumerate(func.params):
        ty = param.ty
        # Fused kernels can have two parameters of one name (lv7 twice): the second gets
        # the suffix TVM's printer gives it (lv7_1), so that names key buffers uniquely.
        name, n = param.name, 0
        while name in names:
            n += 1
            name = f"{param.name}_{n}"
        names.add(name)
        specs.append({"name": name, "shape": [int(d) for d in ty.shape],
                      "dtype": str(ty.dtype), "output": param.name in written, "seed": 1 + i})
    return specs


def reference_schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A plain CPU schedule of a GEMM kernel for the llvm reference: the same computation
    (schedule primitives preserve semantics), register tiles and threads so that SD-sized
    kernels take seconds rather than minutes on two cores."""
    from tvm import s_tir
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, auto_inline_producers

    sch = s_tir.Schedule(func)
    main = tiled_matmul.main_block(sch)
    tiled_matmul.normalize(sch, main)
    sch.pad_einsum(main, [1, 8, 16, 1])
    s_, i, j, k = sch.get_loops(main)
    io, ii = sch.split(i, [None, 8])
    jo, ji = sch.split(j, [None, 16])
    sch.reorder(s_, io, jo, k, ii, ji)
    acc = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(acc, jo)
    auto_inline_producers(sch, main)
    auto_inline_consumer_chain(sch, acc)
    sch.parallel(sch.fuse(s_, io))
    sch.vectorize(ji)
    sch.unroll(ii)
    sch.decompose_reduction(main, k)
    return sch.mod["main"]


def reference_samples(func: tirx.PrimFunc, specs: list[dict], samples: int = SAMPLES,
                      seed: int = 0) -> dict:
    """Run the unscheduled kernel on llvm on the hash inputs; sample its outputs."""
    target = tvm.target.Target({"kind": "llvm", "num-cores": os.cpu_count() or 1})
    func = reference_schedule(func)
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=target)
    dev = tvm.cpu()
    args = []
    for spec in specs:
        if spec["output"]:
            args.append(tvm.runtime.empty(spec["shape"], spec["dtype"], dev))
        else:
            args.append(tvm.runtime.tensor(
                wgsl_bench.hash_inputs(spec["shape"], spec["dtype"], spec["seed"]), dev))
    lib["main"](*args)
    return sample_outputs(specs, [a.numpy() for a in args], samples, seed)


def sample_outputs(specs: list[dict], arrays: list, samples: int = SAMPLES,
                   seed: int = 0) -> dict:
    """The reference file's contents: for each output, `samples` flat indices (the same
    for a given size and seed) and the values there."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec, arr in zip(specs, arrays):
        if spec["output"]:
            flat = np.asarray(arr).ravel()
            idx = np.sort(rng.choice(flat.size, size=min(samples, flat.size), replace=False))
            out[spec["name"] + ".idx"] = idx.astype(np.int64)
            out[spec["name"] + ".val"] = flat[idx]
    return out


def _kernel_module(func) -> tvm.IRModule:
    func = func.with_attr("global_symbol", "main").with_attr("tirx.is_scheduled", True)
    return tvm.IRModule({"main": func})


def build_kernel(func, target: tvm.target.Target) -> tvm.runtime.Module:
    """One scheduled PrimFunc -> a runtime module with a "main" function (as wsd.compiler.pipeline
    compiles it: with cp.async for the pipelined copies)."""
    with tvm.transform.PassContext(config=tensor_core_matmul.PASS_CONFIG):
        return tvm.tirx.build(_kernel_module(func), target=target)


def lower_kernel(func, target: tvm.target.Target) -> list[tvm.IRModule]:
    """TVM's lowering of one scheduled PrimFunc for CUDA, without nvcc: the device modules
    as they go to CUDA code generation. Raises where TVM rejects the schedule (e.g. some
    shared-memory layouts), in well under a second."""
    from tvm.tirx.build import split_host_device_mods

    with tvm.transform.PassContext(config=tensor_core_matmul.PASS_CONFIG):
        mod = tvm.tirx.transform.BindTarget(target.with_host("llvm"))(_kernel_module(func))
        lower, _, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
        _, device_mods = split_host_device_mods(lower(mod))
        return [finalize_device()(m) for m in device_mods.values()]
