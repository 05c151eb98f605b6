#!/usr/bin/env bash
# The GPU half of the benchmarks (docs/PERF.md), on a lent GPU machine: `wsd bench` for SD v1.5
# (fp32 and fp16, every part) and `pytest tests/perf` on CUDA, each figure side by side with
# PyTorch (eager and torch.compile) in the same run. Everything goes to $OUT (logs, markdown
# tables, JSON), one file per step.
#
#   gpu_perf.sh stage1             as gpu_check.sh: copy the first half of the TVM wheel aside
#   gpu_perf.sh install            as gpu_check.sh install, plus pytest-benchmark (.whl/perf/)
#   gpu_perf.sh build DTYPE        wsd build --model $MODEL --target cuda (fills the cache: a
#                                  SD v1.5 CUDA build takes 270-335 s, so it gets its own call)
#   gpu_perf.sh bench DTYPE [PARTS [OPTIONS]]   wsd bench --model $MODEL --target cuda (default:
#                                  all parts); OPTIONS go to wsd bench (--profile 15)
#   gpu_perf.sh layers DTYPE [conv|linear|attention|norm]   tests/perf: single layers at
#                                  every SD v1.5 shape (--perf-full), optionally one group
#   gpu_perf.sh fused DTYPE [unet_guided|decode]   tests/perf: the build's fused kernels, the
#                                  top 2 of each kind (--perf-full), optionally one part
#   gpu_perf.sh models [ARGS]      tests/perf/test_models.py (default: --perf-model sd15
#                                  --perf-dtype float16: per-model figures + the 3 GB goal)
#   gpu_perf.sh records            tests/perf/test_records.py (tuned-schedule records)
#   gpu_perf.sh webgpu DTYPE [PARTS [OPTIONS]]   wsd bench --model $MODEL --target webgpu-native: the
#                                  browser build's WGSL on this GPU through wgpu-py (Vulkan),
#                                  GPU time per call, next to PyTorch on CUDA (default parts
#                                  clip,unet,vae; OPTIONS e.g. --profile 30); needs .gl/ and .wgpuwhl/ carried
#                                  (scripts/webgpu_env.sh); WEBGPU_TARGET=webgpu-native-subgroups
#                                  times the bundle's subgroup kernel set instead
#   gpu_perf.sh tune DIR           python -m wsd.tuning.cuda_bench DIR: build, check and time the
#                                  tensor-core candidates of a `wsd.tuning.tune export --target cuda`
#                                  folder (carried); results and references to $OUT, then
#                                  `python -m wsd.tuning.tune admit` here
#   gpu_perf.sh all                every step above after install, one after another
#
# MODEL=sd-turbo (or sd21, lcm) builds and benches that preset instead of sd15 (build, bench,
# webgpu), e.g. `MODEL=sd-turbo bash scripts/gpu_perf.sh bench float16 unet,vae,image`.
#
# With one call limited to 10 minutes, run the steps as separate calls (the machine keeps /tmp
# while it stays warm, so compiled libraries are reused through WSD_CACHE=/tmp/wsd-cache):
#   stage1; install; build float32; bench float32 clip,unet; bench float32 vae,image,memory;
#   build float16; bench float16 clip,unet; bench float16 vae,image,memory;
#   layers float32 conv; layers float32 "not conv"; (same for float16);
#   fused float32 unet_guided; fused float32 decode; (same for float16); models;
#   webgpu float16 unet; webgpu float32 unet; webgpu float16 clip,vae; ...
# (a library is reused only while wsd's compiler sources stay the same between calls).
# Each step runs under `timeout` (STEP_TIMEOUT seconds, default 540) and a failing or
# timed-out step does not stop the others; `all` prints a summary of the exit codes at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
STEP_TIMEOUT=${STEP_TIMEOUT:-540}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:/tmp/site-bench:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export WSD_CACHE=${WSD_CACHE:-/tmp/wsd-cache}
PY=${PYTHON:-python3}
MODEL=${MODEL:-sd15}  # the preset to build and bench (sd15, sd21, sd-turbo, lcm)
declare -a SUMMARY=()
source scripts/webgpu_env.sh

# step NAME LOGFILE CMD...: run one bounded step, everything tee'd to $OUT/LOGFILE
step() {
    local name=$1 log=$2
    shift 2
    echo "=== $name: $* ($(date -u +%FT%TZ))" | tee -a "$OUT/$log"
    timeout -s INT -k 30 "$STEP_TIMEOUT" "$@" 2>&1 | tee -a "$OUT/$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "=== $name: timed out after $STEP_TIMEOUT s" | tee -a "$OUT/$log"
    echo "=== $name: exit $rc" | tee -a "$OUT/$log"
    SUMMARY+=("$name: exit $rc")
    return 0
}

device_info() {
    {
        date -u +%FT%TZ
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        $PY -c "import torch, tvm; print('torch', torch.__version__, 'tvm', tvm.__version__)"
        git log -1 --format='commit %H %s' 2>/dev/null || true
    } 2>&1 | tee "$OUT/device.txt"
}

install() {
    bash scripts/gpu_check.sh install || return 1
    # pytest-benchmark for tests/perf; only where this pytest is new enough for it (otherwise
    # tests/perf/conftest.py times the figures itself).
    if $PY -c "import pytest, sys; sys.exit(int(pytest.__version__.split('.')[0]) < 8)"; then
        $PY -m pip install -q --no-index --no-deps --target /tmp/site-bench .whl/perf/*.whl \
            || echo "pytest-benchmark not installed: tests/perf uses its own timing"
    fi
    $PY -c "import pytest_benchmark; print('pytest-benchmark', pytest_benchmark.__version__)" \
        || true
    device_info
}

build() {
    local dtype=${1:-float16}
    step "build $MODEL $dtype" "build-$MODEL-$dtype.log" \
        $PY -m wsd build --model $MODEL --target cuda --dtype "$dtype"
}

bench() {  # bench DTYPE [PARTS [wsd bench options, e.g. --profile 15]]
    local dtype=${1:-float16} parts=${2:-clip,unet,vae,image,memory}
    local name="bench-$MODEL-$dtype${2:+-${2//,/-}}"
    shift $(($# < 2 ? $# : 2))
    step "bench $MODEL $dtype $parts" "$name.log" \
        $PY -m wsd bench --model $MODEL --target cuda --dtype "$dtype" --parts "$parts" \
        --json "$OUT/$name.json" --markdown "$OUT/$name.md" "$@"
}

perf_pytest() {  # perf_pytest NAME FILE ARGS...: one tests/perf run, tables to $OUT
    local name=$1 file=$2
    shift 2
    local extra=()
    if $PY -c "import pytest_benchmark" 2>/dev/null; then
        extra=(--benchmark-json "$OUT/pytest-$name-benchmark.json"
               --benchmark-columns=min,median,max,rounds)
    fi
    step "pytest $name" "pytest-$name.log" \
        $PY -m pytest "$file" -p no:cacheprovider -ra --perf-target cuda \
        --perf-markdown "$OUT/pytest-$name.md" --perf-json "$OUT/pytest-$name.json" \
        "${extra[@]}" "$@"
}

layers() {  # layers DTYPE [FILTER]: FILTER narrows by name (conv, linear, attention, norm)
    local dtype=${1:-float32} filter=${2:-}
    perf_pytest "layers-$dtype${filter:+-$filter}" tests/perf/test_kernels.py \
        -k "test_layer${filter:+ and $filter}" --perf-full --perf-dtype "$dtype"
}

fused() {  # fused DTYPE [PART]: PART unet_guided or decode (default both)
    local dtype=${1:-float32} part=${2:-}
    perf_pytest "fused-$dtype${part:+-$part}" tests/perf/test_kernels.py \
        -k "test_fused${part:+ and $part}" --perf-full --perf-dtype "$dtype"
}

models() {
    local args=("$@")
    [ ${#args[@]} -eq 0 ] && args=(--perf-model sd15 --perf-dtype float16)
    perf_pytest models tests/perf/test_models.py "${args[@]}"
}

webgpu() {  # webgpu DTYPE [PARTS [wsd bench options, e.g. --profile 30]]
    local dtype=${1:-float16} parts=${2:-clip,unet,vae} target=${WEBGPU_TARGET:-webgpu-native}
    local name="${target/-native/}-$MODEL-$dtype${2:+-${2//,/-}}"
    shift 2 2>/dev/null || shift $#
    # Not under `step`: its exports (VK_DRIVER_FILES) must reach the bench below.
    if ! webgpu_env >>"$OUT/$name.log" 2>&1; then
        echo "=== webgpu: installing the Vulkan loaders or wgpu failed ($OUT/$name.log)" \
            | tee -a "$OUT/$name.log"
        SUMMARY+=("webgpu $MODEL $dtype $parts: install failed")
        return 0
    fi
    step "$target $MODEL $dtype $parts" "$name.log" \
        $PY -m wsd bench --model $MODEL --target "$target" --dtype "$dtype" --parts "$parts" \
        --torch-compile off --json "$OUT/$name.json" --markdown "$OUT/$name.md" "$@"
}

tune() {  # tune DIR: the folder of `python -m wsd.tuning.tune export --target cuda`
    local dir=$1
    step "tune cuda $dir" "tune-cuda.log" \
        $PY -m wsd.tuning.cuda_bench "$dir" --out "$OUT/cuda-results.json"
    cp -r "$dir/refs" "$OUT/cuda-refs" 2>/dev/null || true
}

records() {
    step "pytest records" "pytest-records.log" \
        $PY -m pytest tests/perf/test_records.py -p no:cacheprovider -ra
}

case "${1:-}" in
stage1) bash scripts/gpu_check.sh stage1 ;;
install) install ;;
build) shift; build "$@" ;;
bench) shift; bench "$@" ;;
layers) shift; layers "$@" ;;
fused) shift; fused "$@" ;;
models) shift; models "$@" ;;
records) records ;;
webgpu) shift; webgpu "$@" ;;
tune) shift; tune "$@" ;;
all)
    install || echo "install failed: the steps below will say why"
    device_info >/dev/null
    for d in float32 float16; do build "$d"; bench "$d"; done
    for d in float32 float16; do layers "$d"; fused "$d"; done
    models
    records
    for d in float16 float32; do webgpu "$d"; done
    ;;
*)
    sed -n '2,40p' "$0"
    exit 2
    ;;
esac
if [ ${#SUMMARY[@]} -gt 0 ]; then
    printf '%s\n' "${SUMMARY[@]}" | tee -a "$OUT/summary.txt"
fi
