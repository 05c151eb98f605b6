"""Stage "web bundle": everything the browser needs, in one directory.

    out_dir/model.wasm         every compiled function (WGSL kernels, wasm32 host code) linked
                               with TVM's web runtime (web/runtime/build.sh): a Relax VM that
                               tvmjs (@mlc-ai/web-runtime) loads with `instantiate`
    out_dir/params/            the weights as a TVM tensor cache (wsd.runtime.weights), SHA-256 per shard
    out_dir/tokenizer.json     HuggingFace tokenizer.json (@mlc-ai/web-tokenizers)
    out_dir/wsd-config.json    what the app needs to drive the functions (see build_bundle)
    out_dir/index.html, app.js the web app (wsd.web.app): `wsd serve out_dir`, open the page

`settings` in wsd-config.json: the generation settings' defaults and bounds (wsd.settings), which
the app offers and checks, as `wsd generate` does.

`requirements` in wsd-config.json: what the adapter must offer (wsd.web.limits reads it from the
lowered module, its kernels and the generated WGSL). The web app reads `shader_f16`,
`max_buffer_bytes` and `max_storage_binding_bytes`:
    shader_f16                  the module computes in float16
    max_buffer_bytes            the largest GPU buffer: the largest of the planned activation
                                storages (page-rounded, as the VM's pooled allocator allocates
                                them), kernels' global scratch buffers, weights, and latents
    max_storage_binding_bytes   the largest buffer bound to a kernel; buffers are bound whole,
                                so the same number
    max_workgroup_storage_bytes, max_invocations_per_workgroup,
    max_storage_buffers_per_shader_stage
                                the most any WGSL kernel uses (always recorded; WebGPU's
                                defaults are 16384, 256, 8)
    max_weight_bytes, max_storage_bytes, max_intermediate_bytes, latent_bytes
                                the parts of max_buffer_bytes
    weights_bytes, activation_pool_bytes, max_function_storage_bytes, workspace_pool_bytes,
    peak_memory_bytes
                                the memory plan: peak = all weights + the activation storages
                                the VM's pooled allocator holds once every function has run (it
                                reuses a freed buffer only for the same page-rounded size: per
                                size, the most storages of that size any one function has) +
                                the kernels' workspaces (wsd.web.limits.workspace_pool_bytes:
                                split-K's partial products; attention keeps none)
    webgpu_defaults_ok          whether WebGPU's default limits suffice (wsd.web.limits.check)
Scheduler kernels have symbolic shapes (their buffers are latent-sized) and are not counted
in the storages; `latent_bytes` covers them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from wsd import settings
from wsd.compiler import buffers, layout
from wsd.compiler import pipeline as wsd_build
from wsd.compiler.trace import check_dtype, resolve_size, trace_model
from wsd.models import Model
from wsd.runtime.weights import collect_weights, write_tensor_cache
from wsd.targets import webgpu_target
from wsd.web import limits
from wsd.web.app import build_app, ensure_packages

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_BUILD = ROOT / "web" / "runtime" / "build.sh"
CONFIG_NAME = "wsd-config.json"
FORMAT_VERSION = 2  # 2: "settings" (web/src/engine.js checks it)


class BundleError(RuntimeError):
    """The web bundle cannot be built here (e.g. no emscripten)."""


def web_runtime_dir(log=print) -> str:
    """Build (or find up to date) TVM's wasm runtime; returns the TVM_HOME to link with."""
    proc = subprocess.run(["bash", str(RUNTIME_BUILD)], capture_output=True, text=True)
    if proc.returncode == 77:
        raise BundleError("emscripten is unavailable, so the web runtime cannot be built; "
                          "install Debian's `emscripten` and run `bash web/runtime/build.sh`")
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BundleError(f"`bash web/runtime/build.sh` failed (exit {proc.returncode}):\n"
                          f"{proc.stderr[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _fcompile(link_opt: str = "-O1"):
    from tvm.contrib import tvmjs

    def fcompile(output, objects, options=None, **kwargs):
        # create_tvmjs_wasm passes -O3 first; a later -O wins (-O3 makes the link minutes).
        return tvmjs.create_tvmjs_wasm(output, objects, options=list(options or []) + [link_opt],
                                       **kwargs)

    # Debian's emscripten (LLVM 14) cannot read TVM's LLVM-22 bitcode: hand it wasm objects.
    fcompile.object_format = "o"
    return fcompile


def _param_info(func: relax.Function, count: int) -> list[dict]:
    info = []
    for p in func.params[:count]:
        ty = p.ty
        shape = [int(d.value) if hasattr(d, "value") else str(d) for d in ty.shape.values]
        info.append({"name": p.name, "shape": shape, "dtype": str(ty.dtype)})
    return info


def build_bundle(model: Model, out_dir, dtype: str = "float32", height: int | None = None,
                 width: int | None = None, log=print) -> dict:
    """Write the web bundle for `model` into out_dir; returns the wsd-config.json dict."""
    check_dtype(dtype)
    height, width = resolve_size(model, height, width)
    out = Path(out_dir)
    start = time.time()
    times = {}

    tvm_home = web_runtime_dir(log)  # fail early, before minutes of compiling
    ensure_packages()
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    log(f"tracing {model.name} ({dtype}, {height}x{width}) ...")
    traced = trace_model(model, height, width, dtype)
    mod = wsd_build.add_scheduler_functions(traced.mod)
    inputs = {name: _param_info(mod[name], traced.num_inputs.get(name, len(mod[name].params)))
              for name in (gv.name_hint for gv in mod.get_global_vars())
              if isinstance(mod[name], relax.Function)}
    times["trace_s"] = time.time() - t0

    t0 = time.time()
    target = webgpu_target()
    log("compiling for webgpu (wasm32 host) ...")
    weight_layouts = layout.WeightLayouts(traced.num_inputs)
    compiled = wsd_build.compile_module(mod, target, weight_layouts)
    storage = buffers.storage_sizes(compiled.lowered)
    kernels = limits.wgsl_kernels(limits.webgpu_source(compiled.executable))
    times["compile_s"] = time.time() - t0

    t0 = time.time()
    os.environ["TVM_HOME"] = tvm_home  # create_tvmjs_wasm finds web/dist/wasm/*.bc here
    os.environ.setdefault("NODE_PATH", "/usr/share/nodejs")  # Debian's emcc needs it
    wasm = out / "model.wasm"
    tmp = out / f"model.{os.getpid()}.wasm"
    compiled.executable.export_library(str(tmp), fcompile=_fcompile())
    os.replace(tmp, wasm)
    times["link_s"] = time.time() - t0

    t0 = time.time()
    meta = {"dtype": dtype, "functions": wsd_build.function_meta(traced, weight_layouts)}
    weights = collect_weights(model, meta, dtype, modules=traced.modules)  # no second load
    manifest = write_tensor_cache(weights, out / "params",
                                  metadata={"model": model.name,
                                            "config_hash": model.config_hash()})
    # Unpadded: web-tokenizers' encode() adds no special tokens; the app adds bos/eos,
    # truncates and pads as wsd.runtime.tokenizer's __call__ does, with the ids in config["tokens"].
    tokenizer = model.tokenizer()
    (out / "tokenizer.json").write_text(tokenizer.to_tokenizers_json(padded=False))
    times["params_s"] = time.time() - t0

    f = model.vae_scale_factor
    latent_shape = [1, model.latent_channels, height // f, width // f]
    latent_bytes = int(np.prod(latent_shape)) * 4
    max_weight = manifest["metadata"]["max_tensor_bytes"]
    functions = {}
    for name, params in inputs.items():
        entry = {"num_inputs": len(params), "inputs": params}
        if name in weights.functions:
            entry["weights"] = weights.functions[name]
        if name in storage:
            entry["storage"] = storage[name]
        functions[name] = entry
    config = {
        "format": "wsd-web-bundle", "format_version": FORMAT_VERSION,
        "model": model.name, "config_hash": model.config_hash(), "dtype": dtype,
        "height": height, "width": width, "latent_shape": latent_shape,
        "vae_scale_factor": f, "max_tokens": model.max_tokens,
        "tokens": {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
                   "pad": tokenizer.pad_token_id},
        "scheduler_config": model.configs["scheduler"],
        "settings": settings.record(),  # defaults and bounds the app offers (wsd.settings)
        "target": str(target), "tvm_version": tvm.__version__,
        "files": {"wasm": wasm.name, "params": "params/", "tokenizer": "tokenizer.json"},
        "functions": functions,
        "requirements": {
            "shader_f16": dtype == "float16",
            **limits.requirements(compiled.storages, compiled.intermediates, kernels,
                                  max_weight_bytes=max_weight,
                                  weights_bytes=manifest["metadata"]["tensor_bytes"],
                                  io_bytes=latent_bytes),
            "latent_bytes": latent_bytes,
        },
    }
    config["requirements"]["webgpu_defaults_ok"] = not limits.check(config["requirements"])
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=1, default=str))
    build_app(out, log)

    mib = 1 << 20
    log(f"wrote {out} in {time.time() - start:.1f} s "
        f"(trace {times['trace_s']:.1f} s, compile {times['compile_s']:.1f} s, "
        f"link {times['link_s']:.1f} s, weights {times['params_s']:.1f} s)")
    log(f"  model.wasm       {wasm.stat().st_size / mib:8.2f} MiB")
    log(f"  params/          {manifest['metadata']['total_bytes'] / mib:8.2f} MiB in "
        f"{len(manifest['records'])} shard(s), {manifest['metadata']['num_tensors']} tensors")
    log(f"  tokenizer.json   {(out / 'tokenizer.json').stat().st_size / mib:8.2f} MiB")
    for line in limits.describe(config["requirements"]):
        log(f"  {line}")
    return config
