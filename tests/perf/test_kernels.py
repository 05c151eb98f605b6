"""Per kernel at SD v1.5's real shapes (512x512: UNet batch 2 on 64x64 latents, VAE decoder
64 -> 512), TVM next to PyTorch on the same device.

- `test_layer`: convolutions, linear layers, attention, group norm: one PyTorch layer,
  imported and compiled by the project's whole pipeline, run through the Relax VM (every
  kernel the build emits for it).
- `test_fused`: the fused kernels the build produces for SD v1.5's UNet (with --perf-full
  also its VAE decoder): for each kind (conv+bias+time embedding, conv+bias+residual,
  matmul+bias, group norm+SiLU, GEGLU, attention, ...) the instance with the largest share of
  the model's work, built alone with the project's schedules, next to the PyTorch ops it
  replaces. On a CPU without --perf-full only kernels of at most 1.9e9 multiply-adds per
  call count (TVM's CPU code runs them for seconds); --perf-full takes the top 2 of each kind.

Each `tvm` test first checks TVM's output against PyTorch's (relative L2), so it fails on a
wrong kernel or a wrong counterpart.
"""

from __future__ import annotations

import pytest

from wsd import bench

IMPLS = ("torch", "torch.compile", "tvm")
FUSED_PARTS = ("unet_guided", "decode")


def _settings(config) -> bench.PerfSettings:
    return bench.PerfSettings.from_pytest(config)


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "layer" in names:
        s = _settings(metafunc.config)
        cases = [c for c in bench.layer_cases() if s.full or c.default]
        params = [(c, d, i) for c in cases for d in s.kernel_dtypes for i in IMPLS]
        metafunc.parametrize("layer,dtype,impl", params,
                             ids=[f"{bench.slug(c.name)}-{d}-{i}" for c, d, i in params])
    if "kind" in names:
        s = _settings(metafunc.config)
        parts = FUSED_PARTS if s.full else FUSED_PARTS[:1]
        ranks = range(2) if s.full else range(1)
        params = [(p, k, r, d, i) for p in parts for k in bench.FUSED_KINDS for r in ranks
                  for d in s.kernel_dtypes for i in IMPLS]
        metafunc.parametrize("part,kind,rank,dtype,impl", params,
                             ids=[f"{p}-{k}-{r}-{d}-{i}" for p, k, r, d, i in params])


def test_layer(perf, timer, layer, dtype, impl):
    enabled, reason = perf.compile_policy
    prep = perf.cached(("layer", layer.name, dtype), lambda: bench.prepare_layer(
        layer, dtype, perf.device, enabled, reason))
    perf.run_impl(timer, "layer", prep, impl)


@pytest.fixture(scope="session")
def sd15():
    from wsd.models import load_model

    return load_model("sd15")


def test_fused(perf, timer, sd15, part, kind, rank, dtype, impl):
    kernels = perf.cached(("fused-kernels", part, dtype), lambda: bench.fused_kernels(
        sd15, part, dtype, perf.device.tvm_target))
    kernel = bench.dominant(kernels, kind, rank, perf.settings.max_work)
    if kernel is None:
        pytest.skip(f"{part} {dtype}: no {kind} kernel #{rank}"
                    + (" within the CPU size limit (--perf-full)" if perf.settings.max_work
                       else ""))
    enabled, reason = perf.compile_policy
    prep = perf.cached(("fused", part, kernel.name, dtype), lambda: bench.prepare_fused(
        kernel, perf.device, enabled, reason))
    perf.run_impl(timer, f"fused {part}", prep, impl)


def test_fused_kinds_cover_the_model(perf, sd15):
    """The kinds benchmarked above are most of the UNet's work: if the build starts emitting
    other kernels (a new fusion, an op rename), this says which ones to add."""
    kernels = perf.cached(("fused-kernels", "unet_guided", "float32"), lambda: bench.fused_kernels(
        sd15, "unet_guided", "float32", perf.device.tvm_target))
    heavy = [k for k in kernels
             if k.kind.startswith(("conv2d", "matmul", "NT_matmul", "attention"))]
    missing = sorted({k.kind for k in heavy if k.kind not in bench.FUSED_KINDS})
    assert not missing, f"heavy kernel kinds without a benchmark: {missing}"
    assert {k.kind for k in kernels} & set(bench.FUSED_KINDS), "no known kernel kind found"
