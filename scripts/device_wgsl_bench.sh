#!/bin/bash
# Time a wsd.tuning.tune bench folder on the GPU machine's WebGPU (wgpu-native over Vulkan).
# No TVM needed there: wsd.tuning.wgsl_bench uses numpy and wgpu only.
#
#   bash scripts/device_wgsl_bench.sh BENCH_DIR [wsd.tuning.wgsl_bench options]
#   bash scripts/device_wgsl_bench.sh --pytest BENCH_DIR   (pytest tests/perf/test_records.py)
#
# Expects .gl/ and .wgpuwhl/ carried with the working tree (scripts/webgpu_env.sh).
# Results go to $OUT (the device tool's return folder) when set, else to BENCH_DIR.
set -euo pipefail
mode=bench
if [ "${1:-}" = "--pytest" ]; then mode=pytest; shift; fi
dir=$1; shift
source "$(dirname "$0")/webgpu_env.sh"
webgpu_env
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
    --format=csv || true
out=${OUT:-$dir}
if [ $mode = pytest ]; then
    WSD_BENCH_DIR=$dir python3 -m pytest -q -p no:cacheprovider tests/perf/test_records.py \
        -k "earns_its_place or admitted or database" "$@" 2>&1 | tee "$out/pytest.log"
else
    python3 -m wsd.tuning.wgsl_bench "$dir" --out "$out/results.json" "$@" 2>&1 | tee "$out/bench.log"
fi
