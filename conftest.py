"""Test options shared by every suite.

`--runslow` runs tests marked `slow` (full-size SD v1.5 checks, full fp16 sweeps); by default
they are skipped so the CI run stays well inside its time limit. Tests marked `gpu` run only
where TVM sees a CUDA device.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


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
