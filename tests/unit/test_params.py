"""Stage "params": weights -> TVM tensor cache (the tvmjs `fetchTensorCache` format) and back.

Expected values come from the model's parts' own state dicts (a fresh load, converted with
torch), never from our writer; format compatibility is checked with TVM's own loaders (the
Python `tvm.contrib.tvmjs.load_tensor_cache`, and the C++ `vm.builtin.tensor_cache.load`,
whose source the web runtime's wasm compiles in).
"""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from wsd.compiler.pipeline import function_meta
from wsd.models import load_model
from wsd.runtime.weights import (ShardError, collect_weights, load_tensor_cache, tensor_name,
                        verify_tensor_cache, write_tensor_cache)
from wsd.compiler.trace import trace_model

DTYPES = ("float32", "float16")
PART_PREFIX = {"encode_text": ("text_encoder", "text_encoder."), "unet_guided": ("unet", "unet."),
               "unet": ("unet", "unet."), "encode_image": ("vae", ""), "decode": ("vae", "")}


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


@pytest.fixture(scope="module", params=DTYPES)
def setup(request, model):
    """(dtype, meta, expected name -> array from the parts' state dicts, collected weights)."""
    dtype = request.param
    meta = function_meta(trace_model(model, 128, 128, dtype))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    states = {part: getattr(model, part)().to(torch_dtype).state_dict()
              for part in ("text_encoder", "unet", "vae")}
    expected = {}
    for function, info in meta.items():
        part, prefix = PART_PREFIX[function]
        for weight in info["weight_names"]:
            assert weight.startswith(prefix)
            expected[f"{part}/{weight[len(prefix):]}"] = states[part][weight[len(prefix):]].numpy()
    return dtype, meta, expected, collect_weights(model, meta)


@pytest.fixture()
def cache(setup, tmp_path):
    """A cache written with small shards: several shards, one tensor over the limit."""
    _, _, expected, weights = setup
    limit = 1 << 20  # tiny's token embedding (>= 3 MiB) is larger, most tensors far smaller
    assert max(a.nbytes for a in expected.values()) > limit
    write_tensor_cache(weights, tmp_path, shard_bytes=limit)
    return tmp_path, limit


def manifest(folder):
    return json.loads((folder / "tensor-cache.json").read_text())


def assert_bit_equal(got: dict, expected: dict):
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        assert got[name].tobytes() == want.tobytes(), name


def test_collect_converts_and_orders(setup):
    dtype, meta, expected, (tensors, functions) = setup
    assert_bit_equal(tensors, expected)
    assert all(a.dtype == np.dtype(dtype) for a in tensors.values())
    for function, info in meta.items():
        part, prefix = PART_PREFIX[function]
        assert functions[function] == [f"{part}/{w[len(prefix):]}" for w in info["weight_names"]]


def test_round_trip_is_exact(setup, cache):
    _, _, expected, _ = setup
    folder, _ = cache
    assert_bit_equal(load_tensor_cache(folder), expected)


def test_default_shard_size_round_trip(setup, tmp_path):
    _, _, expected, weights = setup
    written = write_tensor_cache(weights, tmp_path)
    assert written == manifest(tmp_path)
    assert len(written["records"]) == 1  # tiny fits one 32 MiB shard
    assert_bit_equal(load_tensor_cache(tmp_path), expected)


def test_shared_unet_weights_stored_once(setup, cache):
    _, meta, _, (_, functions) = setup
    folder, _ = cache
    data = manifest(folder)
    names = [r["name"] for s in data["records"] for r in s["records"]]
    assert len(names) == len(set(names))
    unet_names = [n for n in names if n.startswith("unet/")]
    assert len(unet_names) == len(meta["unet"]["weight_names"])
    assert functions["unet_guided"] == functions["unet"]
    assert data["metadata"]["functions"] == functions
    total = sum(len(set(info["weight_names"])) for f, info in meta.items() if f != "unet_guided")
    assert len(names) == total


def test_shards_respect_limit_and_never_split(setup, cache):
    dtype, _, expected, _ = setup
    folder, limit = cache
    data = manifest(folder)
    assert len(data["records"]) > 2
    out_of_band = 0
    for shard in data["records"]:
        size = (folder / shard["dataPath"]).stat().st_size
        assert size == shard["nbytes"]
        assert shard["format"] == "raw-shard"
        if len(shard["records"]) > 1:
            assert size <= limit
        else:
            out_of_band += size > limit
        spans = sorted((r["byteOffset"], r["byteOffset"] + r["nbytes"]) for r in shard["records"])
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start  # no overlap
        for rec in shard["records"]:
            want = expected[rec["name"]]
            # the whole tensor in this one shard
            assert rec["nbytes"] == want.nbytes == math.prod(rec["shape"]) * want.itemsize
            assert rec["byteOffset"] + rec["nbytes"] <= size
            assert rec["byteOffset"] % 16 == 0
            assert rec["dtype"] == dtype and rec["format"] == "raw"
            assert rec["shape"] == list(want.shape)
    assert out_of_band >= 1
    meta = data["metadata"]
    assert meta["format_version"] == 1
    assert meta["total_bytes"] == sum(s["nbytes"] for s in data["records"])
    assert meta["max_tensor_bytes"] == max(a.nbytes for a in expected.values())
    assert meta["num_tensors"] == len(expected)


def test_manifest_sha256_matches_files(cache):
    folder, _ = cache
    for shard in manifest(folder)["records"]:
        digest = hashlib.sha256((folder / shard["dataPath"]).read_bytes()).hexdigest()
        assert shard["sha256"] == digest


def test_flipped_byte_names_the_shard(cache):
    folder, _ = cache
    verify_tensor_cache(folder)
    shard = manifest(folder)["records"][1]["dataPath"]
    path = folder / shard
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=shard) as err:
        verify_tensor_cache(folder)
    assert err.value.path == shard
    with pytest.raises(ShardError, match=shard):
        load_tensor_cache(folder)


def test_truncated_shard(cache):
    folder, _ = cache
    shard = manifest(folder)["records"][-1]["dataPath"]
    path = folder / shard
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ShardError, match=shard):
        verify_tensor_cache(folder)


def test_missing_shard(cache):
    folder, _ = cache
    shard = manifest(folder)["records"][0]["dataPath"]
    (folder / shard).unlink()
    with pytest.raises(ShardError, match=shard):
        verify_tensor_cache(folder)


def test_missing_manifest(tmp_path):
    with pytest.raises(ShardError, match="tensor-cache.json"):
        verify_tensor_cache(tmp_path)


def test_rewrite_removes_stale_shards(setup, cache):
    _, _, expected, weights = setup
    folder, _ = cache
    assert len(list(folder.glob("params_shard_*.bin"))) > 1
    write_tensor_cache(weights, folder)
    assert sorted(p.name for p in folder.glob("params_shard_*.bin")) == ["params_shard_0.bin"]
    assert_bit_equal(load_tensor_cache(folder), expected)


def test_tvm_python_loader_reads_it(setup, cache):
    import tvm
    from tvm.contrib import tvmjs

    _, _, expected, _ = setup
    folder, _ = cache
    arrays, meta = tvmjs.load_tensor_cache(str(folder), tvm.cpu())
    assert meta["format_version"] == 1
    assert_bit_equal({k: v.numpy() for k, v in arrays.items()}, expected)


def test_tvm_native_loader_reads_it(setup, cache):
    """The C++ loader (also compiled into the web runtime's wasm), and parameter lookup by
    name in function order, as JS `getParamsFromCacheByName(metadata.functions[f])` does."""
    import tvm

    _, meta, expected, _ = setup
    folder, _ = cache
    load = tvm.get_global_func("vm.builtin.tensor_cache.load")
    by_name = tvm.get_global_func("vm.builtin.param_array_from_cache_by_name")
    clear = tvm.get_global_func("vm.builtin.tensor_cache.clear")
    functions = manifest(folder)["metadata"]["functions"]
    clear()
    try:
        load(str(folder), int(tvm.cpu().dlpack_device_type()), 0)
        for function in meta:
            got = [a.numpy() for a in by_name(functions[function])]
            want = [expected[n] for n in functions[function]]
            assert len(got) == len(meta[function]["weight_names"])
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.tobytes() == w.tobytes()
    finally:
        clear()


def test_bf16_encoding(setup, tmp_path):
    import tvm
    from tvm.contrib import tvmjs

    dtype, _, expected, weights = setup
    write_tensor_cache(weights, tmp_path, encoding="f32-to-bf16")
    records = [r for s in manifest(tmp_path)["records"] for r in s["records"]]
    if dtype == "float32":  # what torch's bfloat16 rounding gives, widened back
        want = {k: torch.from_numpy(v).bfloat16().float().numpy() for k, v in expected.items()}
        assert all(r["format"] == "f32-to-bf16" and r["nbytes"] * 2 == expected[r["name"]].nbytes
                   for r in records)
    else:  # float16 is stored raw whatever the encoding
        want = expected
        assert all(r["format"] == "raw" for r in records)
    assert_bit_equal(load_tensor_cache(tmp_path), want)
    arrays, _ = tvmjs.load_tensor_cache(str(tmp_path), tvm.cpu())
    assert_bit_equal({k: v.numpy() for k, v in arrays.items()}, want)


def test_bad_arguments(setup, tmp_path):
    _, _, _, weights = setup
    with pytest.raises(ValueError, match="encoding"):
        write_tensor_cache(weights, tmp_path, encoding="bf16")
    with pytest.raises(ValueError, match="shard_bytes"):
        write_tensor_cache(weights, tmp_path, shard_bytes=0)


def test_plain_dict_mixed_dtypes(tmp_path):
    """Any name -> array mapping; odd byte sizes (not multiples of 4) stay 16-byte aligned."""
    import tvm
    from tvm.contrib import tvmjs

    rng = np.random.default_rng(0)
    weights = {
        "a": rng.standard_normal(3).astype(np.float16),  # 6 bytes
        "b": rng.integers(-9, 9, size=(2, 5), dtype=np.int32),
        "c": np.array(2.5, dtype=np.float32),  # 0-d
        "d": rng.integers(0, 255, size=7, dtype=np.uint8),
        "e": rng.standard_normal((4, 4)).astype(np.float32),
    }
    written = write_tensor_cache(weights, tmp_path, shard_bytes=64)
    records = [r for s in written["records"] for r in s["records"]]
    assert [r["name"] for r in records] == list(weights)  # insertion order kept
    assert all(r["byteOffset"] % 16 == 0 for r in records)
    assert "functions" not in written["metadata"]
    assert_bit_equal(load_tensor_cache(tmp_path), weights)
    arrays, _ = tvmjs.load_tensor_cache(str(tmp_path), tvm.cpu())
    assert_bit_equal({k: v.numpy() for k, v in arrays.items()}, weights)


def test_weights_collected_in_their_stored_layouts(model):
    """A build's weight_layouts (wsd.compiler.layout.WeightLayouts) permute the tensors as collected;
    a weight two functions share must be stored one way."""
    meta = function_meta(trace_model(model, 128, 128, "float32"))
    plain = collect_weights(model, meta)
    for function, info in meta.items():
        info["weight_layouts"] = [
            [0, 2, 3, 1] if plain.tensors[tensor_name(function, w)].ndim == 4 else None
            for w in info["weight_names"]]
    permuted = collect_weights(model, meta)
    four_d = [n for n, a in plain.tensors.items() if a.ndim == 4]
    assert four_d
    for name, array in plain.tensors.items():
        want = array.transpose(0, 2, 3, 1) if name in four_d else array
        assert permuted.tensors[name].flags.c_contiguous
        assert np.array_equal(permuted.tensors[name], want), name

    meta["unet"]["weight_layouts"] = [None] * len(meta["unet"]["weight_names"])
    with pytest.raises(ValueError, match="stored permuted by"):
        collect_weights(model, meta)
