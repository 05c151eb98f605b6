"""WGSL as wsd runs it through wgpu-py: a webgpu module's source split per kernel, made
acceptable to naga, and the subgroup sizes an adapter gives kernels. numpy and wgpu only (no
TVM): wsd.tuning.wgsl_bench runs where TVM is not installed.
"""

from __future__ import annotations

import re

import numpy as np

_HEADER = re.compile(r"^// Function: (\S+)$", re.M)


def for_naga(source: str) -> str:
    """WGSL as wgpu-py's shader compiler (naga) takes it: naga offers subgroup builtins once
    the device has the "subgroup" feature but rejects the `enable subgroups;` directive that
    the WGSL spec (and Chrome) require, so it is dropped here; nothing else changes."""
    return source.replace("enable subgroups;\n", "")


_SUBGROUP_PROBE = """
@group(0) @binding(0) var<storage, read_write> sizes : array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) i : u32, @builtin(subgroup_size) n : u32) {
  sizes[i] = n;
}
"""


def probe_subgroup_sizes(device) -> set[int]:
    """The subgroup sizes a 256-invocation kernel runs with on this wgpu device (which must
    have the "subgroup" feature): adapters report a range, a kernel gets one of it."""
    import wgpu

    pipeline = device.create_compute_pipeline(
        layout="auto", compute={"module": device.create_shader_module(code=_SUBGROUP_PROBE),
                                "entry_point": "main"})
    out = device.create_buffer(size=256 * 4,
                               usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
    group = device.create_bind_group(layout=pipeline.get_bind_group_layout(0),
                                     entries=[{"binding": 0, "resource": {"buffer": out}}])
    encoder = device.create_command_encoder()
    compute = encoder.begin_compute_pass()
    compute.set_pipeline(pipeline)
    compute.set_bind_group(0, group)
    compute.dispatch_workgroups(1)
    compute.end()
    device.queue.submit([encoder.finish()])
    return {int(n) for n in np.frombuffer(device.queue.read_buffer(out), dtype=np.uint32)}


def split_sources(source: str) -> dict[str, str]:
    """The webgpu module's `inspect_source()` -> {kernel name: its WGSL}.

    That source is, per kernel, a `// Function: NAME` line, the kernel's shader text and a
    newline. The shader text (what the bundle stores and tvmjs compiles; checked byte for
    byte against a bundle's model.wasm) begins with a comment header of its own: a dashed
    line, `// Function: NAME`, a dashed line."""
    heads = list(_HEADER.finditer(source))
    starts = [m for i, m in enumerate(heads) if i == 0 or heads[i - 1].group(1) != m.group(1)]
    out = {}
    for i, m in enumerate(starts):
        name = m.group(1)
        end = starts[i + 1].start() if i + 1 < len(starts) else len(source)
        if name in out:
            raise ValueError(f"kernel {name} appears twice in the webgpu source")
        text = source[m.start():end]
        if text.split("\n", 2)[1].startswith("//-"):  # the lines inspect_source adds
            text = text.split("\n", 1)[1]
            text = text[:-1] if text.endswith("\n") else text
        out[name] = text
    return out
