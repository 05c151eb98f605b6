#!/usr/bin/env bash
# The CUDA half of the numerics, on a lent GPU machine (see docs/VERIFY.md).
#
#   gpu_check.sh stage1           copy the first half of the apache-tvm wheel aside
#   gpu_check.sh install          join the wheel, install it with the carried .whl/ wheels
#   gpu_check.sh tests [ARGS]     pytest's gpu-marked numerics (tiny and SD v1.5 on CUDA)
#   gpu_check.sh verify MODEL DTYPE   the per-block table for MODEL on CUDA
#   gpu_check.sh ssim MODEL STEPS     wsd-vs-diffusers SSIM per scheduler on CUDA
#
# The 100 MB apache-tvm wheel is over the per-call carry limit, so it travels in two parts
# (.tvmwheel1/, .tvmwheel2/); everything installs under /tmp/site, outside the repo. Logs go
# to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/tvmparts
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
case "$1" in
stage1)
    cp .tvmwheel1/part.* /tmp/tvmparts/ ;;
install)
    cp .tvmwheel2/part.* /tmp/tvmparts/
    mkdir -p /tmp/wheel
    cat /tmp/tvmparts/part.* > /tmp/wheel/apache_tvm-0.27.0.post1-py3-none-manylinux_2_28_x86_64.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
        /tmp/wheel/*.whl .whl/*.whl || exit 1
    python3 -c "import tvm, diffusers, torch; print(tvm.__version__, diffusers.__version__, torch.__version__, tvm.cuda(0).exist)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv ;;
tests)
    shift
    python3 -m pytest tests/numerics -m gpu -ra -p no:cacheprovider "$@" 2>&1 | tee "$OUT/gpu-tests.log" ;;
verify)
    python3 -m wsd verify --model "$2" --dtype "$3" --target cuda 2>&1 | tee "$OUT/verify-$2-$3.log" ;;
ssim)
    python3 scripts/ssim_report.py "$2" cuda "$3" 2>&1 | tee -a "$OUT/ssim.log" ;;
esac
