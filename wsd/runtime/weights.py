"""Stage "params": the model's weights for the browser, as a TVM tensor cache, with integrity.

Compiled libraries take their weights as function inputs (wsd.runtime.library). This stage collects
those weights once, in the compiled dtype, and writes them in the format that tvmjs
(`@mlc-ai/web-runtime`, the JS runtime of this TVM) loads with `fetchTensorCache`:

    out_dir/tensor-cache.json
    out_dir/params_shard_0.bin, params_shard_1.bin, ...

Tensor names: `<part>/<state-dict name>`, where part is the diffusers model part that owns
the weight (`text_encoder`, `unet`, `vae`) and the state-dict name is the one in that part's
own module (CLIPTextModel, UNet2DConditionModel, AutoencoderKL), i.e. the name a diffusers
checkpoint gives it: `unet/conv_in.weight`, `vae/decoder.conv_in.weight`,
`text_encoder/embeddings.token_embedding.weight`. The two UNet functions (`unet_guided`,
`unet`) take the same `unet/...` tensors, so they are stored once. Per function, the ordered
list of tensor names it takes after its runtime inputs is in the manifest's
`metadata.functions`; in JS, `tvm.getParamsFromCacheByName(metadata.functions[name])` gives
the weights in parameter order.

tensor-cache.json (what tvmjs and TVM's loaders read, plus our extra fields, which they ignore):

    {"metadata": {"format": "wsd-tensor-cache", "format_version": 1,
                  "total_bytes": <sum of shard file sizes>,
                  "tensor_bytes": <sum of tensor record sizes>,
                  "max_tensor_bytes": <largest tensor record>,
                  "num_tensors": ..., "shard_bytes": <the shard size limit>,
                  "alignment": 16, "encoding": "raw" | "f32-to-bf16",
                  "functions": {function: [tensor name, ...]}, ...caller's extra keys},
     "records": [                                    # one per shard file
        {"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": <file size>,
         "sha256": <hex digest of the file>,
         "records": [                                # the tensors in this shard
            {"name": ..., "shape": [...], "dtype": "float32" | "float16" | ...,
             "format": "raw" | "f32-to-bf16", "nbytes": <encoded size>,
             "byteOffset": <offset in the shard file>}, ...]}, ...]}

Shards: tensors are packed in order, never split; each starts at a multiple of 16 bytes
(zero padding between, so typed-array views in JS are aligned); a shard holds at most
`shard_bytes` bytes, except that a tensor larger than that gets a shard of its own (tvmjs
reads a shard as one ArrayBuffer and allows any size). Encoding: "raw" stores the exact bytes
(the default); "f32-to-bf16" stores float32 tensors as bfloat16 (round to nearest even; the
loaders widen them back to float32), other dtypes raw.

Integrity: `verify_tensor_cache` checks each shard file's existence, size (`nbytes`) and
SHA-256 (`sha256`); the browser can do the same with `crypto.subtle.digest("SHA-256", buf)`
before handing the cache to tvmjs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from wsd.compiler.weight_names import tensor_name

FORMAT_NAME = "wsd-tensor-cache"
FORMAT_VERSION = 1
MANIFEST = "tensor-cache.json"
SHARD_PREFIX = "params_shard_"
SHARD_BYTES = 32 * 1024 * 1024
ALIGNMENT = 16
ENCODINGS = ("raw", "f32-to-bf16")

class ShardError(RuntimeError):
    """A tensor-cache shard (or the manifest) is missing, truncated or corrupt.

    `path` is the file's name relative to the cache folder, e.g. `params_shard_3.bin`."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


class CollectedWeights(NamedTuple):
    """Every distinct weight, and for each function the names it takes, in parameter order."""

    tensors: dict[str, np.ndarray]
    functions: dict[str, list[str]]


def _functions_of(meta: dict) -> dict:
    """A built library's meta.json dict, or its `functions` entry (wsd.compiler.pipeline.function_meta)."""
    functions = meta.get("functions", meta)
    if not all(isinstance(v, dict) and "weight_names" in v for v in functions.values()):
        raise ValueError("meta must be a library's meta.json dict or its 'functions' entry")
    return functions


def collect_weights(model, meta: dict, dtype: str | None = None,
                    modules: Mapping | None = None) -> CollectedWeights:
    """The weights every compiled function takes, once each, converted to its dtype and
    permuted to the layout the build stores it in (meta's `weight_layouts`, if any).

    `meta`: a library's meta.json dict (or just its `functions` dict). `dtype` is the compute
    dtype the modules are wrapped in (default: meta["dtype"], else float16 when any weight is
    float16). `modules`: the wrapped modules if the caller has them already (`Traced.modules`),
    so the model is not loaded a second time.
    """
    from wsd.compiler.trace import check_dtype, wrap_modules

    functions = _functions_of(meta)
    if dtype is None:
        dtype = meta.get("dtype") if isinstance(meta.get("dtype"), str) else None
    if dtype is None:
        every = {d for info in functions.values() for d in info["weight_dtypes"]}
        dtype = "float16" if "float16" in every else "float32"
    check_dtype(dtype)
    if modules is None:
        modules = wrap_modules(model, tuple(functions), dtype)

    tensors: dict[str, np.ndarray] = {}
    sources: dict[str, object] = {}  # name -> the torch tensor it came from
    layouts: dict[str, list[int] | None] = {}  # name -> axes it is stored permuted by
    order: dict[str, list[str]] = {}
    for function, info in functions.items():
        state = modules[function].state_dict()
        names, dtypes = info["weight_names"], info["weight_dtypes"]
        axes_of = info.get("weight_layouts") or [None] * len(names)
        if not len(names) == len(dtypes) == len(axes_of):
            raise ValueError(f"{function}: {len(names)} weight names, {len(dtypes)} dtypes, "
                             f"{len(axes_of)} layouts")
        order[function] = []
        for weight, wdtype, axes in zip(names, dtypes, axes_of):
            name = tensor_name(function, weight)
            order[function].append(name)
            source = state[weight].detach()
            if name in tensors:
                _check_same(name, tensors[name], sources[name], source, wdtype)
                if layouts[name] != axes:
                    raise ValueError(f"{name} is stored permuted by {layouts[name]} and by "
                                     f"{axes}")
                continue
            # .float() is exact for float16/bfloat16 and free for float32; numpy shares memory.
            array = source.cpu().float().numpy().astype(wdtype, copy=False)
            if axes is not None:  # the layout its kernels read (wsd.compiler.layout.WeightLayouts)
                array = array.transpose(axes)
            tensors[name] = np.ascontiguousarray(array)
            sources[name] = source
            layouts[name] = axes
    return CollectedWeights(tensors, order)


def _check_same(name, array, first, second, dtype) -> None:
    if str(array.dtype) != dtype:
        raise ValueError(f"{name} is taken as {array.dtype} and as {dtype}")
    if first.data_ptr() == second.data_ptr() and first.shape == second.shape:
        return  # the same storage (the shared UNet)
    if tuple(first.shape) != tuple(second.shape) or not bool((first == second).all()):
        raise ValueError(f"two different tensors would both be stored as {name}")


# ---- writing --------------------------------------------------------------------------------

def _f32_to_bf16(array: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even; NaN stays NaN."""
    bits = array.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(array)
    if nan.any():
        rounded = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded)
    return rounded.astype(np.uint16)


def _encode(array: np.ndarray, encoding: str) -> tuple[np.ndarray, str]:
    """(bytes as a flat uint8 array, record format)."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    if encoding == "f32-to-bf16" and array.dtype == np.float32:
        return _f32_to_bf16(array).reshape(-1).view(np.uint8), "f32-to-bf16"
    return array.reshape(-1).view(np.uint8), "raw"


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def _plan_shards(sizes: list[int], shard_bytes: int) -> list[list[tuple[int, int]]]:
    """Tensor index -> (shard, byteOffset): packed in order, never split."""
    shards: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    end = 0
    for index, size in enumerate(sizes):
        if size > shard_bytes:  # out of band: a shard of its own
            if current:
                shards.append(current)
                current, end = [], 0
            shards.append([(index, 0)])
            continue
        offset = _aligned(end) if current else 0
        if offset + size > shard_bytes:
            shards.append(current)
            current, offset = [], 0
        current.append((index, offset))
        end = offset + size
    if current:
        shards.append(current)
    return shards


def write_tensor_cache(weights: Mapping[str, np.ndarray] | CollectedWeights, out_dir,
                       shard_bytes: int = SHARD_BYTES, encoding: str = "raw",
                       metadata: dict | None = None) -> dict:
    """Write `tensor-cache.json` and `params_shard_<i>.bin` files; returns the manifest.

    `weights`: name -> array (in the order to store them), or `collect_weights`' result
    (its per-function name lists then go to metadata["functions"]). `metadata`: extra
    JSON-able keys for the manifest's metadata. Stale shard files in out_dir are removed.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if not isinstance(shard_bytes, int) or shard_bytes <= 0:
        raise ValueError(f"shard_bytes must be a positive integer, got {shard_bytes!r}")
    functions = None
    if isinstance(weights, CollectedWeights):
        weights, functions = weights.tensors, weights.functions
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    names = list(weights)
    encoded, records = [], []
    for name in names:
        array = np.asarray(weights[name])
        if array.dtype.kind not in "fiub":
            raise ValueError(f"{name}: dtype {array.dtype} cannot go in a tensor cache")
        data, fmt = _encode(array, encoding)
        encoded.append(data)
        records.append({"name": name, "shape": [int(d) for d in array.shape],
                        "dtype": array.dtype.name, "format": fmt, "nbytes": int(data.size)})

    shards = []
    for i, members in enumerate(_plan_shards([r["nbytes"] for r in records], shard_bytes)):
        path = f"{SHARD_PREFIX}{i}.bin"
        digest, size = hashlib.sha256(), 0
        tmp = out / f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as file:
            for index, offset in members:
                pad = bytes(offset - size)
                file.write(pad)
                digest.update(pad)
                file.write(encoded[index])
                digest.update(encoded[index])
                size = offset + records[index]["nbytes"]
                records[index]["byteOffset"] = offset
        os.replace(tmp, out / path)
        shards.append({"dataPath": path, "format": "raw-shard", "nbytes": size,
                       "sha256": digest.hexdigest(),
                       "records": [records[index] for index, _ in members]})

    info = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "total_bytes": sum(s["nbytes"] for s in shards),
        "tensor_bytes": sum(r["nbytes"] for r in records),
        "max_tensor_bytes": max((r["nbytes"] for r in records), default=0),
        "num_tensors": len(records), "shard_bytes": shard_bytes, "alignment": ALIGNMENT,
        "encoding": encoding,
    }
    if functions is not None:
        info["functions"] = functions
    info.update(metadata or {})
    manifest = {"metadata": info, "records": shards}
    tmp = out / f"{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)

    keep = {s["dataPath"] for s in shards}
    for stale in out.glob(f"{SHARD_PREFIX}*.bin"):
        if re.fullmatch(rf"{SHARD_PREFIX}\d+\.bin", stale.name) and stale.name not in keep:
            stale.unlink()
    return manifest


# ---- reading --------------------------------------------------------------------------------

def read_manifest(cache_dir) -> dict:
    path = Path(cache_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(MANIFEST, f"missing from {cache_dir}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(MANIFEST, f"malformed JSON: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("records"), list):
        raise ShardError(MANIFEST, "no 'records' list")
    return manifest


def _sha256_of(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def verify_tensor_cache(cache_dir) -> None:
    """Check every shard file against the manifest: present, `nbytes` long, `sha256` equal.
    Raises ShardError naming the first bad shard."""
    folder = Path(cache_dir)
    for shard in read_manifest(folder)["records"]:
        name = shard.get("dataPath")
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ShardError(str(name), "bad dataPath in the manifest")
        if "sha256" not in shard or "nbytes" not in shard:
            raise ShardError(name, "the manifest records no sha256/nbytes for it")
        path = folder / name
        if not path.is_file():
            raise ShardError(name, f"missing from {folder}")
        size, digest = _sha256_of(path)
        if size != shard["nbytes"]:
            raise ShardError(name, f"{size} bytes, the manifest says {shard['nbytes']} "
                                   f"(truncated or incomplete download?)")
        if digest != shard["sha256"]:
            raise ShardError(name, f"corrupt: sha256 {digest}, the manifest says "
                                   f"{shard['sha256']}")


def load_tensor_cache(cache_dir, verify: bool = True) -> dict[str, np.ndarray]:
    """Read a tensor cache back (after verifying it): name -> array in its record dtype
    (f32-to-bf16 records widened back to float32)."""
    folder = Path(cache_dir)
    if verify:
        verify_tensor_cache(folder)
    result = {}
    for shard in read_manifest(folder)["records"]:
        name = shard["dataPath"]
        if shard.get("format") != "raw-shard":
            raise ShardError(name, f"unknown shard format {shard.get('format')!r}")
        try:
            data = np.fromfile(folder / name, dtype=np.uint8)
        except FileNotFoundError:
            raise ShardError(name, f"missing from {folder}") from None
        for rec in shard["records"]:
            start, nbytes, shape = rec["byteOffset"], rec["nbytes"], tuple(rec["shape"])
            dtype = np.dtype(rec["dtype"]).newbyteorder("<")
            bf16 = rec["format"] == "f32-to-bf16" and rec["dtype"] == "float32"
            if rec["format"] not in ENCODINGS:
                raise ShardError(name, f"{rec['name']}: unknown format {rec['format']!r}")
            expected = math.prod(shape) * (2 if bf16 else dtype.itemsize)
            if nbytes != expected or start < 0 or start + nbytes > data.size:
                raise ShardError(name, f"{rec['name']}: bad record (byteOffset {start}, "
                                       f"nbytes {nbytes}, shard {data.size} bytes)")
            raw = data[start:start + nbytes]
            if bf16:
                bits = raw.view(np.dtype("<u2")).astype(np.uint32) << np.uint32(16)
                array = bits.view(np.float32)
            else:
                array = raw.view(dtype)
            result[rec["name"]] = array.reshape(shape).astype(dtype.newbyteorder("="),
                                                              copy=False)
    return result
