"""What a CUDA target's architecture (its "arch" attribute, e.g. sm_90a) allows.

Compute capability gates features (wmma from sm_70, cp.async from sm_80); the shared memory a
block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin) decides which tuned schedules
can launch. From NVIDIA's CUDA C++ Programming Guide, "Technical Specifications per Compute
Capability".
"""

from __future__ import annotations

import re

import tvm

KIB = 1024
# Opt-in shared memory per block by compute capability; unlisted ones get the smallest.
_OPTIN_SHARED = {70: 96 * KIB, 72: 96 * KIB, 75: 64 * KIB, 80: 163 * KIB, 86: 99 * KIB,
                 87: 163 * KIB, 89: 99 * KIB, 90: 227 * KIB, 100: 227 * KIB, 120: 99 * KIB}


def sm_version(target: tvm.target.Target) -> int:
    """A CUDA target's compute capability as a number (sm_90a -> 90); 0 if it names none."""
    arch = re.match(r"sm_(\d+)", str(target.attrs.get("arch", "")))
    return int(arch.group(1)) if arch else 0


def optin_shared_bytes(target: tvm.target.Target) -> int:
    """The most shared memory one block of this architecture can use (0: no CUDA arch)."""
    sm = sm_version(target)
    if sm == 0:
        return 0
    return _OPTIN_SHARED.get(sm, min(_OPTIN_SHARED.values()))
