"""What a compiled WebGPU module asks of the adapter: buffer sizes, workgroup needs, memory.

WebGPU guarantees every adapter these limits (GPUSupportedLimits defaults); a device may be
requested with more only where the adapter has more:

    maxBufferSize                      256 MiB   the largest GPUBuffer
    maxStorageBufferBindingSize        128 MiB   the largest buffer bound to a kernel
    maxComputeWorkgroupStorageSize      16 KiB   var<workgroup> per kernel
    maxComputeInvocationsPerWorkgroup      256   @workgroup_size x * y * z
    maxStorageBuffersPerShaderStage          8   var<storage> bindings per kernel

Where the numbers come from:
- Activations: after static memory planning every Relax function allocates its
  intermediates as a few storages of constant size (`R.vm.alloc_storage`); the compile reads
  them from the lowered module (wsd.compiler.buffers). tvmjs runs the VM with TVM's pooled allocator, which rounds each storage
  up to 4 KiB pages, and binds a buffer whole, so a storage's binding is its page-rounded size.
- Kernel intermediates: a TensorIR kernel that keeps a buffer in global scope (TVM's default
  attention kept its whole score matrix so) makes the runtime allocate a workspace of that
  size. The compile lists them from the scheduled kernels (wsd.compiler.buffers); with
  wsd.kernels.attention there are none.
- Weights: one buffer per tensor (tvmjs `fetchTensorCache`).
- Workgroup needs: read from the generated WGSL, per kernel. WebGPU counts each workgroup
  variable rounded up to 16 bytes.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import tvm

MiB = 1 << 20
PAGE = 4096  # TVM's PooledAllocator (the VM allocator tvmjs uses) rounds up to pages

# WebGPU's default limits, under the names wsd-config.json uses for requirements.
WEBGPU_DEFAULTS = {
    "max_buffer_bytes": 256 * MiB,
    "max_storage_binding_bytes": 128 * MiB,
    "max_workgroup_storage_bytes": 16384,
    "max_invocations_per_workgroup": 256,
    "max_storage_buffers_per_shader_stage": 8,
}


def page_round(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


# ---- pools: what tvmjs' allocators hold ----------------------------------------------------------

def activation_pool_bytes(storages: dict[str, dict]) -> int:
    """GPU memory the VM's pooled allocator holds for activations once every function has run.

    The pool keeps every freed buffer and reuses it only for a request of the same
    page-rounded size; a function's storages are taken as live together for its whole call
    (static planning has already shared memory between tensors whose lifetimes do not
    overlap). So for each size s the pool ends up with max over functions of the number of
    storages of size s: the result is sum over s of s * that number."""
    need: Counter = Counter()
    for info in storages.values():
        for size, count in Counter(page_round(s) for s in info["sizes"]).items():
            need[size] = max(need[size], count)
    return sum(size * count for size, count in need.items())


def workspace_pool_bytes(intermediates: dict) -> int:
    """An upper bound of the GPU memory TVM's workspace pool (tvmjs's WebGPU allocator for
    kernels' global intermediates, e.g. split-K's partial products) holds.

    A kernel function frees its intermediates before it returns; the pool keeps freed
    entries, hands out the smallest that fits, and otherwise replaces its largest with one of
    the new size. So it never holds more entries than one function has at once (K), none
    larger than some request: at most the K largest (page-rounded) intermediates."""
    found = [[page_round(size) for _, size in items if size] for items in intermediates.values()]
    most = max((len(sizes) for sizes in found), default=0)
    return sum(sorted((s for sizes in found for s in sizes), reverse=True)[:most])


# ---- WGSL: workgroup needs --------------------------------------------------------------------

_SCALAR_BYTES = {"f16": 2, "f32": 4, "i32": 4, "u32": 4, "bool": 4}


def _wgsl_type_bytes(ty: str) -> int:
    ty = ty.replace(" ", "")
    match = re.fullmatch(r"array<(.+),(\d+)u?>", ty)
    if match:
        return _wgsl_type_bytes(match.group(1)) * int(match.group(2))
    match = re.fullmatch(r"vec(\d)<(\w+)>", ty)
    if match:
        lanes = int(match.group(1))
        return _SCALAR_BYTES[match.group(2)] * (4 if lanes == 3 else lanes)
    return _SCALAR_BYTES[ty]


def wgsl_kernels(source: str) -> dict[str, dict]:
    """Per kernel of TVM's WebGPU module source (sections start with `// Function: NAME`):
    workgroup_storage_bytes (each var<workgroup> rounded up to 16 bytes, as WebGPU counts),
    invocations (the product of @workgroup_size) and storage_buffers (var<storage> bindings)."""
    kernels = {}
    for section in re.split(r"^// Function: ", source, flags=re.M)[1:]:
        name = section.split("\n", 1)[0].strip()
        if "@compute" not in section:
            continue  # the header line before the section proper
        storage = sum(-(-_wgsl_type_bytes(t) // 16) * 16 for t in
                      re.findall(r"var<workgroup>\s+\w+\s*:\s*([^;]+);", section))
        sizes = re.search(r"@workgroup_size\(([^)]*)\)", section).group(1)
        invocations = int(np.prod([int(s.strip().rstrip("iu")) for s in sizes.split(",")]))
        kernels[name] = {"workgroup_storage_bytes": storage, "invocations": invocations,
                         "storage_buffers": len(re.findall(r"var<storage\b", section))}
    return kernels


def webgpu_source(executable) -> str:
    """The WGSL of a compiled executable (tvm.compile for a webgpu target) or library
    (tvm.tirx.build)."""
    root = executable if isinstance(executable, tvm.runtime.Module) else executable.mod
    stack, sources = [root], []
    while stack:
        module = stack.pop()
        if module.kind == "webgpu":
            sources.append(module.inspect_source())
        stack.extend(module.imports)
    return "\n".join(sources)


# ---- the requirements -------------------------------------------------------------------------

def requirements(storages: dict[str, dict], intermediates: dict, kernels: dict[str, dict],
                 max_weight_bytes: int, weights_bytes: int, io_bytes: int) -> dict:
    """The requirements keys for wsd-config.json (see wsd.web.bundle): buffer and binding sizes,
    workgroup needs, and the memory plan.

    max_buffer_bytes = max_storage_binding_bytes: the largest of the page-rounded planned
        storages, the kernels' global intermediates, the weights and the runtime inputs and
        outputs (`io_bytes`); buffers are bound whole.
    peak_memory_bytes = weights_bytes (all weights resident) + activation_pool_bytes (see
        activation_pool_bytes) + workspace_pool_bytes (the kernels' global intermediates, see
        workspace_pool_bytes); inputs and outputs (latent-sized) are not counted."""
    planned = [s for info in storages.values() for s in info["sizes"]]
    scratch = [size for found in intermediates.values() for _, size in found if size]
    max_storage = max(planned, default=0)
    largest = max([page_round(max_storage), max(scratch, default=0), max_weight_bytes,
                   io_bytes])
    pool = activation_pool_bytes(storages)
    workspaces = workspace_pool_bytes(intermediates)
    return {
        "max_buffer_bytes": largest,
        "max_storage_binding_bytes": largest,
        "max_workgroup_storage_bytes": max((k["workgroup_storage_bytes"]
                                            for k in kernels.values()), default=0),
        "max_invocations_per_workgroup": max((k["invocations"] for k in kernels.values()),
                                             default=0),
        "max_storage_buffers_per_shader_stage": max((k["storage_buffers"]
                                                     for k in kernels.values()), default=0),
        "max_weight_bytes": max_weight_bytes,
        "max_storage_bytes": max_storage,
        "max_intermediate_bytes": max(scratch, default=0),
        "weights_bytes": weights_bytes,
        "activation_pool_bytes": pool,
        "max_function_storage_bytes": max((sum(info["sizes"]) for info in storages.values()),
                                          default=0),
        "workspace_pool_bytes": workspaces,
        "peak_memory_bytes": weights_bytes + pool + workspaces,
    }


def check(req: dict, limits: dict = WEBGPU_DEFAULTS) -> list[str]:
    """What in `req` exceeds `limits` (default: WebGPU's defaults), one line each; empty when
    the module runs on any adapter (with shader-f16 where req["shader_f16"])."""
    return [f"{key} = {req[key]} exceeds {limit}" for key, limit in limits.items()
            if req.get(key, 0) > limit]


def describe(req: dict) -> list[str]:
    """Log lines: the largest buffer, the memory plan, and the limits it needs."""
    mib = lambda n: f"{n / MiB:.2f} MiB"  # noqa: E731
    over = check(req)
    return [
        f"largest buffer   {mib(req['max_buffer_bytes'])} (weights "
        f"{mib(req['max_weight_bytes'])}, activations {mib(req['max_storage_bytes'])}, "
        f"kernel scratch {mib(req['max_intermediate_bytes'])}); "
        f"shader-f16 {'required' if req.get('shader_f16') else 'not needed'}",
        f"memory plan      peak {mib(req['peak_memory_bytes'])} = weights "
        f"{mib(req['weights_bytes'])} + activation pool {mib(req['activation_pool_bytes'])} "
        f"(largest function {mib(req['max_function_storage_bytes'])}) + kernel workspaces "
        f"{mib(req['workspace_pool_bytes'])}",
        f"workgroups       {req['max_invocations_per_workgroup']} invocations, "
        f"{req['max_workgroup_storage_bytes']} B storage, "
        f"{req['max_storage_buffers_per_shader_stage']} storage buffers at most",
        "WebGPU limits    " + ("defaults suffice (any adapter)" if not over
                               else "above the defaults: " + "; ".join(over)),
    ]
