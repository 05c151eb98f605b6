"""What every attention kernel of wsd.kernels shares: the call's shape and WebGPU's limits."""

from __future__ import annotations

from dataclasses import dataclass

# A masked or not-yet-seen score. Finite: WGSL has no infinity literals, and exp(NEG - m)
# must be exactly 0 for any finite m, never inf - inf = NaN.
NEG = -1.0e30

# WebGPU's default limits (GPUSupportedLimits): what a kernel may use on any adapter.
WEBGPU_MAX_WORKGROUP_STORAGE = 16384
WEBGPU_MAX_INVOCATIONS = 256


@dataclass(frozen=True)
class Shape:
    """One attention call: q (batch, q_len, heads, head_dim), k (batch, kv_len, heads,
    head_dim), v (batch, kv_len, heads, v_dim) in BSNH layout, as relax.nn.attention."""

    batch: int
    q_len: int
    kv_len: int
    heads: int
    head_dim: int
    v_dim: int
    dtype: str  # float32 or float16 (inputs and output); accumulation is float32
    scale: float
