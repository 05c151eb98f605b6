"""wsd.compiler.split computes the unsplit model's numbers: the VAE decoder and encoder in row
bands against diffusers' decoder and encoder (PyTorch, and compiled for llvm), the UNet with its feed-forward in
token chunks against the UNet without; the tiny model, with limits lowered so that it splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from wsd.compiler import layout, split
from wsd.compiler import pipeline as build
from wsd.compiler.trace import example_inputs, trace_model, wrap_modules
from wsd.models import load_model

KiB = 1 << 10


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def vae_decoder(tiny):
    return wrap_modules(tiny, ["decode"])["decode"]  # diffusers' decoder inside


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5):
    err = (got - want).abs().max().item()
    assert err <= tol * max(want.abs().max().item(), 1), err


# latents (24, 16): up blocks of the tiny VAE at 24, 48, 96 and 192 rows; their largest
# tensors (fp32) 192 KiB, 768 KiB, 1.5 MiB, 1.5 MiB
@pytest.mark.parametrize("limit, first_block", [(160 * KiB, 0), (300 * KiB, 1),
                                                (1000 * KiB, 2)])
def test_planned_bands_equal_diffusers(vae_decoder, limit, first_block):
    plan = split.plan_decoder(vae_decoder.decoder, 24, 16, "float32", limit)
    assert plan.first_block == first_block and plan.band_bytes <= limit
    assert sum(plan.rows) == 24 * 2 ** plan.first_block
    latents = torch.randn(1, 4, 24, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = vae_decoder.decoder(latents)
        got = split.BandedDecoder(vae_decoder.decoder, plan)(latents)
    assert got.shape == want.shape
    _close(got, want)


def test_too_small_a_limit(vae_decoder):
    plan = split.plan_decoder(vae_decoder.decoder, 24, 16, "float32", 10 * KiB)
    assert plan.first_block is None and "one-row bands exceed" in plan.unsupported


@pytest.mark.parametrize("first_block, rows", [
    (0, [1, 23]),  # one-row bands take their halos from both sides
    (1, [10, 14, 24]),  # uneven bands
    (3, [1] * 4 + [188]),
])
def test_any_bands_equal_diffusers(vae_decoder, first_block, rows):
    plan = split.DecoderPlan(largest_bytes=0, first_block=first_block, bands=len(rows),
                             rows=rows)
    latents = torch.randn(1, 4, 24, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = vae_decoder.decoder(latents)
        got = split.BandedDecoder(vae_decoder.decoder, plan)(latents)
    _close(got, want)


def test_compiled_banded_decoder(tiny):
    """trace_model with a binding limit traces the banded decoder; compiled for llvm it gives
    diffusers' image, and memory planning keeps every storage under the limit."""
    from wsd.runtime.executor import Executor
    from wsd.runtime.pipeline import upload_weights

    size, limit = (192, 128), 200 * KiB
    traced = trace_model(tiny, *size, "float32", names=("decode",), max_binding_bytes=limit)
    record = traced.split
    assert record["split_limit_bytes"] == limit  # the decoder's weights are all smaller
    assert record["decode"]["first_block"] is not None
    assert isinstance(traced.modules["decode"].decoder, split.BandedDecoder)

    layouts = layout.WeightLayouts(traced.num_inputs)
    compiled = build.compile_module(traced.mod, tvm.target.Target("llvm"), layouts)
    planned = compiled.storages["decode"]["sizes"]
    image = size[0] * size[1] * 3 * 4  # the output (and the 3-channel bands concatenated)
    assert planned and max(planned) == image
    assert max(s for s in planned if s != image) <= limit, sorted(planned)[-4:]

    executor = Executor(compiled.executable, tvm.cpu())
    meta = {"dtype": "float32", "functions": build.function_meta(traced, layouts)}
    weights = upload_weights(executor, tiny, meta, traced.modules)
    (latents,) = example_inputs(tiny, *size)["decode"]
    reference = wrap_modules(tiny, ["decode"])["decode"]  # unsplit
    with torch.no_grad():
        want = reference(latents).numpy()
    got = executor("decode", latents.numpy(), *weights["decode"]).numpy()
    assert got.shape == want.shape == (1, *size, 3)
    assert np.abs(got - want).max() < 1e-5


@pytest.fixture(scope="module")
def vae_encoder(tiny):
    return wrap_modules(tiny, ["encode_image"])["encode_image"]  # diffusers' encoder inside


# a 48 x 32 image: the tiny VAE's down blocks at 48, 24, 12 and 6 rows; their largest tensors
# (fp32) 96 KiB, 24 KiB, 12 KiB, 3 KiB
@pytest.mark.parametrize("limit, last_block, rows", [
    (60 * KiB, 0, [24, 24]),
    (40 * KiB, 0, [16] * 3),
    # 12 bands (two rounds of FAN_IN when joined) of 4 rows: 2 rows in down block 1, one
    # (odd) after its downsampler
    (16 * KiB, 1, [4] * 12),
])
def test_planned_encoder_bands_equal_diffusers(vae_encoder, limit, last_block, rows):
    plan = split.plan_encoder(vae_encoder.encoder, 48, 32, "float32", limit)
    assert (plan.last_block, plan.rows, plan.unsupported) == (last_block, rows, None)
    assert plan.largest_bytes == 16 * 48 * 32 * 4 and plan.band_bytes <= limit
    image = torch.randn(1, 3, 48, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = vae_encoder.encoder(image)
        got = split.BandedEncoder(vae_encoder.encoder, plan)(image)
    assert got.shape == want.shape
    _close(got, want)


def test_encoder_fits_or_cannot_split(vae_encoder):
    assert split.plan_encoder(vae_encoder.encoder, 48, 32, "float32", 96 * KiB).last_block \
        is None
    plan = split.plan_encoder(vae_encoder.encoder, 48, 32, "float32", 4 * KiB)
    # down block 2 (12 KiB) is over: bands of 8 image rows (three downsamplers) are too large
    assert plan.last_block is None and "bands of 8 rows exceed" in plan.unsupported


@pytest.mark.parametrize("last_block, rows", [
    (0, [2, 10, 6, 30]),  # uneven bands, odd rows after the downsampler (1, 5, 3, 15)
    (1, [4, 12, 8, 24]),  # odd rows after the second downsampler (1, 3, 2, 6)
    (3, [8, 16, 24]),  # through the last block (no downsampler): 1, 2 and 3 rows there
])
def test_any_encoder_bands_equal_diffusers(vae_encoder, last_block, rows):
    plan = split.EncoderPlan(largest_bytes=0, last_block=last_block, bands=len(rows),
                             rows=rows)
    image = torch.randn(1, 3, 48, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = vae_encoder.encoder(image)
        got = split.BandedEncoder(vae_encoder.encoder, plan)(image)
    _close(got, want)


def test_encoder_band_before_the_last_with_odd_rows(vae_encoder):
    plan = split.EncoderPlan(largest_bytes=0, last_block=0, bands=2, rows=[5, 43])
    with pytest.raises(ValueError, match="odd number of rows"), torch.no_grad():
        split.BandedEncoder(vae_encoder.encoder, plan)(torch.zeros(1, 3, 48, 32))


def test_compiled_banded_encoder(tiny):
    """trace_model with a binding limit traces the banded encoder; compiled for llvm it gives
    the unsplit encoder's (mean, std), and memory planning keeps every storage under the
    limit."""
    from wsd.runtime.executor import Executor
    from wsd.runtime.pipeline import upload_weights

    size = (56, 32)
    traced = trace_model(tiny, *size, "float32", names=("encode_image",),
                         max_binding_bytes=16 * KiB)
    record = traced.split
    # the encoder's largest weight (a 3x3 convolution, 32 -> 32 channels: 36 KiB) is the limit
    limit = record["split_limit_bytes"]
    assert limit == 32 * 32 * 9 * 4
    # 16 channels x 56 x 32 at full resolution: 4 bands of 14 rows, 7 (odd) after the
    # downsampler
    assert record["encode"]["last_block"] == 0 and record["encode"]["rows"] == [14] * 4
    assert isinstance(traced.modules["encode_image"].encoder, split.BandedEncoder)

    layouts = layout.WeightLayouts(traced.num_inputs)
    compiled = build.compile_module(traced.mod, tvm.target.Target("llvm"), layouts)
    planned = compiled.storages["encode_image"]["sizes"]
    image_bytes = size[0] * size[1] * 3 * 4  # the input, permuted and scaled (18 KiB)
    assert planned and max(s for s in planned if s != image_bytes) <= limit, sorted(planned)[-4:]

    executor = Executor(compiled.executable, tvm.cpu())
    meta = {"dtype": "float32", "functions": build.function_meta(traced, layouts)}
    weights = upload_weights(executor, tiny, meta, traced.modules)
    (image,) = example_inputs(tiny, *size)["encode_image"]
    reference = wrap_modules(tiny, ["encode_image"])["encode_image"]  # unsplit
    with torch.no_grad():
        want = [t.numpy() for t in reference(image)]
    got = [t.numpy() for t in executor("encode_image", image.numpy(), *weights["encode_image"])]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape == (1, 4, size[0] // 8, size[1] // 8)
        assert np.abs(g - w).max() <= 1e-5 * max(np.abs(w).max(), 1)


def test_chunked_feed_forward_equals_unchunked(tiny):
    modules = wrap_modules(tiny, ["unet_guided"])
    inputs = example_inputs(tiny, 128, 128)["unet_guided"]
    with torch.no_grad():
        want = modules["unet_guided"](*inputs)
    chunks = split.plan_unet(modules["unet_guided"].unet, 16, 16, 2, "float32", 200 * KiB)
    # GEGLU's projection at 16x16 latents: 2 x 256 tokens x 256 x 4 B = 512 KiB
    assert chunks == {"down_blocks.0.attentions.0.transformer_blocks.0": {
        "tokens": 256, "chunks": 4, "bytes": 512 * KiB, "chunk_bytes": 128 * KiB}} | {
        f"up_blocks.1.attentions.{a}.transformer_blocks.0": {
            "tokens": 256, "chunks": 4, "bytes": 512 * KiB, "chunk_bytes": 128 * KiB}
        for a in range(2)} | {
        # 64 channels at 8x8: 2 x 64 tokens x 512 x 4 B
        "mid_block.attentions.0.transformer_blocks.0": {
            "tokens": 64, "chunks": 2, "bytes": 256 * KiB, "chunk_bytes": 128 * KiB}}
    split.apply(modules, {"unet": chunks})
    with torch.no_grad():
        got = modules["unet_guided"](*inputs)
    _close(got, want, 1e-6)
