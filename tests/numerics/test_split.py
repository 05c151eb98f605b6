"""wsd.compiler.split computes the unsplit model's numbers: the VAE decoder in row bands
against diffusers' decoder (PyTorch, and compiled for llvm), the UNet with its feed-forward in
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
