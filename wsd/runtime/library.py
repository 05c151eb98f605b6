"""The library cache: compile a model for a native target once, load it after.

Compiled libraries do not contain weights (they are function inputs), so a library is keyed
by the architecture, not the checkpoint: model config hash, target, dtype, resolution, TVM's
version and a hash of the sources that make compiled code (COMPILER_SOURCES).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import tvm

from wsd.compiler import layout, memory
from wsd.compiler.pipeline import (add_scheduler_functions, compile_module, function_meta,
                                   uses_cuda_graphs)
from wsd.compiler.trace import check_dtype, resolve_size, trace_model
from wsd.models import Model
from wsd.targets import NATIVE, check, device_of, make

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


# The folders of wsd whose sources and data make compiled code: the compiler (tracing, passes,
# pipeline), the kernels and their tuned records, the samplers' step functions, and the models
# (which PyTorch modules are traced). Editing anything else (the CLI, runtime, bundle, checks,
# tuner, benchmarks) keeps the cached libraries (an SD v1.5 CUDA build takes minutes).
COMPILER_SOURCES = ("compiler", "kernels", "samplers", "models")
# Files under those folders that only change weights, never what is traced: LoRA fusing.
WEIGHT_ONLY_SOURCES = ("models/lora.py",)


def compiler_fingerprint(root: Path = Path(__file__).resolve().parents[1]) -> str:
    """Hash of TVM's version and every file under COMPILER_SOURCES of the package at `root`."""
    digest = hashlib.sha256(tvm.__version__.encode())
    files = (path for folder in COMPILER_SOURCES for path in (root / folder).rglob("*")
             if path.is_file() and path.suffix in (".py", ".json")
             and path.relative_to(root).as_posix() not in WEIGHT_ONLY_SOURCES)
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("WSD_CACHE", Path.home() / ".cache" / "wsd"))


def library_key(model: Model, target: tvm.target.Target, dtype: str,
                height: int, width: int) -> str:
    settings = json.dumps({
        "model": model.config_hash(), "target": str(target), "dtype": dtype,
        "size": [height, width], "compiler": compiler_fingerprint(),
        "cuda_graphs": uses_cuda_graphs(target),
    }, sort_keys=True)
    label = f"{model.name}-{target.kind.name}-{dtype}-{height}x{width}"
    return f"{label}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


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
        weight_layouts = layout.WeightLayouts(traced.num_inputs)
        compiled = compile_module(mod, tvm_target, weight_layouts)
        memory_report = memory.plan(compiled.lowered, memory.weight_bytes(traced))
        log(memory.describe(memory_report))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"model.{os.getpid()}.so"
        compiled.executable.export_library(str(tmp))
        meta = {"model": model.name, "config_hash": model.config_hash(), "target": str(tvm_target),
                "dtype": dtype, "height": height, "width": width,
                "functions": function_meta(traced, weight_layouts), "memory": memory_report}
        meta_path.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, lib_path)  # atomic: a crash never leaves a half-written library
        log(f"built {folder} in {time.time() - start:.1f} s")
    meta = json.loads(meta_path.read_text())
    return Library(folder, tvm.runtime.load_module(str(lib_path)), meta, tvm_target)
