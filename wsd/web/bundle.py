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

`write_weights` gives a built bundle another checkpoint of the same architecture without
compiling (`wsd build --target webgpu --weights-only --from DIR`): wsd-config.json records
the model's `architecture` (wsd.models.Model.architecture) and, per function, which weights
it takes in which dtype and stored layout (`weight_meta`, as a library's meta.json).

`vae` in wsd-config.json: the VAE swapped in for the model's own (`--vae`: name, class,
whether its weights are random), or null. `preview_vae`: the preview VAE (`--preview-vae`),
compiled as `decode_preview` (its weights `preview_vae/...` in params/), or null; the app's
previews decode through it ({"function": "decode_preview", "name", "class", "config"}).

`splitting` in wsd-config.json: how tensors that would exceed WebGPU's default storage binding
(128 MiB) were split, and why (wsd.compiler.split.plan's record: "method" "exact", "why", the
decoder's row bands under "decode", the encoder's under "encode", the UNet's feed-forward
token chunks under "unet");
`wsd build` prints it.

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
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from wsd import settings
from wsd.compiler import buffers, layout, split
from wsd.compiler import pipeline as wsd_build
from wsd.compiler.trace import check_dtype, resolve_size, trace_model
from wsd.models import Model
from wsd.runtime.weights import collect_weights, read_manifest, write_tensor_cache
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


def _write_params(model: Model, weights, folder: Path) -> dict:
    return write_tensor_cache(weights, folder, metadata={"model": model.name,
                                                         "config_hash": model.config_hash()})


def _write_tokenizer(model: Model, out: Path):
    # Unpadded: web-tokenizers' encode() adds no special tokens; the app adds bos/eos,
    # truncates and pads as wsd.runtime.tokenizer's __call__ does, with the ids in config["tokens"].
    tokenizer = model.tokenizer()
    (out / "tokenizer.json").write_text(tokenizer.to_tokenizers_json(padded=False))
    return tokenizer


def _model_entries(model: Model, tokenizer) -> dict:
    """The config entries that come from the checkpoint rather than the compiled code."""
    from wsd.models.lora import records

    return {"settings": settings.record(model),  # defaults, bounds, samplers (wsd.settings)
            "tokens": {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
                       "pad": tokenizer.pad_token_id},
            "scheduler_config": model.configs["scheduler"],
            "family": model.family.name,
            # the UNet takes the scale as an input and runs once per step (LCM-distilled)
            "guidance_embedded": model.guidance_embedded,
            # image-to-image: latent_sample's coefficient (the VAE's latent scale)
            "scaling_factor": float(model.configs["vae"].get("scaling_factor", 0.18215)),
            "loras": records(model.loras),  # what was fused into params/: file, sha256, scale
            "vae": (None if model.vae_source is None
                    else model.vae_source.record(model.configs["vae"])),
            "preview_vae": (None if model.preview_vae_source is None else {
                "function": "decode_preview",
                **model.preview_vae_source.record(model.configs["preview_vae"]),
                "config": model.configs["preview_vae"]})}


def build_bundle(model: Model, out_dir, dtype: str = "float32", height: int | None = None,
                 width: int | None = None, log=print,
                 max_binding_bytes: int = limits.WEBGPU_DEFAULTS["max_storage_binding_bytes"]
                 ) -> dict:
    """Write the web bundle for `model` into out_dir; returns the wsd-config.json dict.
    Tensors over `max_binding_bytes` (WebGPU's default storage-binding limit) are split
    exactly (wsd.compiler.split); "splitting" in wsd-config.json records how and why."""
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
    traced = trace_model(model, height, width, dtype, max_binding_bytes=max_binding_bytes)
    for line in split.describe(traced.split):
        log(line)
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
    manifest = _write_params(model, weights, out / "params")
    tokenizer = _write_tokenizer(model, out)
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
        "architecture": model.architecture(), "weight_meta": meta["functions"],
        "height": height, "width": width, "latent_shape": latent_shape,
        "vae_scale_factor": f, "max_tokens": model.max_tokens,
        **_model_entries(model, tokenizer),
        "target": str(target), "tvm_version": tvm.__version__,
        "files": {"wasm": wasm.name, "params": "params/", "tokenizer": "tokenizer.json"},
        "functions": functions,
        "splitting": traced.split,
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


def read_bundle_config(folder) -> dict:
    """A bundle's wsd-config.json, checked to be one this wsd writes."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise BundleError(f"{folder} is not a web bundle: it has no {CONFIG_NAME} "
                          "(write one with `wsd build --target webgpu --out DIR`)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"malformed {path}: {err}") from err
    if (not isinstance(config, dict) or config.get("format") != "wsd-web-bundle"
            or config.get("format_version") != FORMAT_VERSION):
        raise BundleError(f"{path} is not a wsd web bundle of format version {FORMAT_VERSION}")
    return config


def architecture_differences(bundle: dict, model: dict) -> list[str]:
    """Where two Model.architecture() records differ, as 'part.key: bundle X, model Y'."""
    lines = []
    for part in sorted(set(bundle) | set(model)):
        ours, theirs = bundle.get(part, {}), model.get(part, {})
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                lines.append(f"{part}.{key}: bundle {ours.get(key)!r}, model {theirs.get(key)!r}")
    return lines


def write_weights(model: Model, source_dir, out_dir, log=print) -> dict:
    """The bundle at `source_dir` with `model`'s weights, tokenizer and scheduler config,
    written to `out_dir` (which may be `source_dir`) without compiling: same model.wasm and
    app. Refuses a model whose architecture differs from the bundle's, naming the
    differences. Everything is written beside `out_dir` first and moved in at the end, so a
    failure leaves `out_dir` as it was. Returns the new wsd-config.json dict."""
    start = time.time()
    source, out = Path(source_dir), Path(out_dir)
    config = read_bundle_config(source)
    if "architecture" not in config or "weight_meta" not in config:
        raise BundleError(f"{source} was built by an older wsd, which did not record the "
                          "architecture and weight layouts that --weights-only needs; build "
                          "it once more with `wsd build --target webgpu`")
    built_preview = "decode_preview" in config["weight_meta"]
    if built_preview != (model.preview_vae_source is not None):
        raise BundleError(
            f"{source} was built with a preview VAE (decode_preview): give --preview-vae for "
            f"its weights too" if built_preview else
            f"{source} has no decode_preview: --preview-vae needs a bundle built with it")
    differences = architecture_differences(config["architecture"], model.architecture())
    if differences:
        shown = "; ".join(differences[:8]) + ("; ..." if len(differences) > 8 else "")
        raise BundleError(f"model {model.name} does not have the architecture {source} was "
                          f"compiled for ({len(differences)} difference(s): {shown}); build a "
                          "bundle for it with `wsd build --target webgpu`")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.weights-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        log(f"collecting {model.name}'s weights as {source}'s functions take them "
            f"({config['dtype']}) ...")
        weights = collect_weights(model, {"dtype": config["dtype"],
                                          "functions": config["weight_meta"]})
        manifest = _write_params(model, weights, staging / "params")
        _check_same_tensors(read_manifest(source / "params"), manifest)
        tokenizer = _write_tokenizer(model, staging)
        config.update({"model": model.name, "config_hash": model.config_hash(),
                       **_model_entries(model, tokenizer)})
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=1, default=str))
        if out.resolve() != source.resolve():  # the compiled code and the app, as they are
            for item in source.iterdir():
                if item.name not in ("params", "tokenizer.json", CONFIG_NAME):
                    copy = shutil.copytree if item.is_dir() else shutil.copy2
                    copy(item, staging / item.name)
        out.mkdir(exist_ok=True)
        for item in staging.iterdir():
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    mib = 1 << 20
    log(f"wrote {out} in {time.time() - start:.1f} s: {model.name}'s weights "
        f"({manifest['metadata']['total_bytes'] / mib:.2f} MiB in {len(manifest['records'])} "
        f"shard(s)) for the model.wasm of {source}")
    return config


def _check_same_tensors(expected: dict, written: dict) -> None:
    """Every tensor as the compiled functions expect it: same names, shapes and dtypes."""
    def tensors(manifest):
        return {r["name"]: (r["shape"], r["dtype"])
                for shard in manifest["records"] for r in shard["records"]}

    want, got = tensors(expected), tensors(written)
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            raise BundleError(f"weight {name}: the bundle's functions take "
                              f"{want.get(name)} (shape, dtype), the model gives {got.get(name)}")
