"""wsd.compiler.split's plans for SD v1.5 (modules on the meta device: structure, no weights),
the record `wsd build` writes and prints, and (slow) the WebGPU limits of full-size SD v1.5
builds at 768x768 and 1024x1024 in float16 and 512x512 in float32."""

from __future__ import annotations

import pytest
import torch

from wsd.compiler import split

MiB = 1 << 20
LIMIT = 128 * MiB


@pytest.fixture(scope="module")
def sd15_meta():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from wsd.compiler.trace import GuidedUNet, VaeDecoder, VaeEncoder
    from wsd.models.presets import PRESETS

    with torch.device("meta"):
        vae = AutoencoderKL(**PRESETS["sd15"]["vae"])
        unet = UNet2DConditionModel(**PRESETS["sd15"]["unet"])
    return {"decode": VaeDecoder(vae), "encode_image": VaeEncoder(vae),
            "unet_guided": GuidedUNet(unet)}


@pytest.mark.parametrize("size, dtype, first_block, rows", [
    (512, "float16", None, []),  # 256 channels x 512 x 512 x 2 B: exactly 128 MiB, allowed
    (768, "float16", 1, [64] * 3),  # 512 channels x 384 x 384: 144 MiB
    (1024, "float16", 1, [32] * 8),
    (512, "float32", 2, [64] * 4),  # 256 channels x 512 x 512 x 4 B: 256 MiB
])
def test_sd15_decoder_plan(sd15_meta, size, dtype, first_block, rows):
    plan = split.plan_decoder(sd15_meta["decode"].decoder, size // 8, size // 8, dtype, LIMIT)
    assert (plan.first_block, plan.rows, plan.unsupported) == (first_block, rows, None)
    channels, itemsize = 256, 2 if dtype == "float16" else 4
    assert plan.largest_bytes == channels * size * size * itemsize
    if rows:
        # the widest band: 256 channels at full width, its rows upsampled to the image's, +2
        assert plan.band_bytes <= LIMIT
        assert plan.band_bytes == channels * (rows[0] * size // sum(rows) + 2) * size * itemsize


@pytest.mark.parametrize("size, dtype, last_block, rows", [
    (512, "float16", None, []),  # 128 channels x 512 x 512 x 2 B = 64 MiB
    (768, "float16", 0, [384] * 2),  # 128 channels x 768 x 768: 144 MiB
    # 256 MiB; down block 1 (256 channels x 512 x 512: 128 MiB, its downsampler's zero row
    # and column folded into the convolution's padding) fits
    (1024, "float16", 0, [256] * 4),
    (512, "float32", None, []),  # 128 MiB exactly
    (768, "float32", 1, [256] * 3),  # down block 1: 256 channels x 384 x 384 x 4 B = 144 MiB
])
def test_sd15_encoder_plan(sd15_meta, size, dtype, last_block, rows):
    plan = split.plan_encoder(sd15_meta["encode_image"].encoder, size, size, dtype, LIMIT)
    assert (plan.last_block, plan.rows, plan.unsupported) == (last_block, rows, None)
    itemsize = 2 if dtype == "float16" else 4
    assert plan.largest_bytes == 128 * size * size * itemsize
    if rows:
        assert plan.band_bytes <= LIMIT
        # every band but the last starts at a multiple of 2 ^ (downsamplers banded) rows
        assert all(r % 2 ** (last_block + 1) == 0 for r in rows[:-1])
        # the widest band: 128 channels at full width, its rows + the 3x3 halo
        assert plan.band_bytes == 128 * (rows[0] + 2) * size * itemsize


def test_sd15_unet_plan(sd15_meta):
    unet = sd15_meta["unet_guided"].unet
    assert split.plan_unet(unet, 96, 96, 2, "float16", LIMIT) == {}  # GEGLU: 90 MiB at 768
    chunks = split.plan_unet(unet, 128, 128, 2, "float16", LIMIT)
    # GEGLU's projection at 128x128 latents: 2 x 16384 tokens x 2560 x 2 B = 160 MiB
    blocks = [f"down_blocks.0.attentions.{a}.transformer_blocks.0" for a in range(2)] + [
        f"up_blocks.3.attentions.{a}.transformer_blocks.0" for a in range(3)]
    assert chunks == {name: {"tokens": 16384, "chunks": 2, "bytes": 160 * MiB,
                             "chunk_bytes": 80 * MiB} for name in blocks}


def test_record_and_log(sd15_meta):
    record = split.plan(sd15_meta, 96, 96, "float16", LIMIT)
    assert record["method"] == "exact" and "untiled" in record["why"]
    assert record["split_limit_bytes"] == LIMIT  # SD v1.5's UNet/VAE weights are smaller
    assert record["decode"]["first_block"] == 1 and record["unet"] == {}
    assert record["encode"]["last_block"] == 0 and record["encode"]["bands"] == 2
    lines = split.describe(record)
    assert lines[0].startswith("splitting        exact (exact splitting:")
    assert "decode: largest tensor 288 MiB > 128 MiB: up blocks 1.. and the output in 3 row " \
           "bands" in lines[1]
    assert "encode: largest tensor 144 MiB > 128 MiB: the input and down blocks ..0 in 2 " \
           "row bands (largest band tensor 72 MiB)" in lines[2]

    record = split.plan(sd15_meta, 64, 64, "float16", LIMIT)
    assert record["decode"]["first_block"] is None and record["encode"]["last_block"] is None
    assert split.describe(record)[0] == ("splitting        none needed (every tensor fits "
                                         "128 MiB)")

    # a weight over the limit (SD v1.5's token embedding in float32: 144.75 MiB) needs a
    # larger binding anyway: tensors are split down to its size only
    with torch.device("meta"):
        embedding = torch.nn.Embedding(49408, 768)
    record = split.plan({**sd15_meta, "encode_text": embedding}, 64, 64, "float32", LIMIT)
    assert record["max_weight_bytes"] == record["split_limit_bytes"] == 49408 * 768 * 4
    assert record["decode"]["first_block"] == 2 and record["encode"]["last_block"] is None
    assert "needs a binding over 128 MiB anyway" in "\n".join(split.describe(record))


@pytest.mark.slow
@pytest.mark.parametrize("dtype, size", [("float16", 768), ("float16", 1024),
                                         ("float32", 512)])
def test_sd15_webgpu_limits(dtype, size):
    """Every function of the WebGPU build, compiled (without code generation) as `wsd build
    --target webgpu` compiles it: its storages after memory planning, kernels' scratch and
    weights within WebGPU's defaults in float16; in float32 the token embedding (144.75 MiB)
    is the largest buffer. No kernel binds more than 8 storage buffers. encode_image (the VAE
    encoder, 128 channels at full resolution: 144 MiB at 768, 256 MiB at 1024) in row bands
    too. ~4 min each."""
    from tvm import tirx

    from wsd.compiler import layout, memory, pipeline
    from wsd.compiler.trace import trace_model
    from wsd.models import load_model
    from wsd.targets import webgpu_target
    from wsd.web import limits

    model = load_model("sd15")
    traced = trace_model(model, size, size, dtype, max_binding_bytes=LIMIT)
    mod = pipeline.add_scheduler_functions(traced.mod)
    compiled = pipeline.compile_module(mod, webgpu_target(), layout.WeightLayouts(
        traced.num_inputs), codegen=False)
    weights = memory.weight_bytes(traced)
    req = limits.requirements(compiled.storages, compiled.intermediates, {},
                              max_weight_bytes=max(weights.values()),
                              weights_bytes=sum(weights.values()),
                              io_bytes=4 * 4 * (size // 8) ** 2)
    print(f"\nsd15 {dtype} {size}x{size}: " + "; ".join(split.describe(traced.split)) + "\n"
          + "\n".join(limits.describe(req)))
    buffers = max(len(f.params) for f in compiled.lowered.functions.values()
                  if isinstance(f, tirx.PrimFunc))
    assert buffers <= limits.WEBGPU_DEFAULTS["max_storage_buffers_per_shader_stage"]
    if dtype == "float16":
        assert req["max_storage_binding_bytes"] <= LIMIT
        assert req["max_buffer_bytes"] <= 256 * MiB
        assert traced.split["decode"]["first_block"] == 1
        assert traced.split["encode"]["last_block"] == 0
        encode = compiled.storages["encode_image"]["sizes"]
        print(f"encode_image: largest storage {max(encode) / MiB:.2f} MiB")
        assert max(encode) <= LIMIT
    else:
        assert req["max_storage_bytes"] <= req["max_weight_bytes"] == 49408 * 768 * 4
        assert req["max_buffer_bytes"] == req["max_weight_bytes"]
