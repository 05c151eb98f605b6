"""The one analysis of what a compiled module allocates, read from the Relax module as code
generation gets it (after static memory planning; `wsd.compiler.pipeline.Compiled.lowered`):

- planned storages: per Relax function, the `alloc_storage` calls memory planning leaves
  (the planner already shares storage between tensors whose lifetimes do not overlap);
- kernel intermediates: per TensorIR kernel, the device ("global" scope) buffers it allocates
  inside itself for one call, which TVM's runtime turns into workspaces (split-K's partial
  products; on CPUs, unscheduled kernels' whole intermediates; TVM's default attention kept
  its score matrix so). Shared and local memory is on-chip and not counted.

wsd.compiler.memory (the native pipeline's peak) and wsd.web.limits (what a WebGPU adapter
must offer) both read these.
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx


def nbytes(dims, dtype: str) -> int | None:
    """Bytes of a tensor of `dims` (TVM or Python integers); None if a dimension is symbolic."""
    values = []
    for d in dims:
        value = d if isinstance(d, int) else getattr(d, "value", None)
        if not isinstance(value, int):
            return None
        values.append(value)
    dt = tvm.runtime.DataType(str(dtype))
    return int(np.prod(values, dtype=np.int64)) * dt.bits * dt.lanes // 8


# ---- Relax: planned storages ------------------------------------------------------------------

def planned_storages(mod: tvm.IRModule) -> dict[str, dict]:
    """Per Relax function: the byte sizes of its storage allocations, in program order, and
    how many have a size that is not a constant ("dynamic", e.g. the samplers' kernels).

    `R.memory.alloc_storage(bytes, device, scope, dtype hint)` (after planning) and
    `R.vm.alloc_storage(shape, device, dtype, scope)` (after VM lowering, dtype uint8)."""
    result = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        sizes, dynamic = [], 0

        def visit(expr):
            nonlocal dynamic
            if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)):
                return
            if expr.op.name == "relax.memory.alloc_storage":
                dtype = "uint8"
            elif expr.op.name == "relax.vm.alloc_storage":
                dtype = str(getattr(expr.args[2], "value", "uint8"))
            else:
                return
            shape = expr.args[0]
            size = nbytes(shape.values, dtype) if isinstance(shape, relax.ShapeExpr) else None
            if size is None:
                dynamic += 1
            else:
                sizes.append(size)

        relax.analysis.post_order_visit(func, visit)
        result[gvar.name_hint] = {"sizes": sizes, "dynamic": dynamic}
    return result


def storage_sizes(mod: tvm.IRModule) -> dict[str, dict]:
    """Per Relax function of a lowered module: the static storage allocations' sizes.

    Memory planning leaves `R.memory.alloc_storage` calls (`R.vm.alloc_storage` after VM
    lowering), see planned_storages. Returns {function: {"max_bytes",
    "total_bytes", "count", "dynamic"}}, dynamic = allocations whose size is not a constant."""
    return {name: {"max_bytes": max(info["sizes"], default=0),
                   "total_bytes": sum(info["sizes"]), "count": len(info["sizes"]),
                   "dynamic": info["dynamic"]}
            for name, info in planned_storages(mod).items()}


# ---- TensorIR: global buffers inside kernels --------------------------------------------------

def _children(node):
    info = type(node).__tvm_ffi_type_info__
    while info is not None:
        for field in info.fields:
            if field.name == "span":
                continue
            value = getattr(node, field.name)
            if isinstance(value, (tirx.Stmt, s_tir.SBlock)):
                yield value
            elif isinstance(value, (list, tuple, tvm_ffi.Array)):
                yield from (x for x in value if isinstance(x, (tirx.Stmt, s_tir.SBlock)))
        info = info.parent_type_info


def _allocated(func: tirx.PrimFunc) -> tirx.Stmt:
    """The kernel's body after the first steps of TVM's TIR lowering (tvm.s_tir.pipeline):
    its buffers allocated where and as large as TVM allocates them (CompactBufferAllocation
    shrinks a buffer to the region the kernel uses). The body as it is where the kernel does
    not lower alone."""
    from tvm.s_tir import transform as st

    lower = tvm.transform.Sequential([
        st.LowerCrossThreadReduction(), st.LowerInitBlock(),
        st.PlanAndUpdateBufferAllocationLocation(), st.ConvertBlocksToOpaque(),
        st.CompactBufferAllocation(), st.LowerOpaqueBlock()])
    try:
        return lower(tvm.IRModule({"main": func}))["main"].body
    except Exception:  # noqa: BLE001 - the declared buffers are the next best answer
        return func.body


def global_intermediates(func: tirx.PrimFunc) -> list[tuple[str, int | None]]:
    """(name, bytes) of every global-scope buffer a kernel allocates (not its arguments), as
    TVM allocates it."""
    found, stack = [], [_allocated(func)]
    while stack:
        node = stack.pop()
        buffers = []
        if isinstance(node, s_tir.SBlock):
            buffers = list(node.alloc_buffers)
        elif isinstance(node, tirx.AllocBuffer):
            buffers = [node.buffer]
        for buf in buffers:
            if buf.scope() == "global":
                found.append((buf.name, nbytes(buf.shape, buf.dtype)))
        stack.extend(_children(node))
    return found


def kernel_intermediates(mod: tvm.IRModule) -> dict[str, list[tuple[str, int | None]]]:
    """Per TensorIR kernel of a module: [(name, bytes or None)] of the global-scope buffers it
    allocates (only kernels with any)."""
    result = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            found = global_intermediates(func)
            if found:
                result[gvar.name_hint] = found
    return result


def kernel_workspace(mod: tvm.IRModule) -> dict[str, int | None]:
    """{kernel: bytes of the global buffers it allocates} for kernels with any; None where a
    size is symbolic."""
    return {name: (None if any(size is None for _, size in found) else sum(s for _, s in found))
            for name, found in kernel_intermediates(mod).items()}
