"""Every target wsd compiles for, described once: its name, what it is for, and its TVM target.

    name                      what                                          runs in
    llvm                      this machine's CPU                            generate, build, verify, bench
    cuda                      NVIDIA GPU 0 (its architecture, from the      generate, build, verify, bench
                              device)
    webgpu                    the browser bundle: WGSL kernels, wasm32 host build (--out DIR)
    webgpu-native             the bundle's kernels on this machine's        verify, bench
                              WebGPU through wgpu-py (wsd.runtime.webgpu_native)
    webgpu-native-subgroups   the same, the kernel set for adapters with    verify, bench
                              subgroups of SUBGROUP_SIZE

Kernel tuning targets (`tuning_target`): the same WebGPU kernels with an llvm host (the tuner
reads TVM's host code of a kernel to find its launches; no wasm needed), and CUDA as the
H100 tag (its GEMM kernels are those of any sm_80+ GPU).

Adding a target: a row in TARGETS, its TVM target in `make`, its device in wsd.runtime (or a
runtime of its own, as webgpu-native has).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TVM is imported where a target is made: the CLI lists names without it
    import tvm


class TargetError(RuntimeError):
    """The requested target is unknown or cannot run on this machine."""


@dataclass(frozen=True)
class TargetInfo:
    name: str
    help: str
    commands: tuple[str, ...]  # the `wsd` subcommands that take it


LLVM, CUDA, WEBGPU = "llvm", "cuda", "webgpu"
WEBGPU_NATIVE, WEBGPU_NATIVE_SUBGROUPS = "webgpu-native", "webgpu-native-subgroups"

TARGETS = {t.name: t for t in (
    TargetInfo(LLVM, "the CPU", ("generate", "build", "verify", "bench")),
    TargetInfo(CUDA, "NVIDIA GPU", ("generate", "build", "verify", "bench")),
    TargetInfo(WEBGPU, "a browser bundle, with --out DIR", ("build",)),
    TargetInfo(WEBGPU_NATIVE, "the browser build's WGSL kernels on a native WebGPU through "
               "wgpu-py, e.g. Mesa lavapipe", ("verify", "bench")),
    TargetInfo(WEBGPU_NATIVE_SUBGROUPS, "its kernel set for adapters with subgroups of 32",
               ("verify", "bench")),
)}
NATIVE = (LLVM, CUDA)  # compiled into a shared library, run by wsd.runtime
WEBGPU_NATIVES = (WEBGPU_NATIVE, WEBGPU_NATIVE_SUBGROUPS)

# The browser build's host code: TVM's wasm runtime links wasm32 objects into model.wasm.
WASM_HOST = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}
# The subgroup kernel set: TVM lowers cross-thread reductions to subgroup shuffles written for
# subgroups of exactly this many invocations (its warp size for WebGPU), so an adapter runs
# that set only if all its subgroups have this size (wsd.runtime.webgpu_native checks it).
# Measured no faster than the portable set (docs/PERF.md), so bundles ship only the portable set.
SUBGROUP_SIZE = 32
# Tuning: WebGPU kernels with an llvm host (the tuner reads their host code for launches);
# the CUDA kernels of any sm_80+ GPU (layouts depend on the kind, attention on the
# architecture; GEMM kernels are the same); the bench builds for the GPU it runs on.
TUNING_WEBGPU = {"kind": "webgpu", "host": "llvm"}
TUNING_CUDA = "nvidia/nvidia-h100"


def names(command: str) -> tuple[str, ...]:
    """The targets a `wsd` subcommand takes, in table order."""
    return tuple(t.name for t in TARGETS.values() if command in t.commands)


def describe(command: str) -> str:
    """CLI help: each target of `command` with what it is."""
    return "; ".join(f"{t.name}: {t.help}" for t in TARGETS.values() if command in t.commands)


def check(name: str, allowed: tuple[str, ...]) -> None:
    """Refuses a target name that is not one of `allowed` (e.g. NATIVE, names("verify"))."""
    if name not in allowed:
        raise TargetError(f"unknown target {name!r}; choose one of {', '.join(allowed)}")


def webgpu_target(subgroups: bool = False) -> tvm.target.Target:
    """The browser build's target. `subgroups`: the kernel set for adapters with the WebGPU
    "subgroups" feature and subgroups of SUBGROUP_SIZE (reductions through shuffles instead
    of workgroup memory and barriers); the portable set runs on every adapter."""
    import tvm

    attrs = {"kind": "webgpu", "host": WASM_HOST}
    if subgroups:
        attrs["supports_subgroups"] = True
    target = tvm.target.Target(attrs)
    if subgroups and int(target.attrs["thread_warp_size"]) != SUBGROUP_SIZE:
        raise RuntimeError(f"TVM's WebGPU warp size is {target.attrs['thread_warp_size']}, "
                           f"wsd's subgroup check assumes {SUBGROUP_SIZE}")
    return target


def make(name: str) -> tvm.target.Target:
    """The TVM target for `name`. For cuda, checks that this machine has the GPU (the target
    comes from it); the WebGPU-native runtime checks its adapter itself
    (wsd.runtime.webgpu_native.check_adapter)."""
    import tvm

    if name == LLVM:
        return tvm.target.Target({"kind": "llvm", "num-cores": os.cpu_count() or 1})
    if name == CUDA:
        if not tvm.cuda(0).exist:
            raise TargetError("target 'cuda' needs an NVIDIA GPU, and none is visible here; "
                              "use --target llvm")
        # From the device: its architecture and thread limits.
        return tvm.target.Target.from_device(tvm.cuda(0))
    if name == WEBGPU:
        return webgpu_target()
    if name in WEBGPU_NATIVES:
        return webgpu_target(subgroups=name == WEBGPU_NATIVE_SUBGROUPS)
    check(name, tuple(TARGETS))


def tuning_target(name: str) -> tvm.target.Target:
    """The tuner's target for `name` ("cuda" or "webgpu"), see the module docstring."""
    import tvm

    return tvm.target.Target(TUNING_CUDA if name == CUDA else TUNING_WEBGPU)


def device_of(target: tvm.target.Target) -> tvm.runtime.Device:
    """The TVM device a native library runs on."""
    import tvm

    return tvm.cpu() if target.kind.name == LLVM else tvm.cuda(0)
