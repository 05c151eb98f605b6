"""Per model, TVM next to PyTorch on the same device: CLIP (`encode_text`), the UNet step with
guidance (`unet_guided`, batch 2 inside), the VAE decoder (`decode`), a whole image (20 steps,
wsd.runtime.pipeline.Pipeline against diffusers' StableDiffusionPipeline), in fp32 and fp16; and the
pipeline's memory (weights + planned activations from the build; measured on CUDA).

`--perf-model tiny` (default) runs in minutes on a CPU; `--perf-model sd15` is SD v1.5 at
512x512 (for GPUs). Each `tvm` test first checks TVM's output against PyTorch's; the image
test checks the picture against diffusers' (PSNR).
"""

from __future__ import annotations

import numpy as np
import pytest

from wsd import bench

IMPLS = ("torch", "torch.compile", "tvm")
PARTS = ("clip", "unet", "vae", "image")
# wsd's image against diffusers' (same weights, seed, sampler). fp32 agrees closely (89 dB on
# tiny). In fp16 both sides round differently and 21 guided steps of a random-weight model
# amplify it, so the two fp16 images are compared with diffusers computing in fp32 on the same
# rounded weights: wsd's may land at most FP16_MARGIN_DB further from it than diffusers' fp16
# image does (its drift is then PyTorch's, not an error of its own).
IMAGE_PSNR_DB = 40.0
FP16_MARGIN_DB = 3.0


def pytest_generate_tests(metafunc):
    s = bench.PerfSettings.from_pytest(metafunc.config)
    if "part" in metafunc.fixturenames:
        params = [(p, d, i) for d in s.model_dtypes for p in PARTS for i in IMPLS]
        metafunc.parametrize("part,dtype,impl", params,
                             ids=[f"{s.model}-{p}-{d}-{i}" for p, d, i in params])
    elif "mem_dtype" in metafunc.fixturenames:
        metafunc.parametrize("mem_dtype", s.model_dtypes)


def model_bench(perf, dtype: str) -> bench.ModelBench:
    def make():
        from wsd.models import load_model

        model = perf.cached(("model", perf.settings.model),
                            lambda: load_model(perf.settings.model))
        return bench.ModelBench(model, perf.device, dtype,
                                compile_option=perf.settings.compile_option,
                                log=lambda *_: None)
    return perf.cached(("model-bench", perf.settings.model, dtype), make)


def test_model(perf, timer, part, dtype, impl):
    mb = model_bench(perf, dtype)
    if part == "image":
        prep = perf.cached(("image", dtype), mb.prepare_image)
        if impl == "tvm":
            check_image(prep.extra, dtype)
            fn = prep.tvm
        elif impl == "torch":
            fn = prep.eager
        else:
            if prep.compiled is None:
                pytest.skip(prep.compile_note)
            fn = prep.compiled
        # warm already (prepare ran each once): at most 2 rounds after one untimed run
        perf.record(timer, "model", prep, impl, fn, rounds=min(2, perf.settings.repeat),
                    warmup=1)
        return
    prep = perf.cached(("part", part, dtype), lambda: mb.prepare_part(part))
    perf.run_impl(timer, "model", prep, impl)


def check_image(psnr: dict, dtype: str) -> None:
    if dtype == "float32":
        assert psnr["psnr"] >= IMAGE_PSNR_DB, (
            f"wsd's image differs from diffusers': PSNR {psnr['psnr']:.1f} dB "
            f"< {IMAGE_PSNR_DB} dB")
        return
    ours, theirs = psnr["psnr_vs_fp32"], psnr["torch_psnr_vs_fp32"]
    assert ours >= theirs - FP16_MARGIN_DB, (
        f"wsd's {dtype} image is {ours:.1f} dB from diffusers' fp32 one, diffusers' own "
        f"{dtype} image {theirs:.1f} dB: more than {FP16_MARGIN_DB} dB worse")


def test_fp16_image_check_can_fail():
    check_image({"psnr_vs_fp32": 30.0, "torch_psnr_vs_fp32": 31.0}, "float16")
    with pytest.raises(AssertionError, match="worse"):
        check_image({"psnr_vs_fp32": 20.0, "torch_psnr_vs_fp32": 31.0}, "float16")
    with pytest.raises(AssertionError, match="differs"):
        check_image({"psnr": 30.0}, "float32")


def test_memory(perf, mem_dtype):
    """The pipeline's memory as the build plans it (weights + activations), checked against
    the weights actually uploaded; for SD v1.5 in fp16, against the 3 GB goal."""
    mb = model_bench(perf, mem_dtype)
    memory = mb.memory()
    plan = memory["planned"]
    assert plan, "the build wrote no memory report into meta.json"
    uploaded = {id(t): t for ts in mb.pipe.weights.values() for t in ts}
    actual = sum(int(np.prod(t.shape)) * np.dtype(str(t.dtype)).itemsize
                 for t in uploaded.values())
    assert plan["weight_bytes"] == actual, (plan["weight_bytes"], actual)
    assert plan["num_weights"] == len(uploaded)
    for name in ("encode_text", "unet_guided", "decode"):
        assert plan["functions"][name]["activation_bytes"] > 0, name
    if mb.device.is_cuda:  # what the device lost to the pipeline covers at least its weights
        assert memory["measured"]["tvm_weight_bytes"] >= 0.95 * plan["weight_bytes"]
    perf.memory.append(memory)
    goal = memory["goal_bytes"]
    if goal and mem_dtype == "float16":
        assert plan["peak_bytes"] < goal, (
            f"SD v1.5 fp16 pipeline plans {plan['peak_bytes'] / bench.GB:.2f} GB "
            f"(weights {plan['weight_bytes'] / bench.GB:.2f} GB + "
            f"{plan['peak_function']} {plan['activation_bytes'] / bench.GB:.2f} GB); "
            f"goal < {goal / bench.GB:.0f} GB")
