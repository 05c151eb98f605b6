"""Test options shared by every suite.

`--runslow` runs tests marked `slow` (full-size SD v1.5 checks, full fp16 sweeps); by default
they are skipped so the CI run stays well inside its time limit. Tests marked `gpu` run only
where TVM sees a CUDA device.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")
    # tests/perf (run explicitly: `pytest tests/perf`); see tests/perf/conftest.py
    perf = parser.getgroup("wsd perf", "benchmarks in tests/perf (wsd.bench)")
    perf.addoption("--perf-target", choices=("auto", "llvm", "cuda"), default="auto",
                   help="device of the benchmarks (auto: cuda if TVM sees a GPU, else llvm)")
    perf.addoption("--perf-model", default="tiny", help="model of the per-model benchmarks: "
                   "tiny (default), sd15, or a diffusers folder")
    perf.addoption("--perf-dtype", default=None, help="comma-separated dtypes (default: "
                   "models float32,float16; kernels float32 on llvm, both on cuda)")
    perf.addoption("--perf-full", action="store_true",
                   help="every SD v1.5 kernel shape (default: a subset a CPU runs quickly)")
    perf.addoption("--perf-torch-compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile baselines (auto: on for cuda, off on CPUs)")
    perf.addoption("--perf-repeat", type=int, default=None,
                   help="timed rounds per figure (default 5 on cuda, 3 on llvm)")
    perf.addoption("--perf-markdown", help="write the side-by-side tables here (markdown)")
    perf.addoption("--perf-json", help="write the side-by-side results here (JSON)")


def _has_cuda() -> bool:
    import tvm

    return tvm.cuda(0).exist


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    has_cuda = None
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            if has_cuda is None:
                has_cuda = _has_cuda()
            if not has_cuda:
                item.add_marker(skip_gpu)
